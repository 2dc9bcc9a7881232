r"""Plain-torch graph learning from smooth signals (Kalofolias 2016; Kalofolias & Perraudin 2019).

The log model, with ``θ`` folded into the distances (Prop. 1 of the 2019 paper: ``W(Z, α, β)
= δ W(θZ, 1, 1)``), on a set of undirected edges ``e = (i, j)``, each listed once:

.. math::
    \min_{w \ge 0}\; 2 z^\top w - \mathbf 1^\top \log(K w) + \|w\|_2^2,

where ``z_e = θ‖x_i − x_j‖²`` and ``K`` maps edge weights to node degrees (``(Kw)_i = Σ_{e∋i}
w_e``; ``Kᵀv`` at edge ``(i, j)`` is ``v_i + v_j``). This is ``‖W∘Z‖_{1,1} − 1ᵀlog(W1) +
½‖W‖²_F`` for the symmetric ``W``.

Forward-backward-forward primal-dual (Komodakis & Pesquet 2015, as in Kalofolias 2016), with
``f1(w) = ι_{w≥0} + 2zᵀw`` (prox: ``max(0, w − 2τz)``), ``f2(d) = −1ᵀlog d`` (prox of its
conjugate, closed form: ``p = (y − √(y² + 4σ)) / 2``), ``f3(w) = ‖w‖²`` (gradient ``2w``,
Lipschitz 2), in the diagonal metric of a primal step ``τ`` per edge and a dual step ``σ_i``
per node::

    Y = w − τ(2w + Kᵀv)          y = v + σ∘Kw
    P = max(0, Y − 2τz)          p = (y − √(y² + 4σ)) / 2
    Q = P − τ(2P + Kᵀp)          q = p + σ∘KP
    w ← w − Y + Q                v ← v − y + q

``σ_i = s / deg_i`` (support degree) and ``2τ + √(2sτ) < 1`` make it converge
(:func:`graph_steps`): the step does not shrink with the largest degree of the support, as
the uniform step ``γ < 1/(2 + ‖K‖)`` of the paper does (``‖K‖² = λ_max(KKᵀ)``, ``KKᵀ = D + A``
the signless Laplacian of the support, ``‖K‖² ≤ max_{(i,j)∈E}(deg_i + deg_j)``).

This module is the executable spec (and the test reference): :func:`fbf_log_steps` is the
twin of ``csrc/cpu/graph_learning.cpp``; :func:`dense_log_model` solves the exact model on
all ``n(n−1)/2`` pairs with dense matrices (tests and the agreement benchmark only);
:func:`single_node_solve` is Algorithm 1 of the 2019 paper; :func:`theta_bounds` is
Theorem 3 per node; :func:`l2_model` solves eq. (4) on an edge support.
"""
from __future__ import annotations

import math

import torch


# --------------------------------------------------------------------------- theta (Thm 2-3)
def theta_bounds(zs: torch.Tensor, k: int):
    """Per-node ``(lower, upper)`` bounds of θ giving exactly ``k`` non-zeros (Theorem 3).

    (At ``θ = upper`` the ``k``-th weight is exactly 0, so the interval is really
    ``[lower, upper)``; the paper writes it ``(lower, upper]``.)

    ``zs``: ``[n, m]`` distances of each node to its candidates, sorted ascending, ``inf``
    where missing, ``m >= k``. ``upper = 1/√(k z_k² − b_k z_k)`` (``inf`` when the root is 0:
    the first ``k`` distances are equal); ``lower = 1/√(k z_{k+1}² − b_k z_{k+1})`` (``0`` when
    ``z_{k+1}`` is missing or infinite; ``inf`` when the first ``k+1`` distances are equal).
    """
    zs = zs.double()
    b = zs[:, :k].sum(1)
    zk = zs[:, k - 1]
    up_root = k * zk * zk - b * zk
    upper = torch.where(up_root > 0, 1.0 / up_root.clamp_min(1e-300).sqrt(),
                        torch.full_like(up_root, math.inf))
    if zs.shape[1] > k:
        z1 = zs[:, k]
        lo_root = k * z1 * z1 - b * z1
        lower = torch.where(lo_root > 0, 1.0 / lo_root.clamp_min(1e-300).sqrt(),
                            torch.full_like(lo_root, math.inf))
        lower = torch.where(torch.isinf(z1), torch.zeros_like(lower), lower)
    else:
        lower = torch.zeros_like(upper)
    return lower, upper


def single_node_solve(z: torch.Tensor, theta: float) -> torch.Tensor:
    """Exact solution of ``min_{w≥0} θwᵀz − log(wᵀ1) + ½‖w‖²`` (Theorem 2 / Algorithm 1)."""
    z = z.double()
    zs, order = torch.sort(z)
    n = zs.numel()
    b = torch.cumsum(zs, 0)
    kk = torch.arange(1, n + 1, dtype=torch.float64)
    lam = (theta * b + torch.sqrt(theta ** 2 * b * b + 4 * kk)) / (2 * kk)
    # the first i whose λ_i <= θ z_i ends the support at k = i - 1 (Algorithm 1)
    k = n
    for i in range(1, n):
        if float(lam[i]) <= theta * float(zs[i]):
            k = i
            break
    lam_k = float(lam[k - 1])
    w = torch.zeros(n, dtype=torch.float64)
    w[order] = torch.clamp(lam_k - theta * zs, min=0)
    return w


# --------------------------------------------------------------------------- FBF on a support
def operator_norm_bound(row: torch.Tensor, col: torch.Tensor, n: int) -> float:
    """Upper bound of ``‖K‖``: ``√max_{(i,j)∈E}(deg_i + deg_j)`` (signless-Laplacian bound)."""
    if row.numel() == 0:
        return 0.0
    deg = torch.bincount(row, minlength=n) + torch.bincount(col, minlength=n)
    return math.sqrt(float((deg[row] + deg[col]).max()))


def degrees(row, col, w, n):
    d = torch.zeros(n, dtype=w.dtype, device=w.device)
    d.index_add_(0, row, w)
    d.index_add_(0, col, w)
    return d


def support_degrees(row, col, n) -> torch.Tensor:
    """Number of support edges at every node (``[n]`` int64)."""
    return torch.bincount(row, minlength=n) + torch.bincount(col, minlength=n)


def graph_steps(row, col, n, step: float, c: float, node_graph, num_graphs: int):
    r"""Diagonally preconditioned steps of every graph: ``(tau [G], s [G])`` float64.

    Edge ``e`` of graph ``g`` takes the primal step ``τ_g`` and node ``i`` the dual step
    ``σ_i = s_g / deg_i`` (``deg_i``: support edges at ``i``), with ``ρ_g`` the mean support
    degree of the graph's non-isolated nodes, ``τ_g = step / (2(1 + c) + √(2ρ_g))`` and
    ``s_g = ρ_g τ_g``. FBF in the metric ``Γ = diag(τ, σ)`` converges when the linear part
    ``[[2(1+c)I, Kᵀ], [−K, 0]]`` has norm below 1 in that metric; its norm is at most
    ``2(1+c)τ + ‖Σ^{1/2} K T^{1/2}‖`` and ``Σ^{1/2}KKᵀΣ^{1/2} = s(I + D^{-1/2}AD^{-1/2})``
    has spectral radius ``≤ 2s``, so the bound is ``2(1+c)τ + √(2sτ) = step < 1``. Unlike a
    uniform step ``1/‖K‖`` (``‖K‖² ≤ max_{(i,j)}(deg_i + deg_j)``), it does not shrink with the
    largest degree: approximate-kNN supports of a million points have hubs of degree ~10³,
    which made the uniform step ~4x smaller than the typical node needs. On a regular support
    both are the same step.
    """
    G = max(1, int(num_graphs))
    dev = row.device
    h2 = 2.0 * (1.0 + c)
    rho = torch.zeros(G, dtype=torch.float64, device=dev)
    if row.numel():
        deg = support_degrees(row, col, n)
        slots = torch.zeros(G, dtype=torch.float64, device=dev).index_add_(0, node_graph, deg.double())
        nodes = torch.zeros(G, dtype=torch.float64, device=dev).index_add_(0, node_graph, (deg > 0).double())
        rho = slots / nodes.clamp_min(1.0)
    tau = step / (h2 + torch.sqrt(2.0 * rho))
    return tau, rho * tau


def node_sigma(row, col, n, s: torch.Tensor, node_graph) -> torch.Tensor:
    """Dual step of every node, ``σ_i = s_g / max(deg_i, 1)`` (``[n]`` float64)."""
    deg = support_degrees(row, col, n) if row.numel() else torch.zeros(n, dtype=torch.long, device=s.device)
    return s[node_graph] / deg.clamp_min(1).double()


def warm_start(row, col, z, n, max_w: float = math.inf):
    r"""Starting point of the solver: ``(w [E], v [n])``.

    Every node ``i`` solves its own problem ``min_{w≥0} Σ_{e∋i} w_e z_e − log Σ_{e∋i} w_e +
    ½Σ_{e∋i} w_e²`` (problem (8) of the 2019 paper on its support edges, ``θ`` already in
    ``z``) in closed form (Theorem 2: ``w_e = max(0, λ_i − z_e)``); each edge starts at the mean
    of its two endpoints' values (capped at ``max_w``) and the dual at its optimum for those
    weights, ``v_i = −1/(Kw)_i`` (``0`` at a node without edges). This is the row-wise
    relaxation the paper chooses ``θ`` with, so the degrees start near ``k``: from ``w = 0``
    the slowest (graph-wide) modes of the iteration start at full amplitude, and the
    iterations grew from 154 at 100k nodes to 511 at 1M (``census_like``); from here they
    stay flat (``benchmarks/README.md``).
    """
    E = z.numel()
    dev = z.device
    if E == 0:
        return z.new_zeros(0), z.new_zeros(n)
    node = torch.cat([row, col])
    zz = torch.cat([z, z]).double()
    o = torch.argsort(zz, stable=True)
    o = o[torch.argsort(node[o], stable=True)]          # slots by node, then by distance
    nd, zs = node[o], zz[o]
    deg = torch.bincount(node, minlength=n)
    ptr = torch.zeros(n + 1, dtype=torch.long, device=dev)
    ptr[1:] = torch.cumsum(deg, 0)
    pos = torch.arange(2 * E, device=dev) - ptr[nd]     # 0-based rank of the slot in its node
    has = deg > 0
    first = ptr[:-1]
    # b = sum of the node's (pos + 1) smallest: a cumsum per node, nodes of one degree at once
    # (each node's sums depend on its own distances only, so a batch matches its graphs alone)
    b = torch.empty_like(zs)
    by_deg = torch.argsort(deg, stable=True)
    degs, counts = torch.unique_consecutive(deg[by_deg], return_counts=True)
    start = 0
    for D, cnt in zip(degs.tolist(), counts.tolist()):
        nodes, start = by_deg[start:start + cnt], start + cnt
        if D == 0:
            continue
        slots = first[nodes][:, None] + torch.arange(D, device=dev)[None, :]
        b[slots] = torch.cumsum(zs[slots], 1)
    kk = (pos + 1).double()
    lam = (b + torch.sqrt(b * b + 4 * kk)) / (2 * kk)   # Theorem 2's λ for a support of pos + 1
    stop = torch.full((n,), 2 * E + 1, dtype=torch.long, device=dev)
    bad = lam <= zs                                     # Algorithm 1: the first rank where λ <= z ends it
    stop.scatter_reduce_(0, nd[bad], pos[bad], "amin")
    k = torch.minimum(stop, deg).clamp_min(1)
    lam_node = torch.zeros(n, dtype=torch.float64, device=dev)
    lam_node[has] = lam[(first + k - 1)[has]]
    zd = z.double()
    w = ((lam_node[row] - zd).clamp_min(0) + (lam_node[col] - zd).clamp_min(0)) / 2
    w = w.clamp(max=max_w) if max_w < math.inf else w
    d = degrees(row, col, w, n)
    v = torch.where(d > 0, -1.0 / d.clamp_min(1e-300), torch.zeros_like(d))
    return w.to(z.dtype), v.to(z.dtype)


def fbf_log_steps(row, col, z, n, w, v, P, steps_g, steps: int, tol: float, w0=None, c: float = 0.0,
                  max_w: float = math.inf, node_graph=None, state=None):
    """Up to ``steps`` FBF iterations in place on ``(w, v)``; ``P`` gets the last prox output.

    ``steps_g = (tau, s)``, ``[G]`` tensors of :func:`graph_steps` (``node_graph``: the graph
    of every node; primal step ``τ_g`` on the edges of graph ``g``, dual step ``s_g / deg_i``
    at node ``i``): the graphs are independent problems, each with its own steps and its own
    stopping test (both relative changes below ``tol``), so a batch is solved exactly as its
    graphs one by one. ``state`` (``[G, 4]`` float64: iterations, rel. primal change, rel.
    dual change, finished) is updated in place and returned. With a prior (``w0``, ``c > 0``)
    the smooth term is ``‖w‖² + c‖w − w0‖²`` (gradient ``2(1+c)w − 2c·w0``); ``max_w`` caps
    the weights in the prox of ``f1`` (GSPBox's options).
    """
    dev = z.device
    if node_graph is None:
        node_graph = torch.zeros(n, dtype=torch.long, device=dev)
    tau, s = (t.to(dev, torch.float64) for t in steps_g)
    G = int(tau.numel())
    if state is None:
        state = torch.zeros(G, 4, dtype=torch.float64, device=dev)
    eg = node_graph[row]
    ge, gn = tau[eg].to(z.dtype), node_sigma(row, col, n, s, node_graph).to(z.dtype)
    edges = torch.bincount(eg, minlength=G) if row.numel() else torch.zeros(G, dtype=torch.long, device=dev)
    empty = (edges == 0) & (state[:, 3] == 0)
    state[empty, 1:3] = 0.0
    state[empty, 3] = 1.0
    prior = w0 is not None and w0.numel() == z.numel() and c > 0
    h2 = 2.0 * (1.0 + (c if prior else 0.0))
    lin = 2.0 * c * w0 if prior else 0.0

    def gsum(val, idx):
        return torch.zeros(G, dtype=torch.float64, device=dev).index_add_(0, idx, val.double() ** 2)

    for it in range(steps):
        active = state[:, 3] == 0
        Y = w - ge * (h2 * w - lin + (v[row] + v[col]))
        y = v + gn * degrees(row, col, w, n)
        Pn = torch.clamp(Y - 2 * ge * z, min=0, max=max_w if max_w < math.inf else None)
        p = (y - torch.sqrt(y * y + 4 * gn)) / 2
        Q = Pn - ge * (h2 * Pn - lin + (p[row] + p[col]))
        q = p + gn * degrees(row, col, Pn, n)
        dw, dv = Q - Y, q - y
        ae, an = active[eg], active[node_graph]
        pn, pd = gsum(dw, eg), gsum(w, eg)
        dn, dd = gsum(dv, node_graph), gsum(v, node_graph)
        rel_p = torch.where(pd > 0, (pn / pd.clamp_min(1e-300)).sqrt(), torch.full_like(pd, math.inf))
        rel_d = torch.where(dd > 0, (dn / dd.clamp_min(1e-300)).sqrt(), torch.full_like(dd, math.inf))
        w.copy_(torch.where(ae, w + dw, w))
        v.copy_(torch.where(an, v + dv, v))
        P.copy_(torch.where(ae, Pn, P))
        state[:, 0] += active.double()
        state[:, 1] = torch.where(active, rel_p, state[:, 1])
        state[:, 2] = torch.where(active, rel_d, state[:, 2])
        state[:, 3] = torch.where(active & (rel_p < tol) & (rel_d < tol), 1.0, state[:, 3])
        # on CUDA the "all finished" test (a host sync) runs every 10 iterations only
        if (dev.type == "cpu" or it % 10 == 9) and bool((state[:, 3] != 0).all()):
            break
    return state


def stats(state: torch.Tensor) -> list:
    """``[iterations, rel_primal, rel_dual]`` of a solve: the worst graph's."""
    if state.shape[0] == 0:
        return [0.0, 0.0, 0.0]
    return [float(state[:, 0].max()), float(state[:, 1].max()), float(state[:, 2].max())]


def log_model(row, col, z, n, *, max_iter=1000, tol=1e-5, step=0.9, w0=None, c=0.0, max_w=math.inf,
              node_graph=None, num_graphs: int = 1):
    """Solve the log model on the support ``(row, col)`` (each edge once; with ``node_graph``,
    the graph of each node, one independent problem per graph); returns ``(w, stats)`` with
    ``stats = [iterations, rel_primal, rel_dual]`` (float64; the worst graph's)."""
    prior = w0 is not None and w0.numel() == z.numel() and c > 0
    if node_graph is None:
        node_graph = torch.zeros(n, dtype=torch.long, device=z.device)
        num_graphs = 1
    steps_g = graph_steps(row, col, n, step, c if prior else 0.0, node_graph, num_graphs)
    w, v = warm_start(row, col, z, n, max_w)
    P = torch.zeros_like(z)
    state = fbf_log_steps(row, col, z, n, w, v, P, steps_g, max_iter, tol, w0=w0, c=c, max_w=max_w,
                          node_graph=node_graph)
    return P, torch.tensor(stats(state), dtype=torch.float64)


def dense_log_model(Z: torch.Tensor, theta: float = 1.0, *, max_iter: int = 20000, tol: float = 1e-8,
                    step: float = 0.9, W0: torch.Tensor | None = None, c: float = 0.0, max_w: float = math.inf,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exact log model on all pairs, dense ``n × n`` matrices (test reference, small ``n``).

    Solves ``min_W ‖W∘θZ‖_{1,1} − 1ᵀlog(W1) + ½‖W‖²_F (+ ½c‖W − W0‖²_F)`` over symmetric,
    non-negative (``≤ max_w``), zero-diagonal ``W`` (zero outside the symmetric boolean
    ``mask`` when given: GSPBox's ``edge_mask``) with the same FBF iteration written with
    matrices (``‖K‖ ≤ √(2(n−1))``). Returns ``W`` (``[n, n]``, float64).
    """
    Z = theta * Z.double()
    n = Z.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    if mask is not None:
        off = off & mask.bool()
    prior = W0 is not None and c > 0
    h2 = 2.0 * (1.0 + (c if prior else 0.0))
    lin = 2.0 * c * W0.double() if prior else 0.0
    gamma = step / (h2 + math.sqrt(2 * (n - 1)))
    W = torch.zeros_like(Z)
    v = torch.zeros(n, dtype=torch.float64)
    P = W
    for _ in range(max_iter):
        Y = W - gamma * (h2 * W - lin + v[:, None] + v[None, :])
        y = v + gamma * W.sum(1)
        P = torch.clamp(Y - 2 * gamma * Z, min=0, max=max_w) * off
        p = (y - torch.sqrt(y * y + 4 * gamma)) / 2
        Q = (P - gamma * (h2 * P - lin + p[:, None] + p[None, :])) * off
        q = p + gamma * P.sum(1)
        dW, dv = Q - Y * off, q - y
        wn, vn = float(W.norm()), float(v.norm())
        W = W + dW
        v = v + dv
        if wn > 0 and vn > 0 and float(dW.norm()) / wn < tol and float(dv.norm()) / vn < tol:
            break
    return P


def kkt_residual(row, col, z, w, n):
    """Stationarity residuals of the log model: ``g_e = 2z_e + 2w_e − 1/d_i − 1/d_j``.

    Returns ``(max |g_e| over w_e > 0, max(−g_e) over w_e = 0)``; both are ≤ 0 at the optimum.
    """
    d = degrees(row, col, w, n)
    g = 2 * z + 2 * w - 1.0 / d[row] - 1.0 / d[col]
    pos = w > 0
    act = float(g[pos].abs().max()) if bool(pos.any()) else 0.0
    inact = float((-g[~pos]).max()) if bool((~pos).any()) else -math.inf
    return act, inact


# --------------------------------------------------------------------------- l2 model (eq. 4)
def project_simplex(u: torch.Tensor, s: float) -> torch.Tensor:
    """Euclidean projection onto ``{w ≥ 0, Σw = s}`` (sort-based, exact)."""
    srt, _ = torch.sort(u, descending=True)
    css = torch.cumsum(srt, 0) - s
    idx = torch.arange(1, u.numel() + 1, dtype=u.dtype, device=u.device)
    cond = srt - css / idx > 0
    rho = int(torch.nonzero(cond).max()) + 1
    tau = css[rho - 1] / rho
    return torch.clamp(u - tau, min=0)


def l2_model(row, col, z, n, alpha: float, *, max_iter=1000, tol=1e-5):
    r"""ℓ2 model (eq. 4) on a support: ``min 2zᵀw + α‖Kw‖² + 2α‖w‖²`` s.t. ``w ≥ 0, Σw = n/2``.

    (``‖W∘Z‖_{1,1} + α‖W1‖² + α‖W‖²_F`` with ``‖W‖_{1,1} = n``.) FISTA with the exact
    projection onto the scaled simplex; step ``1/L``, ``L = 2α‖K‖² + 4α``.
    """
    L = 2 * alpha * operator_norm_bound(row, col, n) ** 2 + 4 * alpha
    s = n / 2.0
    w = torch.full_like(z, s / max(1, z.numel()))
    yk, t = w.clone(), 1.0
    for _ in range(max_iter):
        d = degrees(row, col, yk, n)
        grad = 2 * z + 2 * alpha * (d[row] + d[col]) + 4 * alpha * yk
        w_new = project_simplex(yk - grad / L, s)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        yk = w_new + ((t - 1) / t_new) * (w_new - w)
        change = float((w_new - w).norm()) / max(float(w.norm()), 1e-300)
        w, t = w_new, t_new
        if change < tol:
            break
    return w


def undirected_pairs(src: torch.Tensor, dst: torch.Tensor, num_nodes: int):
    """``(key, inverse)``: the undirected pairs of the entries ``(src, dst)`` each once, as sorted
    keys ``min · n + max``, and the pair of every entry (twin of ``tgrep::undirected_pairs``)."""
    n = int(num_nodes)
    return torch.unique(torch.minimum(src, dst) * n + torch.maximum(src, dst), return_inverse=True)


def both_directions(row: torch.Tensor, col: torch.Tensor, num_nodes: int):
    """``(edge_index [2, 2E], which [2E])``: both directions of the edges ``(row_e, col_e)``,
    sorted by source then target (ties, from repeated edges, by edge), and the edge of every
    entry (twin of ``tgrep::both_directions``)."""
    src, dst = torch.cat([row, col]), torch.cat([col, row])
    which = torch.arange(row.numel(), device=row.device).repeat(2)
    order = torch.argsort(which, stable=True)      # ties by edge
    order = order[torch.argsort((src * num_nodes + dst)[order], stable=True)]
    return torch.stack([src[order], dst[order]]), which[order]
