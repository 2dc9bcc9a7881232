r"""Plain-torch graph learning from smooth signals (Kalofolias 2016; Kalofolias & Perraudin 2019).

The log model, with ``θ`` folded into the distances (Prop. 1 of the 2019 paper: ``W(Z, α, β)
= δ W(θZ, 1, 1)``), on a set of undirected edges ``e = (i, j)``, each listed once:

.. math::
    \min_{w \ge 0}\; 2 z^\top w - \mathbf 1^\top \log(K w) + \|w\|_2^2,

where ``z_e = θ‖x_i − x_j‖²`` and ``K`` maps edge weights to node degrees (``(Kw)_i = Σ_{e∋i}
w_e``; ``Kᵀv`` at edge ``(i, j)`` is ``v_i + v_j``). This is ``‖W∘Z‖_{1,1} − 1ᵀlog(W1) +
½‖W‖²_F`` for the symmetric ``W``.

Forward-backward-forward primal-dual (Komodakis & Pesquet 2015, as in Kalofolias 2016), with
``f1(w) = ι_{w≥0} + 2zᵀw`` (prox: ``max(0, w − 2γz)``), ``f2(d) = −1ᵀlog d`` (prox of its
conjugate, closed form: ``p = (y − √(y² + 4γ)) / 2``), ``f3(w) = ‖w‖²`` (gradient ``2w``,
Lipschitz 2)::

    Y = w − γ(2w + Kᵀv)          y = v + γKw
    P = max(0, Y − 2γz)          p = (y − √(y² + 4γ)) / 2
    Q = P − γ(2P + Kᵀp)          q = p + γKP
    w ← w − Y + Q                v ← v − y + q

It converges for ``γ < 1/μ``, ``μ = 2 + ‖K‖``. ``‖K‖² = λ_max(KKᵀ)`` and ``KKᵀ = D + A`` is
the signless Laplacian of the support, so ``‖K‖² ≤ max_{(i,j)∈E}(deg_i + deg_j)``.

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


def graph_gamma(row, col, n, step: float, c: float, node_graph, num_graphs: int) -> torch.Tensor:
    """Per-graph step ``γ_g = step / μ_g``, ``μ_g = 2(1 + c) + √max_{(i,j)∈E_g}(deg_i + deg_j)``
    (``[num_graphs]`` float64; a graph without edges gets ``step / (2(1 + c))``)."""
    mu = torch.zeros(num_graphs, dtype=torch.float64, device=row.device)
    if row.numel():
        deg = torch.bincount(row, minlength=n) + torch.bincount(col, minlength=n)
        mu.scatter_reduce_(0, node_graph[row], (deg[row] + deg[col]).double(), "amax", include_self=True)
    return step / (2.0 * (1.0 + c) + mu.sqrt())


def fbf_log_steps(row, col, z, n, w, v, P, gamma, steps: int, tol: float, w0=None, c: float = 0.0,
                  max_w: float = math.inf, node_graph=None, state=None):
    """Up to ``steps`` FBF iterations in place on ``(w, v)``; ``P`` gets the last prox output.

    ``gamma`` is a float (one graph) or a ``[G]`` tensor with ``node_graph`` (the graph of
    every node): the graphs are independent problems, each with its own step and its own
    stopping test (both relative changes below ``tol``), so a batch is solved exactly as its
    graphs one by one. ``state`` (``[G, 4]`` float64: iterations, rel. primal change, rel.
    dual change, finished) is updated in place and returned. With a prior (``w0``, ``c > 0``)
    the smooth term is ``‖w‖² + c‖w − w0‖²`` (gradient ``2(1+c)w − 2c·w0``); ``max_w`` caps
    the weights in the prox of ``f1`` (GSPBox's options).
    """
    dev = z.device
    if node_graph is None:
        node_graph = torch.zeros(n, dtype=torch.long, device=dev)
    G = int(gamma.numel()) if isinstance(gamma, torch.Tensor) else 1
    gam = gamma.to(dev, torch.float64) if isinstance(gamma, torch.Tensor) else torch.full((1,), float(gamma),
                                                                                         dtype=torch.float64, device=dev)
    if state is None:
        state = torch.zeros(G, 4, dtype=torch.float64, device=dev)
    eg = node_graph[row]
    ge, gn = gam[eg].to(z.dtype), gam[node_graph].to(z.dtype)
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


def fbf_gamma(row, col, n, step: float, c: float = 0.0) -> float:
    """Step ``γ = step / μ``, ``μ = 2(1 + c) + ‖K‖`` (Lipschitz constant of the smooth term + bound of ‖K‖)."""
    return step / (2.0 * (1.0 + c) + operator_norm_bound(row, col, n))


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
    gamma = graph_gamma(row, col, n, step, c if prior else 0.0, node_graph, num_graphs)
    w = torch.zeros_like(z)
    v = torch.zeros(n, dtype=z.dtype, device=z.device)
    P = torch.zeros_like(z)
    state = fbf_log_steps(row, col, z, n, w, v, P, gamma, max_iter, tol, w0=w0, c=c, max_w=max_w,
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
