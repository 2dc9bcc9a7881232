"""k-nearest neighbours: our own chunked exact search, plus optional faiss / pynndescent.

``tgrep.ops.knn(x, k)`` returns ``(dist, index)``, both ``[n, k]``: squared Euclidean
distances in ascending order and neighbour indices (``-1`` / ``inf`` padding where an example
has fewer than ``k`` candidates). Memory is O(n·d + n·k + chunk·block): never an n × n tensor.

Methods:

* ``'exact'``     -- on CPU: BLAS dot-product blocks + heap selection in C++ (reference twin:
  blocked torch); on CUDA: a Triton kernel (distance tiles by ``tl.dot``, running top-k in
  registers; ``k <= 128``, else the blocked torch path).
* ``'faiss'``     -- ``faiss.IndexFlatL2`` (exact, BLAS) when the optional package is installed.
* ``'nndescent'`` -- ``pynndescent.NNDescent`` (approximate) when installed.
* ``'auto'``      -- ``'exact'`` on CUDA and up to 200,000 points; beyond that the first
  installed of faiss / pynndescent, else ``'exact'``. Verbose mode says which one ran.
"""
from __future__ import annotations

import numpy as np
import torch

from .._backend import choose
from .._ext import load_cpp
from ..kernels.reference import knn as _ref
from ..utils import check
from ..utils.progress import log, progress

METHODS = ("auto", "exact", "faiss", "nndescent")
AUTO_EXACT_MAX = 200_000
TRITON_MAX_K = 128


def _have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:
        return False


def resolve_method(method: str, n: int, device: torch.device, batch: bool) -> str:
    """The concrete method ``'auto'`` stands for (and a check that the requested one exists)."""
    check.one_of("method", method, METHODS)
    if method == "auto":
        if device.type == "cuda" or n <= AUTO_EXACT_MAX or batch:
            return "exact"
        for name, mod in (("faiss", "faiss"), ("nndescent", "pynndescent")):
            if _have(mod):
                return name
        return "exact"
    if method == "faiss" and not _have("faiss"):
        raise ImportError("knn method 'faiss' needs the optional package faiss (pip install faiss-cpu)")
    if method == "nndescent" and not _have("pynndescent"):
        raise ImportError("knn method 'nndescent' needs the optional package pynndescent")
    if method in ("faiss", "nndescent") and batch:
        raise ValueError(f"knn method {method!r} does not support 'batch'; use method='exact'")
    return method


def _external(method: str, x: torch.Tensor, k: int, loop: bool):
    import numpy as np

    xs = x.detach().float().cpu().numpy()
    kk = min(x.shape[0], k + (0 if loop else 1))
    if method == "faiss":
        import faiss

        index = faiss.IndexFlatL2(xs.shape[1])
        index.add(np.ascontiguousarray(xs))
        d, i = index.search(np.ascontiguousarray(xs), kk)
    else:
        import pynndescent

        index = pynndescent.NNDescent(xs, n_neighbors=max(kk, 2), metric="euclidean")
        i, d = index.neighbor_graph
        i, d = i[:, :kk], d[:, :kk] ** 2
    d = torch.from_numpy(np.asarray(d, dtype=np.float32)).to(x.device)
    i = torch.from_numpy(np.asarray(i, dtype=np.int64)).to(x.device)
    if not loop:  # drop self (wherever it sits among ties), keep k
        self_mask = i == torch.arange(x.shape[0], device=x.device)[:, None]
        d = d.masked_fill(self_mask, float("inf"))
        d, order = torch.sort(d, dim=1)
        i = torch.gather(i, 1, order)
        d, i = d[:, :k], i[:, :k]
    if d.shape[1] < k:
        pad = k - d.shape[1]
        d = torch.cat([d, d.new_full((d.shape[0], pad), float("inf"))], 1)
        i = torch.cat([i, i.new_full((i.shape[0], pad), -1)], 1)
    i = torch.where(torch.isinf(d), torch.full_like(i, -1), i)
    return d.to(x.dtype), i


def _knn_cpp(x, k, batch, loop, chunk, block, bar, workers):
    """Blocked search: BLAS dot products per block, heap selection in C++ (csrc/cpu/knn.cpp).

    Parallelism is coarse: ``workers`` Python threads each own whole query chunks (BLAS and the
    selection single-threaded inside, the GIL released), so no fine-grained barriers: this
    stays fast on an oversubscribed CPU, where per-block OpenMP/BLAS thread teams stall.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    mod = load_cpp("knn")
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
    if batch is not None:
        nb = int(batch[-1]) + 1
        ptr = torch.zeros(nb + 1, dtype=torch.long)
        ptr[1:] = torch.cumsum(torch.bincount(batch, minlength=nb), 0)
        ptr = ptr.tolist()
    starts = list(range(0, n, chunk))

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
                mod.knn_select(G, norms[a:b], norms[c0:c1], c0, a, not loop, bq, by, bd, bi, 1)
            bar.update(b - a)

    with threadpool_limits(limits=1, user_api="blas"):
        if workers == 1:
            work(0)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, range(workers)))
    best_d, order = torch.sort(best_d, dim=1)
    best_i = torch.gather(best_i, 1, order)
    best_i = torch.where(torch.isinf(best_d), torch.full_like(best_i, -1), best_i)
    return best_d.to(x.dtype), best_i


def knn(x: torch.Tensor, k: int, *, batch: torch.Tensor | None = None, loop: bool = False,
        method: str = "auto", chunk: int | None = None, num_threads: int | None = None,
        verbose: bool = False):
    r"""The ``k`` nearest neighbours of every row of ``x`` among the rows of ``x``.

    Args:
        x (Tensor): points ``[n, d]`` (floating point, finite).
        k (int): neighbours per point.
        batch (LongTensor, optional): sorted example index ``[n]``; neighbours are searched
            within each example only. (default: :obj:`None`)
        loop (bool): whether a point may be its own neighbour. (default: :obj:`False`)
        method (str): ``'auto'``, ``'exact'``, ``'faiss'`` or ``'nndescent'``. (default: ``'auto'``)
        chunk (int, optional): queries per block of the exact torch / C++ search; each
            distance block is ``chunk × 4096`` on CPU, ``chunk × 65536`` on CUDA.
            (default: ``512`` on CPU, ``1024`` on CUDA)
        num_threads (int, optional): CPU worker threads (default: ``torch.get_num_threads()``).
        verbose (bool): progress bar and the chosen method. (default: :obj:`False`)

    Returns:
        ``(dist, index)``: ``[n, k]`` squared Euclidean distances (ascending) and indices;
        ``inf`` / ``-1`` where fewer than ``k`` candidates exist.
    """
    check.tensor("x", x, dtypes=check.FLOAT_DTYPES, dim=2, finite=True)
    check.positive_int("k", k)
    x = x.detach()
    n = x.shape[0]
    if batch is not None:
        check.tensor("batch", batch, dtypes=check.INDEX_DTYPES, dim=1, device=x.device)
        check.same_length("x", x, "batch", batch)
        batch = batch.long()
        if n and bool((batch[1:] < batch[:-1]).any()):
            raise ValueError("'batch' must be sorted (PyG convention: examples stored contiguously)")
        check.index_range("batch", batch, 2**62)
    if chunk is not None:
        check.positive_int("chunk", chunk)
    concrete = resolve_method(method, n, x.device, batch is not None)
    log(f"knn: method={concrete!r} (requested {method!r}), n={n}, d={x.shape[1]}, k={k}", verbose)
    if n == 0:
        return x.new_zeros((0, k)), torch.zeros((0, k), dtype=torch.long, device=x.device)
    if concrete in ("faiss", "nndescent"):
        return _external(concrete, x, k, loop)
    block = 4096 if x.device.type == "cpu" else 65536
    if chunk is None:
        chunk = 512 if x.device.type == "cpu" else 1024
    backend = choose(x.device, ("triton", "cpp", "reference"), cpp_name="knn", op="knn")
    if backend == "triton" and k > TRITON_MAX_K:
        backend = "reference"
    if backend == "triton":
        from ..kernels.triton.knn import knn_triton  # lazy: only when the triton backend runs

        return knn_triton(x, k, batch=batch, loop=loop)
    with progress(total=n, verbose=verbose, desc="knn") as bar:
        if backend == "cpp":
            return _knn_cpp(x, k, batch, loop, chunk, block, bar,
                            max(1, min(num_threads or torch.get_num_threads(), -(-n // chunk))))
        return _ref.knn_blocked(x, x, k, loop=loop, batch_x=batch, batch_y=batch, self_query=True,
                                chunk=chunk, block=block, progress=bar)
