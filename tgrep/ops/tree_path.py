"""``tgrep.ops.tree_path_sums``: differentiable path lengths along given (e.g. cached) search trees."""
from __future__ import annotations

import torch

from .. import library  # noqa: F401  (registers torch.ops.tgrep.*)
from ..utils import check


def tree_path_sums(weight: torch.Tensor, edge: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
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
    derivative is exact. O(N) per row (one pass, parents first), no host synchronisation on the
    C++ path; the value checks (``parent`` in ``[-1, N)``, ``edge`` in ``[0, len(weight))`` on
    non-terminal vertices, no cycle: ``ValueError``) run inside the kernel.

    Args:
        weight (Tensor): ``[E]`` edge lengths (floating).
        edge (LongTensor): ``[B, N]`` int64 edge into each vertex.
        parent (LongTensor): ``[B, N]`` int64 parent vertex (``v``: root, ``-1``: outside).

    Returns:
        ``[B, N]`` path lengths, in ``weight``'s dtype.
    """
    check.tensor("weight", weight, dtypes=check.FLOAT_DTYPES, dim=1)
    device = weight.device
    check.tensor("edge", edge, dtypes=(torch.int64,), dim=2, device=device)
    check.tensor("parent", parent, dtypes=(torch.int64,), dim=2, device=device)
    check.dense("weight", weight)
    if edge.shape != parent.shape:
        raise ValueError(f"'edge' and 'parent' must have the same shape, got {tuple(edge.shape)} and "
                         f"{tuple(parent.shape)}")
    return torch.ops.tgrep.tree_path_sum(weight, edge, parent)
