"""Approximate and external nearest-neighbour searches behind ``tgrep::knn`` (CPU).

* :func:`hnsw` -- faiss' HNSW graph (Malkov & Yashunin 2016) on the rows of ``x``, then
  every row searched in it: O(n log n · d). The default of ``knn='auto'`` at scale.
* :func:`flat` -- ``faiss.IndexFlatL2`` (exact, BLAS).
* :func:`nndescent` -- ``pynndescent.NNDescent`` (optional package; approximate).

All return ``(dist, index)`` ``[n, k]`` float32 / int64, squared Euclidean distances
ascending, ``inf`` / ``-1`` where fewer than ``k`` neighbours were found, the query itself
excluded when ``loop=False`` (wherever it sits among ties).
"""
from __future__ import annotations

import numpy as np
import torch

HNSW_M = 16            # graph degree of the HNSW layers
HNSW_EF_CONSTRUCTION = 80  # 40 leaves ~0.5% of the queries of a clustered set stuck in the wrong cluster
HNSW_EF_SEARCH = 64    # at least 2 (k + 1)
STEP = 50_000          # rows per add/search call (progress granularity)
STUCK = 0.5            # a row is re-queried when a point that found it is 2x nearer than its own nearest


def _finish(d, i, n, k, loop):
    d = torch.from_numpy(np.asarray(d, dtype=np.float32))
    i = torch.from_numpy(np.asarray(i, dtype=np.int64))
    d = torch.where(i < 0, torch.full_like(d, float("inf")), d)
    if not loop:  # drop self (wherever it sits among ties), keep k
        d = d.masked_fill(i == torch.arange(n)[:, None], float("inf"))
    d, order = torch.sort(d, dim=1)
    i = torch.gather(i, 1, order)
    d, i = d[:, :k], i[:, :k]
    if d.shape[1] < k:
        pad = k - d.shape[1]
        d = torch.cat([d, d.new_full((n, pad), float("inf"))], 1)
        i = torch.cat([i, i.new_full((n, pad), -1)], 1)
    i = torch.where(torch.isinf(d), torch.full_like(i, -1), i)
    return d, i


def _faiss(num_threads):
    import faiss

    set_threads = getattr(faiss, "omp_set_num_threads", None)
    if set_threads is not None:
        set_threads(int(num_threads))
    return faiss


def hnsw(x: torch.Tensor, k: int, loop: bool, *, num_threads: int = 1, bar=None, m: int | None = None,
         ef_construction: int | None = None, ef_search: int | None = None):
    """HNSW kNN of every row among the rows (``bar`` advances by ``2n``: build, then search)."""
    m = m or HNSW_M
    ef_construction = ef_construction or HNSW_EF_CONSTRUCTION
    ef_search = ef_search or HNSW_EF_SEARCH
    faiss = _faiss(num_threads)
    xs = np.ascontiguousarray(x.detach().float().cpu().numpy())
    n, d = xs.shape
    kk = min(n, k + (0 if loop else 1))
    index = faiss.IndexHNSWFlat(d, m)
    index.hnsw.efConstruction = ef_construction
    for a in range(0, n, STEP):
        index.add(xs[a:a + STEP])
        if bar is not None:
            bar.update(min(STEP, n - a))
    index.hnsw.efSearch = max(ef_search, 2 * kk)
    D = np.empty((n, kk), dtype=np.float32)
    I = np.empty((n, kk), dtype=np.int64)
    for a in range(0, n, STEP):
        D[a:a + STEP], I[a:a + STEP] = index.search(xs[a:a + STEP], kk)
        if bar is not None:
            bar.update(min(STEP, n - a))
    _repair(x, D, I, kk)
    return _finish(D, I, n, k, loop)


def _repair(x: torch.Tensor, D: np.ndarray, I: np.ndarray, kk: int, block: int = 1024):
    """Re-query exactly the rows whose HNSW search got stuck: a row is stuck when some point that
    found it is nearer to it than the nearest point it found itself (a search that ended in the
    wrong region of a clustered set; "nearer" meaning by a factor ``STUCK``). Cost O(stuck · n · d); in place on ``D``, ``I``."""
    n = D.shape[0]
    Dt = torch.from_numpy(D)
    It = torch.from_numpy(I)
    src = It.reshape(-1)
    ok = src >= 0
    rows = torch.arange(n).repeat_interleave(kk)[ok]
    rev = torch.full((n,), float("inf"))
    rev.scatter_reduce_(0, src[ok], Dt.reshape(-1)[ok], "amin")
    nearest = torch.where(It[:, 0] == torch.arange(n), Dt[:, min(1, kk - 1)], Dt[:, 0])
    stuck = torch.nonzero(rev < STUCK * nearest).reshape(-1)
    del rows
    if stuck.numel() == 0:
        return 0
    xf = x.detach().float()
    xn = (xf * xf).sum(1)
    for a in range(0, stuck.numel(), block):
        q = stuck[a:a + block]
        d = (xn[q, None] + xn[None, :] - 2 * xf[q] @ xf.t()).clamp_min_(0)
        dd, ii = torch.topk(d, kk, dim=1, largest=False)
        D[q.numpy()] = dd.numpy()
        I[q.numpy()] = ii.numpy()
    return int(stuck.numel())


def flat(x: torch.Tensor, k: int, loop: bool, *, num_threads: int = 1, bar=None):
    faiss = _faiss(num_threads)
    xs = np.ascontiguousarray(x.detach().float().cpu().numpy())
    n = xs.shape[0]
    kk = min(n, k + (0 if loop else 1))
    index = faiss.IndexFlatL2(xs.shape[1])
    index.add(xs)
    D, I = index.search(xs, kk)
    if bar is not None:
        bar.update(n)
    return _finish(D, I, n, k, loop)


def nndescent(x: torch.Tensor, k: int, loop: bool, *, num_threads: int = 1, bar=None):
    import pynndescent

    xs = x.detach().float().cpu().numpy()
    n = xs.shape[0]
    kk = min(n, k + (0 if loop else 1))
    index = pynndescent.NNDescent(xs, n_neighbors=max(kk, 2), metric="euclidean", n_jobs=int(num_threads),
                                  random_state=0)
    I, D = index.neighbor_graph
    if bar is not None:
        bar.update(n)
    return _finish(np.asarray(D)[:, :kk] ** 2, np.asarray(I)[:, :kk], n, k, loop)
