"""Plain-torch reference kernels: the Euclidean projections of OT graph compression (Garg &
Jaakkola, NeurIPS 2019), batched over graphs, and the segment helpers they share.

A node vector ``y [N]`` comes with ``batch [N]`` (compact graph ids ``0 .. B-1``, any order)
and ``num_graphs`` ``B``. No input validation here (the ops in :mod:`tgrep.library.ot` do it).
"""
from __future__ import annotations

import torch
from torch_geometric.utils import scatter


# ----------------------------------------------------------------------------- segment helpers
def seg_sum(x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    return scatter(x, batch, 0, dim_size=num_graphs, reduce="sum")


def seg_max(x: torch.Tensor, batch: torch.Tensor, num_graphs: int, init: float = float("-inf")) -> torch.Tensor:
    """Per-graph maximum, ``init`` for graphs without entries (and a floor for the others)."""
    out = torch.full((num_graphs,), init, dtype=x.dtype, device=x.device)
    return out.scatter_reduce(0, batch, x, reduce="amax", include_self=True)


def seg_ptr(batch: torch.Tensor, num_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.bincount(batch, minlength=num_graphs)
    ptr = torch.zeros(num_graphs + 1, dtype=torch.long, device=batch.device)
    ptr[1:] = torch.cumsum(counts, 0)
    return ptr, counts


def seg_sort(values: torch.Tensor, batch: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """Permutation putting graphs contiguous (by id) and ``values`` sorted inside each graph;
    ties keep their index order (two stable sorts)."""
    idx = torch.sort(values, descending=descending, stable=True)[1]
    return idx[torch.sort(batch[idx], stable=True)[1]]


def seg_cumsum(x_sorted: torch.Tensor, batch_sorted: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Inclusive cumulative sum restarted at each graph (``batch_sorted`` must be grouped)."""
    c = torch.cumsum(x_sorted, 0)
    tot = seg_sum(x_sorted, batch_sorted, num_graphs)
    return c - (torch.cumsum(tot, 0) - tot)[batch_sorted]


def seg_rank(batch_sorted: torch.Tensor, num_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rank within its graph, ptr)`` of each entry of a grouped ``batch_sorted``."""
    ptr, _ = seg_ptr(batch_sorted, num_graphs)
    return torch.arange(batch_sorted.numel(), device=batch_sorted.device) - ptr[batch_sorted], ptr


# ----------------------------------------------------------------------------- capped simplex
def capped_simplex_theta(y: torch.Tensor, k: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """The per-graph shift ``theta_g >= 0`` of the projection onto ``{0 <= x <= 1, sum x <= k_g}``.

    ``theta_g = 0`` when ``sum clip(y, 0, 1) <= k_g``, else the root of ``f(theta) = sum
    clip(y - theta, 0, 1) = k_g``: ``f`` is piecewise linear with breakpoints ``{y_i, y_i - 1}``;
    sort them (per graph), evaluate ``f`` at each with cumulative sums and interpolate inside
    the bracketing segment.
    """
    k = k.to(y.dtype)
    n = y.numel()
    pts = torch.cat([y, y - 1])
    pb = torch.cat([batch, batch])
    top = torch.cat([torch.ones_like(y), torch.zeros_like(y)])
    yy = torch.cat([y, y])
    order = seg_sort(pts, pb, descending=True)
    b, bb, tp, ys = pts[order], pb[order], top[order], yy[order]
    A = seg_cumsum(tp, bb, num_graphs)
    Sat = seg_cumsum(1 - tp, bb, num_graphs)
    Sy = seg_cumsum(tp * ys - (1 - tp) * ys, bb, num_graphs)
    f = Sy - b * (A - Sat) + Sat
    kb = k[bb]
    ptr, counts = seg_ptr(bb, num_graphs)
    j = seg_sum((f < kb).to(torch.long), bb, num_graphs)  # first index with f >= k (per graph)
    j = torch.minimum(j, (counts - 1).clamp(min=0)).clamp(min=1)
    gi = (ptr[:-1] + j).clamp(max=max(2 * n - 1, 0))
    gp = gi - 1
    fj, fp, bj, bp = f[gi], f[gp], b[gi], b[gp]
    denom = fj - fp
    safe = denom.abs() > 0
    theta = torch.where(safe, bj + (fj - k) * (bp - bj) / torch.where(safe, denom, torch.ones_like(denom)), bj)
    need = seg_sum(y.clamp(0, 1), batch, num_graphs) > k
    return torch.where(need, theta.clamp(min=0), torch.zeros_like(theta))


def project_capped_simplex(y: torch.Tensor, k: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Exact Euclidean projection of each graph's ``y`` onto ``{0 <= x <= 1, sum x <= k_g}``:
    ``clip(y - theta_g, 0, 1)`` (zero where ``k_g <= 0``)."""
    if y.numel() == 0:
        return y.clone()
    theta = capped_simplex_theta(y, k, batch, num_graphs)
    out = (y - theta[batch]).clamp(0, 1)
    return torch.where((k <= 0)[batch], torch.zeros_like(out), out)


# ----------------------------------------------------------------------------- Algorithm 1
def project_diag_simplex(y: torch.Tensor, eps: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Algorithm 1 of the paper: projection of ``y`` onto ``{x : x * eps in simplex}`` per graph.

    Coordinates with ``eps_j = 0`` are unconstrained (``x_j = y_j``). For the others, sort by
    ``y_j / eps_j`` (non-increasing), ``b_j = y_j + eps_j (1 - sum_{i<=j} eps_i y_i) /
    sum_{i<=j} eps_i^2``, ``l = max{j : b_j > 0}``, ``alpha`` the same fraction at ``l`` and
    ``x_j = max(y_j + alpha eps_j, 0)``.
    """
    alpha = diag_simplex_alpha(y, eps, batch, num_graphs)
    return torch.where(eps > 0, (y + alpha[batch] * eps).clamp(min=0), y)


def diag_simplex_alpha(y, eps, batch, num_graphs):
    """Per-graph ``alpha`` of Algorithm 1 (``0`` on graphs without positive ``eps``)."""
    pos = eps > 0
    safe = torch.where(pos, eps, torch.ones_like(eps))
    key = torch.where(pos, y / safe, torch.full_like(y, float("-inf")))
    order = seg_sort(key, batch, descending=True)
    ys, es, bs = y[order], torch.where(pos, eps, torch.zeros_like(eps))[order], batch[order]
    s_ey = seg_cumsum(es * ys, bs, num_graphs)
    s_ee = seg_cumsum(es * es, bs, num_graphs)
    ok = es > 0
    bvals = ys + es * (1 - s_ey) / torch.where(ok, s_ee, torch.ones_like(s_ee))
    rank, ptr = seg_rank(bs, num_graphs)
    ell = seg_max(torch.where(ok & (bvals > 0), rank, torch.full_like(rank, -1)).to(y.dtype), bs, num_graphs, -1.0)
    ell = ell.long().clamp(min=0)  # b_1 = 1 / eps_1 > 0 always holds
    gi = (ptr[:-1] + ell).clamp(max=max(bs.numel() - 1, 0))
    if bs.numel() == 0:
        return torch.zeros(num_graphs, dtype=y.dtype, device=y.device)
    den = s_ee[gi]
    return torch.where(den > 0, (1 - s_ey[gi]) / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


# ----------------------------------------------------------------------------- Lipschitz set T
def lipschitz_operator_norm(edge_index: torch.Tensor, num_nodes: int, batch: torch.Tensor, num_graphs: int,
                            dtype=torch.float64) -> torch.Tensor:
    """Per-edge upper bound on ``||A||^2`` of the edge's graph (``A``: rows ``e_u - e_v``):
    ``lambda_max(A^T A) <= max over edges of (deg_u + deg_v)`` (Anderson-Morley)."""
    src, dst = edge_index
    one = torch.ones(src.numel(), dtype=dtype, device=edge_index.device)
    deg = scatter(one, src, 0, dim_size=num_nodes) + scatter(one, dst, 0, dim_size=num_nodes)
    L = seg_max(deg[src] + deg[dst], batch[src], num_graphs, 0.0)
    return L.clamp(min=1.0)[batch[src]]


def incidence_t(m: torch.Tensor, edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``A^T m``: ``+m_e`` at ``u``, ``-m_e`` at ``v`` for every edge ``e = (u, v)``."""
    return scatter(m, edge_index[0], 0, dim_size=num_nodes) - scatter(m, edge_index[1], 0, dim_size=num_nodes)


def project_lipschitz(y: torch.Tensor, edge_index: torch.Tensor, cost: torch.Tensor, batch: torch.Tensor,
                      num_graphs: int, *, num_iters: int = 200, tol: float = 1e-9, mu0: torch.Tensor | None = None,
                      step: torch.Tensor | None = None, check_every: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection of ``y`` onto ``T = {t : t_u - t_v <= c_e for every edge e = (u, v)}``.

    Dual FISTA (Beck & Teboulle 2014): ``t = y - A^T mu`` with multipliers ``mu >= 0`` per
    edge minimising ``1/2 ||y - A^T mu||^2 + c . mu``; the proximal step is the one-sided
    soft-threshold ``mu <- max(0, mu - (c - (t_u - t_v)) / L)`` (for an undirected edge the
    two opposite multipliers make the two-sided soft-threshold by ``c``). Stops after
    ``num_iters`` or when the largest violation is ``<= tol`` and the duality gap
    ``sum_e mu_e (c_e - t_u + t_v)`` ``<= tol**2`` (checked every ``check_every`` iterations;
    ``0`` never checks, so no host sync). Returns ``(t, mu)``; pass ``mu`` back as ``mu0``.
    """
    src, dst = edge_index
    E, N = src.numel(), y.numel()
    if E == 0:
        return y.clone(), torch.zeros(0, dtype=y.dtype, device=y.device)
    if step is None:
        step = 1.0 / lipschitz_operator_norm(edge_index, N, batch, num_graphs, y.dtype)
    mu = torch.zeros(E, dtype=y.dtype, device=y.device) if mu0 is None else mu0.to(y.dtype)
    z, tk = mu, 1.0
    for it in range(num_iters):
        t = y - incidence_t(z, edge_index, N)
        mu_new = (z - step * (cost - (t[src] - t[dst]))).clamp(min=0)
        tk_new = (1 + (1 + 4 * tk * tk) ** 0.5) / 2
        z = mu_new + ((tk - 1) / tk_new) * (mu_new - mu)
        mu, tk = mu_new, tk_new
        if check_every and (it + 1) % check_every == 0:
            t = y - incidence_t(mu, edge_index, N)
            slack = cost - (t[src] - t[dst])
            if float((-slack).max()) <= tol and float((mu * slack).abs().sum()) <= tol * tol:
                break
    return y - incidence_t(mu, edge_index, N), mu
