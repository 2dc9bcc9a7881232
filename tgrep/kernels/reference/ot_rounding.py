"""Plain-torch reference of the rounding of OT graph compression (Garg & Jaakkola, NeurIPS
2019): from the relaxed support weights to a support of ``k`` nodes per graph, the exact
objective of a support (dense, per graph), the coverage repair of directed graphs and the
swap refinement. ``batch`` holds compact, sorted graph ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from .ot_projections import seg_max, seg_ptr
from .ot_solver import topk_mask


class Graphs(NamedTuple):
    """A batch of compression problems: edges, positive costs, priors, graph ids and budgets."""
    edge_index: torch.Tensor
    cost: torch.Tensor      # [E] float64
    rho0: torch.Tensor      # [N] float64, normalised per graph
    batch: torch.Tensor     # [N] compact, sorted
    k: torch.Tensor         # [B] int64

    @property
    def num_graphs(self) -> int:
        return self.k.numel()

    @property
    def counts(self) -> torch.Tensor:
        return torch.bincount(self.batch, minlength=self.num_graphs)


@dataclass(frozen=True)
class SwapSearch:
    """Settings of the swap refinement: ``width`` candidates per side, ``rounds`` rounds at
    most, graphs of ``<= max_nodes`` nodes, the regulariser ``lam``."""
    width: int
    rounds: int
    max_nodes: int
    lam: float


# ----------------------------------------------------------------------------- dense blocks
def to_dense_blocks(batch: torch.Tensor, num_graphs: int):
    """``(ptr, counts, pos, nmax)``: node -> (graph, position) for padded ``[B, nmax]`` blocks."""
    order = torch.sort(batch, stable=True)[1]
    ptr, counts = seg_ptr(batch, num_graphs)
    pos = torch.empty_like(batch)
    pos[order] = torch.arange(batch.numel(), device=batch.device) - ptr[batch[order]]
    nmax = int(counts.max()) if num_graphs else 0
    return ptr, counts, pos, nmax


def shortest_paths_dense(edge_index, cost, batch, pos, num_graphs: int, nmax: int, dtype=torch.float64):
    """All-pairs directed shortest-path lengths ``D [B, nmax, nmax]`` (Floyd-Warshall, batched):
    ``D[g, a, b]`` the cheapest cost of moving mass from position ``a`` to ``b``; ``inf`` when
    unreachable or padding."""
    D = torch.full((num_graphs, nmax, nmax), float("inf"), dtype=dtype, device=batch.device)
    ar = torch.arange(nmax, device=batch.device)
    D[:, ar, ar] = 0.0
    if edge_index.numel():
        src, dst = edge_index
        lin = batch[src] * nmax * nmax + pos[src] * nmax + pos[dst]
        D.view(-1).scatter_reduce_(0, lin, cost.to(dtype), reduce="amin", include_self=True)
    for m in range(nmax):
        D = torch.minimum(D, D[:, :, m:m + 1] + D[:, m:m + 1, :])
    return D


def dense_buckets(gids: torch.Tensor, counts: torch.Tensor) -> list:
    """Split graph ids into buckets of similar size (bounded padding for Floyd-Warshall)."""
    n = counts[gids]
    edges = [0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 1 << 30]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = gids[(n > lo) & (n <= hi)]
        if sel.numel():
            out.append(sel)
    return out


class Dense:
    """Graphs ``gids`` of ``g`` as padded dense blocks: shortest paths ``D``, priors, node ids
    (``-1`` = padding)."""

    def __init__(self, g: Graphs, gids: torch.Tensor, pos: torch.Tensor, counts: torch.Tensor):
        device = g.batch.device
        R = gids.numel()
        nmax = int(counts[gids].max()) if R else 0
        gmap = torch.full((counts.numel(),), -1, dtype=torch.long, device=device)
        gmap[gids] = torch.arange(R, device=device)
        nodes = torch.nonzero(gmap[g.batch] >= 0).flatten()
        r = gmap[g.batch[nodes]]
        self.node = torch.full((R, nmax), -1, dtype=torch.long, device=device)
        self.node[r, pos[nodes]] = nodes
        self.valid = self.node >= 0
        self.rho0 = torch.zeros(R, nmax, dtype=torch.float64, device=device)
        self.rho0[r, pos[nodes]] = g.rho0[nodes].to(torch.float64)
        keep = gmap[g.batch[g.edge_index[0]]] >= 0
        loc = torch.zeros_like(g.batch)
        loc[nodes] = r
        self.D = shortest_paths_dense(g.edge_index[:, keep], g.cost[keep], loc, pos, R, nmax)

    def gather(self, x_nodes, fill=0.0):
        out = torch.full(self.node.shape, fill, dtype=x_nodes.dtype, device=x_nodes.device)
        out[self.valid] = x_nodes[self.node[self.valid]]
        return out


# ----------------------------------------------------------------------------- exact support cost
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

    ``D [P, n, n]`` shortest paths, ``rho0 [P, n]``, ``support [P, n]`` bool. With positive
    edge costs ``W`` is the transport cost under the shortest-path metric, so the problem is
    the QP ``min_pi <D, pi> + lam/2 ||pi^T 1||^2`` over plans ``pi >= 0`` with row sums
    ``rho0`` and columns in ``S``, solved by FISTA with adaptive restart; the dual
    ``g(tau) = sum_u rho0_u min_s (D_us + tau_s) - sum_s (tau_s)_+^2 / (2 lam)`` at
    ``tau = lam * m`` certifies the gap. A problem stops when ``f - g <= tol * f``.

    ``pi0 [P, n, n]`` warm-starts the plan (projected onto the feasible set first). Returns
    ``(cost [P], rho1 [P, n], gap [P], plan [P, n, n] or [0])``; ``cost`` is the value of a
    feasible plan (``cost - gap <= optimum <= cost``); ``inf`` where a node with mass cannot
    reach the support.
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
    near = torch.where(allowed, Dc, torch.full_like(Dc, float("inf"))).argmin(-1)
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
    plan = torch.zeros(0, dtype=D.dtype, device=D.device)
    if return_plan:
        plan = torch.zeros(P, n, n, dtype=D.dtype, device=D.device)
        plan.scatter_add_(2, cols.unsqueeze(1).expand(P, n, kmax), torch.where(allowed, pi, torch.zeros_like(pi)))
    return cost, m, gap, plan


SupportCost = Callable  # (D, rho0, support, lam, max_iters, tol, check_every, pi0, return_plan) -> 4 tensors


def support_cost_blocks(g: Graphs, mask: torch.Tensor, lam: float, tol: float, max_iters: int, solve: SupportCost):
    """Exact objective of ``mask`` on every graph of ``g`` and the optimal ``rho1 [N]``."""
    B = g.num_graphs
    _, counts, pos, _ = to_dense_blocks(g.batch, B)
    out = torch.zeros(B, dtype=torch.float64, device=g.batch.device)
    rho1 = torch.zeros(g.batch.numel(), dtype=torch.float64, device=g.batch.device)
    for gids in dense_buckets(torch.nonzero(counts > 0).flatten(), counts):
        dn = Dense(g, gids, pos, counts)
        c, m, _, _ = solve(dn.D, dn.rho0, dn.gather(mask, False) & dn.valid, lam, max_iters, tol, 20, None, False)
        out[gids] = c
        rho1[dn.node[dn.valid]] = m[dn.valid]
    return out, rho1


# ----------------------------------------------------------------------------- nearest kept node
def nearest_kept(edge_index: torch.Tensor, cost: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """For every node, the kept node its mass reaches most cheaply (``-1`` if none): multi-source
    Bellman-Ford on the reversed edges (mass moves ``u -> v`` at ``c_uv``), all graphs at once;
    kept nodes map to themselves."""
    N = mask.numel()
    dist = torch.where(mask, torch.zeros(N, dtype=cost.dtype, device=cost.device),
                       torch.full((N,), float("inf"), dtype=cost.dtype, device=cost.device))
    lab = torch.where(mask, torch.arange(N, device=mask.device), torch.full((N,), -1, device=mask.device))
    src, dst = edge_index
    for _ in range(N):
        cand = cost + dist[dst]
        new = dist.scatter_reduce(0, src, cand, reduce="amin", include_self=True)
        better = new < dist
        if not bool(better.any()):
            break
        hit = (cand == new[src]) & better[src]
        lab = lab.clone()
        lab[src[hit]] = lab[dst[hit]]
        dist = new
    return lab


def _reachability(edge_index: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """``R [n, n]`` bool: ``R[a, b]`` iff position ``b`` is reachable from ``a`` (``nodes`` are one
    graph's node ids; transitive closure by repeated squaring)."""
    n = nodes.numel()
    loc = torch.full((int(nodes.max()) + 1,), -1, dtype=torch.long, device=nodes.device)
    loc[nodes] = torch.arange(n, device=nodes.device)
    inside = (edge_index[0] <= nodes.max()) & (edge_index[0] >= nodes.min())
    ei = edge_index[:, inside]
    a, b = loc[ei[0]], loc[ei[1]]
    ok = (a >= 0) & (b >= 0)
    R = torch.eye(n, dtype=torch.float32, device=nodes.device)
    R[a[ok], b[ok]] = 1.0
    for _ in range(max(1, (n - 1).bit_length())):
        R = ((R @ R) > 0).float()
    return R > 0


def repair_coverage(g: Graphs, mask: torch.Tensor, score: torch.Tensor, max_nodes: int = 4096) -> torch.Tensor:
    """Make every graph's support reach all of its mass where ``k`` nodes can.

    A support has finite cost iff every node with mass reaches a kept node along the
    (directed) edges. Top-k of the relaxation can miss sinks that carry mass (a directed
    graph's terminal components, an undirected graph's components), and one swap cannot
    repair two such misses. For every graph with uncovered mass: while some mass node ``u``
    is uncovered, take the one with the fewest reachable nodes, add the node of its reach
    set that covers the most uncovered mass (then the best score), and drop the
    lowest-scored kept node whose removal uncovers nothing; stop when no node can be
    dropped (no finite support of size ``k`` found). Graphs over ``max_nodes`` nodes are left
    as they are (the reachability matrix is dense).
    """
    lab = nearest_kept(g.edge_index, torch.ones_like(g.cost), mask)
    bad = (lab < 0) & (g.rho0 > 0)
    bad_graphs = torch.unique(g.batch[bad]) if bool(bad.any()) else bad.new_zeros(0, dtype=torch.long)
    if bad_graphs.numel() == 0:
        return mask
    mask = mask.clone()
    for gid in bad_graphs.tolist():
        nodes = torch.nonzero(g.batch == gid).flatten()
        n = nodes.numel()
        if n > max_nodes or int(g.k[gid]) <= 0:
            continue
        R = _reachability(g.edge_index, nodes)
        heavy = g.rho0[nodes] > 0
        S = mask[nodes].clone()
        sc = score[nodes]
        for _ in range(int(g.k[gid])):
            covered = (R & S.unsqueeze(0)).any(1) | ~heavy
            if bool(covered.all()):
                break
            unc = torch.nonzero(~covered).flatten()
            u = unc[R[unc].sum(1).argmin()]
            gain = R[unc].sum(0).float()                    # uncovered mass nodes each node covers
            cand = torch.where(R[u] & ~S, gain + 1e-6 * torch.sigmoid(sc), torch.full_like(gain, -1.0))
            v = int(cand.argmax())
            S2 = S.clone()
            S2[v] = True
            # a kept node may go if every mass node it covers stays covered
            cover_count = (R & S2.unsqueeze(0)).sum(1)
            sole = (R & S2.unsqueeze(0) & (cover_count == 1).unsqueeze(1) & heavy.unsqueeze(1) & covered.unsqueeze(1))
            removable = S & ~sole.any(0)
            if not bool(removable.any()):
                break
            w = int(torch.where(removable, sc, torch.full_like(sc, float("inf"))).argmin())
            S2[w] = False
            S = S2
        mask[nodes] = S
    return mask


# ----------------------------------------------------------------------------- rounding
def rounding_score(eps: torch.Tensor, rho1: torch.Tensor, g: Graphs) -> torch.Tensor:
    """Top-k key: ``eps_hat``, ties broken by the cost of dropping a node alone (``rho0_v min_{v->u}
    c_vu``, scaled to ``1e-3``) then by ``rho1`` (``1e-6``); quantised to ``1e-9`` so ties (common on
    symmetric graphs) go to the lower index whether a graph is alone or in a batch."""
    B, b, N = g.num_graphs, g.batch, g.rho0.numel()
    r = rho1.to(torch.float64)
    rmax = seg_max(r, b, B, 0.0).clamp(min=1e-300)[b]
    best = torch.full((N,), float("inf"), dtype=torch.float64, device=b.device)
    if g.edge_index.numel():
        best = best.scatter_reduce(0, g.edge_index[0], g.cost, reduce="amin", include_self=True)
    fin = torch.isfinite(best)
    big = torch.where(fin, best, torch.zeros_like(best)).max() * 10 + 1 if N else 1.0
    drop = g.rho0 * torch.where(fin, best, big)
    dmax = seg_max(drop, b, B, 0.0).clamp(min=1e-300)[b]
    score = eps.to(torch.float64) + 1e-3 * (drop / dmax) + 1e-6 * (r / rmax)
    return torch.round(score * 1e9) / 1e9


def _smallest(key, w):
    """``(values, indices)`` of the ``w`` smallest entries per row, ties in index order."""
    values, indices = torch.sort(key, dim=1, stable=True)
    return values[:, :w], indices[:, :w]


def refine_swaps(g: Graphs, mask: torch.Tensor, score: torch.Tensor, search: SwapSearch, solve: SupportCost):
    """Local search on the rounded support: swap a kept node for a dropped one while the exact
    objective improves, on graphs with ``<= search.max_nodes`` nodes. Returns ``(mask, exact
    cost [B])`` (``nan`` on graphs not refined).

    Each round tries the ``width`` kept nodes that are cheapest to drop (mass times the
    distance to the nearest other kept node) against the ``width`` dropped nodes that pay the
    most transport, all graphs and swaps in one batched solve, and keeps the best *certified*
    improvement: a candidate's upper bound (a feasible plan's value) below the current
    support's lower bound (from the dual).
    """
    B, device, lam = g.num_graphs, g.batch.device, search.lam
    counts = g.counts
    exact = torch.full((B,), float("nan"), dtype=torch.float64, device=device)
    eligible = (counts <= search.max_nodes) & (g.k > 0) & (counts > 0)
    _, _, pos, _ = to_dense_blocks(g.batch, B)
    mask = mask.clone()
    for gids in dense_buckets(torch.nonzero(eligible).flatten(), counts):
        dn = Dense(g, gids, pos, counts)
        R, n = dn.node.shape
        S = dn.gather(mask, False) & dn.valid
        sc = dn.gather(score.to(torch.float64), float("-inf"))
        cur, m, gap, plan = solve(dn.D, dn.rho0, S, lam, 400, 1e-5, 20, None, True)
        cur_lo = torch.where(torch.isfinite(cur), cur - gap, cur)
        can = g.k[gids] < counts[gids]
        for _ in range(search.rounds if search.width > 0 else 0):
            if not bool(can.any()):
                break
            w = min(search.width, n)
            DS = torch.where(S.unsqueeze(1), dn.D, torch.full_like(dn.D, float("inf")))
            eye = torch.eye(n, dtype=torch.bool, device=device).unsqueeze(0)
            d_other = torch.where(eye, torch.full_like(DS, float("inf")), DS).amin(-1)
            tie = 1e-9 * sc.clamp(min=-1e300)
            out_v, out_i = _smallest(torch.where(S, m * d_other.clamp(max=1e300) + tie, torch.full_like(m, float("inf"))), w)
            in_v, in_i = _smallest(-torch.where(~S & dn.valid, dn.rho0 * DS.amin(-1).clamp(max=1e300) + tie,
                                                torch.full_like(sc, float("-inf"))), w)
            oi = out_i.unsqueeze(2).expand(R, w, w).reshape(R, w * w)
            ii = in_i.unsqueeze(1).expand(R, w, w).reshape(R, w * w)
            ok = (torch.isfinite(out_v).unsqueeze(2) & torch.isfinite(in_v).unsqueeze(1)).reshape(R, -1)
            ridx = torch.nonzero(ok & can.unsqueeze(1))
            if ridx.numel() == 0:
                break
            rr, cc = ridx[:, 0], ridx[:, 1]
            o_n, i_n = oi[rr, cc], ii[rr, cc]
            ar = torch.arange(rr.numel(), device=device)
            Sc = S[rr].clone()
            Sc[ar, o_n] = False
            Sc[ar, i_n] = True
            p0 = plan[rr].clone()                        # warm start: the dropped column's mass to the new node
            moved = p0[ar, :, o_n]
            p0[ar, :, o_n] = 0
            p0[ar, :, i_n] += moved
            cst, _, _, pc = solve(dn.D[rr], dn.rho0[rr], Sc, lam, 60, 1e-4, 20, p0, True)
            best = torch.full((R,), float("inf"), dtype=torch.float64, device=device)
            best = best.scatter_reduce(0, rr, cst, reduce="amin", include_self=True)
            improve = best < cur_lo
            if not bool(improve.any()):
                break
            is_best = (cst == best[rr]) & improve[rr]
            pair = torch.where(is_best, o_n * (1 << 20) + i_n, torch.full_like(o_n, 1 << 62))
            low = torch.full((R,), 1 << 62, dtype=torch.long, device=device)
            low = low.scatter_reduce(0, rr, pair, reduce="amin", include_self=True)
            first = torch.full((R,), -1, dtype=torch.long, device=device)
            cand = torch.nonzero(is_best & (pair == low[rr])).flatten()
            first.scatter_(0, rr[cand], cand)
            gsel = torch.nonzero(first >= 0).flatten()
            f = first[gsel]
            S[gsel] = Sc[f]
            c2, m2, g2, p2 = solve(dn.D[gsel], dn.rho0[gsel], S[gsel], lam, 400, 1e-5, 20, pc[f], True)
            m[gsel], plan[gsel] = m2, p2
            cur[gsel], cur_lo[gsel] = c2, torch.where(torch.isfinite(c2), c2 - g2, c2)
            can = can & improve
        mask[dn.node[dn.valid]] = S[dn.valid]
        exact[gids] = cur
    return mask, exact


def round_support(g: Graphs, eps: torch.Tensor, rho1: torch.Tensor, search: SwapSearch, solve: SupportCost):
    """``(mask [N], exact cost [B])``: top-k of :func:`rounding_score`, then
    :func:`repair_coverage`, then (``search.width > 0``) :func:`refine_swaps`."""
    score = rounding_score(eps, rho1, g)
    mask = topk_mask(score, g.batch, g.num_graphs, g.k)
    mask = repair_coverage(g, mask, score)
    if search.width > 0 and search.rounds > 0:
        return refine_swaps(g, mask, score, search, solve)
    return mask, torch.full((g.num_graphs,), float("nan"), dtype=torch.float64, device=g.batch.device)
