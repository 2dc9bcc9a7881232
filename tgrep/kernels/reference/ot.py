"""Plain-torch reference kernels for OT graph compression (Garg & Jaakkola, NeurIPS 2019).

Everything is batched over graphs with segment operations: a node vector ``y [N]`` comes
with ``batch [N]`` (graph id of every node, any order) and ``num_graphs``. These functions
do no input validation (the ops in :mod:`tgrep.ops` do it).

Sign convention (see ``DESIGN.md``): for a directed edge ``u -> v`` of cost ``c`` (mass may
move from ``u`` to ``v`` at cost ``c`` per unit) the dual potentials satisfy
``t_u - t_v <= c``; an undirected edge is listed in both directions (PyG style), which gives
``|t_u - t_v| <= c``. The saddle function is

    psi(eps, t, zeta) = t . rho0 + zeta - 1/(2 lam) sum_v eps_v (t_v + zeta)_+^2,

and ``rho1_v = eps_v (t_v + zeta)_+ / lam``.
"""
from __future__ import annotations

import torch


# ----------------------------------------------------------------------------- segment helpers
def seg_sum(x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    out = torch.zeros(num_graphs, *x.shape[1:], dtype=x.dtype, device=x.device)
    return out.index_add_(0, batch, x)


def seg_max(x: torch.Tensor, batch: torch.Tensor, num_graphs: int, init: float = float("-inf")) -> torch.Tensor:
    out = torch.full((num_graphs,), init, dtype=x.dtype, device=x.device)
    return out.scatter_reduce_(0, batch, x, reduce="amax", include_self=True)


def seg_sort(values: torch.Tensor, batch: torch.Tensor, descending: bool = True, stable: bool = False) -> torch.Tensor:
    """Permutation putting graphs contiguous (by id) and ``values`` sorted inside each graph.

    One sort of the composite key ``2 * graph + (value rescaled to [0, 1] within its graph)``
    in float64 (values closer than ~1e-12 of their graph's range may come out in either
    order, which none of the callers minds); two stable sorts when the key would lose
    precision (over 2**20 graphs or non-finite values) or when ``stable`` (ties keep their
    index order).
    """
    if values.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=values.device)
    v = values.detach().to(torch.float64)
    v = -v if descending else v
    B = int(batch.max()) + 1
    if not stable and B < (1 << 20) and bool(torch.isfinite(v).all()):
        lo = torch.full((B,), float("inf"), dtype=v.dtype, device=v.device).scatter_reduce_(0, batch, v, "amin")
        hi = torch.full((B,), float("-inf"), dtype=v.dtype, device=v.device).scatter_reduce_(0, batch, v, "amax")
        span = (hi - lo).clamp(min=1e-300)
        key = 2.0 * batch.to(v.dtype) + (v - lo[batch]) / span[batch]
        return torch.sort(key)[1]
    idx = torch.sort(values, descending=descending, stable=True)[1]
    idx2 = torch.sort(batch[idx], stable=True)[1]
    return idx[idx2]


def seg_cumsum(x_sorted: torch.Tensor, batch_sorted: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Inclusive cumulative sum restarted at each graph (``batch_sorted`` must be grouped)."""
    c = torch.cumsum(x_sorted, 0)
    tot = seg_sum(x_sorted, batch_sorted, num_graphs)
    before = torch.cumsum(tot, 0) - tot  # sum of all previous graphs
    return c - before[batch_sorted]


def seg_ptr(batch: torch.Tensor, num_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.bincount(batch, minlength=num_graphs)
    ptr = torch.zeros(num_graphs + 1, dtype=torch.long, device=batch.device)
    ptr[1:] = torch.cumsum(counts, 0)
    return ptr, counts


# ----------------------------------------------------------------------------- projections
def project_capped_simplex(y: torch.Tensor, k: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Exact Euclidean projection of each graph's ``y`` onto ``{0 <= x <= 1, sum x <= k_g}``.

    ``x = clip(y - theta_g, 0, 1)`` with ``theta_g = 0`` when ``sum clip(y, 0, 1) <= k_g``,
    else the root of ``f(theta) = sum clip(y - theta, 0, 1) = k_g``. ``f`` is piecewise linear
    with breakpoints ``{y_i, y_i - 1}``: sort them (per graph), evaluate ``f`` at every
    breakpoint with cumulative sums and interpolate linearly inside the bracketing segment.
    """
    k = k.to(y.dtype)
    clipped = y.clamp(0, 1)
    need = seg_sum(clipped, batch, num_graphs) > k
    if not bool(need.any()):
        return clipped
    n = y.numel()
    pts = torch.cat([y, y - 1])
    pb = torch.cat([batch, batch])
    is_top = torch.cat([torch.ones(n, dtype=y.dtype, device=y.device), torch.zeros(n, dtype=y.dtype, device=y.device)])
    yy = torch.cat([y, y])
    order = seg_sort(pts, pb, descending=True)
    b, bb, top, ys = pts[order], pb[order], is_top[order], yy[order]
    A = seg_cumsum(top, bb, num_graphs)
    Sat = seg_cumsum(1 - top, bb, num_graphs)
    Sy = seg_cumsum(top * ys, bb, num_graphs) - seg_cumsum((1 - top) * ys, bb, num_graphs)
    f = Sy - b * (A - Sat) + Sat
    kb = k[bb]
    j = seg_sum((f < kb).to(torch.long), bb, num_graphs)  # first index with f >= k (per graph)
    ptr, counts = seg_ptr(bb, num_graphs)
    j = torch.minimum(j, (counts - 1).clamp(min=0)).clamp(min=1)
    gi = (ptr[:-1] + j).clamp(max=max(2 * n - 1, 0))
    gp = gi - 1
    fj, fp, bj, bp = f[gi], f[gp], b[gi], b[gp]
    denom = fj - fp
    safe = denom.abs() > 0
    theta = torch.where(safe, bj + (fj - k) * (bp - bj) / torch.where(safe, denom, torch.ones_like(denom)), bj)
    theta = theta.clamp(min=0)
    proj = (y - theta[batch]).clamp(0, 1)
    out = torch.where(need[batch], proj, clipped)
    return torch.where((k <= 0)[batch], torch.zeros_like(out), out)


def project_diag_simplex(y: torch.Tensor, eps: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Algorithm 1 of the paper: projection of ``y`` onto ``{x : x * eps in simplex}`` per graph.

    Coordinates with ``eps_j = 0`` are unconstrained (``x_j = y_j``). For the others, sort by
    ``y_j / eps_j`` (non-increasing), ``b_j = y_j + eps_j (1 - sum_{i<=j} eps_i y_i) /
    sum_{i<=j} eps_i^2``, ``l = max{j : b_j > 0}``, ``alpha`` the same fraction at ``l`` and
    ``x_j = max(y_j + alpha eps_j, 0)``.
    """
    pos = eps > 0
    idx = torch.nonzero(pos).flatten()
    out = y.clone()
    if idx.numel() == 0:
        return out
    yp, ep, bp = y[idx], eps[idx], batch[idx]
    order = seg_sort(yp / ep, bp, descending=True)
    ys, es, bs = yp[order], ep[order], bp[order]
    s_ey = seg_cumsum(es * ys, bs, num_graphs)
    s_ee = seg_cumsum(es * es, bs, num_graphs)
    bvals = ys + es * (1 - s_ey) / s_ee
    ptr, counts = seg_ptr(bs, num_graphs)
    rank = torch.arange(bs.numel(), device=y.device) - ptr[bs]
    ell = seg_max(torch.where(bvals > 0, rank, torch.full_like(rank, -1)).to(y.dtype), bs, num_graphs, -1.0).long()
    ell = ell.clamp(min=0)  # b_1 > 0 always holds (b_1 = 1 / eps_1 > 0)
    gi = (ptr[:-1] + ell).clamp(max=bs.numel() - 1)
    alpha = (1 - s_ey[gi]) / s_ee[gi]
    out[idx] = (yp + alpha[bp] * ep).clamp(min=0)
    return out


def lipschitz_operator_norm(edge_index: torch.Tensor, num_nodes: int, batch: torch.Tensor, num_graphs: int,
                            dtype=torch.float64) -> torch.Tensor:
    """Per-edge upper bound on ``||A||^2`` of the edge's graph (``A``: rows ``e_u - e_v``).

    ``||A||^2 = lambda_max(A^T A) <= max over edges of (deg_u + deg_v)`` (Anderson-Morley),
    with degrees counting constraint rows in both directions.
    """
    src, dst = edge_index
    deg = torch.zeros(num_nodes, dtype=dtype, device=edge_index.device)
    one = torch.ones(src.numel(), dtype=dtype, device=edge_index.device)
    deg.index_add_(0, src, one).index_add_(0, dst, one)
    per_edge = deg[src] + deg[dst]
    L = seg_max(per_edge, batch[src], num_graphs, 0.0)
    return L.clamp(min=1.0)[batch[src]]


def project_lipschitz(y: torch.Tensor, edge_index: torch.Tensor, cost: torch.Tensor, batch: torch.Tensor,
                      num_graphs: int, *, num_iters: int = 200, tol: float = 1e-9, mu0: torch.Tensor | None = None,
                      step: torch.Tensor | None = None, check_every: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection of ``y`` onto ``T = {t : t_u - t_v <= c_e for every edge e = (u, v)}``.

    Dual FISTA (Beck & Teboulle 2014): ``t = y - A^T mu`` with multipliers ``mu >= 0`` per
    edge minimising ``1/2 ||y - A^T mu||^2 + c . mu``; the proximal step is the one-sided
    soft-threshold ``mu <- max(0, mu - (c - (t_u - t_v)) / L)``, and for an undirected edge
    the pair of opposite multipliers is exactly the two-sided soft-threshold by ``c``. Stops
    after ``num_iters`` or when the largest violation is below ``tol`` and the duality gap
    ``sum_e mu_e (c_e - t_u + t_v)`` below ``tol**2`` (checked every ``check_every`` iterations). Returns ``(t, mu)``; pass ``mu`` back as ``mu0`` to warm-start.
    """
    src, dst = edge_index
    E = src.numel()
    if E == 0:
        return y.clone(), torch.zeros(0, dtype=y.dtype, device=y.device)
    if step is None:
        step = 1.0 / lipschitz_operator_norm(edge_index, y.numel(), batch, num_graphs, y.dtype)
    mu = torch.zeros(E, dtype=y.dtype, device=y.device) if mu0 is None else mu0.clone()
    z, tk = mu.clone(), 1.0

    def primal(m):
        at = torch.zeros_like(y).index_add_(0, src, m).index_add_(0, dst, -m)
        return y - at

    for it in range(num_iters):
        t = primal(z)
        mu_new = (z - step * (cost - (t[src] - t[dst]))).clamp(min=0)
        tk_new = (1 + (1 + 4 * tk * tk) ** 0.5) / 2
        z = mu_new + ((tk - 1) / tk_new) * (mu_new - mu)
        mu, tk = mu_new, tk_new
        if check_every and (it + 1) % check_every == 0:
            t = primal(mu)
            slack = cost - (t[src] - t[dst])
            # feasibility and the duality gap sum mu_e * slack_e (both zero at the projection)
            if float((-slack).max()) <= tol and float((mu * slack).abs().sum()) <= tol * tol:
                break
    return primal(mu), mu


# ----------------------------------------------------------------------------- psi
def psi(eps, t, zeta, rho0, batch, num_graphs: int, lam: float) -> torch.Tensor:
    """Per-graph ``psi(eps, t, zeta)`` (``zeta [num_graphs]``)."""
    r = (t + zeta[batch]).clamp(min=0)
    return seg_sum(t * rho0 - eps * r * r / (2 * lam), batch, num_graphs) + zeta


def psi_grad(eps, t, zeta, rho0, batch, num_graphs: int, lam: float):
    """``(d psi/d eps, d psi/d t, d psi/d zeta)``; ``d psi/d t = rho0 - rho1``."""
    r = (t + zeta[batch]).clamp(min=0)
    rho1 = eps * r / lam
    return -r * r / (2 * lam), rho0 - rho1, 1 - seg_sum(rho1, batch, num_graphs)


def best_zeta(eps, t, batch, num_graphs: int, lam: float) -> torch.Tensor:
    """Exact ``argmax_zeta psi(eps, t, zeta)``: the root of ``sum_v eps_v (t_v + zeta)_+ = lam``.

    Piecewise linear and non-decreasing in ``zeta``; solved by sorting ``-t`` per graph.
    Graphs with ``sum eps = 0`` get ``+inf`` (psi unbounded in zeta).
    """
    # with s = sorted t (descending) over nodes with eps > 0: on the segment where the top j
    # are active, sum_{i<=j} eps_i (t_i + zeta) = lam -> zeta = (lam - sum eps t) / sum eps
    w = torch.where(eps > 0, eps, torch.zeros_like(eps))
    order = seg_sort(t, batch, descending=True)
    ts, ws, bs = t[order], w[order], batch[order]
    se = seg_cumsum(ws, bs, num_graphs)
    st = seg_cumsum(ws * ts, bs, num_graphs)
    cand = (lam - st) / se.clamp(min=1e-300)
    # candidate j valid when t_j + zeta >= 0 (node j active) -> the largest valid j
    valid = (ts + cand >= -1e-15 * (1 + ts.abs())) & (se > 0)
    ptr, _ = seg_ptr(bs, num_graphs)
    rank = torch.arange(bs.numel(), device=t.device) - ptr[bs]
    jbest = seg_max(torch.where(valid, rank, torch.full_like(rank, -1)).to(t.dtype), bs, num_graphs, -1.0).long()
    out = torch.full((num_graphs,), float("inf"), dtype=t.dtype, device=t.device)
    ok = jbest >= 0
    gi = (ptr[:-1] + jbest.clamp(min=0)).clamp(max=max(bs.numel() - 1, 0))
    if bs.numel():
        out = torch.where(ok, cand[gi], out)
    return out


# ----------------------------------------------------------------------------- dense per-graph helpers
def to_dense_blocks(batch: torch.Tensor, num_graphs: int):
    """``(ptr, counts, pos, nmax)``: node -> (graph, position) for padded ``[B, nmax]`` blocks."""
    order = torch.sort(batch, stable=True)[1]
    ptr, counts = seg_ptr(batch, num_graphs)
    pos = torch.empty_like(batch)
    pos[order] = torch.arange(batch.numel(), device=batch.device) - ptr[batch[order]]
    nmax = int(counts.max()) if num_graphs else 0
    return ptr, counts, pos, nmax


def shortest_paths_dense(edge_index, cost, batch, pos, num_graphs: int, nmax: int, dtype=torch.float64):
    """All-pairs directed shortest-path lengths ``D [B, nmax, nmax]`` (Floyd-Warshall, batched).

    ``D[g, a, b]`` is the cheapest cost of moving mass from node at position ``a`` to ``b``;
    ``inf`` when unreachable or padding.
    """
    D = torch.full((num_graphs, nmax, nmax), float("inf"), dtype=dtype, device=batch.device)
    ar = torch.arange(nmax, device=batch.device)
    D[:, ar, ar] = 0.0
    if edge_index.numel():
        src, dst = edge_index
        g = batch[src]
        flat = D.view(-1)
        lin = g * nmax * nmax + pos[src] * nmax + pos[dst]
        flat.scatter_reduce_(0, lin, cost.to(dtype), reduce="amin", include_self=True)
    for m in range(nmax):
        D = torch.minimum(D, D[:, :, m:m + 1] + D[:, m:m + 1, :])
    return D


def _project_rows_simplex(Y: torch.Tensor, r: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Project each row of ``Y [..., n]`` onto ``{x >= 0, x = 0 off allowed, sum x = r}``."""
    neg = torch.finfo(Y.dtype).min / 4
    Ym = torch.where(allowed, Y, torch.full_like(Y, neg))
    s = torch.sort(Ym, dim=-1, descending=True)[0]
    cs = torch.cumsum(s, -1) - r.unsqueeze(-1)
    j = torch.arange(1, Y.shape[-1] + 1, device=Y.device, dtype=Y.dtype)
    cond = (s - cs / j > 0) & (s > neg / 2)
    rho = cond.sum(-1, keepdim=True).clamp(min=1)
    theta = cs.gather(-1, rho - 1) / rho.to(Y.dtype)
    return torch.where(allowed, (Y - theta).clamp(min=0), torch.zeros_like(Y))


def support_cost_dense(D: torch.Tensor, rho0: torch.Tensor, support: torch.Tensor, lam: float, *,
                       max_iters: int = 3000, tol: float = 1e-9, check_every: int = 20,
                       pi0: torch.Tensor | None = None, return_plan: bool = False):
    """Exact objective ``min_{rho1 on S} W(rho0, rho1) + lam/2 ||rho1||^2`` of supports.

    ``D [P, n, n]`` shortest paths, ``rho0 [P, n]``, ``support [P, n]`` bool. On a graph with
    positive edge costs ``W`` is the transport cost with the shortest-path metric, so the
    problem is the QP ``min_pi <D, pi> + lam/2 ||pi^T 1||^2`` over plans ``pi >= 0`` with row
    sums ``rho0`` and columns in ``S``. Solved by FISTA (with adaptive restart) on ``pi``
    (columns restricted to the support); the dual
    ``g(tau) = sum_u rho0_u min_s (D_us + tau_s) - sum_s (tau_s)_+^2 / (2 lam)`` at
    ``tau = lam * m`` certifies the gap. A problem stops when ``f - g <= tol * f``; the
    iterations then continue on the unfinished problems only.

    ``pi0 [P, n, n]`` warm-starts the plan (projected onto the feasible set first).
    Returns ``(cost [P], rho1 [P, n], gap [P])`` (and the plan ``[P, n, n]`` if
    ``return_plan``); ``cost`` is the value of a feasible plan, so ``cost - gap`` and ``cost``
    bracket the optimum; ``cost = inf`` where a node with ``rho0 > 0`` cannot reach the support.
    """
    P, n, _ = D.shape
    kmax = max(int(support.sum(-1).max()) if P else 0, 1)
    cols = torch.sort((~support).to(torch.int8), dim=-1, stable=True)[1][:, :kmax]  # support columns first
    colv = support.gather(1, cols)
    Dc = D.gather(2, cols.unsqueeze(1).expand(P, n, kmax))
    allowed = colv.unsqueeze(1) & torch.isfinite(Dc)
    r = rho0.clamp(min=0)
    feasible = (allowed.any(-1) | (r <= 0)).all(-1)
    Dm = torch.where(allowed, Dc, torch.zeros_like(Dc))
    big = torch.where(allowed, Dc, torch.full_like(Dc, float("inf")))
    near = big.argmin(-1)
    pi = torch.zeros_like(Dc).scatter_(-1, near.unsqueeze(-1), r.unsqueeze(-1))
    pi = torch.where(allowed, pi, torch.zeros_like(pi))
    if pi0 is not None:
        warm = _project_rows_simplex(pi0.gather(2, cols.unsqueeze(1).expand(P, n, kmax)).to(D.dtype), r, allowed)
        pi = torch.where(allowed.any(-1, keepdim=True), warm, pi)
    rows = (r > 0).sum(-1).clamp(min=1).to(D.dtype)

    def fval(p, Dm_):
        m = p.sum(1)
        return (Dm_ * p).sum((1, 2)) + 0.5 * lam * (m * m).sum(-1), m

    def gval(m, Dm_, al, r_):
        tau = lam * m
        val = torch.where(al, Dm_ + tau.unsqueeze(1), torch.full_like(Dm_, float("inf"))).amin(-1)
        val = torch.where(r_ > 0, val, torch.zeros_like(val))
        return (r_ * val).sum(-1) - (tau.clamp(min=0) ** 2).sum(-1) / (2 * lam)

    idx = torch.nonzero(feasible).flatten()
    it = 0
    while idx.numel() and it < max_iters:
        # work on the unfinished problems only
        p_a, D_a, al_a, r_a = pi[idx], Dm[idx], allowed[idx], r[idx]
        step = (1.0 / (lam * rows[idx])).view(-1, 1, 1)
        z, tk = p_a.clone(), torch.ones(idx.numel(), 1, 1, dtype=D.dtype, device=D.device)
        f_prev = fval(p_a, D_a)[0]
        for _ in range(check_every):
            m = z.sum(1)
            new = _project_rows_simplex(z - step * (D_a + lam * m.unsqueeze(1)), r_a, al_a)
            tk_new = (1 + torch.sqrt(1 + 4 * tk * tk)) / 2
            f_new = fval(new, D_a)[0]
            restart = (f_new > f_prev).view(-1, 1, 1)  # adaptive restart (O'Donoghue & Candes)
            mom = torch.where(restart, torch.zeros_like(tk), (tk - 1) / tk_new)
            z = new + mom * (new - p_a)
            tk = torch.where(restart, torch.ones_like(tk_new), tk_new)
            p_a, f_prev = new, f_new
            it += 1
        pi[idx] = p_a
        f, m = fval(p_a, D_a)
        gap = f - gval(m, D_a, al_a, r_a)
        idx = idx[gap > tol * f.clamp(min=1e-12)]
    f, mc = fval(pi, Dm)
    gap = f - gval(mc, Dm, allowed, r)
    cost = torch.where(feasible, f, torch.full_like(f, float("inf")))
    m = torch.zeros(P, n, dtype=D.dtype, device=D.device).scatter_add_(1, cols, torch.where(colv, mc, torch.zeros_like(mc)))
    if return_plan:
        full = torch.zeros(P, n, n, dtype=D.dtype, device=D.device)
        full.scatter_add_(2, cols.unsqueeze(1).expand(P, n, kmax), torch.where(allowed, pi, torch.zeros_like(pi)))
        return cost, m, gap, full
    return cost, m, gap
