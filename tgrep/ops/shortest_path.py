"""``tgrep.ops.shortest_paths``: batched, optionally stochastic, differentiable SSSP."""
from __future__ import annotations

import weakref
from typing import NamedTuple

import torch

from .. import _backend
from ..kernels.reference import rng
from ..kernels.reference import shortest_path as ref
from ..utils import check

IMPLEMENTED = ("reference", "cpp", "triton")


class ShortestPaths(NamedTuple):
    """``dist`` ``[B, T]`` (or ``[B, N]``) and ``pred`` ``[B, N]`` (int64 CSR edge ids, -1 = none)."""

    dist: torch.Tensor
    pred: torch.Tensor


def _kernel(backend: str):
    if backend == "cpp":
        from .._ext import load_cpp

        return load_cpp("shortest_path").shortest_paths
    if backend == "triton":
        from ..kernels.triton import shortest_path as tri

        return tri.shortest_paths
    return ref.shortest_paths


_validated_graphs: list[tuple] = []  # (weakref(indptr), version, weakref(indices), version)


def _graph_known(indptr, indices) -> bool:
    for ref_ip, v_ip, ref_ix, v_ix in _validated_graphs:
        if ref_ip() is indptr and ref_ix() is indices and indptr._version == v_ip and indices._version == v_ix:
            return True
    return False


def _remember_graph(indptr, indices) -> None:
    _validated_graphs.append((weakref.ref(indptr), indptr._version, weakref.ref(indices), indices._version))
    del _validated_graphs[:-8]


def _validate(indptr, indices, weight, sources, targets, edge_prob, seed):
    """Checks every argument. Value checks are gathered into one host sync; the graph
    structure (``indptr``, ``indices``) is re-checked only when those tensor objects change
    (new objects or in-place edits), which keeps repeated calls on one graph cheap."""
    check.tensor("weight", weight, dtypes=(torch.float32, torch.float64), dim=1)
    device = weight.device
    check.tensor("indptr", indptr, dtypes=check.INDEX_DTYPES, dim=1, device=device)
    check.tensor("indices", indices, dtypes=check.INDEX_DTYPES, dim=1, device=device)
    check.tensor("sources", sources, dtypes=check.INDEX_DTYPES, dim=1, device=device)
    if indptr.numel() < 1:
        raise ValueError("'indptr' must have N + 1 >= 1 entries, got 0")
    n, E = indptr.numel() - 1, indices.numel()
    check.same_length("indices", indices, "weight", weight)
    if targets is not None:
        check.tensor("targets", targets, dtypes=check.INDEX_DTYPES, dim=2, device=device)
        if targets.size(0) != sources.numel():
            raise ValueError(f"'targets' must have shape [B, T] with B = len(sources) = {sources.numel()}, "
                             f"got {tuple(targets.shape)}")
    if edge_prob is not None:
        check.tensor("edge_prob", edge_prob, dtypes=check.FLOAT_DTYPES, dim=1, device=device)
        check.same_length("edge_prob", edge_prob, "weight", weight)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"'seed' must be an int or None, got {type(seed).__name__}")

    # every value check below is a 0-d bool tensor: True = violated; one sync reads them all
    flags: dict[str, torch.Tensor] = {}
    graph_known = _graph_known(indptr, indices)
    if not graph_known:
        flags["indptr_ends"] = (indptr[0] != 0) | (indptr[-1] != E)
        if n:
            flags["indptr_order"] = (indptr.diff() < 0).any()
        if E:
            flags["indices"] = (indices.min() < 0) | (indices.max() >= n)
    for name, idx in (("sources", sources), ("targets", targets)):
        if idx is not None and idx.numel():
            flags[name] = (idx.min() < 0) | (idx.max() >= n)
    if E:
        flags["weight"] = ~(weight.min() >= 0)  # min() propagates NaN, which fails the comparison
        if edge_prob is not None:
            lo, hi = torch.aminmax(edge_prob)
            flags["edge_prob"] = ~((lo >= 0) & (hi <= 1))
    if not flags:
        return
    bad = dict(zip(flags, torch.stack(list(flags.values())).tolist()))
    if bad.get("indptr_ends"):
        raise ValueError(f"'indptr' must start at 0 and end at len(indices) = {E}, "
                         f"got {int(indptr[0])} and {int(indptr[-1])}")
    if bad.get("indptr_order"):
        raise ValueError("'indptr' must be non-decreasing")
    for name, idx in (("indices", indices), ("sources", sources), ("targets", targets)):
        if bad.get(name):
            check.index_range(name, idx, n)
    if bad.get("weight"):
        if bool(torch.isnan(weight).any()):
            raise ValueError("'weight' contains NaN")
        raise ValueError(f"'weight' must be >= 0, got min {float(weight.min())}")
    if bad.get("edge_prob"):
        raise ValueError("'edge_prob' must lie in [0, 1] (and not be NaN)")
    if not graph_known:
        _remember_graph(indptr, indices)


class _ShortestPathsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, indptr, indices, sources, targets, edge_prob, seed, need_pred, backend):
        need = need_pred or weight.requires_grad
        dist, pred = _kernel(backend)(indptr, indices, weight, sources, targets, edge_prob, seed, need)
        ctx.save_for_backward(dist, pred if need else None, sources, targets, indptr)
        ctx.num_edges = weight.numel()
        ctx.backend = backend
        if pred is not None:
            ctx.mark_non_differentiable(pred)
        return dist, pred

    @staticmethod
    def backward(ctx, grad_dist, _grad_pred):
        dist, pred, sources, targets, indptr = ctx.saved_tensors
        grad_w = None
        if ctx.needs_input_grad[0]:
            n = indptr.numel() - 1
            edge_src = torch.repeat_interleave(torch.arange(n, device=indptr.device), indptr.diff())
            path_gradient = ref.path_gradient
            if ctx.backend == "triton":
                from ..kernels.triton import shortest_path as tri

                path_gradient = tri.path_gradient
            grad_w = path_gradient(grad_dist, dist, pred, sources, targets, edge_src, ctx.num_edges)
        return grad_w, None, None, None, None, None, None, None, None


def shortest_paths(indptr: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor, sources: torch.Tensor,
                   targets: torch.Tensor | None = None, *, edge_prob: torch.Tensor | None = None,
                   seed: int | None = None, return_predecessors: bool = False):
    r"""Batched single-source shortest paths, optionally each row in its own random graph.

    Row :math:`b` computes :math:`d_b(v) = \min_{\text{paths } s_b \to v} \sum_{e} w_e` over the
    edges present in its sample :math:`G_b`: every edge when ``edge_prob`` is ``None``, else edge
    :math:`e` independently with probability :math:`p_e`, drawn from a counter-based hash of
    ``(seed, b, e)`` (so a row's sample does not depend on the batch size, the other rows or the
    backend, and the same ``seed`` gives the same samples). Samples are read lazily: a row stops
    as soon as all of its targets are settled.

    Gradients flow to ``weight``: :math:`\partial d_b(t) / \partial w_e = 1` if :math:`e` lies on
    the (returned) shortest path from :math:`s_b` to :math:`t`, else 0; unreachable entries
    (``inf``) get none.

    Args:
        indptr (LongTensor): ``[N + 1]`` CSR row pointers over source vertices (int32 or int64).
        indices (LongTensor): ``[E]`` edge targets.
        weight (Tensor): ``[E]`` non-negative edge lengths (float32/float64; ``inf`` = no edge).
            Duplicate edges are allowed (the lightest wins), so are self-loops and zeros.
        sources (LongTensor): ``[B]`` source vertex of each row.
        targets (LongTensor, optional): ``[B, T]`` vertices whose distances row ``b`` returns;
            ``None`` returns all ``N`` (default: ``None``).
        edge_prob (Tensor, optional): ``[E]`` presence probabilities in ``[0, 1]``; ``None``
            means every edge is present (default: ``None``).
        seed (int, optional): sampling seed; ``None`` draws one from torch's default generator
            (default: ``None``).
        return_predecessors (bool, optional): also return ``pred`` ``[B, N]``, the CSR index of
            the edge into each settled vertex on its shortest path (``-1`` for the source and
            for vertices the row did not settle). A vertex ``v`` was settled, and the samples
            of all its out-edges read, iff ``pred[b, v] >= 0`` or ``v == sources[b]``; with
            targets these are exactly the vertices with :math:`d_b(v) \le \max_t d_b(t)`
            (default: ``False``).

    Returns:
        ``dist`` ``[B, T]`` (or ``[B, N]``), ``inf`` where unreachable; or
        :class:`ShortestPaths` ``(dist, pred)`` when ``return_predecessors``.

    Memory is :math:`O(B N)`; the backend is chosen per call by :func:`tgrep._backend.choose`
    (C++ on CPU, Triton on CUDA, the plain reference otherwise).
    """
    _validate(indptr, indices, weight, sources, targets, edge_prob, seed)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
    seed = rng.seed32(seed)
    backend = _backend.choose(weight.device, IMPLEMENTED, cpp_name="shortest_path", op="shortest_paths")
    dist, pred = _ShortestPathsFn.apply(weight, indptr, indices, sources, targets, edge_prob, seed,
                                        return_predecessors, backend)
    return ShortestPaths(dist, pred) if return_predecessors else dist


def edge_presence(seed: int, rows: torch.Tensor, edges: torch.Tensor, edge_prob: torch.Tensor) -> torch.Tensor:
    """Whether edge ``edges[i]`` was present in row ``rows[i]``'s sample of a search run with
    ``seed`` (broadcasting): the same draws :func:`shortest_paths` made."""
    return rng.keep(seed, rows, edges, edge_prob)
