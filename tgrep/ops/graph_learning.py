r"""Large-scale graph learning from smooth signals (Kalofolias & Perraudin, ICLR 2019).

:func:`learn_graph` learns a weighted undirected graph from node features: the log model of
Kalofolias (2016),

.. math::
    \min_{W \in \mathcal W}\; \|W \circ Z\|_{1,1} - \alpha\,\mathbf 1^\top \log(W\mathbf 1)
    + \tfrac{\beta}{2}\|W\|_F^2, \qquad Z_{ij} = \|x_i - x_j\|^2,

restricted to the edges of an ``r·k``-nearest-neighbour graph, with ``θ = 1/√(αβ)`` chosen
from the desired degree ``k`` (Theorems 2–3, eq. 17) and solved by the forward–backward–forward
primal–dual iteration at O(|E|) per iteration (see :mod:`tgrep.kernels.reference.graph_learning`
for the derivation). :func:`graph_learning_theta` exposes the automatic θ.
"""
from __future__ import annotations

import math
import time
import warnings

import torch

from .. import library as _lib  # noqa: F401  (registers torch.ops.tgrep.graph_learning_fbf)
from ..kernels.reference import graph_learning as _ref
from ..utils import check
from ..utils.progress import log, progress
from .knn import METHODS as KNN_METHODS
from .knn import _knn_local
from .knn import knn as _knn
from .knn import resolve_method as resolve_knn

MODELS = ("log", "l2")
SCALES = ("none", "max", "sum")


# --------------------------------------------------------------------------- theta
def graph_learning_theta(z: torch.Tensor, k: int, *, batch: torch.Tensor | None = None,
                         return_bounds: bool = False):
    r"""θ that gives about ``k`` edges per node in the log model (Kalofolias & Perraudin, eq. 17).

    For each node ``j`` with sorted distances ``ẑ`` and ``b_k = Σ_{i≤k} ẑ_i``, Theorem 3 gives
    the interval of θ for which the one-node problem has exactly ``k`` non-zeros,

    .. math::
        \theta \in \Big(\frac{1}{\sqrt{k\hat z_{k+1}^2 - b_k \hat z_{k+1}}},\;
        \frac{1}{\sqrt{k\hat z_k^2 - b_k \hat z_k}}\Big].

    The bounds are averaged over nodes (eq. 17) and θ is their geometric mean. An upper bound
    is ``+∞`` when the first ``k`` distances are equal (always for ``k = 1``; duplicates):
    such nodes are left out of the upper mean; if every node has one, ``θ = 1.1·θ_lower``
    (as GSPBox does for ``k = 1``). Nodes whose first ``k + 1`` distances are equal (``k + 1``
    duplicates) have no valid interval and are left out of the lower mean too.

    Args:
        z (Tensor): ``[n, m]`` squared distances from each node to its candidate neighbours
            (itself excluded; any order; ``inf`` marks a missing candidate), ``m >= k``.
        k (int): desired number of edges per node.
        batch (LongTensor, optional): sorted example of each row (any non-negative ids): one θ
            per example. (default: :obj:`None`)
        return_bounds (bool): also return ``(theta_lower, theta_upper)``. (default: :obj:`False`)

    Returns:
        ``theta`` (float, or a ``[num_examples]`` tensor with ``batch``: one entry per distinct
        id, in order), and the bounds if asked.
    """
    check.tensor("z", z, dtypes=check.FLOAT_DTYPES, dim=2)
    check.positive_int("k", k)
    if bool(torch.isnan(z).any()):
        raise ValueError("'z' contains NaN values")
    if bool((z < 0).any()):
        raise ValueError("'z' must be non-negative (squared distances)")
    if z.shape[1] < k:
        raise ValueError(f"'z' has {z.shape[1]} candidates per node, fewer than k={k}")
    # sorted, then the first k + 1 columns (all eq. 17 reads) widened: the same values (the
    # conversion is exact, monotone), without a float64 copy of every candidate
    zs = _sorted_rows(z)[:, :k + 1].double()
    if bool(torch.isinf(zs[:, k - 1]).any()):
        raise ValueError(f"every node needs at least k={k} finite distances in 'z'")
    lower, upper = _ref.theta_bounds(zs, k)
    single = batch is None
    batch, nb = check.batch("batch", batch, z.shape[0], device=z.device)
    nb = max(nb, 1)
    t_lo, t_up, theta = _aggregate(lower, upper, batch, nb)
    if single:
        theta, t_lo, t_up = float(theta[0]), float(t_lo[0]), float(t_up[0])
    return (theta, t_lo, t_up) if return_bounds else theta


def _masked_mean(val, mask, batch, nb):
    s = torch.zeros(nb, dtype=torch.float64, device=val.device)
    c = torch.zeros(nb, dtype=torch.float64, device=val.device)
    s.index_add_(0, batch, torch.where(mask, val, torch.zeros_like(val)))
    c.index_add_(0, batch, mask.double())
    return s / c, c


def _aggregate(lower, upper, batch, nb):
    t_lo, c_lo = _masked_mean(lower, torch.isfinite(lower), batch, nb)
    t_up, c_up = _masked_mean(upper, torch.isfinite(upper), batch, nb)
    present = torch.bincount(batch, minlength=nb) > 0       # examples without nodes are skipped
    bad = (c_lo == 0) & present
    if bool(bad.any()) and not bool((~bad & present).any()):
        raise ValueError("no node has a valid θ interval: for every node the distances to its k+1 "
                         "nearest candidates are all equal (constant features, or k+1 duplicates of "
                         "each point); use a larger 'k', remove duplicates, or pass 'theta'")
    theta = torch.where(c_up > 0, torch.sqrt(t_lo * t_up), 1.1 * t_lo)
    t_up = torch.where(c_up > 0, t_up, torch.full_like(t_up, math.inf))
    if bool(bad.any()):
        # examples in which every node has k+1 tied candidates: θ cannot change which edges
        # win there (all tied); they get the geometric mean of the other examples' θ
        good = ~bad & present
        fill = torch.exp(torch.log(theta[good]).mean())
        theta = torch.where(bad, fill, theta)
        t_lo = torch.where(bad, fill, t_lo)
    return t_lo, t_up, theta


# --------------------------------------------------------------------------- solver
def solve_log_model(row: torch.Tensor, col: torch.Tensor, z: torch.Tensor, num_nodes: int, *,
                    max_iter: int = 1000, tol: float = 1e-5, step: float = 0.9,
                    w0: torch.Tensor | None = None, c: float = 0.0, max_w: float = math.inf,
                    batch: torch.Tensor | None = None, num_threads: int | None = None,
                    verbose: bool = False) -> tuple[torch.Tensor, dict]:
    r"""Weights ``w`` of the log model on a support (custom op ``tgrep::graph_learning_fbf``):

    .. math::
        \min_{0 \le w \le w_{\max}}\; 2z^\top w - \mathbf 1^\top\log(Kw) + \|w\|^2 + c\|w - w_0\|^2

    (each undirected edge once; the prior and the cap are GSPBox's ``w_0``/``c`` and ``max_w``).
    Forward-backward-forward primal-dual iterations (Komodakis & Pesquet 2015, as in GSPBox)
    with diagonal steps: ``τ = step / (2(1+c) + √(2ρ))`` on every edge and ``σ_i = ρτ / deg_i``
    at node ``i`` (``ρ``: mean support degree), so hubs of the support do not shrink every
    node's step; started from the per-node closed-form solutions (Theorem 2 of Kalofolias &
    Perraudin 2019), each edge the mean of its endpoints'.

    Args:
        row, col (LongTensor): the undirected support, each edge once (``row != col``).
        z (Tensor): ``θ``-scaled squared distances of those edges (finite, ``>= 0``).
        num_nodes (int): number of nodes.
        max_iter (int): iteration cap. (default: ``1000``)
        tol (float): stop when the relative primal and dual changes are both below it.
            (default: ``1e-5``)
        step (float): the convergence bound ``2(1+c)τ + √(2ρτ²)`` of the steps above, a number
            in ``(0, 1)``. (default: ``0.9``)
        w0 (Tensor, optional): prior weights of the support edges. (default: :obj:`None`)
        c (float): weight of the prior term. (default: ``0``)
        max_w (float): upper bound of every weight. (default: ``inf``)
        batch (LongTensor, optional): sorted graph of every node ``[num_nodes]`` (any
            non-negative ids; no support edge between graphs): each graph is solved as an
            independent problem (own steps, own stopping test), exactly as if alone; the
            reported iterations and changes are the worst graph's. (default: :obj:`None`)
        num_threads (int, optional): CPU threads of the C++ kernel. :obj:`None` times the
            first iterations with ``torch.get_num_threads()`` and with 1 thread and keeps the
            faster. (default: :obj:`None`)
        verbose (bool): progress bar. (default: :obj:`False`)

    Returns:
        ``(w, info)`` with ``info = {'iterations', 'rel_primal', 'rel_dual', 'converged', 'threads', 'backend'}``.
    """
    check.in_range("step", step, 0.0, 1.0, lo_open=True, hi_open=True)
    check.positive_int("max_iter", max_iter)
    check.in_range("tol", tol, 0.0, 1.0, lo_open=True)
    check.in_range("c", c, 0.0, math.inf, hi_open=True)
    check.in_range("max_w", max_w, 0.0, math.inf, lo_open=True)
    check.positive_int("num_nodes", num_nodes, allow_zero=True)
    for name, t in (("row", row), ("col", col)):
        check.tensor(name, t, dtypes=check.INDEX_DTYPES, dim=1)
        check.dense(name, t)
    check.tensor("z", z, dtypes=check.FLOAT_DTYPES, dim=1)
    check.dense("z", z)
    nt = num_threads if num_threads is None else check.positive_int("num_threads", num_threads)
    dtype = z.dtype if z.dtype in (torch.float32, torch.float64) else torch.float32
    z = z.to(dtype).contiguous()
    if w0 is not None:
        check.tensor("w0", w0, dtypes=check.FLOAT_DTYPES, dim=1, device=z.device)
        w0 = w0.to(dtype).contiguous()
    nb = 1
    if batch is not None:
        batch, nb = check.batch("batch", batch, int(num_nodes), device=z.device)
        nb = max(nb, 1)
    w, st = torch.ops.tgrep.graph_learning_fbf(row.long().contiguous(), col.long().contiguous(), z, w0, batch, nb,
                                               int(num_nodes), float(c), float(max_w), max_iter, float(tol),
                                               float(step), nt or 0, bool(verbose))
    it, rel_p, rel_d, threads = st.tolist()
    info = dict(iterations=int(it), rel_primal=rel_p, rel_dual=rel_d, converged=bool(rel_p < tol and rel_d < tol),
                threads=None if threads < 0 else int(threads),
                backend="reference" if threads < 0 else "cpp")  # the reference reports no threads
    return w, info


def solve_l2_model(row, col, z, num_nodes, alpha, *, max_iter=1000, tol=1e-5):
    """Weights of the ℓ2 model (eq. 4) on a support (reference solver: FISTA + simplex projection)."""
    return _ref.l2_model(row.long(), col.long(), z.double(), num_nodes, alpha, max_iter=max_iter, tol=tol).to(z.dtype)


# --------------------------------------------------------------------------- learn_graph
TIES = ("jitter", "keep")
TIE_JITTER = 0.10  # ties="jitter" acts above this fraction of tied nodes (digits: 2-7%, one-hot MUTAG: 93-100%)


def _sizes(bvec, nb, n):
    return torch.bincount(bvec, minlength=nb) if n else torch.zeros(0, dtype=torch.long)


def _check_sizes(sizes, k, batched):
    smallest = int(sizes.min()) if sizes.numel() else 0
    if smallest < k + 2:
        where = "every example of the batch" if batched else "the graph"
        raise ValueError(f"'k'={k} needs at least k+2={k + 2} nodes in {where} (the smallest has {smallest}); "
                         f"use a smaller 'k'")
    return int(sizes.max())


def _pow2_scale(x):
    """``e`` such that ``x / 2^e`` has a safe magnitude (0 when ``x`` already has one)."""
    amax = float((x - x.mean(0, keepdim=True)).abs().max()) if x.numel() else 0.0
    if amax > 0 and (amax > 2.0 ** 40 or amax < 2.0 ** -40):
        return math.frexp(amax)[1]
    return 0


def _sorted_rows(z):
    """``z`` with every row sorted ascending; candidate lists usually arrive sorted, and are then
    returned as they are (a check costs a fraction of a sort)."""
    if z.shape[1] < 2 or bool((z[:, 1:] >= z[:, :-1]).all()):
        return z
    return torch.sort(z, dim=1).values


def _tie_fraction(dist, k):
    """Fraction of nodes whose k-th and (k+1)-th candidate distances are equal (ties at the cut)."""
    if dist.shape[1] <= k or dist.shape[0] == 0:
        return 0.0
    zs = _sorted_rows(dist)
    return float((zs[:, k] == zs[:, k - 1]).double().mean())


def _jitter(x, dist, seed=0):
    """``x`` plus Gaussian noise of variance σ² with ``2dσ² = 1e-4 ·`` the smallest non-zero
    candidate distance: every tie is broken at random while no non-zero distance moves by more
    than ~1%."""
    nz = dist[(dist > 0) & torch.isfinite(dist)]
    zmin = float(nz.min()) if nz.numel() else 1.0
    sigma = math.sqrt(1e-4 * zmin / (2 * max(1, x.shape[1])))
    g = torch.Generator(device=x.device).manual_seed(seed)
    return x + sigma * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _pairs_unique(src, dst, n):
    """Undirected pairs ``(row < col)`` each once, and the inverse map of the inputs."""
    key, inverse = torch.ops.tgrep.undirected_pairs(src, dst, n, 0)
    return key // n, key % n, key, inverse


def _pair_dist(x, row, col, rows=1 << 16):
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty(row.numel(), dtype=dtype, device=x.device)
    for a in range(0, row.numel(), rows):
        d = x[row[a:a + rows]].to(dtype) - x[col[a:a + rows]].to(dtype)
        out[a:a + rows] = (d * d).sum(-1)
    return out


def _candidates_from_support(row, col, z, n, kk):
    """``[n, kk]`` the ``kk`` smallest support distances of every node (``inf`` padding)."""
    nodes = torch.cat([row, col])
    d = torch.cat([z, z]).double()
    order = torch.argsort(d, stable=True)
    order = order[torch.argsort(nodes[order], stable=True)]
    nodes, d = nodes[order], d[order]
    ptr = torch.zeros(n + 1, dtype=torch.long, device=row.device)
    ptr[1:] = torch.cumsum(torch.bincount(nodes, minlength=n), 0)
    rank = torch.arange(nodes.numel(), device=row.device) - ptr[nodes]
    keep = rank < kk
    out = torch.full((n, kk), math.inf, dtype=torch.float64, device=row.device)
    out[nodes[keep], rank[keep]] = d[keep]
    return out


def _theta_on_candidates(cand, k, bvec, nb):
    """eq. 17 per example on ``[n, k+1]`` sorted candidates; nodes with fewer than ``k`` finite
    candidates are left out."""
    lower, upper = _ref.theta_bounds(cand, k)
    few = torch.isinf(cand[:, k - 1])
    lower = lower.masked_fill(few, math.inf)
    upper = upper.masked_fill(few, math.inf)
    _, _, th = _aggregate(lower, upper, bvec, nb)
    return th


def _prior_on_support(w0, key, n, dev):
    """Weights of the prior graph ``(edge_index, edge_weight)`` on the support pairs ``key``."""
    ei, ew = w0
    a, b = ei[0].long(), ei[1].long()
    k0 = torch.minimum(a, b) * n + torch.maximum(a, b)
    keep = a != b
    k0, ew = k0[keep], ew[keep]
    k0u, inv = torch.unique(k0, return_inverse=True)
    vals = torch.zeros(k0u.numel(), dtype=torch.float64, device=dev).scatter_reduce_(
        0, inv, ew.double(), "amax", include_self=False)
    pos = torch.searchsorted(k0u, key).clamp_max(max(k0u.numel() - 1, 0))
    hit = (k0u.numel() > 0) & (k0u[pos] == key) if k0u.numel() else torch.zeros_like(key, dtype=torch.bool)
    return torch.where(hit, vals[pos] if k0u.numel() else torch.zeros_like(key, dtype=torch.float64),
                       torch.zeros_like(key, dtype=torch.float64))


def learn_graph(x: torch.Tensor, k: int = 10, *, r: float = 3, theta: float | None = None,
                model: str = "log", knn: str = "auto", max_iter: int = 1000, tol: float = 1e-5,
                batch: torch.Tensor | None = None, edge_index: torch.Tensor | None = None,
                w0: tuple | None = None, c: float | None = None, max_w: float = math.inf,
                ties: str = "jitter", scale: str | float = "none", step: float = 0.9,
                num_threads: int | None = None,
                return_theta: bool = False, return_info: bool = False, verbose: bool = False):
    r"""Learn a weighted graph from smooth signals (Kalofolias & Perraudin, ICLR 2019).

    Solves the log model :math:`\min_W \|W\circ\theta Z\|_{1,1} - \mathbf 1^\top\log(W\mathbf 1)
    + \tfrac12\|W\|_F^2 \;(+\, \tfrac c2\|W - W_0\|_F^2)` (``W(θZ, 1, 1)`` in the paper's
    notation, Prop. 1) over symmetric, non-negative (``≤ max_w``), zero-diagonal ``W``
    supported on the ``⌈r·k⌉``-nearest-neighbour graph (symmetrised) or on the allowed edges
    ``edge_index``, ``Z_ij = ‖x_i − x_j‖²``. Cost: one (A-)NN search plus O(n·k·r) per
    iteration; memory O(n·d + n·k·r).

    Args:
        x (Tensor): node features ``[n, d]`` (the signals are its columns; finite, dense).
        k (int): desired mean number of neighbours per node. (default: ``10``)
        r (float): support size factor: ``⌈r·k⌉`` candidates per node (at least ``k + 1``, at
            most ``n − 1``: small graphs use all pairs, which is the exact model). (default: ``3``)
        theta (float, optional): sparsity parameter θ; chosen from ``k`` by eq. 17 of the paper
            when :obj:`None` (per example with ``batch``). For ``model='l2'`` it is the model's
            ``α`` (chosen by bisection on the mean degree when :obj:`None`). (default: :obj:`None`)
        model (str): ``'log'`` (eq. 3) or ``'l2'`` (eq. 4; plain-torch FISTA with an exact
            simplex projection per iteration: for comparisons and small graphs).
            (default: ``'log'``)
        knn (str): ``'auto'`` (exact up to 50,000 nodes, the IVF search beyond, exact with
            ``batch`` and on CUDA), ``'exact'``, ``'ivf'``, ``'hnsw'``, ``'faiss'`` or ``'nndescent'``
            (see :func:`tgrep.ops.knn`); the method used is ``info['knn_method']``. (default: ``'auto'``)
        max_iter (int): solver iteration cap. (default: ``1000``)
        tol (float): relative primal/dual change to stop at. (default: ``1e-5``)
        batch (LongTensor, optional): sorted example index ``[n]`` (any non-negative ids):
            one graph per example, no edges between examples, cost linear in the total size.
            (default: :obj:`None`)
        edge_index (LongTensor, optional): the allowed edges ``[2, E]`` (GSPBox's
            ``edge_mask``; symmetrised, self-loops dropped): the support instead of the kNN
            graph. θ then comes from each node's allowed distances. (default: :obj:`None`)
        w0 (tuple, optional): a prior graph ``(edge_index, edge_weight)`` (GSPBox's ``w_0``),
            in the units of ``scale='none'``; its edges join the support. Needs ``c``.
            (default: :obj:`None`)
        c (float, optional): weight of the prior term ``c‖w − w_0‖²`` (each edge once).
            (default: :obj:`None`)
        max_w (float): upper bound of every weight (GSPBox's ``max_w``; units of
            ``scale='none'``). (default: ``inf``)
        ties (str): ``'jitter'``: when more than 10% of the nodes have tied distances at their
            k-th candidate (duplicates, one-hot or categorical features), the features get
            Gaussian noise far below the smallest non-zero distance (seeded), which breaks the
            ties so that degree control holds (the exact model connects all duplicates of a
            point to each other whatever θ is); ``'keep'`` solves the model on ``x`` as it is.
            ``info['tie_fraction']`` reports the fraction. (default: ``'jitter'``)
        scale (str or float): ``'none'`` keeps ``W(θZ, 1, 1)`` (all weights ≤ 1, Theorem 1),
            ``'max'`` divides by the largest weight, ``'sum'`` makes the weights sum to ``n``
            (``‖W‖_{1,1} = n``), a float ``δ`` multiplies them (``δ = √(α/β)``). (default: ``'none'``)
        step (float): FBF step as a fraction of the largest safe one. (default: ``0.9``)
        num_threads (int, optional): CPU threads for the kNN search and the solver
            (default: ``torch.get_num_threads()``; the solver may fall back to 1 thread when
            that is faster on a busy machine).
        return_theta (bool): also return θ (float, or tensor with ``batch``). (default: :obj:`False`)
        return_info (bool): also return a dict of diagnostics: time per stage (``time_knn``,
            ``time_theta_support``, ``time_solve``, ``time_total``), ``knn_method``,
            ``iterations``, ``mean_degree``, ``isolated_nodes``, ``support_edges``... (default: :obj:`False`)
        verbose (bool): progress bars and the requested vs obtained degree. (default: :obj:`False`)

    Returns:
        ``(edge_index, edge_weight)``: both directions of every edge (PyG convention), no
        self-loops, strictly positive weights, sorted by source node; plus ``theta`` and/or
        ``info`` when asked. A :class:`UserWarning` names the likely cause when the obtained
        mean degree is more than 20% off ``k``.
    """
    t_start = time.perf_counter()
    check.tensor("x", x, dtypes=check.FLOAT_DTYPES, dim=2)
    check.dense("x", x)
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("'x' contains NaN or infinite values")
    check.positive_int("k", k)
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not (r >= 1 and math.isfinite(r)):
        raise ValueError(f"'r' must be a finite number >= 1, got {r!r}")
    check.one_of("model", model, MODELS)
    check.one_of("knn", knn, KNN_METHODS)
    check.one_of("ties", ties, TIES)
    check.positive_int("max_iter", max_iter)
    check.in_range("tol", tol, 0.0, 1.0, lo_open=True)
    check.in_range("step", step, 0.0, 1.0, lo_open=True, hi_open=True)
    check.in_range("max_w", max_w, 0.0, math.inf, lo_open=True)
    if num_threads is not None:
        check.positive_int("num_threads", num_threads)
    if isinstance(scale, str):
        check.one_of("scale", scale, SCALES)
    else:
        check.in_range("scale", scale, 0.0, math.inf, lo_open=True, hi_open=True)
    if theta is not None:
        check.in_range("theta", theta, 0.0, math.inf, lo_open=True, hi_open=True)
    n, dev = x.shape[0], x.device
    if w0 is not None:
        if not (isinstance(w0, (tuple, list)) and len(w0) == 2):
            raise TypeError("'w0' must be a prior graph (edge_index, edge_weight)")
        check.edge_index("w0[0]", w0[0], n, device=dev)
        check.tensor("w0[1]", w0[1], dtypes=check.FLOAT_DTYPES, dim=1, device=dev, finite=True)
        if w0[1].numel() != w0[0].shape[1] or (w0[1].numel() and float(w0[1].min()) < 0):
            raise ValueError("'w0' edge weights must be >= 0, one per edge of w0[0]")
        if c is None:
            raise ValueError("'w0' (a prior graph) needs 'c', the weight of the prior term")
    if c is not None:
        check.in_range("c", c, 0.0, math.inf, hi_open=True)
    if model != "log" and (w0 is not None or max_w < math.inf):
        raise ValueError("'w0', 'c' and 'max_w' apply to model='log' only")
    bvec, nb = check.batch("batch", batch, n, device=dev)
    sizes = _sizes(bvec, nb, n)
    largest = _check_sizes(sizes, k, batch is not None)
    x = x.detach()
    # a power-of-two rescale (exact) when |x| would over/underflow squared distances
    e = _pow2_scale(x)
    dscale = 4.0 ** e
    if e:
        x = torch.ldexp(x.double() if x.dtype == torch.float64 else x.float(),
                        torch.tensor(-e, device=dev))
    info = {"num_nodes": n, "num_graphs": nb}
    t0 = time.perf_counter()
    if edge_index is not None:
        check.edge_index("edge_index", edge_index, n, device=dev)
        src, dst = edge_index[0].long(), edge_index[1].long()
        keep = src != dst
        src, dst = src[keep], dst[keep]
        if src.numel() and bool((bvec[src] != bvec[dst]).any()):
            raise ValueError("'edge_index' has edges between different examples of 'batch'")
        row, col, key, _ = _pairs_unique(src, dst, n)
        z = _pair_dist(x, row, col)
        info.update(knn_method="edge_index", tie_fraction=0.0)
        dist = perm = None
    else:
        m = min(max(math.ceil(r * k), k + 1), largest - 1)
        if m < math.ceil(r * k):
            log(f"learn_graph: graphs have at most {largest} nodes <= r*k = {math.ceil(r * k)}: "
                f"the support is all pairs (exact model)", verbose)
        method = resolve_knn(knn, n, dev, batch is not None)
        # the IVF search leaves its lists in their own order (members of a list, and the lists
        # of a coarse cell, adjacent): every later stage then works on nodes renumbered in that
        # order (perm[new] = old), whose neighbours are nearby rows in memory, and the edges are
        # numbered back at the end
        local = method == "ivf" and batch is None and w0 is None and dev.type == "cpu"
        x_in = x

        def search(xs):
            if local:
                _, ids, order = _knn_local(xs, m, method, num_threads, verbose)
                return xs[order], ids, order
            _, ids = _knn(xs, m, batch=bvec if batch is not None else None, method=method,
                          num_threads=num_threads, verbose=verbose)
            return xs, ids, None

        x, idx, perm = search(x_in)
        dist = _exact_dist(x, idx)
        tf = _tie_fraction(dist, k)
        info.update(knn_method=method, knn_candidates=m, tie_fraction=tf)
        if ties == "jitter" and tf > TIE_JITTER and bool(((dist > 0) & torch.isfinite(dist)).any()):
            log(f"learn_graph: {100 * tf:.0f}% of the nodes have tied distances at their k-th candidate "
                "(duplicates / categorical features): breaking ties with a tiny seeded jitter", verbose)
            x, idx, perm = search(_jitter(x_in, dist))   # the noise drawn in the caller's row order
            dist = _exact_dist(x, idx)
            info["jittered"] = True
        del x_in
        # support: symmetrised kNN pairs, each undirected edge once (row < col)
        src = torch.arange(n, device=dev).repeat_interleave(m)
        dst = idx.reshape(-1)
        keep = dst >= 0
        full = bool(keep.all())   # the usual case: no empty slot, no copies to make
        if not full:
            src, dst = src[keep], dst[keep]
        if w0 is not None:  # the prior graph's edges join the support
            a, b = w0[0][0].long(), w0[0][1].long()
            ok = (a != b) & (bvec[a] == bvec[b])
            src, dst = torch.cat([src, a[ok]]), torch.cat([dst, b[ok]])
        row, col, key, inv = _pairs_unique(src, dst, n)
        if w0 is None:   # the candidates' exact distances are symmetric in (i, j): reuse them
            z = torch.empty(row.numel(), dtype=dist.dtype, device=dev).scatter_(
                0, inv, dist.reshape(-1) if full else dist.reshape(-1)[keep])
        else:
            z = _pair_dist(x, row, col)
        del src, dst, keep, inv
    info["time_knn"] = time.perf_counter() - t0
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    info["support_edges"] = int(row.numel())

    t0 = time.perf_counter()
    if model == "log":
        if theta is None:
            if dist is not None and w0 is None:
                th = graph_learning_theta(dist, k, batch=bvec)
            else:
                th = _theta_on_candidates(_candidates_from_support(row, col, z, n, k + 1), k, bvec, max(nb, 1))
            if bool(torch.isinf(th).any()) or bool((th <= 0).any()):
                raise ValueError("could not choose theta: the support distances are degenerate "
                                 "(constant features?)")
        else:
            th = torch.full((max(nb, 1),), float(theta) * dscale, dtype=torch.float64, device=dev)
        # θ z in float64, then the working dtype (one graph: no per-edge gathers of θ)
        zt = (z.double().mul_(th[0]) if th.numel() == 1 else z * th[bvec[row]]).to(work)
        if bool((zt == 0).all()) and row.numel():
            log("learn_graph: all support distances are 0 (constant features): uniform weights", verbose)
        prior = _prior_on_support(w0, key, n, dev).to(work) if w0 is not None else None
        info["time_theta_support"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        w, sinfo = solve_log_model(row, col, zt, n, max_iter=max_iter, tol=tol, step=step, w0=prior,
                                   c=float(c) if c is not None else 0.0, max_w=max_w,
                                   batch=bvec if batch is not None else None,
                                   num_threads=num_threads, verbose=verbose)
        info["time_solve"] = time.perf_counter() - t0
        info.update(sinfo)
    else:
        info["time_theta_support"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if theta is None:
            alpha, w = _l2_auto(row, col, z.to(work), n, k, max_iter, tol, verbose)
        else:
            alpha = float(theta) * dscale
            w = solve_l2_model(row, col, z.to(work), n, alpha, max_iter=max_iter, tol=tol)
        info["time_solve"] = time.perf_counter() - t0
        th = torch.full((max(nb, 1),), alpha, dtype=torch.float64, device=dev)
    # only strictly positive weights; the prox output is exactly 0 on inactive edges, and
    # weights below 1e-9 of the largest are numerical noise of the unconverged tail
    wmax = float(w.max()) if w.numel() else 0.0
    pos = w > 1e-9 * wmax
    row, col, w = row[pos], col[pos], w[pos]
    if perm is not None:   # back to the caller's node numbering
        row, col = perm[row], perm[col]
    w = _rescale(w, scale, n)
    out_ei, which = torch.ops.tgrep.both_directions(row, col, n, 0)   # sorted by source, then target
    edge_weight = w[which].to(x.dtype if not e else (torch.float64 if x.dtype == torch.float64 else torch.float32))
    deg = out_ei.shape[1] / max(n, 1)
    isolated = n - int(torch.count_nonzero(torch.bincount(out_ei[0], minlength=n)))
    info.update(mean_degree=deg, isolated_nodes=isolated, time_total=time.perf_counter() - t_start)
    log(f"learn_graph: requested degree k={k}, obtained mean degree {deg:.2f} "
        f"({out_ei.shape[1] // 2} edges, {isolated} isolated nodes, "
        f"{info.get('iterations', '?')} iterations, knn={info['knn_method']!r})", verbose)
    if n and abs(deg - k) > 0.2 * k:
        warnings.warn(_degree_cause(deg, k, info, theta, ties, sizes, r), UserWarning, stacklevel=2)
    theta_out = th / dscale
    theta_out = float(theta_out[0]) if batch is None else theta_out
    res = (out_ei, edge_weight)
    if return_theta:
        res = res + (theta_out,)
    if return_info:
        res = res + (info,)
    return res


def _degree_cause(deg, k, info, theta, ties, sizes, r):
    msg = f"learn_graph: obtained mean degree {deg:.2f} is more than 20% off the requested k={k}; likely cause: "
    tf = info.get("tie_fraction", 0.0)
    if tf > TIE_JITTER and ties == "keep":
        return msg + (f"ties/duplicates ({100 * tf:.0f}% of the nodes have tied distances at their k-th "
                      "neighbour: one-hot or categorical features?); ties='jitter' breaks them")
    if tf > TIE_JITTER:
        return msg + (f"ties/duplicates ({100 * tf:.0f}% of the nodes have tied distances at their k-th "
                      "neighbour), only partly broken by the jitter")
    if sizes.numel() and float(sizes.double().mean()) < 3 * k:
        return msg + (f"small graphs (mean size {float(sizes.double().mean()):.1f} nodes for k={k}): "
                      "the support is (nearly) all pairs and θ of eq. 17 is a coarse estimate there")
    if theta is not None:
        return msg + "a fixed 'theta' (pass theta=None to choose it from k)"
    if info.get("knn_method") == "edge_index":
        return msg + "the allowed edges 'edge_index' leave too few (or too many) candidates per node"
    return msg + f"a support too small for the data (r={r}); try a larger 'r'"


def _exact_dist(x, idx):
    """``‖x_i − x_idx[i, j]‖²`` recomputed from differences (custom op ``tgrep::neighbor_distances``)."""
    return torch.ops.tgrep.neighbor_distances(x, idx.long())


def _rescale(w, scale, n):
    if isinstance(scale, str):
        if scale == "none" or w.numel() == 0:
            return w
        if scale == "max":
            return w / w.max()
        return w * (n / (2 * w.sum()))
    return w * float(scale)


def _l2_auto(row, col, z, n, k, max_iter, tol, verbose):
    """α of the ℓ2 model giving mean degree ≈ k: geometric bisection (larger α → denser)."""
    zmean = float(z.mean()) if z.numel() else 1.0
    lo, hi = 1e-4 * zmean, 1e2 * zmean
    best = None
    for _ in progress(range(14), verbose=verbose, desc="l2 model: choosing alpha"):
        alpha = math.sqrt(lo * hi)
        w = solve_l2_model(row, col, z, n, alpha, max_iter=max_iter, tol=tol)
        deg = 2 * int((w > 1e-9 * float(w.max())).sum()) / n
        if best is None or abs(deg - k) < abs(best[2] - k):
            best = (alpha, w, deg)
        if abs(deg - k) <= 0.05 * k:
            break
        if deg < k:
            lo = alpha
        else:
            hi = alpha
    return best[0], best[1]
