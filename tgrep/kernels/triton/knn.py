"""Triton exact kNN: distance tiles by ``tl.dot`` and a running top-k kept in registers.

One program owns ``BLOCK_M`` queries and walks the reference rows of their examples in tiles
of ``BLOCK_N``: float32 inputs: ``d = ‖x‖² + ‖y‖² − 2 x·y`` (IEEE fp32 dot, no TF32; the
distances of the selected neighbours are then recomputed from differences, so only the ranking
of near-ties carries the cancellation error); float64 inputs: ``d = Σ (x − y)²`` in float64
(no cancellation: small distances between large points stay exact), masked for self / other
examples / out-of-range, then merged into the per-row best list (``K_PAD`` slots, the ``k``
smallest so far) by ``k`` rounds of "tile minimum replaces the row's current maximum when
smaller". Memory: O(n·k) outputs only. Twin: :func:`tgrep.kernels.reference.knn.knn_dense`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch


@triton.jit
def _knn_kernel(X, XN, B, LO, HI, OUT_D, OUT_I, n, d, k, stride_x,
                HAS_BATCH: tl.constexpr, SKIP_SELF: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, K_PAD: tl.constexpr, DIFF: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # n * d may pass 2**31
    rmask = rows < n
    kc = tl.arange(0, K_PAD)
    inf = float("inf")
    # padding slots hold -inf so that they are never the row maximum that gets replaced
    best_d = tl.where(kc[None, :] < k, inf, -inf) + tl.zeros([BLOCK_M, K_PAD], dtype=X.dtype.element_ty)
    best_i = tl.full([BLOCK_M, K_PAD], -1, dtype=tl.int64)
    xn = tl.load(XN + rows, mask=rmask, other=0.0)
    if HAS_BATCH:
        bq = tl.load(B + rows, mask=rmask, other=-1)
    lo = tl.load(LO + pid)
    hi = tl.load(HI + pid)
    dd = tl.arange(0, BLOCK_D)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < hi
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=X.dtype.element_ty)
        for d0 in range(0, d, BLOCK_D):
            dm = (d0 + dd) < d
            xt = tl.load(X + rows[:, None] * stride_x + (d0 + dd)[None, :],
                         mask=rmask[:, None] & dm[None, :], other=0.0)
            yt = tl.load(X + cols[:, None] * stride_x + (d0 + dd)[None, :],
                         mask=cmask[:, None] & dm[None, :], other=0.0)
            if DIFF:  # float64: sums of squared differences (no cancellation)
                diff = xt[:, None, :] - yt[None, :, :]
                acc += tl.sum(diff * diff, axis=2)
            else:
                acc += tl.dot(xt, tl.trans(yt), input_precision="ieee")
        if DIFF:
            dist = acc
        else:
            yn = tl.load(XN + cols, mask=cmask, other=0.0)
            dist = xn[:, None] + yn[None, :] - 2.0 * acc
            dist = tl.maximum(dist, 0.0)
        bad = ~cmask[None, :] | ~rmask[:, None]
        if SKIP_SELF:
            bad = bad | (rows[:, None] == cols[None, :])
        if HAS_BATCH:
            by = tl.load(B + cols, mask=cmask, other=-2)
            bad = bad | (bq[:, None] != by[None, :])
        dist = tl.where(bad, inf, dist)
        for _ in range(0, k):
            cmin = tl.min(dist, axis=1)
            carg = tl.argmin(dist, axis=1)
            bmax = tl.max(best_d, axis=1)
            barg = tl.argmax(best_d, axis=1)
            take = cmin < bmax
            slot = take[:, None] & (kc[None, :] == barg[:, None])
            best_d = tl.where(slot, cmin[:, None], best_d)
            best_i = tl.where(slot, (start + carg).to(tl.int64)[:, None], best_i)
            dist = tl.where(tl.arange(0, BLOCK_N)[None, :] == carg[:, None], inf, dist)
    omask = rmask[:, None] & (kc[None, :] < k)
    tl.store(OUT_D + rows[:, None] * k + kc[None, :], best_d, mask=omask)
    tl.store(OUT_I + rows[:, None] * k + kc[None, :], best_i, mask=omask)


def knn_triton(x: torch.Tensor, k: int, *, batch: torch.Tensor | None = None, loop: bool = False,
               block_m: int = 32, block_n: int = 64):
    """``(dist, index)`` ``[n, k]`` (ascending), ``inf`` / ``-1`` padding; ``k <= 128``."""
    n, d = x.shape
    exact64 = x.dtype == torch.float64
    xc = x.double() if exact64 else x.float()
    xc = (xc - xc.mean(0, keepdim=True)).contiguous()
    xn = (xc * xc).sum(1).contiguous()
    nblocks = triton.cdiv(n, block_m)
    starts = torch.arange(nblocks, device=x.device) * block_m
    if batch is not None:
        b = batch.long().contiguous()
        nb = int(b[-1]) + 1
        ptr = torch.zeros(nb + 1, dtype=torch.long, device=x.device)
        ptr[1:] = torch.cumsum(torch.bincount(b, minlength=nb), 0)
        ends = torch.clamp(starts + block_m, max=n) - 1
        lo, hi = ptr[b[starts]], ptr[b[ends] + 1]
    else:
        b = xn  # unused placeholder
        lo = torch.zeros(nblocks, dtype=torch.long, device=x.device)
        hi = torch.full((nblocks,), n, dtype=torch.long, device=x.device)
    out_d = torch.empty((n, k), dtype=xc.dtype, device=x.device)
    out_i = torch.empty((n, k), dtype=torch.long, device=x.device)
    k_pad, block_d = launch.knn_tiles(k, d, exact64)
    _knn_kernel[(nblocks,)](xc, xn, b, lo.contiguous(), hi.contiguous(), out_d, out_i, n, d, k,
                            xc.stride(0), HAS_BATCH=batch is not None, SKIP_SELF=not loop,
                            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, K_PAD=k_pad, DIFF=exact64)
    if not exact64:
        # exact values for the selected pairs (differences, not the expansion)
        ok = (out_i >= 0) & torch.isfinite(out_d)
        for a in range(0, n, 4096):
            ii = out_i[a:a + 4096].clamp_min(0)
            diff = xc[a:a + 4096, None, :] - xc[ii]
            exact = (diff * diff).sum(-1)
            out_d[a:a + 4096] = torch.where(ok[a:a + 4096], exact, out_d[a:a + 4096])
    out_d, order = torch.sort(out_d, dim=1)
    out_i = torch.gather(out_i, 1, order)
    out_i = torch.where(torch.isinf(out_d), torch.full_like(out_i, -1), out_i)
    return out_d.to(x.dtype), out_i
