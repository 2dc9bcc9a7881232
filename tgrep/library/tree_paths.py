"""Custom ops over given shortest-path trees: ``tgrep::predecessor_trees``, ``tgrep::update_trees``, ``tgrep::tree_order``,
``tgrep::tree_path_sum`` and its transpose ``tgrep::tree_path_gradient``, ``tgrep::tree_path_table`` (the same sums
as a transposed table) and its transpose ``tgrep::tree_path_table_gradient`` (PRODIGE family; what :class:`tgrep.nn.ProdigeEmbedding` trains
through between two refreshes of its cached search trees).

Kernels: C++ (``csrc/cpu/tree_paths.cpp``) on CPU, the reference
(:mod:`tgrep.kernels.reference.tree_path`) elsewhere (CUDA included: no Triton kernel yet).
The value checks (index ranges, cycles) run inside the kernels, in the pass that reads the
values, so the op costs no separate validation pass; the ``check`` below is shapes only.

Gradients: ``tree_path_sum`` is linear in ``weight`` and ``tree_path_gradient`` is its
transpose, so each is the other's backward and every order of derivative is exact.
"""
# no `from __future__ import annotations` here: torch.library infers the schema from real type hints

from typing import Optional

import torch
from torch import Tensor

from .._ext import cpp_kernel
from ..kernels.reference import tree_path as ref
from ._register import kernel_op


def _check_trees(edge: Tensor, parent: Tensor) -> None:
    for name, t in (("edge", edge), ("parent", parent)):
        if t.dtype != torch.int32:
            raise TypeError(f"'{name}' must be int32, got {t.dtype}")
    if parent.dim() != 2 or edge.shape != parent.shape:
        raise ValueError(f"'edge' and 'parent' must both be [B, N], got {tuple(edge.shape)} and {tuple(parent.shape)}")


def _check_order(order: Tensor, parent: Tensor) -> None:
    if order.dtype != torch.int32 or order.shape != parent.shape:
        raise ValueError(f"'order' must be int32 with the shape of 'parent' {tuple(parent.shape)}, "
                         f"got {order.dtype} of shape {tuple(order.shape)}")


def _check_parent(parent):
    _check_trees(parent, parent)


def _check_sum(weight, edge, parent, order):
    if weight.dim() != 1 or not weight.is_floating_point():
        raise ValueError(f"'weight' must be a 1-D floating tensor, got {weight.dtype} of shape {tuple(weight.shape)}")
    _check_trees(edge, parent)
    _check_order(order, parent)


def _check_scatter(edge, parent, order, num_edges):  # what both gradient ops check besides 'grad'
    _check_trees(edge, parent)
    _check_order(order, parent)
    if num_edges < 0:
        raise ValueError(f"'num_edges' must be >= 0, got {num_edges}")


def _check_gradient(grad, edge, parent, order, num_edges):
    _check_scatter(edge, parent, order, num_edges)
    if grad.shape != parent.shape or not grad.is_floating_point():
        raise ValueError(f"'grad' must be floating with the shape of 'parent' {tuple(parent.shape)}, "
                         f"got {grad.dtype} of shape {tuple(grad.shape)}")


def _check_predecessors(pred, sources, edge_src, edge_map, num_weights, fallback=None):
    if fallback is not None and (fallback.dtype != torch.int32 or fallback.shape != (2, *pred.shape)):
        raise ValueError(f"'fallback' must be int32 [2, B, N] = [2, {pred.shape[0]}, {pred.shape[1]}], got "
                         f"{fallback.dtype} of shape {tuple(fallback.shape)}")
    for name, t in (("pred", pred), ("sources", sources)):
        if t.dtype != torch.int64:
            raise TypeError(f"'{name}' must be int64, got {t.dtype}")
    for name, t in (("edge_src", edge_src), ("edge_map", edge_map)):
        if t.dtype not in (torch.int32, torch.int64) or t.dtype != edge_src.dtype:
            raise TypeError(f"'edge_src' and 'edge_map' must both be int32 or both int64, got {edge_src.dtype} "
                            f"and {edge_map.dtype}")
    if pred.dim() != 2 or sources.shape != (pred.shape[0],):
        raise ValueError(f"'pred' must be [B, N] and 'sources' [B], got {tuple(pred.shape)} and {tuple(sources.shape)}")
    if edge_src.dim() != 1 or edge_map.shape != edge_src.shape:
        raise ValueError(f"'edge_src' and 'edge_map' must both be [E], got {tuple(edge_src.shape)} and "
                         f"{tuple(edge_map.shape)}")
    if not 0 <= num_weights < 2**31 - 1:
        raise ValueError(f"'num_weights' must lie in [0, 2^31 - 1), got {num_weights}")


@kernel_op("tgrep::predecessor_trees", cpp=cpp_kernel("tree_paths", "predecessor_trees"), check=_check_predecessors)
def predecessor_trees(pred: Tensor, sources: Tensor, edge_src: Tensor, edge_map: Tensor, num_weights: int,
                      fallback: Optional[Tensor] = None) -> Tensor:
    """``[3, B, N]`` int32 ``(edge, parent, order)`` of the trees of searches from ``sources``
    given their CSR predecessors ``pred`` (``tgrep::shortest_paths``' ``pred``): what
    ``tree_path_sum`` takes. ``edge_src[e]`` is CSR edge ``e``'s source vertex, ``edge_map[e]``
    its index into the weights; an unreached vertex hangs from the source by the virtual edge
    ``num_weights`` (append its length to the weights), or with ``fallback`` ``[2, B, N]`` int32
    (edge, parent: e.g. the row's previous tree) keeps its fallback edge and parent (the result
    is then a forest whenever ``fallback`` is one: ``ValueError`` on a cycle)."""
    return ref.predecessor_trees(pred, sources, edge_src, edge_map, num_weights, fallback)


@predecessor_trees.register_fake
def _(pred, sources, edge_src, edge_map, num_weights, fallback=None):
    return pred.new_empty((3, pred.shape[0], pred.shape[1]), dtype=torch.int32)


def _check_update(trees, rows, pred, sources, edge_src, edge_map, num_weights):
    if trees.dtype != torch.int32 or trees.dim() != 3 or trees.size(0) != 3 or trees.size(2) != pred.size(-1):
        raise ValueError(f"'trees' must be int32 [3, K, N] with N = pred.size(1), got {trees.dtype} of shape "
                         f"{tuple(trees.shape)}")
    if rows.dtype != torch.int64 or rows.shape != (pred.size(0),):
        raise ValueError(f"'rows' must be int64 [B] = [{pred.size(0)}], got {rows.dtype} of shape {tuple(rows.shape)}")
    _check_predecessors(pred, sources, edge_src, edge_map, num_weights)


@kernel_op("tgrep::update_trees", cpp=cpp_kernel("tree_paths", "update_trees"), check=_check_update)
def update_trees(trees: Tensor, rows: Tensor, pred: Tensor, sources: Tensor, edge_src: Tensor, edge_map: Tensor,
                 num_weights: int) -> Tensor:
    """A copy of the cached trees ``trees`` ``[3, K, N]`` int32 whose rows ``rows`` ``[B]``
    (distinct) are the trees of the searches ``pred`` from ``sources``: ``predecessor_trees``
    with each row's own cached edge and parent as the fallback (one pass: no separate gather of
    the fallback, no separate copy of the cache)."""
    return ref.update_trees(trees, rows, pred, sources, edge_src, edge_map, num_weights)


@update_trees.register_fake
def _(trees, rows, pred, sources, edge_src, edge_map, num_weights):
    return torch.empty_like(trees)


@kernel_op("tgrep::tree_order", cpp=cpp_kernel("tree_paths", "tree_order"), check=_check_parent)
def tree_order(parent: Tensor) -> Tensor:
    """``[B, N]`` int32: each row's vertices, parents before children (``ValueError`` on a
    cycle or a parent outside ``[-1, N)``)."""
    return ref.tree_order(parent)


@tree_order.register_fake
def _(parent):
    return parent.new_empty(parent.shape)


@kernel_op("tgrep::tree_path_sum", cpp=cpp_kernel("tree_paths", "tree_path_sum"), check=_check_sum)
def tree_path_sum(weight: Tensor, edge: Tensor, parent: Tensor, order: Tensor) -> Tensor:
    """``[B, N]``: the sum of ``weight`` along each vertex's walk up its tree; see
    :func:`tgrep.ops.tree_path_sums` for the contract."""
    return ref.tree_path_sum(weight, edge, parent, order)


@tree_path_sum.register_fake
def _(weight, edge, parent, order):
    return weight.new_empty(parent.shape)


@kernel_op("tgrep::tree_path_gradient", cpp=cpp_kernel("tree_paths", "tree_path_gradient"), check=_check_gradient)
def tree_path_gradient(grad: Tensor, edge: Tensor, parent: Tensor, order: Tensor, num_edges: int) -> Tensor:
    """``[num_edges]``: ``grad`` scattered onto the edges of each vertex's walk (the transpose
    of ``tree_path_sum``)."""
    return ref.tree_path_gradient(grad, edge, parent, order, num_edges)


@tree_path_gradient.register_fake
def _(grad, edge, parent, order, num_edges):
    return grad.new_empty(num_edges)


def _check_table(weight, extra, edge, parent, order, num_rows):
    _check_sum(weight, edge, parent, order)
    if extra.dim() != 1 or extra.dtype != weight.dtype:
        raise ValueError(f"'extra' must be 1-D with the dtype of 'weight' ({weight.dtype}), got {extra.dtype} of "
                         f"shape {tuple(extra.shape)}")
    if not 0 <= num_rows <= parent.shape[1]:
        raise ValueError(f"'num_rows' must lie in [0, N = {parent.shape[1]}], got {num_rows}")


@kernel_op("tgrep::tree_path_table", cpp=cpp_kernel("tree_paths", "tree_path_table"), check=_check_table)
def tree_path_table(weight: Tensor, extra: Tensor, edge: Tensor, parent: Tensor, order: Tensor,
                    num_rows: int) -> Tensor:
    """``[num_rows, B]``: ``tree_path_sum(cat([weight, extra]), ...)[:, :num_rows].T`` in one
    pass, without the concatenated weights or the ``[B, N]`` sums (edge ids from
    ``len(weight)`` on index ``extra``: e.g. a default length). An embedding table: row ``v``
    holds vertex ``v``'s path sum in each tree."""
    return ref.tree_path_table(weight, extra, edge, parent, order, num_rows)


@tree_path_table.register_fake
def _(weight, extra, edge, parent, order, num_rows):
    return weight.new_empty((num_rows, parent.shape[0]))


def _check_table_gradient(grad, edge, parent, order, num_edges):
    _check_scatter(edge, parent, order, num_edges)
    if grad.dim() != 2 or grad.shape[0] > parent.shape[1] or grad.shape[1] != parent.shape[0] \
            or not grad.is_floating_point():
        raise ValueError(f"'grad' must be floating [R, B = {parent.shape[0]}] with R <= N = {parent.shape[1]}, got "
                         f"{grad.dtype} of shape {tuple(grad.shape)}")


@kernel_op("tgrep::tree_path_table_gradient", cpp=cpp_kernel("tree_paths", "tree_path_table_gradient"),
           check=_check_table_gradient)
def tree_path_table_gradient(grad: Tensor, edge: Tensor, parent: Tensor, order: Tensor, num_edges: int) -> Tensor:
    """``[num_edges]``: ``grad [R, B]`` scattered onto the edges of each vertex's walk (the
    transpose of ``tree_path_table``; the vertices from ``R`` on contribute nothing)."""
    return ref.tree_path_table_gradient(grad, edge, parent, order, num_edges)


@tree_path_table_gradient.register_fake
def _(grad, edge, parent, order, num_edges):
    return grad.new_empty(num_edges)


def _sum_setup(ctx, inputs, output):
    weight, edge, parent, order = inputs
    ctx.save_for_backward(edge, parent, order)
    ctx.num_edges = weight.shape[0]


def _sum_backward(ctx, grad):
    edge, parent, order = ctx.saved_tensors
    g = tree_path_gradient(grad, edge, parent, order, ctx.num_edges) if ctx.needs_input_grad[0] else None
    return g, None, None, None


def _gradient_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[1:4])


def _gradient_backward(ctx, grad):
    edge, parent, order = ctx.saved_tensors
    g = tree_path_sum(grad, edge, parent, order) if ctx.needs_input_grad[0] else None
    return g, None, None, None, None


def _table_setup(ctx, inputs, output):
    weight, extra, edge, parent, order, num_rows = inputs
    ctx.save_for_backward(edge, parent, order)
    ctx.sizes = (weight.shape[0], extra.shape[0])


def _table_backward(ctx, grad):
    edge, parent, order = ctx.saved_tensors
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return None, None, None, None, None, None
    E, X = ctx.sizes
    g = tree_path_table_gradient(grad, edge, parent, order, E + X)
    return g[:E], g[E:], None, None, None, None


def _table_gradient_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[1:4])
    ctx.num_rows = inputs[0].shape[0]


def _table_gradient_backward(ctx, grad):  # its transpose: the table of the scattered edges
    edge, parent, order = ctx.saved_tensors
    g = tree_path_table(grad, grad[:0], edge, parent, order, ctx.num_rows) if ctx.needs_input_grad[0] else None
    return g, None, None, None, None


tree_path_sum.register_autograd(_sum_backward, setup_context=_sum_setup)
tree_path_table.register_autograd(_table_backward, setup_context=_table_setup)
tree_path_table_gradient.register_autograd(_table_gradient_backward, setup_context=_table_gradient_setup)
tree_path_gradient.register_autograd(_gradient_backward, setup_context=_gradient_setup)
