"""Triton batched (stochastic) single-source shortest paths, for CUDA tensors.

Same contract as :func:`tgrep.kernels.reference.shortest_path.shortest_paths` (distances
bit-identical to the spec; the settled set and ``pred`` semantics too; among equal-length
predecessor edges a different, still deterministic, one may be chosen).

Algorithm: batched frontier Bellman-Ford over all ``B`` rows at once. The state is a flat
``[B * N]`` array of distances stored as integers (float32 bits in int32, float64 bits in
int64: non-negative floats order like their bit patterns), so a relaxation is one
``atomic_min``; distances are sums in the weight's own dtype, and Bellman-Ford reaches the
same least fixed point as Dijkstra (``fl(d + w)`` is monotone in ``d``), so the result equals
the C++ path exactly, for float32 and float64 alike. Each launch relaxes the out-edges of
the frontier (vertices whose distance dropped in the previous launch) and builds the next
frontier; the host looks at the update counters only every ``CHECK_EVERY`` launches.
Near-far (delta-stepping style) ordering: a launch relaxes only the frontier vertices of row
``b`` with ``d <= m_b + delta`` (``m_b`` the row's smallest frontier distance, gathered by
the previous launch with one ``atomic_min`` per block) and carries the others over, which
cuts the re-relaxations of plain Bellman-Ford (4.2 -> 1.2 scans per edge on a degree-32
random graph) at almost no extra launches; see :func:`default_delta`.

Early exit: with targets, row ``b`` only relaxes frontier vertices with
``d <= D_b(current) = max_t d_b(t)`` (an upper bound of the final ``D_b``). When no frontier
vertex is left, every vertex with final distance ``<= D_b`` is exact (a vertex whose
tentative distance is too large has a shortest path whose last exact vertex would still be
in the frontier), which is what the spec's settled set needs.

Predecessors: a packed ``(distance bits << 32 | edge id)`` ``atomic_min`` gives consistent
(distance, edge) pairs, but with zero-length edges (or ``fl(d + w) == d``) concurrent updates
can close a cycle of predecessor edges, which would hang the backward path walk. We instead
pick predecessors after the distances are final, again with a packed 64-bit ``atomic_min``
on ``(level << 32 | edge id)``: in pass ``k`` a settled ``v`` may take a tight edge
``u -> v`` (``fl(d_u + w) == d_v``, present in the row's sample) if ``d_u < d_v``, ``u`` is
the source, or ``u`` got its own predecessor in an earlier pass. Levels strictly grow along
equal-distance edges, so the predecessor graph is a tree; pass 0 settles every vertex that
has a strictly shorter tight in-neighbour (all of them unless zero-length edges tie), so one
pass is the common case. An edge is tight only if ``d_v`` is finite (an edge of infinite
weight is never tight, as in the spec where ``d + inf < inf`` never relaxes), so unreachable
vertices never take a predecessor and the pass count only counts reached ones. Edge ids
must fit in 32 bits.

Backward: :func:`path_gradient` walks the predecessor edges of every (row, target) pair in
one kernel (``atomic_add`` of the pair's gradient on each edge), without a host sync per hop.

Sampling: edge ``e`` is present in row ``r`` iff ``(mix(e ^ rowhash[r]) >> 8) <
ceil(p_e 2^24)`` with ``rowhash[r] = mix(r ^ mix(seed ^ GOLDEN))`` -- the same lowbias32
hash as :mod:`tgrep.kernels.reference.rng`, in uint32 arithmetic.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..._backend import triton_interpret
from . import launch
from ..reference import rng

CHECK_EVERY = 8  # launches between host-side convergence checks
_MAXKEY = 2**63 - 1


@triton.jit
def _mix32(x):
    # lowbias32 (C. Wellons) on uint32
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    x = x ^ (x >> 16)
    return x


@triton.jit
def _relax_kernel(dist_ptr, act_ptr, nxt_ptr, stat_ptr, bound_ptr, lim_ptr, nmin_ptr, indptr_ptr, indices_ptr,
                  weight_ptr, thr_ptr, rowhash_ptr, N, total,
                  HAS_PROB: tl.constexpr, HAS_BOUND: tl.constexpr, HAS_LIM: tl.constexpr, INF_BITS: tl.constexpr,
                  BLOCK: tl.constexpr, CH: tl.constexpr):
    W_T = weight_ptr.dtype.element_ty
    DI = dist_ptr.dtype.element_ty
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < total
    act = (tl.load(act_ptr + offs, mask=m, other=0) != 0) & m
    row = offs // N
    u = offs - row * N
    du = tl.load(dist_ptr + offs, mask=act, other=0).to(W_T, bitcast=True)
    if HAS_BOUND:
        bnd = tl.load(bound_ptr + row, mask=act, other=0)
        act = act & (du <= bnd)
    ndef = 0
    if HAS_LIM:  # near-far: relax only the near part of the frontier, carry the rest over
        lim = tl.load(lim_ptr + row, mask=act, other=0)
        defer = act & (du > lim)
        act = act & (du <= lim)
        tl.store(nxt_ptr + offs, tl.full([BLOCK], 1, tl.int8), mask=defer)
        cand = tl.where(defer, du.to(DI, bitcast=True), INF_BITS)
        best = tl.full([BLOCK, CH], INF_BITS, DI)
        ndef = tl.sum(defer.to(tl.int32), axis=0)
    start = tl.load(indptr_ptr + u, mask=act, other=0).to(tl.int64)
    end = tl.load(indptr_ptr + u + 1, mask=act, other=0).to(tl.int64)
    deg = end - start
    dmax = tl.max(deg, axis=0)
    if HAS_PROB:
        rh = tl.load(rowhash_ptr + row, mask=act, other=0).to(tl.uint32)
    upd = tl.zeros([BLOCK, CH], dtype=tl.int32)
    for k in range(0, dmax, CH):
        e = start[:, None] + k + tl.arange(0, CH)[None, :]
        em = act[:, None] & (e < end[:, None])
        v = tl.load(indices_ptr + e, mask=em, other=0).to(tl.int64)
        w = tl.load(weight_ptr + e, mask=em, other=0)
        nd = (du[:, None] + w).to(dist_ptr.dtype.element_ty, bitcast=True)
        slot = row[:, None] * N + v
        cur = tl.load(dist_ptr + slot, mask=em, other=0)
        em = em & (nd < cur)
        if HAS_PROB:
            thr = tl.load(thr_ptr + e, mask=em, other=0)
            h = _mix32(e.to(tl.uint32) ^ rh[:, None])
            em = em & ((h >> 8).to(tl.int32) < thr)
        old = tl.atomic_min(dist_ptr + slot, nd, mask=em)
        imp = em & (nd < old)
        tl.store(nxt_ptr + slot, tl.full([BLOCK, CH], 1, tl.int8), mask=imp)
        upd += imp.to(tl.int32)
        if HAS_LIM:
            best = tl.where(imp, tl.minimum(best, nd), best)
    if HAS_LIM:
        # smallest distance of each row's next frontier (deferred + improved), one atomic per
        # block for its first row, element-wise for the (rare) lanes of further rows
        cand = tl.minimum(cand, tl.min(best, axis=1))
        r0 = (pid.to(tl.int64) * BLOCK) // N
        same = row == r0
        tl.atomic_min(nmin_ptr + r0, tl.min(tl.where(same, cand, INF_BITS), axis=0))
        tl.atomic_min(nmin_ptr + row, cand, mask=m & (~same) & (cand < INF_BITS))
    tl.store(act_ptr + offs, tl.zeros([BLOCK], tl.int8), mask=m)  # deferred ones now live in nxt
    tl.atomic_add(stat_ptr, tl.sum(tl.sum(upd, axis=1), axis=0) + ndef)
    tl.atomic_add(stat_ptr + 1, tl.sum(deg, axis=0))


@triton.jit
def _pred_kernel(dist_ptr, pred_ptr, bound_ptr, sources_ptr, indptr_ptr, indices_ptr, weight_ptr,
                 thr_ptr, rowhash_ptr, N, total, level, level_hi,
                 HAS_PROB: tl.constexpr, HAS_BOUND: tl.constexpr, BLOCK: tl.constexpr, CH: tl.constexpr):
    W_T = weight_ptr.dtype.element_ty
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < total
    row = offs // N
    u = offs - row * N
    du = tl.load(dist_ptr + offs, mask=m, other=0).to(W_T, bitcast=True)
    ok = m & (du < float("inf"))
    if HAS_BOUND:
        bnd = tl.load(bound_ptr + row, mask=ok, other=0)
        ok = ok & (du <= bnd)
    src = tl.load(sources_ptr + row, mask=ok, other=0).to(tl.int64)
    pu = tl.load(pred_ptr + offs, mask=ok, other=0x7FFFFFFFFFFFFFFF)
    ready = (u == src) | ((pu >> 32) < level)
    start = tl.load(indptr_ptr + u, mask=ok, other=0).to(tl.int64)
    end = tl.load(indptr_ptr + u + 1, mask=ok, other=0).to(tl.int64)
    dmax = tl.max(end - start, axis=0)
    if HAS_PROB:
        rh = tl.load(rowhash_ptr + row, mask=ok, other=0).to(tl.uint32)
    for k in range(0, dmax, CH):
        e = start[:, None] + k + tl.arange(0, CH)[None, :]
        em = ok[:, None] & (e < end[:, None])
        v = tl.load(indices_ptr + e, mask=em, other=0).to(tl.int64)
        w = tl.load(weight_ptr + e, mask=em, other=0)
        nd = du[:, None] + w
        slot = row[:, None] * N + v
        dv = tl.load(dist_ptr + slot, mask=em, other=0).to(W_T, bitcast=True)
        # tight: fl(d_u + w) == d_v < inf (an edge of infinite weight, or a sum that overflows,
        # is never tight: it is no edge; without `dv < inf`, inf == inf would hand predecessors
        # to unreachable vertices)
        em = em & (nd == dv) & (dv < float("inf")) & (v != src[:, None]) & ((du[:, None] < dv) | ready[:, None])
        if HAS_BOUND:
            em = em & (dv <= bnd[:, None])
        if HAS_PROB:
            thr = tl.load(thr_ptr + e, mask=em, other=0)
            h = _mix32(e.to(tl.uint32) ^ rh[:, None])
            em = em & ((h >> 8).to(tl.int32) < thr)
        key = e + level_hi
        tl.atomic_min(pred_ptr + slot, key, mask=em)


def _launch_cfg(total: int) -> tuple[tuple, int, int, int]:
    """(grid, BLOCK, CH, num_warps) of the relaxation and predecessor passes (CH: edges per
    vertex handled per inner step)."""
    grid, block = launch.flat(total, gpu_block=64)
    return grid, block, (16 if triton_interpret() else 32), 4


def default_delta(weight: torch.Tensor, n: int) -> float:
    """Near-far width: a launch relaxes only frontier vertices with ``d <= min frontier d + delta``.

    ``mean edge weight * clamp(8 / mean degree, 0.1, 4)`` (Meyer & Sanders' delta ~ 1/degree
    for random weights). Measured under the interpreter on random graphs (N = 4000): degree
    32 -> 1.2 scans per edge instead of Bellman-Ford's 4.2 with 22 launches instead of 21;
    degree 4 -> 1.1 instead of 2.2 (22 launches). Distances do not depend on it.
    """
    w = weight[torch.isfinite(weight)]
    if not w.numel() or n == 0:
        return math.inf
    return float(w.mean()) * min(4.0, max(0.1, 8.0 * n / weight.numel()))


def _rowhash(seed: int, B: int, device) -> torch.Tensor:
    s = int(rng.mix32(torch.tensor(rng.seed32(seed) ^ rng.GOLDEN, dtype=torch.int64)))
    return rng.mix32(torch.arange(B, device=device, dtype=torch.int64) ^ s)


def shortest_paths(indptr: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor, sources: torch.Tensor,
                   targets: torch.Tensor | None, edge_prob: torch.Tensor | None, seed: int,
                   need_pred: bool = True, stats: dict | None = None, delta: float | None = None):
    """Returns ``(dist [B, T] or [B, N], pred [B, N] int64 or None)`` like the reference.

    ``stats`` (optional dict) receives ``launches``, ``edges_scanned`` and ``updates``
    (distance improvements plus frontier entries carried over by near-far).
    ``delta``: near-far width (``None``: :func:`default_delta`; ``inf``: plain Bellman-Ford).
    """
    device, dtype = weight.device, weight.dtype
    n, B, E = indptr.numel() - 1, sources.numel(), indices.numel()
    if E >= 2**32:
        raise ValueError(f"the Triton shortest-path kernel supports < 2**32 edges, got {E}")
    T = None if targets is None else targets.size(1)
    pred = torch.full((B, n), -1, dtype=torch.int64, device=device) if need_pred else None
    if B == 0 or n == 0 or T == 0:
        shape = (B, n) if T is None else (B, T)
        return torch.full(shape, math.inf, dtype=dtype, device=device), pred
    if E == 0:  # no edges: each source reaches itself only (and no kernel sees an empty tensor)
        dist = torch.full((B, n), math.inf, dtype=dtype, device=device)
        dist[torch.arange(B, device=device), sources.long()] = 0
        return (dist if targets is None else dist.gather(1, targets.long())), pred

    itype = torch.int32 if dtype == torch.float32 else torch.int64
    weight = weight.detach().contiguous()
    indptr, indices = indptr.contiguous(), indices.contiguous()
    src = sources.long().contiguous()
    rows = torch.arange(B, device=device)
    dist = torch.full((B, n), math.inf, dtype=dtype, device=device)
    dist[rows, src] = 0
    di = dist.view(itype).view(-1)
    total = B * n
    act = torch.zeros(total, dtype=torch.int8, device=device)
    act[rows * n + src] = 1
    nxt = torch.zeros_like(act)
    has_prob = edge_prob is not None
    if has_prob:
        thr = torch.ceil(edge_prob.detach().to(torch.float64) * 2.0**24).to(torch.int32).contiguous()
        rowhash = _rowhash(seed, B, device)
    else:
        thr = rowhash = weight  # unused placeholders
    tg = None if targets is None else targets.long().contiguous()
    bound = dist.new_empty(B) if tg is not None else dist  # placeholder when unused

    if delta is None:
        delta = default_delta(weight, n)
    use_lim = math.isfinite(delta)
    inf_bits = 0x7F800000 if dtype == torch.float32 else 0x7FF0000000000000
    nmin = torch.zeros(B, dtype=itype, device=device)  # smallest frontier distance per row (bits)
    lim = torch.empty(B, dtype=dtype, device=device)

    grid, BLOCK, CH, warps = _launch_cfg(total)
    counters = torch.zeros(CHECK_EVERY, 2, dtype=torch.int64, device=device)
    launches = scanned = updates = 0
    while True:
        counters.zero_()
        for i in range(CHECK_EVERY):
            if tg is not None:
                torch.amax(dist.gather(1, tg), dim=1, out=bound)
            if use_lim:
                torch.add(nmin.view(dtype), delta, out=lim)
                nmin.fill_(inf_bits)
            _relax_kernel[grid](di, act, nxt, counters[i], bound, lim, nmin, indptr, indices, weight, thr, rowhash,
                                n, total, HAS_PROB=has_prob, HAS_BOUND=tg is not None, HAS_LIM=use_lim,
                                INF_BITS=inf_bits, BLOCK=BLOCK, CH=CH, num_warps=warps)
            act, nxt = nxt, act
        c = counters.tolist()  # the one host sync per CHECK_EVERY launches
        done = next((i for i, (upd, _) in enumerate(c) if upd == 0), None)
        used = c if done is None else c[:done + 1]
        launches += len(used)
        scanned += sum(x[1] for x in used)
        updates += sum(x[0] for x in used)
        if done is not None:
            break
    if tg is not None:
        torch.amax(dist.gather(1, tg), dim=1, out=bound)
    if stats is not None:
        stats.update(launches=launches, edges_scanned=scanned, updates=updates)

    if need_pred:
        key = torch.full((B, n), _MAXKEY, dtype=torch.int64, device=device)
        reached = torch.isfinite(dist)
        if tg is not None:
            reached &= dist <= bound[:, None]
        reached[rows, src] = False
        want = int(reached.sum())
        level = 0
        while True:
            _pred_kernel[grid](di, key, bound, src, indptr, indices, weight, thr, rowhash, n, total, level, level << 32,
                               HAS_PROB=has_prob, HAS_BOUND=tg is not None, BLOCK=BLOCK, CH=CH, num_warps=warps)
            got = int(((key != _MAXKEY) & reached).sum())  # only reached vertices can take one
            if got >= want:
                break
            level += 1
            if level > n:  # cannot happen for a converged search; never loop forever
                raise RuntimeError("shortest_paths (triton): predecessor passes did not converge")
        pred = torch.where(key == _MAXKEY, torch.full_like(key, -1), key & 0xFFFFFFFF)

    if tg is not None:
        return dist.gather(1, tg), pred
    return dist, pred


@triton.jit
def _path_grad_kernel(pred_ptr, edge_src_ptr, tgt_ptr, g_ptr, out_ptr, N, T, total,
                      HAS_TARGETS: tl.constexpr, BLOCK: tl.constexpr):
    # one lane per (row, target) pair: walk the predecessor edges back to the source, adding
    # the pair's incoming gradient to every edge on the way (no host sync per hop)
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < total
    row = offs // T
    if HAS_TARGETS:
        cur = tl.load(tgt_ptr + offs, mask=m, other=0).to(tl.int64)
    else:
        cur = offs - row * T
    g = tl.load(g_ptr + offs, mask=m, other=0)
    live = m & (g != 0)
    n_live = tl.sum(live.to(tl.int32), axis=0)
    hops = 0
    while (n_live > 0) & (hops <= N):  # predecessor walks are acyclic: at most N - 1 hops
        e = tl.load(pred_ptr + row * N + cur, mask=live, other=-1)
        live = live & (e >= 0)
        tl.atomic_add(out_ptr + e, g, mask=live)
        cur = tl.load(edge_src_ptr + e, mask=live, other=0).to(tl.int64)
        n_live = tl.sum(live.to(tl.int32), axis=0)
        hops += 1


def path_gradient(grad_dist: torch.Tensor, dist: torch.Tensor, pred: torch.Tensor, sources: torch.Tensor,
                  targets: torch.Tensor | None, edge_src: torch.Tensor, num_edges: int) -> torch.Tensor:
    """Triton twin of :func:`tgrep.kernels.reference.shortest_path.path_gradient`."""
    B, n = pred.shape
    out = torch.zeros(num_edges, dtype=grad_dist.dtype, device=grad_dist.device)
    g = torch.where(torch.isfinite(dist), grad_dist, torch.zeros_like(grad_dist)).contiguous()
    if g.numel() == 0 or num_edges == 0:
        return out
    T = n if targets is None else targets.size(1)
    tgt = g if targets is None else targets.long().contiguous()  # placeholder when unused
    total = B * T
    grid, BLOCK = launch.flat(total, gpu_block=128, interp_cap=1024)
    _path_grad_kernel[grid](pred.contiguous(), edge_src.contiguous(), tgt, g, out, n, T,
                                                    total, HAS_TARGETS=targets is not None, BLOCK=BLOCK)
    return out
