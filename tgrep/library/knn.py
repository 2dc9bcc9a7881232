"""Custom op ``tgrep::knn``: the ``k`` nearest neighbours of every row of ``x`` among its rows.

Kernels: on CPU the C++ heap selection over BLAS blocks (``csrc/cpu/knn.cpp``, host loop in
:mod:`tgrep.kernels.reference.knn_host`) for ``method='exact'``, faiss' HNSW / flat index or
pynndescent (:mod:`tgrep.kernels.reference.ann`; ``'ivf'``: faiss k-means lists searched by
BLAS blocks + the same C++ selection) for the other methods; on CUDA the Triton
brute-force kernel (:mod:`tgrep.kernels.triton.knn`, any method: exact on the GPU); the
reference (:func:`tgrep.kernels.reference.knn.knn_blocked`, exact) anywhere.

Every kernel runs on ``x`` rescaled by a power of two when its magnitude would over- or
underflow squared distances (exact in floating point), so neighbours are found at any finite
scale; distances that overflow the output dtype are ``inf`` with a valid index.
"""
# no `from __future__ import annotations` here: torch.library infers the schema from real type hints

import math
from typing import Optional

import torch
from torch import Tensor

from .._ext import load_cpp
from ..kernels.reference import knn as ref
from ..utils import check
from ..utils.progress import log, progress
from ._register import kernel_op

METHODS = ("exact", "ivf", "hnsw", "faiss", "nndescent")
TRITON_MAX_K = 128
_SAFE = 2.0 ** 40  # |x| beyond this (or below its inverse) is rescaled before squaring


def _check(x, k, batch, loop, method, chunk, num_threads, verbose):
    flags = check.finite_flags("x", x)
    if batch is not None and batch.numel():
        n = x.shape[0]
        flags = flags + check.index_flags("batch", batch, n)
        if batch.numel() > 1:
            flags.append(((batch.diff() < 0).any(), lambda: "'batch' must be sorted"))
    check.values(flags)
    if chunk < 0 or num_threads < 0:
        raise ValueError(f"'chunk' and 'num_threads' must be >= 0 (0: default), got {chunk}, {num_threads}")
    if method not in METHODS:
        raise ValueError(f"'method' must be one of {METHODS}, got {method!r}")


def _scaled(fn):
    """Run ``fn(x, ...) -> (dist, index)`` on ``x / 2^e`` when ``x`` is extreme; undo the scale."""
    def run(x, k, batch, loop, method, chunk, num_threads, verbose):
        n = x.shape[0]
        if n == 0:
            return x.new_zeros((0, k)), torch.zeros((0, k), dtype=torch.long, device=x.device)
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        e = 0
        amax = float((work - work.mean(0, keepdim=True)).abs().max()) if work.numel() else 0.0
        if amax > 0 and (amax > _SAFE or amax < 1 / _SAFE):
            e = math.frexp(amax)[1]
            work = torch.ldexp(work, torch.tensor(-e, dtype=work.dtype, device=x.device))
        dist, idx = fn(work, k, batch, loop, method, chunk, num_threads, verbose)
        if e:
            dist = torch.ldexp(dist.double(), torch.tensor(2 * e, dtype=torch.float64, device=x.device))
        return dist.to(x.dtype).contiguous(), idx.contiguous()

    return run


def _reference(x, k, batch, loop, method, chunk, num_threads, verbose):
    with progress(total=x.shape[0], verbose=verbose, desc="knn (reference)") as bar:
        return ref.knn_blocked(x, x, k, loop=loop, batch_x=batch, batch_y=batch, self_query=True,
                               chunk=chunk or (512 if x.device.type == "cpu" else 1024),
                               block=4096 if x.device.type == "cpu" else 65536, progress=bar)


def _cpu(x, k, batch, loop, method, chunk, num_threads, verbose):
    from ..kernels.reference import ann, knn_host

    n = x.shape[0]
    num_threads = num_threads or max(1, torch.get_num_threads())
    if method == "exact":
        mod = load_cpp("knn")
        if mod is None:
            return _reference(x, k, batch, loop, method, chunk, num_threads, verbose)
        with progress(total=n, verbose=verbose, desc="knn (exact)") as bar:
            return knn_host.knn_cpp(mod, x, k, batch, loop, chunk=chunk or 512, workers=num_threads, bar=bar)
    if batch is not None:
        raise ValueError(f"knn method {method!r} does not support 'batch'; use method='exact'")
    if method == "ivf":
        mod = load_cpp("knn")
        if mod is None:
            return _reference(x, k, batch, loop, method, chunk, num_threads, verbose)
        with progress(total=n, verbose=verbose, desc="knn (ivf)") as bar:
            info = {}
            out = ann.ivf(x, k, loop, mod=mod, num_threads=num_threads, bar=bar, info=info)
        est = info.get("sample_recall")
        log(f"knn ivf: {info['lists']} lists, {info['probes']} probed per row (recall on a sample "
            f"{'n/a' if est is None else f'{est:.3f}'}), {info['repaired']} rows re-searched exactly", verbose)
        return out
    fn = {"hnsw": ann.hnsw, "faiss": ann.flat, "nndescent": ann.nndescent}[method]
    with progress(total=2 * n if method == "hnsw" else n, verbose=verbose, desc=f"knn ({method})") as bar:
        return fn(x, k, loop, num_threads=num_threads, bar=bar)


def _local_cpu(x, k, loop, method, num_threads, verbose):
    """``(dist, index, order)``: the IVF search's lists left in its list order (row ``h`` is
    row ``order[h]`` of ``x``, neighbour ids are positions in that order); every other method
    in the rows' own order (``order = arange``)."""
    from ..kernels.reference import ann

    n = x.shape[0]
    mod = load_cpp("knn") if method == "ivf" else None
    if mod is None:
        return _rows_in_order(_cpu)(x, k, loop, method, num_threads, verbose)
    num_threads = num_threads or max(1, torch.get_num_threads())
    with progress(total=n, verbose=verbose, desc="knn (ivf)") as bar:
        info = {}
        d, i, order = ann.ivf(x, k, loop, mod=mod, num_threads=num_threads, bar=bar, info=info, local=True)
    est = info.get("sample_recall")
    log(f"knn ivf: {info['lists']} lists, {info['probes']} probed per row (recall on a sample "
        f"{'n/a' if est is None else f'{est:.3f}'}), {info['repaired']} rows re-searched exactly", verbose)
    return d, i, order


def _scaled_local(fn):
    """:func:`_scaled` for the three outputs of ``tgrep::knn_local``."""
    def run(x, k, loop, method, num_threads, verbose):
        order = []

        def inner(x, k, batch, loop, method, chunk, num_threads, verbose):
            d, i, o = fn(x, k, loop, method, num_threads, verbose)
            order.append(o)
            return d, i

        d, i = _scaled(inner)(x, k, None, loop, method, 0, num_threads, verbose)
        return d, i, (order[0].contiguous() if order else torch.arange(x.shape[0], device=x.device))

    return run


def _rows_in_order(knn_fn):
    """A ``knn_local`` kernel from a ``knn`` kernel that keeps the rows' own order (``order =
    arange(n)``)."""
    def run(x, k, loop, method, num_threads, verbose):
        d, i = knn_fn(x, k, None, loop, method, 0, num_threads, verbose)
        return d, i, torch.arange(x.shape[0], device=x.device)

    return run


def _triton_kernel(x, k, batch, loop, method, chunk, num_threads, verbose):
    if k > TRITON_MAX_K:
        return _reference(x, k, batch, loop, method, chunk, num_threads, verbose)
    from ..kernels.triton.knn import knn_triton

    return knn_triton(x, k, batch=batch, loop=loop)


@kernel_op("tgrep::knn", cpp=lambda: _scaled(_cpu), triton=lambda: _scaled(_triton_kernel), check=_check)
def knn(x: Tensor, k: int, batch: Optional[Tensor], loop: bool, method: str, chunk: int, num_threads: int,
        verbose: bool) -> tuple[Tensor, Tensor]:
    """``(dist [n, k], index [n, k] int64)``; see :func:`tgrep.ops.knn` for the contract. The
    reference is the exact search whatever ``method`` says (the spec of every method)."""
    return _scaled(_reference)(x, k, batch, loop, method, chunk, num_threads, verbose)


@knn.register_fake
def _(x, k, batch, loop, method, chunk, num_threads, verbose):
    n = x.shape[0]
    return x.new_empty((n, k)), x.new_empty((n, k), dtype=torch.int64)


def _check_nd(x, idx):
    if x.dim() != 2 or idx.dim() != 2 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"'x' [n, d] and 'idx' [n, m] expected, got {tuple(x.shape)} and {tuple(idx.shape)}")
    n = x.shape[0]
    check.values([((idx >= n).any(), lambda: f"'idx' has entries >= the number of rows ({n})")]
                 + check.finite_flags("x", x))


def _nd_cpu():
    mod = load_cpp("knn")
    if mod is None:
        return None

    def run(x, idx):
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        return mod.neighbor_distances(work.contiguous(), idx.contiguous(), max(1, torch.get_num_threads()))

    return run


@kernel_op("tgrep::neighbor_distances", cpp=_nd_cpu, check=_check_nd)
def neighbor_distances(x: Tensor, idx: Tensor) -> Tensor:
    """``[n, m]``: ``‖x_i − x_{idx[i, j]}‖²`` from differences (symmetric in ``i, j`` bit for
    bit, exactly 0 for duplicates), ``inf`` where ``idx < 0`` (float64 for float64 ``x``, else
    float32). The exact distances of a kNN support, whatever search found it."""
    return ref.neighbor_distances(x, idx)


@neighbor_distances.register_fake
def _(x, idx):
    return x.new_empty(idx.shape, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


def _check_local(x, k, loop, method, num_threads, verbose):
    _check(x, k, None, loop, method, 0, num_threads, verbose)


@kernel_op("tgrep::knn_local", cpp=lambda: _scaled_local(_local_cpu), triton=lambda: _scaled_local(_rows_in_order(_triton_kernel)),
           check=_check_local)
def knn_local(x: Tensor, k: int, loop: bool, method: str, num_threads: int,
              verbose: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(dist [n, k], index [n, k] int64, order [n] int64)``: the neighbour lists of
    ``tgrep::knn`` (no ``batch``) in a locality order of the rows: row ``h`` of the output
    belongs to row ``order[h]`` of ``x`` and neighbour ids are positions in that order (``-1``
    padding), so the neighbours of nearby rows are nearby. The IVF search gives its lists'
    order (members of a list contiguous, lists of one coarse cell adjacent); every other
    method, and the reference, the identity (``order = arange(n)``). Used by
    :func:`tgrep.learn_graph`, whose later stages then read rows near each other in memory."""
    return _scaled_local(_rows_in_order(_reference))(x, k, loop, method, num_threads, verbose)


@knn_local.register_fake
def _(x, k, loop, method, num_threads, verbose):
    n = x.shape[0]
    return x.new_empty((n, k)), x.new_empty((n, k), dtype=torch.int64), x.new_empty((n,), dtype=torch.int64)
