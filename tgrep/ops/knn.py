r"""k-nearest neighbours: ``tgrep.ops.knn`` (distances + indices) and the PyG-shaped
:func:`knn_graph` (an ``edge_index``), both on the custom op ``tgrep::knn``.

``knn(x, k)`` returns ``(dist, index)``, both ``[n, k]``: squared Euclidean distances
:math:`\|x_i - x_j\|^2` in ascending order and neighbour indices (``-1`` / ``inf`` padding where
an example has fewer than ``k`` candidates). Memory is O(n·d + n·k + chunk·block): never an
n × n tensor.

Methods:

* ``'exact'``     -- on CPU: BLAS dot-product blocks + heap selection in C++ (reference twin:
  blocked torch); on CUDA: a Triton kernel (distance tiles by ``tl.dot``, running top-k in
  registers; ``k <= 128``, else the blocked torch path).
* ``'ivf'``       -- approximate: an inverted file of k-means lists (faiss' k-means on a sample,
  ``n / 512`` lists, in two levels: ``√nlist`` coarse cells, then a k-means inside each, so no
  step costs ``n · nlist``); every row probes the ``P`` lists whose centroids are nearest to it
  (its own first), and each list's members are compared, by BLAS blocks and the C++ heap
  selection, with all the rows probing it; ``P`` is the smallest that finds 99% of the true
  neighbours of 500 sampled queries (checked against their exact lists); rows left with
  fewer than ``k`` neighbours or whose search looks stuck are re-searched exactly.
  O(n·P·512·d + n·√nlist·d). CPU only (on CUDA the exact Triton kernel runs).
* ``'hnsw'``      -- approximate: faiss' HNSW graph (``M = 16``, ``efConstruction = 80``,
  ``efSearch = max(64, 2(k+1))``), O(n log n · d). CPU only (on CUDA tensors the exact
  Triton kernel runs: brute force on a GPU beats a CPU graph index).
* ``'faiss'``     -- ``faiss.IndexFlatL2`` (exact, BLAS).
* ``'nndescent'`` -- ``pynndescent.NNDescent`` (approximate) when that optional package is installed.
* ``'auto'``      -- ``'exact'`` on CUDA, with ``batch``, and up to ``AUTO_EXACT_MAX``
  points; ``'ivf'`` beyond (when faiss is installed). :func:`resolve_method` says which one runs (``verbose`` prints it;
  :func:`tgrep.learn_graph` reports it in ``info['knn_method']``).
"""
from __future__ import annotations

import torch

from .. import library as _lib  # noqa: F401  (registers torch.ops.tgrep.knn)
from ..utils import check
from ..utils.progress import log

METHODS = ("auto", "exact", "ivf", "hnsw", "faiss", "nndescent")
AUTO_EXACT_MAX = 50_000  # above it the IVF search is several times faster than the exact one (see benchmarks/README.md)


def _have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:
        return False


def resolve_method(method: str, n: int, device: torch.device, batch: bool) -> str:
    """The concrete method ``'auto'`` stands for (and a check that the requested one can run)."""
    check.one_of("method", method, METHODS)
    if method == "auto":
        if device.type == "cuda" or n <= AUTO_EXACT_MAX or batch:
            return "exact"
        return "ivf" if _have("faiss") else "exact"
    if method in ("faiss", "hnsw", "ivf") and not _have("faiss"):
        raise ImportError(f"knn method {method!r} needs faiss (pip install faiss-cpu)")
    if method == "nndescent" and not _have("pynndescent"):
        raise ImportError("knn method 'nndescent' needs the optional package pynndescent")
    if method != "exact" and batch:
        raise ValueError(f"knn method {method!r} does not support 'batch'; use method='exact'")
    return method


def _threads(num_threads) -> int:
    if num_threads is None:
        return 0  # the kernel takes torch.get_num_threads() (not read here: no graph break)
    return check.positive_int("num_threads", num_threads)


def knn(x: torch.Tensor, k: int, *, batch: torch.Tensor | None = None, loop: bool = False,
        method: str = "auto", chunk: int | None = None, num_threads: int | None = None,
        verbose: bool = False):
    r"""The ``k`` nearest neighbours of every row of ``x`` among the rows of ``x``.

    Args:
        x (Tensor): points ``[n, d]`` (floating point, finite, dense).
        k (int): neighbours per point.
        batch (LongTensor, optional): sorted example index ``[n]`` (any non-negative ids);
            neighbours are searched within each example only. (default: :obj:`None`)
        loop (bool): whether a point may be its own neighbour. (default: :obj:`False`)
        method (str): ``'auto'``, ``'exact'``, ``'ivf'``, ``'hnsw'``, ``'faiss'`` or ``'nndescent'``
            (see the module docstring). (default: ``'auto'``)
        chunk (int, optional): queries per block of the exact search; each distance block is
            ``chunk × 4096`` on CPU, ``chunk × 65536`` on CUDA. (default: ``512`` on CPU, ``1024`` on CUDA)
        num_threads (int, optional): CPU worker threads. (default: ``torch.get_num_threads()``)
        verbose (bool): progress bar and the chosen method. (default: :obj:`False`)

    Returns:
        ``(dist, index)``: ``[n, k]`` squared Euclidean distances (ascending) and indices;
        ``inf`` / ``-1`` where fewer than ``k`` candidates exist. Distances that overflow
        ``x``'s dtype (``|x| ~ 1e20`` in float32) are ``inf`` but keep a valid index.
    """
    check.tensor("x", x, dtypes=check.FLOAT_DTYPES, dim=2)
    check.dense("x", x)
    check.positive_int("k", k)
    nt = _threads(num_threads)
    if chunk is not None:
        check.positive_int("chunk", chunk)
    if not isinstance(loop, bool):
        raise TypeError(f"'loop' must be a bool, got {type(loop).__name__}")
    n = x.shape[0]
    if batch is not None:
        batch, _ = check.batch("batch", batch, n, device=x.device)
    concrete = resolve_method(method, n, x.device, batch is not None)
    log(f"knn: method={concrete!r} (requested {method!r}), n={n}, d={x.shape[1]}, k={k}", verbose)
    return torch.ops.tgrep.knn(x.detach(), k, batch, loop, concrete, chunk or 0, nt, bool(verbose))


def _knn_local(x: torch.Tensor, k: int, method: str, num_threads: int | None = None, verbose: bool = False):
    """``(dist, index, order)`` of ``tgrep::knn_local`` (a resolved ``method``, no ``batch``, no
    self-loops): the lists in the search's locality order, row ``h`` being row ``order[h]`` of
    ``x`` and ids positions in that order (the IVF's list order; the identity otherwise)."""
    return torch.ops.tgrep.knn_local(x.detach(), k, False, method, _threads(num_threads), bool(verbose))


def knn_graph(x: torch.Tensor, k: int, batch: torch.Tensor | None = None, loop: bool = False,
              flow: str = "source_to_target", cosine: bool = False, *, method: str = "exact",
              num_threads: int | None = None) -> torch.Tensor:
    r"""The k-nearest-neighbour graph of the rows of ``x``, as
    :func:`torch_geometric.nn.pool.knn_graph` builds it: an ``edge_index`` ``[2, E]``.

    With ``flow='source_to_target'`` edge ``(j, i)`` means ``j`` is among the ``k`` nearest
    neighbours of ``i`` (``edge_index[1]`` is the query); ``'target_to_source'`` flips it.
    ``cosine=True`` ranks by cosine distance :math:`1 - x_i^\top x_j / (\|x_i\|\|x_j\|)` (Euclidean
    distance of the normalised rows; zero rows are at distance 1 from everything).
    Examples with fewer than ``k + 1`` nodes give fewer edges (no padding).

    Args:
        x (Tensor): node features ``[n, d]``.
        k (int): neighbours per node.
        batch (LongTensor, optional): sorted graph index of each node. (default: :obj:`None`)
        loop (bool): include self-loops. (default: :obj:`False`)
        flow (str): ``'source_to_target'`` or ``'target_to_source'``. (default: ``'source_to_target'``)
        cosine (bool): cosine instead of Euclidean distance. (default: :obj:`False`)
        method (str): kNN method (see :func:`knn`). (default: ``'exact'``, as PyG)
        num_threads (int, optional): CPU threads. (default: ``torch.get_num_threads()``)
    """
    check.one_of("flow", flow, ("source_to_target", "target_to_source"))
    check.tensor("x", x, dtypes=check.FLOAT_DTYPES, dim=(1, 2))
    if x.dim() == 1:
        x = x.unsqueeze(1)
    if cosine:
        x = torch.nn.functional.normalize(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim=1)
    _, idx = knn(x, k, batch=batch, loop=loop, method=method, num_threads=num_threads)
    n = x.shape[0]
    center = torch.arange(n, device=x.device).repeat_interleave(k)
    nbr = idx.reshape(-1)
    keep = nbr >= 0
    center, nbr = center[keep], nbr[keep]
    if flow == "source_to_target":
        return torch.stack([nbr, center])
    return torch.stack([center, nbr])
