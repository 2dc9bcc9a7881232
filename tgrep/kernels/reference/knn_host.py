"""Host loop of the C++ exact kNN (``csrc/cpu/knn.cpp``): BLAS dot-product blocks, heap
selection in C++, coarse thread parallelism.

Parallelism is coarse: ``workers`` Python threads each own whole query chunks (BLAS and the
selection single-threaded inside, the GIL released), so there are no fine-grained barriers:
this stays fast on an oversubscribed CPU, where per-block OpenMP/BLAS thread teams stall.
Twin: :func:`tgrep.kernels.reference.knn.knn_blocked`.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


def batch_ptr(batch: torch.Tensor) -> list:
    """``ptr`` of a sorted, compact batch vector (ids ``0 .. G-1``), as a Python list."""
    nb = int(batch[-1]) + 1 if batch.numel() else 0
    ptr = torch.zeros(nb + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(torch.bincount(batch, minlength=nb), 0)
    return ptr.tolist()


def knn_cpp(mod, x: torch.Tensor, k: int, batch: torch.Tensor | None, loop: bool, *, chunk: int = 512,
            block: int = 4096, workers: int = 1, bar=None):
    """``(dist, index)`` ``[n, k]`` in the working dtype of ``x`` (float32/float64), ascending,
    ``inf`` / ``-1`` padding; ``x`` centred by the caller or not (it is centred here)."""

    n = x.shape[0]
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    xc = x.detach().to(dtype)
    xc = xc - xc.mean(0, keepdim=True)
    norms = (xc * xc).sum(1).contiguous()
    # numpy's BLAS (OpenBLAS) runs these skinny GEMMs ~1.5x faster than torch's CPU GEMM here
    xs = xc.contiguous().numpy()
    xsT = xs.T.copy()
    best_d = torch.full((n, k), float("inf"), dtype=dtype)
    best_i = torch.full((n, k), -1, dtype=torch.long)
    empty = torch.empty(0, dtype=torch.long)
    ptr = batch_ptr(batch) if batch is not None else None
    starts = list(range(0, n, chunk))
    workers = max(1, min(workers, len(starts)))

    def work(wid):
        buf = torch.empty(chunk * block, dtype=dtype)  # reused block: no page faults per block
        bufn = buf.numpy()
        for a in starts[wid::workers]:
            b = min(n, a + chunk)
            lo, hi = (ptr[int(batch[a])], ptr[int(batch[b - 1]) + 1]) if batch is not None else (0, n)
            bd, bi = best_d[a:b], best_i[a:b]  # contiguous row slices, updated in place
            bq = batch[a:b].contiguous() if batch is not None else empty
            for c0 in range(lo, hi, block):
                c1 = min(hi, c0 + block)
                size = (b - a) * (c1 - c0)
                np.matmul(xs[a:b], xsT[:, c0:c1], out=bufn[:size].reshape(b - a, c1 - c0))
                G = buf[:size].view(b - a, c1 - c0)
                by = batch[c0:c1].contiguous() if batch is not None else empty
                mod.knn_select(G, norms[a:b], norms[c0:c1], c0, a, not loop, bq, by, empty, bd, bi, 1)
            if bar is not None:
                bar.update(b - a)

    run_workers(work, workers)
    best_d, order = torch.sort(best_d, dim=1)
    best_i = torch.gather(best_i, 1, order)
    best_i = torch.where(torch.isinf(best_d), torch.full_like(best_i, -1), best_i)
    return best_d, best_i


def run_workers(work, workers: int) -> None:
    """``work(0) .. work(workers - 1)`` on a thread pool (the C++ selection releases the GIL),
    with BLAS held to one thread per worker so the two levels of threads do not multiply."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        if workers == 1:
            work(0)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, range(workers)))
