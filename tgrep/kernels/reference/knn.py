"""Exact k-nearest neighbours in plain torch (any device).

* :func:`knn_dense` -- the executable spec: the whole distance matrix, then ``topk``. Test-only
  (O(n·m) memory).
* :func:`knn_blocked` -- the production CPU/GPU path: queries in chunks, references in blocks,
  a running top-k merged per block, so memory stays O(chunk·block + n·k), never n × m.

Both return ``(dist, index)`` of shape ``[n, k]``: squared Euclidean distances, ascending, and
the reference indices; rows with fewer than ``k`` candidates (small examples of a batch) are
padded with ``inf`` / ``-1``. ``loop=False`` excludes ``i == j`` when ``y`` is ``x`` itself.
"""
from __future__ import annotations

import math

import torch


def _mask(d, bq, by, qi, yj, loop):
    if bq is not None:
        d.masked_fill_(bq[:, None] != by[None, :], float("inf"))
    if not loop:
        d.masked_fill_(qi[:, None] == yj[None, :], float("inf"))
    return d


def _finish(d, i):
    i = torch.where(torch.isinf(d), torch.full_like(i, -1), i)
    return d, i


def knn_dense(x: torch.Tensor, y: torch.Tensor, k: int, *, loop: bool = True,
              batch_x: torch.Tensor | None = None, batch_y: torch.Tensor | None = None,
              self_query: bool = False):
    """Exact kNN of each row of ``x`` among the rows of ``y`` from the full distance matrix."""
    d = torch.cdist(x.double(), y.double()).pow(2)
    qi = torch.arange(x.shape[0], device=x.device)
    yj = torch.arange(y.shape[0], device=x.device)
    _mask(d, batch_x, batch_y, qi, yj, loop or not self_query)
    kk = min(k, y.shape[0])
    dist, idx = torch.topk(d, kk, dim=1, largest=False, sorted=True)
    if kk < k:
        dist = torch.cat([dist, dist.new_full((x.shape[0], k - kk), float("inf"))], 1)
        idx = torch.cat([idx, idx.new_full((x.shape[0], k - kk), -1)], 1)
    dist, idx = _finish(dist, idx)
    return dist.to(x.dtype), idx


def knn_blocked(x: torch.Tensor, y: torch.Tensor, k: int, *, loop: bool = True,
                batch_x: torch.Tensor | None = None, batch_y: torch.Tensor | None = None,
                self_query: bool = False, chunk: int = 1024, block: int = 16384, progress=None):
    """Exact kNN by blocks: ``‖x‖² + ‖y‖² − 2 x·y`` via matmul, a running top-k per query chunk.

    With ``batch_x``/``batch_y`` (sorted, PyG convention) a query chunk only visits the
    reference rows of its own examples. ``progress`` (a tqdm bar, optional) is advanced by
    the number of queries done.
    """
    n, m = x.shape[0], y.shape[0]
    dev = x.device
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    # centring improves the cancellation in ||x||^2 + ||y||^2 - 2 x.y
    mean = y.to(dtype).mean(0, keepdim=True) if m else 0
    xc, yc = x.to(dtype) - mean, y.to(dtype) - mean
    xn, yn = (xc * xc).sum(1), (yc * yc).sum(1)
    out_d = torch.full((n, k), float("inf"), dtype=dtype, device=dev)
    out_i = torch.full((n, k), -1, dtype=torch.long, device=dev)
    if batch_x is not None:
        # reference range of each example: ptr over sorted batch_y
        nb = int(max(int(batch_x.max()) if n else -1, int(batch_y.max()) if m else -1)) + 1
        ptr = torch.zeros(nb + 1, dtype=torch.long, device=dev)
        ptr[1:] = torch.cumsum(torch.bincount(batch_y, minlength=nb), 0)
        ptr = ptr.tolist()
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        q, qn = xc[a:b], xn[a:b]
        qi = torch.arange(a, b, device=dev)
        bq = batch_x[a:b] if batch_x is not None else None
        if bq is not None:
            lo, hi = ptr[int(bq[0])], ptr[int(bq[-1]) + 1]
        else:
            lo, hi = 0, m
        best_d = out_d[a:b]
        best_i = out_i[a:b]
        for c0 in range(lo, hi, block):
            c1 = min(hi, c0 + block)
            d = torch.addmm(yn[c0:c1].unsqueeze(0), q, yc[c0:c1].t(), beta=1.0, alpha=-2.0)
            d.add_(qn.unsqueeze(1)).clamp_(min=0)
            yj = torch.arange(c0, c1, device=dev)
            _mask(d, bq, batch_y[c0:c1] if bq is not None else None, qi, yj, loop or not self_query)
            kk = min(k, c1 - c0)
            bd, bi = torch.topk(d, kk, dim=1, largest=False, sorted=False)
            bi = bi + c0
            cd = torch.cat([best_d, bd], 1)
            ci = torch.cat([best_i, bi], 1)
            best_d, sel = torch.topk(cd, k, dim=1, largest=False, sorted=False)
            best_i = torch.gather(ci, 1, sel)
        best_d, order = torch.sort(best_d, dim=1)
        best_i = torch.gather(best_i, 1, order)
        out_d[a:b], out_i[a:b] = _finish(best_d, best_i)
        if progress is not None:
            progress.update(b - a)
    return out_d.to(x.dtype) if x.is_floating_point() else out_d, out_i


def neighbor_distances(x: torch.Tensor, idx: torch.Tensor, rows: int = 2048) -> torch.Tensor:
    """``‖x_i − x_idx[i, j]‖²`` recomputed from differences (no cancellation: duplicates give
    exactly 0, and the value is symmetric in ``i, j``), ``inf`` where ``idx < 0``; in the dtype
    of ``x`` (float32 unless float64). Twin of ``csrc/cpu/knn.cpp::neighbor_distances``."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty(idx.shape, dtype=dtype, device=x.device)
    for a in range(0, idx.shape[0], rows):
        ii = idx[a:a + rows]
        diff = x[a:a + rows, None, :].to(dtype) - x[ii.clamp_min(0)].to(dtype)
        out[a:a + rows] = (diff * diff).sum(-1)
    return out.masked_fill_(idx < 0, math.inf)
