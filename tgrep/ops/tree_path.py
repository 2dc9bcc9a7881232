"""``tgrep.ops.tree_path_sums``: differentiable path lengths along given (e.g. cached) search trees."""
from __future__ import annotations

import torch

from .. import library  # noqa: F401  (registers torch.ops.tgrep.*)
from ..utils import check


def _check_trees(edge, parent, device):
    check.tensor("edge", edge, dtypes=(torch.int32,), dim=2, device=device)
    check.tensor("parent", parent, dtypes=(torch.int32,), dim=2, device=device)
    if edge.shape != parent.shape:
        raise ValueError(f"'edge' and 'parent' must have the same shape, got {tuple(edge.shape)} and "
                         f"{tuple(parent.shape)}")


def tree_order(parent: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` int32: each row's vertices of the forest ``parent`` (see :func:`tree_path_sums`)
    listed parents before children, the ``order`` :func:`tree_path_sums` follows. ``ValueError``
    on a cycle or an entry outside ``[-1, N)``."""
    check.tensor("parent", parent, dtypes=(torch.int32,), dim=2)
    return torch.ops.tgrep.tree_order(parent)


def tree_path_sums(weight: torch.Tensor, edge: torch.Tensor, parent: torch.Tensor,
                   order: torch.Tensor | None = None) -> torch.Tensor:
    r"""Lengths of the paths of given trees under edge lengths ``weight``.

    Row :math:`b` is a forest over :math:`N` vertices: ``parent[b, v]`` is :math:`v`'s parent,
    :math:`v` itself for a root and ``-1`` for a vertex outside the forest (both *terminal*);
    ``edge[b, v]`` is the index into ``weight`` of the edge from the parent to :math:`v`. With
    :math:`v = x_0, x_1 = \mathrm{parent}(x_0), \dots` up to the first terminal :math:`x_L`,

    .. math::
        \mathrm{out}[b, v] = \sum_{i < L} w_{\mathrm{edge}[b, x_i]},

    ``0`` for a terminal :math:`v`. For the predecessor tree of a shortest-path search with the
    same lengths this is the search's distance; for a tree cached from an earlier search it is
    the current length of the cached path, an upper bound of the distance. Differentiable in
    ``weight`` (:math:`\partial\,\mathrm{out}[b, v] / \partial w_e` = how often :math:`e` lies on
    the walk); its backward ``tgrep::tree_path_gradient`` is the transpose, so every order of
    derivative is exact. One pass per row over ``order`` (the gradient: over its reverse), no
    host synchronisation on the C++ path; the value checks (``parent`` in ``[-1, N)``, ``edge``
    in ``[0, len(weight))`` on non-terminal vertices, ``order`` a parents-first permutation:
    ``ValueError``) run inside the kernel, in the same pass. Trees reused over many calls (the
    cached trees of :class:`tgrep.nn.ProdigeEmbedding`) compute their ``order`` once.

    Args:
        weight (Tensor): ``[E]`` edge lengths (floating).
        edge (IntTensor): ``[B, N]`` int32 edge into each vertex.
        parent (IntTensor): ``[B, N]`` int32 parent vertex (``v``: root, ``-1``: outside).
        order (IntTensor, optional): ``[B, N]`` each row's vertices parents first, from
            :func:`tree_order` (default: ``None``: computed here).

    Returns:
        ``[B, N]`` path lengths, in ``weight``'s dtype.
    """
    check.tensor("weight", weight, dtypes=check.FLOAT_DTYPES, dim=1)
    device = weight.device
    check.dense("weight", weight)
    _check_trees(edge, parent, device)
    if order is None:
        order = torch.ops.tgrep.tree_order(parent)
    check.tensor("order", order, dtypes=(torch.int32,), dim=2, device=device)
    if order.shape != parent.shape:
        raise ValueError(f"'order' must have the shape of 'parent' {tuple(parent.shape)}, got {tuple(order.shape)}")
    return torch.ops.tgrep.tree_path_sum(weight, edge, parent, order)
