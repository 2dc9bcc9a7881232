"""Approximate and external nearest-neighbour searches behind ``tgrep::knn`` (CPU).

* :func:`ivf` -- an inverted file searched by BLAS blocks: k-means lists in two levels (faiss'
  k-means on a sample: ``√nlist`` coarse cells, then a k-means inside each cell; every row is
  compared with the fine centroids of the ``COARSE_PROBES`` cells nearest to its own, so neither
  the training nor the assignment costs ``n · nlist``); every row probes the ``P`` lists whose centroids are nearest to it, and each list's
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

from .kmeans import assign_clusters

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
COARSE_PROBES = 8      # coarse cells whose fine centroids every row is compared with (two-level quantizer)
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


def stuck_rows(D: torch.Tensor, I: torch.Tensor) -> torch.Tensor:
    """``[n]`` bool: rows some other row found ``1 / STUCK`` times nearer than their own nearest
    (twin of the C++ ``stuck_rows``). ``D``, ``I`` ``[n, k]`` ascending, ``-1`` for empty slots."""
    n, kk = D.shape
    src = I.reshape(-1)
    rows = torch.arange(n).repeat_interleave(kk)
    ok = (src >= 0) & (src != rows)          # a row finding itself says nothing about its search
    rev = torch.full((n,), float("inf"))
    rev.scatter_reduce_(0, src[ok], D.reshape(-1)[ok], "amin")
    nearest = torch.where(I[:, 0] == torch.arange(n), D[:, min(1, kk - 1)], D[:, 0])
    return rev < STUCK * nearest


def _repair(x: torch.Tensor, D: np.ndarray, I: np.ndarray, kk: int, block: int = 1024, self_excluded: bool = False,
            also: torch.Tensor | None = None, mod=None, rows_of: torch.Tensor | None = None):
    """Re-query exactly the rows whose HNSW search got stuck: a row is stuck when some point that
    found it is nearer to it than the nearest point it found itself (a search that ended in the
    wrong region of a clustered set; "nearer" meaning by a factor ``STUCK``), and the rows flagged
    in ``also``. Cost O(stuck · n · d); in place on ``D``, ``I``. ``mod``: the C++ extension
    (``stuck_rows``: the same test in one pass), else torch. ``rows_of``: row ``h`` of ``D``, ``I``
    is row ``rows_of[h]`` of ``x`` (ids are positions in that order)."""
    n = D.shape[0]
    Dt = torch.from_numpy(D)
    It = torch.from_numpy(I)
    bad = mod.stuck_rows(Dt, It, STUCK) if mod is not None else stuck_rows(Dt, It)
    if also is not None:   # rows that must be re-searched anyway (e.g. fewer than kk found)
        bad |= also
    stuck = torch.nonzero(bad).reshape(-1)
    if stuck.numel() == 0:
        return 0
    xf = x.detach().float()
    xn = (xf * xf).sum(1)
    pos = None
    if rows_of is not None:   # searched in x's own row order, the ids then mapped to positions
        pos = torch.empty_like(rows_of)
        pos[rows_of] = torch.arange(n)
    for a in range(0, stuck.numel(), block):
        q = stuck[a:a + block]
        qx = q if rows_of is None else rows_of[q]
        d = (xn[qx, None] + xn[None, :] - 2 * xf[qx] @ xf.t()).clamp_min_(0)
        if self_excluded:
            d[torch.arange(q.numel()), qx] = float("inf")
        dd, ii = torch.topk(d, kk, dim=1, largest=False)
        D[q.numpy()] = dd.numpy()
        I[q.numpy()] = (ii if pos is None else pos[ii]).numpy()
    return int(stuck.numel())


def _exact_sample(xc, q, kk, chunk=64, block=1 << 16):
    """Exact ``kk`` nearest (self excluded) of the rows ``q`` among all rows of ``xc``, ascending.
    Blocks of ``chunk`` queries x ``block`` rows in one reused buffer, the ``kk`` best of each
    block merged (a ``[chunk, n]`` block per chunk would be fresh memory at every chunk once
    ``n`` is large: page faults cost more than the product)."""
    n = xc.shape[0]
    xn = (xc * xc).sum(1)
    out = []
    buf = torch.empty(min(chunk, q.numel()) * min(n, block), dtype=xc.dtype)
    for a in range(0, q.numel(), chunk):
        qq = q[a:a + chunk]
        xq = xc[qq]
        best_d = best_i = None
        for c0 in range(0, n, block):
            c1 = min(n, c0 + block)
            d = buf[:qq.numel() * (c1 - c0)].view(qq.numel(), c1 - c0)
            torch.addmm(xn[None, c0:c1], xq, xc[c0:c1].t(), alpha=-2.0, out=d).add_(xn[qq, None])
            mine = torch.nonzero((qq >= c0) & (qq < c1)).reshape(-1)
            d[mine, qq[mine] - c0] = float("inf")
            bd, bi = torch.topk(d, min(kk, c1 - c0), dim=1, largest=False)
            bi += c0
            if best_d is not None:
                bd, sel = torch.topk(torch.cat([best_d, bd], 1), kk, dim=1, largest=False)
                bi = torch.gather(torch.cat([best_i, bi], 1), 1, sel)
            best_d, best_i = bd, bi
        out.append(best_i)
    return torch.cat(out)


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[len(a), len(b)]`` squared Euclidean distances (one BLAS product)."""
    return torch.addmm((b * b).sum(1)[None, :], a, b.t(), alpha=-2.0).add_((a * a).sum(1)[:, None]).clamp_min_(0)


def _kmeans(faiss, xs: np.ndarray, c: int, seed: int, per_centroid: int) -> np.ndarray:
    """``c`` k-means centroids of the rows ``xs`` (faiss; at most ``per_centroid`` points each sampled)."""
    if c >= xs.shape[0]:
        return np.ascontiguousarray(xs[:c], dtype=np.float32)
    km = faiss.Kmeans(xs.shape[1], c, niter=IVF_ITERS, seed=seed, max_points_per_centroid=per_centroid,
                      min_points_per_centroid=1, verbose=False)
    km.train(np.ascontiguousarray(xs))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _two_level(xc: torch.Tensor, nlist: int, seed: int, faiss):
    """The inverted file's centroids in two levels, so that neither the k-means nor the
    assignment costs ``n · nlist``: ``C = ⌈√nlist⌉`` coarse k-means centroids; the fine
    centroids (``≈ nlist``) are a k-means inside each coarse cell (on a sample of ``IVF_TRAIN``
    points per fine centroid, shared in proportion to the cells' sizes). Returns
    ``(cent [nlist', d] float32, top [n] (every row's coarse cell), cands)``: ``cands[j]`` the
    fine centroids of the ``COARSE_PROBES`` coarse cells nearest to cell ``j`` (itself first),
    the centroids a row of cell ``j`` is compared with (:func:`_nearest_fine`)."""
    n, d = xc.shape
    g = torch.Generator().manual_seed(seed)
    sample = torch.randperm(n, generator=g)[:min(n, IVF_TRAIN * nlist)]
    xs = xc[sample].contiguous()
    c1 = max(1, min(nlist, math.ceil(math.sqrt(nlist))))
    coarse = torch.from_numpy(_kmeans(faiss, xs.numpy(), c1, seed, 256))
    c1 = coarse.shape[0]
    s_of = assign_clusters(xs, coarse)
    size = torch.bincount(s_of, minlength=c1)
    want = (size.double() * nlist / max(1, xs.shape[0])).round().long().clamp_min(1).minimum(size.clamp_min(1))
    fine, owner = [], []
    for j in range(c1):
        pts = xs[s_of == j]
        fine.append(coarse[j:j + 1].numpy() if pts.shape[0] == 0 else
                    _kmeans(faiss, pts.numpy(), int(want[j]), seed + j, IVF_TRAIN))
        owner += [j] * fine[-1].shape[0]
    cent = torch.from_numpy(np.ascontiguousarray(np.concatenate(fine), dtype=np.float32))
    owner = torch.tensor(owner, dtype=torch.long)
    top = assign_clusters(xc, coarse)
    cn = torch.topk(_sq_dist(coarse, coarse), min(c1, COARSE_PROBES), dim=1, largest=False).indices  # itself first
    by_owner = torch.argsort(owner, stable=True)
    optr = torch.zeros(c1 + 1, dtype=torch.long)
    optr[1:] = torch.cumsum(torch.bincount(owner, minlength=c1), 0)
    cands = [torch.cat([by_owner[optr[c]:optr[c + 1]] for c in cn[j].tolist()]) for j in range(c1)]
    return cent, top, cands


def _nearest_fine(mod, xc, rows, top, cent, cands, p, num_threads):
    """``[len(rows), p]`` the ``p`` fine centroids nearest to each of ``rows`` among its coarse
    cell's candidates ``cands[top[row]]``, ascending (so the first is its home). One BLAS block
    per coarse cell and chunk, then the C++ selection ``smallest_k``."""
    out = torch.empty(rows.numel(), p, dtype=torch.long)
    cell = top[rows]
    srt = torch.argsort(cell, stable=True)
    ptr = torch.zeros(len(cands) + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(torch.bincount(cell, minlength=len(cands)), 0)
    pt = ptr.tolist()
    for j in range(len(cands)):
        pos = srt[pt[j]:pt[j + 1]]
        for a in range(0, pos.numel(), 16384):
            pp = pos[a:a + 16384]
            dist = _sq_dist(xc[rows[pp]], cent[cands[j]]).contiguous()
            out[pp] = cands[j][mod.smallest_k(dist, p, int(num_threads))]
    return out


def ivf(x: torch.Tensor, k: int, loop: bool, *, mod, num_threads: int = 1, bar=None, recall: float | None = None,
        list_size: int | None = None, probes: int | None = None, seed: int = 0, info: dict | None = None,
        local: bool = False):
    """Inverted-file kNN of every row among the rows, exact inside each row's candidate lists.

    Every row probes the ``P`` lists whose centroids are nearest to *it* (its own list first),
    and the search runs list by list: the rows probing a list are gathered into one block
    against the list's members (one BLAS product, then the C++ heap selection). ``P`` is the
    smallest giving a recall ``>= IVF_RECALL`` on a sample of rows checked against their exact
    neighbour lists; rows left with fewer than ``k`` neighbours are searched exactly.
    ``bar`` advances by ``n``; ``info`` (a dict, optional) receives ``lists``, ``probes``,
    ``sample_recall`` (the recall estimate that chose ``probes``) and ``repaired`` rows.
    ``mod``: the C++ extension ``csrc/cpu/knn.cpp`` (its heap selection, the nearest-centroid
    selection ``smallest_k``, ``heaps_to_lists`` and ``stuck_rows``). Centroids: :func:`_two_level`.
    ``local``: return ``(dist, index, order)`` with the rows left in the search's list order
    (row ``h`` is row ``order[h]`` of ``x``, ids are positions in that order): the same lists,
    without the scattered writes and id lookups of putting them back in row order.
    """

    recall = IVF_RECALL if recall is None else recall
    list_size = list_size or IVF_LIST
    n, d = x.shape
    xc = x.detach().float()
    xc = (xc - xc.mean(0, keepdim=True)).contiguous()
    nlist = max(1, min(n // max(1, list_size), 1 << 16))
    pmax = min(nlist, IVF_MAX_PROBES)
    faiss = _faiss(num_threads)
    kk = min(k, n - (0 if loop else 1))
    if nlist > 1:
        cent, top, cands = _two_level(xc, nlist, seed, faiss)
        nlist = cent.shape[0]
        pmax = min([pmax] + [c.numel() for c in cands])                   # no list probed twice
    if nlist > 1 and probes is None and kk > 0:
        # recall of "row i's candidates are its P nearest lists" on a sample: the rank of each true
        # neighbour's list in its row's probe order (pmax: not reached)
        g = torch.Generator().manual_seed(seed)
        q = torch.randperm(n, generator=g)[:min(n, IVF_SAMPLE)]
        true = _exact_sample(xc, q, kk)
        near_q = _nearest_fine(mod, xc, q, top, cent, cands, pmax, num_threads)
        home_t = _nearest_fine(mod, xc, true.reshape(-1), top, cent, cands, 1, num_threads).reshape(true.shape)
        hit = near_q[:, None, :] == home_t[:, :, None]                    # [s, kk, pmax]
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
    if nlist > 1:
        near = _nearest_fine(mod, xc, torch.arange(n), top, cent, cands, probes, num_threads)   # home first
        home = near[:, 0].contiguous()
    else:
        home = torch.zeros(n, dtype=torch.long)
        near = home[:, None]
        probes = 1
    # rows sorted by their own list; the lists' members are contiguous in that order
    order, lptr = mod.counting_order(home, nlist)   # argsort(home, stable=True) and the lists' offsets
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
    by_list, kptr = mod.counting_order(key, nlist * workers)   # argsort(key, stable=True), offsets
    who = who[by_list]
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
    # back to the original order (rows and neighbour ids), each row sorted; or, local, each row
    # sorted in place (the identity map)
    D, I = mod.heaps_to_lists(best_d, best_i, torch.arange(n) if local else order, int(num_threads))
    del best_d, best_i
    D, I = D.numpy(), I.numpy()
    fixed = _repair(x, D, I, max(kk, 1), self_excluded=not loop, also=torch.from_numpy(I[:, -1] < 0), mod=mod,
                    rows_of=order if local else None) if kk > 0 else 0
    if info is not None:
        info.update(lists=nlist, probes=probes, sample_recall=est, repaired=fixed)
    if kk == k and kk > 0:   # already in _finish's form: sorted, (inf, -1) for empty slots, no padding
        D, I = torch.from_numpy(D), torch.from_numpy(I)
    else:
        D, I = _finish(D, I, n, k, True)
    return (D, I, order) if local else (D, I)


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
