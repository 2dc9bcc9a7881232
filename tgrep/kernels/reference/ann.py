"""Approximate and external nearest-neighbour searches behind ``tgrep::knn`` (CPU).

* :func:`ivf` -- an inverted file searched by BLAS blocks: k-means lists (faiss' k-means on a
  sample); every row probes the ``P`` lists whose centroids are nearest to it, and each list's
  members are compared with all the rows probing it in one block (exact distances inside that
  candidate set, the C++ heap selection of ``csrc/cpu/knn.cpp``); ``P`` is the smallest giving a
  recall ``>= IVF_RECALL`` on a sample of queries checked against their exact lists. The
  default of ``knn='auto'`` at scale.
* :func:`hnsw` -- faiss' HNSW graph (Malkov & Yashunin 2016) on the rows of ``x``, then
  every row searched in it: O(n log n · d).
* :func:`flat` -- ``faiss.IndexFlatL2`` (exact, BLAS).
* :func:`nndescent` -- ``pynndescent.NNDescent`` (optional package; approximate).

All return ``(dist, index)`` ``[n, k]`` float32 / int64, squared Euclidean distances
ascending, ``inf`` / ``-1`` where fewer than ``k`` neighbours were found, the query itself
excluded when ``loop=False`` (wherever it sits among ties).
"""
from __future__ import annotations

import math

import numpy as np
import torch

HNSW_M = 16            # graph degree of the HNSW layers
HNSW_EF_CONSTRUCTION = 80  # 40 leaves ~0.5% of the queries of a clustered set stuck in the wrong cluster
HNSW_EF_SEARCH = 64    # at least 2 (k + 1)
STEP = 50_000          # rows per add/search call (progress granularity)
IVF_LIST = 512         # mean list size: nlist = n / IVF_LIST
IVF_RECALL = 0.99      # target recall of the candidate sets, checked on a sample of queries
IVF_SAMPLE = 500       # queries of that check (15,000 neighbour pairs at k = 30; cost s·n·d, ~4 s at 1M for 1,000)
IVF_MAX_PROBES = 32    # cap of P (lists probed per row)
IVF_TRAIN = 32         # k-means sample: points per centroid (faiss' max_points_per_centroid)
IVF_ITERS = 10         # k-means iterations
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


def _repair(x: torch.Tensor, D: np.ndarray, I: np.ndarray, kk: int, block: int = 1024, self_excluded: bool = False,
            also: torch.Tensor | None = None):
    """Re-query exactly the rows whose HNSW search got stuck: a row is stuck when some point that
    found it is nearer to it than the nearest point it found itself (a search that ended in the
    wrong region of a clustered set; "nearer" meaning by a factor ``STUCK``), and the rows flagged
    in ``also``. Cost O(stuck · n · d); in place on ``D``, ``I``."""
    n = D.shape[0]
    Dt = torch.from_numpy(D)
    It = torch.from_numpy(I)
    src = It.reshape(-1)
    rows = torch.arange(n).repeat_interleave(kk)
    ok = (src >= 0) & (src != rows)          # a row finding itself says nothing about its search
    rev = torch.full((n,), float("inf"))
    rev.scatter_reduce_(0, src[ok], Dt.reshape(-1)[ok], "amin")
    nearest = torch.where(It[:, 0] == torch.arange(n), Dt[:, min(1, kk - 1)], Dt[:, 0])
    bad = rev < STUCK * nearest
    if also is not None:   # rows that must be re-searched anyway (e.g. fewer than kk found)
        bad |= also
    stuck = torch.nonzero(bad).reshape(-1)
    del rows, ok, src
    if stuck.numel() == 0:
        return 0
    xf = x.detach().float()
    xn = (xf * xf).sum(1)
    for a in range(0, stuck.numel(), block):
        q = stuck[a:a + block]
        d = (xn[q, None] + xn[None, :] - 2 * xf[q] @ xf.t()).clamp_min_(0)
        if self_excluded:
            d[torch.arange(q.numel()), q] = float("inf")
        dd, ii = torch.topk(d, kk, dim=1, largest=False)
        D[q.numpy()] = dd.numpy()
        I[q.numpy()] = ii.numpy()
    return int(stuck.numel())


def _exact_sample(xc, q, kk, chunk=64):
    """Exact ``kk`` nearest (self excluded) of the rows ``q`` among all rows of ``xc``."""
    xn = (xc * xc).sum(1)
    out = []
    for a in range(0, q.numel(), chunk):
        qq = q[a:a + chunk]
        d = torch.addmm(xn[None, :], xc[qq], xc.t(), alpha=-2.0).add_(xn[qq, None])
        d[torch.arange(qq.numel()), qq] = float("inf")
        out.append(torch.topk(d, kk, dim=1, largest=False).indices)
    return torch.cat(out)


def _nearest_centroids(mod, home: torch.Tensor, xc: torch.Tensor, cent: torch.Tensor, p: int,
                       num_threads: int) -> torch.Tensor:
    """``[n, p]`` ids of the ``p`` centroids nearest to every row, its own (``home``) first,
    searched among the ``2p`` centroids nearest to its own centroid (``csrc/cpu/knn.cpp``)."""
    c = cent.shape[0]
    m = min(c, 2 * p)
    cnbr = torch.cat([torch.topk(torch.cdist(cent[a:a + 4096], cent), m, dim=1, largest=False).indices
                      for a in range(0, c, 4096)]).contiguous()          # [c, m], in blocks: no [c, c] matrix
    return mod.centroid_probes(xc, cent.contiguous(), home.contiguous(), cnbr, p, int(num_threads))


def ivf(x: torch.Tensor, k: int, loop: bool, *, mod, num_threads: int = 1, bar=None, recall: float | None = None,
        list_size: int | None = None, probes: int | None = None, seed: int = 0, info: dict | None = None):
    """Inverted-file kNN of every row among the rows, exact inside each row's candidate lists.

    Every row probes the ``P`` lists whose centroids are nearest to *it* (its own list first),
    and the search runs list by list: the rows probing a list are gathered into one block
    against the list's members (one BLAS product, then the C++ heap selection). ``P`` is the
    smallest giving a recall ``>= IVF_RECALL`` on a sample of rows checked against their exact
    neighbour lists; rows left with fewer than ``k`` neighbours are searched exactly.
    ``bar`` advances by ``n``; ``info`` (a dict, optional) receives ``lists``, ``probes``,
    ``sample_recall`` (the recall estimate that chose ``probes``) and ``repaired`` rows.
    ``mod``: the C++ extension ``csrc/cpu/knn.cpp`` (its heap selection).
    """

    recall = IVF_RECALL if recall is None else recall
    list_size = list_size or IVF_LIST
    n, d = x.shape
    xc = x.detach().float()
    xc = (xc - xc.mean(0, keepdim=True)).contiguous()
    nlist = max(1, min(n // max(1, list_size), 1 << 16))
    pmax = min(nlist, IVF_MAX_PROBES)
    faiss = _faiss(num_threads)
    xs = xc.numpy()
    if nlist > 1:
        km = faiss.Kmeans(d, nlist, niter=IVF_ITERS, seed=seed, max_points_per_centroid=IVF_TRAIN,
                          min_points_per_centroid=1, verbose=False)
        km.train(xs)
        cent = np.ascontiguousarray(km.centroids, dtype=np.float32)
        flat_index = faiss.IndexFlatL2(d)
        flat_index.add(cent)
        home = torch.from_numpy(flat_index.search(xs, 1)[1][:, 0].astype(np.int64))
        near = _nearest_centroids(mod, home, xc, torch.from_numpy(cent), pmax, num_threads)  # [n, pmax], home first
    else:
        home = torch.zeros(n, dtype=torch.long)
        near = home[:, None]
    kk = min(k, n - (0 if loop else 1))
    if probes is None and nlist > 1 and kk > 0:
        # recall of "row i's candidates are the lists near[i, :P]" on a sample: rank of each true
        # neighbour's list in its row's probe order (pmax: not reached)
        g = torch.Generator().manual_seed(seed)
        q = torch.randperm(n, generator=g)[:min(n, IVF_SAMPLE)]
        true = _exact_sample(xc, q, kk)
        hit = near[q][:, None, :] == home[true][:, :, None]                  # [s, kk, pmax]
        rank = torch.full((q.numel(), kk), pmax, dtype=torch.long)
        found = hit.any(2)
        rank[found] = hit.float().argmax(2)[found]
        srt = torch.sort(rank.reshape(-1)).values
        need = srt[min(srt.numel() - 1, max(0, math.ceil(recall * srt.numel()) - 1))]
        probes = int(min(pmax, int(need) + 1))
        est = float((rank < probes).double().mean())
    else:
        probes = min(pmax, probes or pmax)
        est = None
    # rows sorted by their own list; the lists' members are contiguous in that order
    order = torch.argsort(home, stable=True)
    lptr = torch.zeros(nlist + 1, dtype=torch.long)
    lptr[1:] = torch.cumsum(torch.bincount(home, minlength=nlist), 0)
    xp = xc[order].contiguous()
    norms = (xp * xp).sum(1).contiguous()
    xpn = xp.numpy()
    best_d = torch.full((n, max(kk, 1)), float("inf"))
    best_i = torch.full((n, max(kk, 1)), -1, dtype=torch.long)
    empty = torch.empty(0, dtype=torch.long)
    lp = lptr.tolist()
    workers = max(1, min(int(num_threads), n))
    # pass 1: every list's rows against its own members (contiguous blocks; fills the heaps with
    # near candidates, so pass 2 rarely inserts). Pass 2: the other probes of every row, grouped
    # by list; worker w owns the rows [w n / W, (w + 1) n / W), so no two workers share a heap.
    probe = near[order, 1:probes].reshape(-1)
    who = torch.arange(n).repeat_interleave(max(probes - 1, 0))
    key = probe * workers + who * workers // n
    by_list = torch.argsort(key, stable=True)
    who, key = who[by_list], key[by_list]
    kptr = torch.zeros(nlist * workers + 1, dtype=torch.long)
    kptr[1:] = torch.cumsum(torch.bincount(key, minlength=nlist * workers), 0)
    kp = kptr.tolist()
    del near, probe, by_list, key
    chunk = 1024

    def block(buf, rows, r0, c0, c1):
        """Rows (a tensor of heap rows, or the range ``r0 + [0, m)``) against members ``[c0, c1)``."""
        m = rows.numel() if rows is not None else r0[1] - r0[0]
        size = m * (c1 - c0)
        out = buf[:size].reshape(m, c1 - c0) if size <= buf.size else np.empty((m, c1 - c0), dtype=np.float32)
        if rows is None:
            a, b = r0
            np.matmul(xpn[a:b], xpn[c0:c1].T, out=out)
            mod.knn_select(torch.from_numpy(out), norms[a:b], norms[c0:c1], c0, a, not loop, empty, empty, empty,
                           best_d[a:b], best_i[a:b], 1)
        else:
            np.matmul(xpn[rows.numpy()], xpn[c0:c1].T, out=out)
            mod.knn_select(torch.from_numpy(out), norms[rows], norms[c0:c1], c0, 0, not loop, empty, empty, rows,
                           best_d, best_i, 1)

    def own(wid):
        buf = np.empty(chunk * 4 * list_size, dtype=np.float32)
        for li in range(wid, nlist, workers):
            c0, c1 = lp[li], lp[li + 1]
            for a in range(c0, c1, chunk):
                block(buf, None, (a, min(c1, a + chunk)), c0, c1)
            if bar is not None:
                bar.update((c1 - c0) // 2)

    def others(wid):
        buf = np.empty(chunk * 4 * list_size, dtype=np.float32)
        for li in range(nlist):
            c0, c1 = lp[li], lp[li + 1]
            r0, r1 = kp[li * workers + wid], kp[li * workers + wid + 1]
            if c1 > c0:
                for a in range(r0, r1, chunk):
                    block(buf, who[a:min(r1, a + chunk)], None, c0, c1)
            if bar is not None and wid == 0:
                bar.update(c1 - c0 - (c1 - c0) // 2)

    if kk > 0:
        from .knn_host import run_workers

        run_workers(own, workers)
        run_workers(others, workers)
    elif bar is not None:
        bar.update(n)
    # back to the original order (rows and neighbour ids)
    D = np.empty((n, max(kk, 1)), dtype=np.float32)
    I = np.empty((n, max(kk, 1)), dtype=np.int64)
    best_d, srt = torch.sort(best_d, dim=1)              # the heaps are in heap order
    best_i = torch.gather(best_i, 1, srt)
    bi = torch.where(best_i >= 0, order[best_i.clamp_min(0)], best_i)
    D[order.numpy()] = best_d.numpy()
    I[order.numpy()] = bi.numpy()
    fixed = _repair(x, D, I, max(kk, 1), self_excluded=not loop, also=torch.from_numpy(I[:, -1] < 0)) \
        if kk > 0 else 0
    if info is not None:
        info.update(lists=nlist, probes=probes, sample_recall=est, repaired=fixed)
    return _finish(D, I, n, k, True)


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
