"""Custom ops of the PRODIGE family: ``tgrep::shortest_paths``, ``tgrep::path_gradient``,
``tgrep::path_sum`` and ``tgrep::reinforce_coefficients``.

Kernels: C++ (``csrc/cpu/shortest_path.cpp``, ``csrc/cpu/path_gradient.cpp``,
``csrc/cpu/prodige_reinforce.cpp``) on CPU,
Triton (:mod:`tgrep.kernels.triton.shortest_path`) on CUDA, the references in
:mod:`tgrep.kernels.reference` anywhere. The Triton search loops on the host until its
frontier is empty (a convergence check every few launches), so these ops are opaque to
Inductor by design: ``torch.compile`` calls them as single nodes.

Gradients: ``shortest_paths`` is differentiable in ``weight``; its backward is
``path_gradient`` (scatter a per-(row, target) gradient onto the edges of each returned
path), whose backward is ``path_sum`` (gather an edge vector along the same paths) and vice
versa: the two are each other's transposes, so every order of derivative is exact.
"""
# no `from __future__ import annotations` here: torch.library infers the schema from real type hints

from typing import Optional

import torch
from torch import Tensor

from .._ext import cpp_kernel
from ..kernels.reference import reinforce as ref_reinforce
from ..kernels.reference import shortest_path as ref
from ..utils import check
from ._register import kernel_op

_NO_PRED = (0,)


def _triton():
    from ..kernels.triton import shortest_path as tri

    return tri


def _edge_src(indptr: Tensor) -> Tensor:
    n = indptr.numel() - 1
    return torch.repeat_interleave(torch.arange(n, device=indptr.device), indptr.diff(), output_size=None)


# ------------------------------------------------------------------------------ shortest_paths
def _search(fn):
    """Adapt a kernel ``(indptr, indices, weight, sources, targets, edge_prob, seed: int, need_pred)
    -> (dist, pred | None)`` to the op's signature (seed as a 0-d tensor, pred always a tensor)."""
    def run(indptr, indices, weight, sources, targets, edge_prob, seed, need_pred):
        dist, pred = fn(indptr, indices, weight, sources, targets, edge_prob, int(seed), need_pred)
        if pred is None:
            pred = torch.empty(_NO_PRED, dtype=torch.int64, device=weight.device)
        return dist, pred

    return run


def _check_search(indptr, indices, weight, sources, targets, edge_prob, seed, need_pred):
    n = indptr.numel() - 1
    check.values(check.csr_flags(indptr, indices, n) + check.index_flags("sources", sources, n)
                 + check.index_flags("targets", targets, n) + check.nonneg_flags("weight", weight)
                 + check.prob_flags("edge_prob", edge_prob))


def _cpp_search():
    fn = cpp_kernel("shortest_path", "shortest_paths")()
    return None if fn is None else _search(fn)


@kernel_op("tgrep::shortest_paths", cpp=_cpp_search, triton=lambda: _search(_triton().shortest_paths),
           check=_check_search, cpp_checks_values=True)
def shortest_paths(indptr: Tensor, indices: Tensor, weight: Tensor, sources: Tensor, targets: Optional[Tensor],
                   edge_prob: Optional[Tensor], seed: Tensor, need_pred: bool) -> tuple[Tensor, Tensor]:
    """``(dist [B, T] or [B, N], pred [B, N] int64, or [0] when not need_pred)``; see
    :func:`tgrep.ops.shortest_paths` for the contract."""
    return _search(ref.shortest_paths)(indptr, indices, weight, sources, targets, edge_prob, seed, need_pred)


@shortest_paths.register_fake
def _(indptr, indices, weight, sources, targets, edge_prob, seed, need_pred):
    B, n = sources.shape[0], indptr.shape[0] - 1
    T = n if targets is None else targets.shape[1]
    pred = indptr.new_empty((B, n) if need_pred else _NO_PRED, dtype=torch.int64)
    return weight.new_empty(B, T), pred


def _search_setup(ctx, inputs, output):
    indptr, indices, weight, sources, targets, edge_prob, seed, need_pred = inputs
    dist, pred = output
    ctx.save_for_backward(dist, pred, sources, targets, indptr)
    ctx.num_edges = weight.shape[0]
    ctx.mark_non_differentiable(pred)


def _search_backward(ctx, grad_dist, _grad_pred):
    dist, pred, sources, targets, indptr = ctx.saved_tensors
    grad_w = None
    if ctx.needs_input_grad[2]:
        if pred.dim() != 2:
            raise RuntimeError("tgrep::shortest_paths was called with need_pred=False, so it kept no paths to "
                               "differentiate along (tgrep.ops.shortest_paths sets it when weight requires grad)")
        grad_w = path_gradient(grad_dist, dist, pred, sources, targets, indptr, ctx.num_edges)
    return None, None, grad_w, None, None, None, None, None


shortest_paths.register_autograd(_search_backward, setup_context=_search_setup)


# ------------------------------------------------------------------------------ path_gradient / path_sum
def _path_flags(dist, pred, sources, targets, indptr, num_edges):
    """Shapes (raised at once: no values needed) and the value flags of the path ops: pred in
    [-1, E), sources/targets in [0, N), indptr a CSR pointer array over E edges."""
    if pred.dim() != 2:
        raise ValueError(f"'pred' must be [B, N], got shape {tuple(pred.shape)}")
    B, n = pred.shape
    if indptr.dim() != 1 or indptr.numel() != n + 1:
        raise ValueError(f"'indptr' must have N + 1 = {n + 1} entries (N = pred.shape[1]), got {indptr.numel()}")
    T = n if targets is None else targets.shape[-1]
    if targets is not None and (targets.dim() != 2 or targets.shape[0] != B):
        raise ValueError(f"'targets' must be [B, T] with B = {B}, got shape {tuple(targets.shape)}")
    if tuple(dist.shape) != (B, T) or sources.shape[0] != B:
        raise ValueError(f"'dist' must be [B, T] = [{B}, {T}] and 'sources' [B], got {tuple(dist.shape)} and "
                         f"{tuple(sources.shape)}")
    flags = check.indptr_flags(indptr, num_edges, f"the number of edges ({num_edges})")
    return (flags + check.index_flags("pred", pred, num_edges, lower=-1) + check.index_flags("sources", sources, n)
            + check.index_flags("targets", targets, n))


def _check_path_gradient(grad_dist, dist, pred, sources, targets, indptr, num_edges):
    if grad_dist.shape != dist.shape:
        raise ValueError(f"'grad_dist' must have the shape of 'dist' {tuple(dist.shape)}, got {tuple(grad_dist.shape)}")
    check.values(_path_flags(dist, pred, sources, targets, indptr, num_edges))


def _check_path_sum(edge_values, dist, pred, sources, targets, indptr):
    check.values(_path_flags(dist, pred, sources, targets, indptr, edge_values.numel()))


def _ref_path_gradient(grad_dist, dist, pred, sources, targets, indptr, num_edges):
    return ref.path_gradient(grad_dist, dist, pred, sources, targets, _edge_src(indptr), num_edges)


def _tri_path_gradient():
    tri = _triton()
    return lambda grad_dist, dist, pred, sources, targets, indptr, num_edges: tri.path_gradient(
        grad_dist, dist, pred, sources, targets, _edge_src(indptr), num_edges)


@kernel_op("tgrep::path_gradient", cpp=cpp_kernel("path_gradient", "path_gradient"), triton=_tri_path_gradient,
           check=_check_path_gradient)
def path_gradient(grad_dist: Tensor, dist: Tensor, pred: Tensor, sources: Tensor, targets: Optional[Tensor],
                  indptr: Tensor, num_edges: int) -> Tensor:
    """``out[e] = sum of grad_dist[b, t]`` over the finite (row, target) pairs whose returned
    path uses edge ``e`` (the backward of ``shortest_paths``)."""
    return _ref_path_gradient(grad_dist, dist, pred, sources, targets, indptr, num_edges)


@path_gradient.register_fake
def _(grad_dist, dist, pred, sources, targets, indptr, num_edges):
    return grad_dist.new_empty(num_edges)


@kernel_op("tgrep::path_sum", cpp=cpp_kernel("path_gradient", "path_sum"), check=_check_path_sum)
def path_sum(edge_values: Tensor, dist: Tensor, pred: Tensor, sources: Tensor, targets: Optional[Tensor],
             indptr: Tensor) -> Tensor:
    """``out[b, t] = sum of edge_values[e]`` over the edges of row ``b``'s returned path to
    target ``t`` (0 where unreachable): the transpose of ``path_gradient``."""
    return ref.path_sum(edge_values, dist, pred, sources, targets, _edge_src(indptr))


@path_sum.register_fake
def _(edge_values, dist, pred, sources, targets, indptr):
    return edge_values.new_empty(dist.shape)


def _paths_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[1:6])


def _path_gradient_backward(ctx, grad_out):
    dist, pred, sources, targets, indptr = ctx.saved_tensors
    g = path_sum(grad_out, dist, pred, sources, targets, indptr) if ctx.needs_input_grad[0] else None
    return g, None, None, None, None, None, None


def _path_sum_backward(ctx, grad_out):
    dist, pred, sources, targets, indptr = ctx.saved_tensors
    g = None
    if ctx.needs_input_grad[0]:
        g = path_gradient(grad_out, dist, pred, sources, targets, indptr, ctx.num_edges)
    return g, None, None, None, None, None


def _path_sum_setup(ctx, inputs, output):
    _paths_setup(ctx, inputs, output)
    ctx.num_edges = inputs[0].shape[0]


path_gradient.register_autograd(_path_gradient_backward, setup_context=_paths_setup)
path_sum.register_autograd(_path_sum_backward, setup_context=_path_sum_setup)


# ------------------------------------------------------------------------------ reinforce_coefficients
def _check_reinforce(indptr, pred, sources, seed, edge_prob, advantage):
    B, n = pred.shape
    E = edge_prob.numel()
    if indptr.numel() != n + 1:
        raise ValueError(f"'indptr' must have N + 1 = {n + 1} entries (N = pred.shape[1]), got {indptr.numel()}")
    if sources.numel() != B or advantage.numel() != B:
        raise ValueError(f"'sources' and 'advantage' must have B = {B} entries, "
                         f"got {sources.numel()} and {advantage.numel()}")
    flags = check.indptr_flags(indptr, E, f"len(edge_prob) = {E}")
    check.values(flags + check.index_flags("pred", pred, E, lower=-1) + check.index_flags("sources", sources, n)
                 + check.prob_flags("edge_prob", edge_prob) + check.finite_flags("advantage", advantage))


def _reinforce(fn):
    return lambda indptr, pred, sources, seed, edge_prob, advantage: fn(indptr, pred, sources, int(seed), edge_prob,
                                                                        advantage)


def _cpp_reinforce():
    fn = cpp_kernel("prodige_reinforce", "reinforce_coefficients")()
    return None if fn is None else _reinforce(fn)


@kernel_op("tgrep::reinforce_coefficients", cpp=_cpp_reinforce, check=_check_reinforce)
def reinforce_coefficients(indptr: Tensor, pred: Tensor, sources: Tensor, seed: Tensor, edge_prob: Tensor,
                           advantage: Tensor) -> Tensor:
    """``[E]`` float64 REINFORCE coefficients; see :func:`tgrep.ops.reinforce_coefficients`."""
    return _reinforce(ref_reinforce.reinforce_coefficients)(indptr, pred, sources, seed, edge_prob, advantage)


@reinforce_coefficients.register_fake
def _(indptr, pred, sources, seed, edge_prob, advantage):
    return edge_prob.new_empty(edge_prob.shape, dtype=torch.float64)
