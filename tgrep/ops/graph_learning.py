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

import numpy as np
import torch

from .._backend import choose
from .._ext import load_cpp
from ..kernels.reference import graph_learning as _ref
from ..utils import check
from ..utils.progress import log, progress
from .knn import METHODS as KNN_METHODS
from .knn import knn as _knn

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
        batch (LongTensor, optional): example of each row: one θ per example. (default: :obj:`None`)
        return_bounds (bool): also return ``(theta_lower, theta_upper)``. (default: :obj:`False`)

    Returns:
        ``theta`` (float, or a ``[num_examples]`` tensor with ``batch``), and the bounds if asked.
    """
    check.tensor("z", z, dtypes=check.FLOAT_DTYPES, dim=2)
    check.positive_int("k", k)
    if bool(torch.isnan(z).any()):
        raise ValueError("'z' contains NaN values")
    if bool((z < 0).any()):
        raise ValueError("'z' must be non-negative (squared distances)")
    if z.shape[1] < k:
        raise ValueError(f"'z' has {z.shape[1]} candidates per node, fewer than k={k}")
    zs, _ = torch.sort(z.double(), dim=1)
    if bool(torch.isinf(zs[:, k - 1]).any()):
        raise ValueError(f"every node needs at least k={k} finite distances in 'z'")
    lower, upper = _ref.theta_bounds(zs, k)
    if batch is None:
        batch = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        single = True
    else:
        check.tensor("batch", batch, dtypes=check.INDEX_DTYPES, dim=1, device=z.device)
        check.same_length("z", z, "batch", batch)
        batch = batch.long()
        single = False
    nb = int(batch.max()) + 1 if batch.numel() else 1
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
    if bool(((c_lo == 0) & present).any()):
        raise ValueError("no node has a valid θ interval: for every node the distances to its k+1 "
                         "nearest candidates are all equal (constant features, or k+1 duplicates of "
                         "each point); use a larger 'k', remove duplicates, or pass 'theta'")
    theta = torch.where(c_up > 0, torch.sqrt(t_lo * t_up), 1.1 * t_lo)
    t_up = torch.where(c_up > 0, t_up, torch.full_like(t_up, math.inf))
    return t_lo, t_up, theta


# --------------------------------------------------------------------------- sorting helpers
# On CPU, numpy's single-threaded sorts: torch's OpenMP-parallel sort/unique stall badly on an
# oversubscribed machine (measured 20-30x slower on the shared 2-core box).
def _argsort(t: torch.Tensor) -> torch.Tensor:
    if t.device.type == "cpu":
        return torch.from_numpy(np.argsort(t.numpy(), kind="stable"))
    return torch.argsort(t, stable=True)


def _unique_inverse(t: torch.Tensor):
    if t.device.type == "cpu":
        u, inv = np.unique(t.numpy(), return_inverse=True)
        return torch.from_numpy(u), torch.from_numpy(inv.reshape(-1))
    return torch.unique(t, return_inverse=True)


# --------------------------------------------------------------------------- solver
def _incidence(row, col, n):
    """CSR of the edges incident to each node (for per-node sums without atomics)."""
    nodes = torch.cat([row, col])
    eids = torch.arange(row.numel(), device=row.device).repeat(2)
    order = _argsort(nodes)
    ptr = torch.zeros(n + 1, dtype=torch.long, device=row.device)
    ptr[1:] = torch.cumsum(torch.bincount(nodes, minlength=n), 0)
    return ptr, eids[order].contiguous()


def solve_log_model(row: torch.Tensor, col: torch.Tensor, z: torch.Tensor, num_nodes: int, *,
                    max_iter: int = 1000, tol: float = 1e-5, step: float = 0.9,
                    num_threads: int | None = None, verbose: bool = False) -> tuple[torch.Tensor, dict]:
    r"""Weights ``w`` of the log model ``min_{w≥0} 2zᵀw − 1ᵀlog(Kw) + ‖w‖²`` on a support.

    Args:
        row, col (LongTensor): the undirected support, each edge once (``row != col``).
        z (Tensor): ``θ``-scaled squared distances of those edges.
        num_nodes (int): number of nodes.
        max_iter (int): iteration cap. (default: ``1000``)
        tol (float): stop when the relative primal and dual changes are both below it.
            (default: ``1e-5``)
        step (float): step as a fraction of the largest safe step ``1/μ`` (``γ = step/μ``,
            ``μ = 2 + ‖K‖``, with the guaranteed bound of ``‖K‖``). (default: ``0.9``)
        num_threads (int, optional): CPU threads of the C++ kernel. :obj:`None` times the
            first iterations with ``torch.get_num_threads()`` and with 1 thread and keeps the
            faster (on a busy machine the per-iteration barriers can make 1 thread faster).
            (default: :obj:`None`)
        verbose (bool): progress bar. (default: :obj:`False`)

    Returns:
        ``(w, info)`` with ``info = {'iterations', 'rel_primal', 'rel_dual', 'converged', 'backend'}``.
    """
    check.in_range("step", step, 0.0, 1.0, lo_open=True, hi_open=True)
    n = num_nodes
    dtype = z.dtype if z.dtype in (torch.float32, torch.float64) else torch.float32
    z = z.to(dtype).contiguous()
    row, col = row.long().contiguous(), col.long().contiguous()
    gamma = step / (2.0 + _ref.operator_norm_bound(row, col, n))
    w = torch.zeros_like(z)
    v = torch.zeros(n, dtype=dtype, device=z.device)
    P = torch.zeros_like(z)
    backend = choose(z.device, ("cpp", "reference"), cpp_name="graph_learning", op="learn_graph")
    mod = load_cpp("graph_learning") if backend == "cpp" else None
    if mod is None:
        backend = "reference"
    else:
        ptr, inc = _incidence(row, col, n)
    done, rel_p, rel_d = 0, math.inf, math.inf
    chunk = 25
    candidates = [num_threads] if num_threads else sorted({torch.get_num_threads(), 1}, reverse=True)
    timing = []
    with progress(total=max_iter, verbose=verbose, desc="graph learning (FBF)") as bar:
        while done < max_iter:
            probing = mod is not None and len(timing) < len(candidates)
            steps = min(5 if probing else chunk, max_iter - done)
            if mod is not None:
                if probing:  # autotune: 5 iterations per thread count, then keep the fastest
                    nt = candidates[len(timing)]
                else:
                    nt = min(timing)[1]
                t0 = time.perf_counter()
                it, rel_p, rel_d = mod.fbf_log_steps(row, col, z, ptr, inc, w, v, P, gamma, steps, tol, nt)
                it = int(it)
                if len(timing) < len(candidates):
                    timing.append(((time.perf_counter() - t0) / max(it, 1), nt))
            else:
                it, rel_p, rel_d = _ref.fbf_log_steps(row, col, z, n, w, v, P, gamma, steps, tol)
            done += it
            bar.update(it)
            bar.set_postfix(primal=f"{rel_p:.1e}", dual=f"{rel_d:.1e}")
            if rel_p < tol and rel_d < tol:
                break
    info = dict(iterations=done, rel_primal=rel_p, rel_dual=rel_d,
                converged=bool(rel_p < tol and rel_d < tol), backend=backend,
                threads=min(timing)[1] if timing else None)
    return P, info


def solve_l2_model(row, col, z, num_nodes, alpha, *, max_iter=1000, tol=1e-5):
    """Weights of the ℓ2 model (eq. 4) on a support (reference solver: FISTA + simplex projection)."""
    return _ref.l2_model(row.long(), col.long(), z.double(), num_nodes, alpha, max_iter=max_iter, tol=tol).to(z.dtype)


# --------------------------------------------------------------------------- learn_graph
def _check_sizes(batch, n, k, device):
    if batch is None:
        sizes = torch.tensor([n], device=device)
    else:
        sizes = torch.bincount(batch)
        sizes = sizes[sizes > 0]
    smallest = int(sizes.min()) if sizes.numel() else 0
    if smallest < k + 2:
        where = "the graph" if batch is None else "every example of the batch"
        raise ValueError(f"'k'={k} needs at least k+2={k + 2} nodes in {where} (the smallest has {smallest}); "
                         f"use a smaller 'k'")
    return int(sizes.max())


def learn_graph(x: torch.Tensor, k: int = 10, *, r: float = 3, theta: float | None = None,
                model: str = "log", knn: str = "auto", max_iter: int = 1000, tol: float = 1e-5,
                batch: torch.Tensor | None = None, scale: str | float = "none", step: float = 0.9,
                num_threads: int | None = None,
                return_theta: bool = False, return_info: bool = False, verbose: bool = False):
    r"""Learn a weighted graph from smooth signals (Kalofolias & Perraudin, ICLR 2019).

    Solves the log model :math:`\min_W \|W\circ\theta Z\|_{1,1} - \mathbf 1^\top\log(W\mathbf 1)
    + \tfrac12\|W\|_F^2` (``W(θZ, 1, 1)`` in the paper's notation, Prop. 1) over symmetric,
    non-negative, zero-diagonal ``W`` supported on the ``⌈r·k⌉``-nearest-neighbour graph
    (symmetrised), ``Z_ij = ‖x_i − x_j‖²``. Cost: one kNN search plus O(n·k·r) per iteration;
    memory O(n·d + n·k·r).

    Args:
        x (Tensor): node features ``[n, d]`` (the signals are its columns).
        k (int): desired mean number of neighbours per node. (default: ``10``)
        r (float): support size factor: ``⌈r·k⌉`` candidates per node (at least ``k + 1``, at
            most ``n − 1``: small graphs use all pairs, which is the exact model). (default: ``3``)
        theta (float, optional): sparsity parameter θ; chosen from ``k`` by eq. 17 of the paper
            when :obj:`None` (per example with ``batch``). For ``model='l2'`` it is the model's
            ``α`` (chosen by bisection on the mean degree when :obj:`None`). (default: :obj:`None`)
        model (str): ``'log'`` (eq. 3) or ``'l2'`` (eq. 4; plain-torch FISTA with an exact
            simplex projection per iteration: for comparisons and small graphs; with ``batch``
            it uses one ``α`` and one ``‖W‖_{1,1} = n`` constraint for the whole batch).
            (default: ``'log'``)
        knn (str): ``'auto'``, ``'exact'``, ``'faiss'`` or ``'nndescent'`` (see
            :func:`tgrep.ops.knn`). (default: ``'auto'``)
        max_iter (int): solver iteration cap. (default: ``1000``)
        tol (float): relative primal/dual change to stop at. (default: ``1e-5``)
        batch (LongTensor, optional): sorted example index ``[n]``: one graph per example,
            no edges between examples. (default: :obj:`None`)
        scale (str or float): ``'none'`` keeps ``W(θZ, 1, 1)`` (all weights ≤ 1, Theorem 1),
            ``'max'`` divides by the largest weight, ``'sum'`` makes the weights sum to ``n``
            (``‖W‖_{1,1} = n``), a float ``δ`` multiplies them (``δ = √(α/β)``). (default: ``'none'``)
        step (float): FBF step as a fraction of the largest safe one. (default: ``0.9``)
        num_threads (int, optional): CPU threads for the kNN search and the solver
            (default: ``torch.get_num_threads()``; the solver may fall back to 1 thread when
            that is faster on a busy machine).
        return_theta (bool): also return θ (float, or tensor with ``batch``). (default: :obj:`False`)
        return_info (bool): also return a dict of diagnostics. (default: :obj:`False`)
        verbose (bool): progress bars and the requested vs obtained degree. (default: :obj:`False`)

    Returns:
        ``(edge_index, edge_weight)``: both directions of every edge (PyG convention), no
        self-loops, strictly positive weights, sorted by source node; plus ``theta`` and/or
        ``info`` when asked.
    """
    check.tensor("x", x, dtypes=check.FLOAT_DTYPES, dim=2)
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("'x' contains NaN or infinite values")
    check.positive_int("k", k)
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not r >= 1:
        raise ValueError(f"'r' must be a number >= 1, got {r!r}")
    check.one_of("model", model, MODELS)
    check.one_of("knn", knn, KNN_METHODS)
    check.positive_int("max_iter", max_iter)
    check.in_range("tol", tol, 0.0, 1.0, lo_open=True)
    if isinstance(scale, str):
        check.one_of("scale", scale, SCALES)
    else:
        check.in_range("scale", scale, 0.0, math.inf, lo_open=True, hi_open=True)
    if theta is not None:
        check.in_range("theta", theta, 0.0, math.inf, lo_open=True, hi_open=True)
    n, dev = x.shape[0], x.device
    if batch is not None:
        check.tensor("batch", batch, dtypes=check.INDEX_DTYPES, dim=1, device=dev)
        check.same_length("x", x, "batch", batch)
        batch = batch.long()
        if n and bool((batch[1:] < batch[:-1]).any()):
            raise ValueError("'batch' must be sorted (PyG convention)")
        if n and int(batch.min()) < 0:
            raise ValueError("'batch' must be non-negative")
    largest = _check_sizes(batch, n, k, dev)
    x = x.detach()
    m = min(max(math.ceil(r * k), k + 1), largest - 1)
    if m < math.ceil(r * k):
        log(f"learn_graph: graphs have at most {largest} nodes <= r*k = {math.ceil(r * k)}: "
            f"the support is all pairs (exact model)", verbose)
    t0 = time.perf_counter()
    _, idx = _knn(x, m, batch=batch, method=knn, num_threads=num_threads, verbose=verbose)
    t_knn = time.perf_counter() - t0
    dist = _exact_dist(x, idx)
    nb = int(batch.max()) + 1 if batch is not None else 1
    bvec = batch if batch is not None else torch.zeros(n, dtype=torch.long, device=dev)

    # support: symmetrised kNN pairs, each undirected edge once (row < col); z from the exact
    # kNN distances (both directions of a pair hold the same value)
    src = torch.arange(n, device=dev).repeat_interleave(m)
    dst = idx.reshape(-1)
    keep = dst >= 0
    src, dst, dflat = src[keep], dst[keep], dist.reshape(-1)[keep]
    key, inverse = _unique_inverse(torch.minimum(src, dst) * n + torch.maximum(src, dst))
    row, col = key // n, key % n
    z = torch.empty(key.numel(), dtype=dist.dtype, device=dev).scatter_(0, inverse, dflat)
    del src, dst, dflat, inverse, keep
    work = torch.float64 if x.dtype == torch.float64 else torch.float32

    info = {"support_edges": int(row.numel()), "knn_candidates": m, "time_knn": t_knn}
    t0 = time.perf_counter()
    if model == "log":
        if theta is None:
            th = graph_learning_theta(dist, k, batch=bvec)
            if bool(torch.isinf(th).any()) or bool((th <= 0).any()):
                raise ValueError("could not choose theta: the support distances are degenerate "
                                 "(constant features?)")
            th_nodes = th
        else:
            th = torch.full((nb,), float(theta), dtype=torch.float64, device=dev)
            th_nodes = th
        zt = (z * th_nodes[bvec[row]]).to(work)
        if bool((zt == 0).all()) and row.numel():
            log("learn_graph: all support distances are 0 (constant features): uniform weights", verbose)
        info["time_theta_support"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        w, sinfo = solve_log_model(row, col, zt, n, max_iter=max_iter, tol=tol, step=step,
                                   num_threads=num_threads, verbose=verbose)
        info["time_solve"] = time.perf_counter() - t0
        info.update(sinfo)
    else:
        if theta is None:
            alpha, w = _l2_auto(row, col, z.to(work), n, k, max_iter, tol, verbose)
        else:
            alpha = float(theta)
            w = solve_l2_model(row, col, z.to(work), n, alpha, max_iter=max_iter, tol=tol)
        th = torch.full((nb,), alpha, dtype=torch.float64, device=dev)
    # only strictly positive weights; the prox output is exactly 0 on inactive edges, and
    # weights below 1e-9 of the largest are numerical noise of the unconverged tail
    wmax = float(w.max()) if w.numel() else 0.0
    pos = w > 1e-9 * wmax
    row, col, w = row[pos], col[pos], w[pos]
    w = _rescale(w, scale, n)
    edge_index = torch.stack([torch.cat([row, col]), torch.cat([col, row])])
    edge_weight = torch.cat([w, w]).to(x.dtype)
    order = _argsort(edge_index[0] * n + edge_index[1])
    edge_index, edge_weight = edge_index[:, order], edge_weight[order]
    deg = edge_index.shape[1] / max(n, 1)
    isolated = n - int(torch.count_nonzero(torch.bincount(edge_index[0], minlength=n)))
    info.update(mean_degree=deg, isolated_nodes=isolated)
    log(f"learn_graph: requested degree k={k}, obtained mean degree {deg:.2f} "
        f"({edge_index.shape[1] // 2} edges, {isolated} isolated nodes, "
        f"{info.get('iterations', '?')} iterations)", verbose)
    theta_out = float(th[0]) if batch is None else th
    out = (edge_index, edge_weight)
    if return_theta:
        out = out + (theta_out,)
    if return_info:
        out = out + (info,)
    return out


def _exact_dist(x, idx, rows=2048):
    """``‖x_i − x_idx[i, j]‖²`` recomputed from differences (no cancellation: duplicates give
    exactly 0, and the value is symmetric in ``i, j``), ``inf`` where ``idx = -1``."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty(idx.shape, dtype=dtype, device=x.device)
    for a in range(0, idx.shape[0], rows):
        ii = idx[a:a + rows]
        diff = x[a:a + rows, None, :].to(dtype) - x[ii.clamp_min(0)].to(dtype)
        out[a:a + rows] = (diff * diff).sum(-1)
    return out.masked_fill_(idx < 0, math.inf)


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
