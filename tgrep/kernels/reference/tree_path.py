"""Reference path sums over given trees (``tgrep::tree_path_sum`` / ``tree_path_gradient``): the spec.

Row ``b`` is a forest over ``N`` vertices: ``parent[b, v]`` is ``v``'s parent vertex, ``v``
itself for a root and ``-1`` for a vertex outside the forest (both *terminal*); ``edge[b, v]``
indexes ``weight`` with the edge from ``parent[b, v]`` to ``v`` (read only where ``v`` is not
terminal). The walk from ``v`` follows ``parent`` until a terminal vertex, and

    out[b, v] = sum of weight[edge[b, x]] over the non-terminal x on the walk from v

(``0`` for a terminal ``v``). The gradient is its transpose: ``grad_weight[e]`` = sum of
``g[b, v]`` over the ``(b, v)`` whose walk passes an ``x`` with ``edge[b, x] = e``. Both take
``order`` ``[B, N]``, every row's vertices parents first (:func:`tree_order`), which the C++
kernels follow in one pass (forward) or its reverse (gradient). Errors (``ValueError``):
``parent`` outside ``[-1, N)``, ``edge`` outside ``[0, len(weight))`` on a non-terminal vertex,
a cycle in ``parent``, an ``order`` that is not a parents-first permutation of its row.

Vectorised walks: every (row, vertex) pair steps up its own path, O(sum of the path lengths).
"""
from __future__ import annotations

import torch

from ...utils import check


def _walks(edge: torch.Tensor, parent: torch.Tensor, num_edges: int, fn: str):
    """Yields ``(pair, e)`` per step of the walks: the flat (row, vertex) ids still walking and the
    edge each one crosses; validates as it goes."""
    B, n = parent.shape
    par, ed = parent.long(), edge.long()
    check.values(check.index_flags("parent", par, n, lower=-1))
    terminal = (par == -1) | (par == torch.arange(n, device=par.device))
    inner = ed[~terminal]
    if inner.numel():
        lo, hi = torch.aminmax(inner)
        if int(lo) < 0 or int(hi) >= num_edges:
            raise ValueError(f"{fn}: 'edge' has entries outside [0, {num_edges}) on a non-terminal vertex")
    pair = torch.arange(B * n, device=par.device)
    rows, cur = pair // max(n, 1), pair % max(n, 1)
    for _ in range(n + 1):
        keep = ~terminal[rows, cur]
        pair, rows, cur = pair[keep], rows[keep], cur[keep]
        if not pair.numel():
            return
        yield pair, ed[rows, cur]
        cur = par[rows, cur]
    raise ValueError(f"{fn}: 'parent' holds a cycle (not a forest)")


def _check_order(order: torch.Tensor, parent: torch.Tensor, fn: str) -> None:
    """``order`` lists each row's vertices once, every non-terminal vertex after its parent."""
    B, n = parent.shape
    if order.shape != parent.shape:
        raise ValueError(f"{fn}: 'order' must have the shape of 'parent' {tuple(parent.shape)}")
    if not n:
        return
    ar = torch.arange(n, device=order.device).expand(B, n)
    order = order.long()
    if not torch.equal(order.sort(1).values, ar):
        raise ValueError(f"{fn}: 'order' must list every vertex of its row once, each after its parent")
    pos = torch.empty_like(order).scatter_(1, order, ar)
    par = parent.long()
    inner = (par != -1) & (par != ar)
    if bool((pos.gather(1, par.clamp_min(0)) >= pos)[inner].any()):
        raise ValueError(f"{fn}: 'order' must list every vertex of its row once, each after its parent")


def tree_order(parent: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` int32: each row's vertices parents first (terminal vertices, then by depth)."""
    B, n = parent.shape
    depth = torch.zeros(B * n, dtype=torch.long, device=parent.device)
    for pair, _ in _walks(torch.zeros_like(parent), parent, 1, "tree_order"):
        depth[pair] += 1
    return depth.view(B, n).argsort(dim=1, stable=True).int()


def tree_path_sum(weight: torch.Tensor, edge: torch.Tensor, parent: torch.Tensor,
                  order: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` sums of ``weight`` along each vertex's walk to its terminal vertex."""
    _check_order(order, parent, "tree_path_sum")
    out = torch.zeros(parent.numel(), dtype=weight.dtype, device=weight.device)
    for pair, e in _walks(edge, parent, weight.numel(), "tree_path_sum"):
        out.index_add_(0, pair, weight[e])
    return out.view(parent.shape)


def tree_path_gradient(grad: torch.Tensor, edge: torch.Tensor, parent: torch.Tensor, order: torch.Tensor,
                       num_edges: int) -> torch.Tensor:
    """``[num_edges]``: ``grad [B, N]`` scattered onto the edges of each vertex's walk."""
    _check_order(order, parent, "tree_path_gradient")
    out = torch.zeros(num_edges, dtype=grad.dtype, device=grad.device)
    g = grad.reshape(-1)
    for pair, e in _walks(edge, parent, num_edges, "tree_path_gradient"):
        out.index_add_(0, e, g[pair])
    return out


def tree_path_table(weight: torch.Tensor, extra: torch.Tensor, edge: torch.Tensor, parent: torch.Tensor,
                    order: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``[num_rows, B]``: ``tree_path_sum(cat([weight, extra]))[:, :num_rows].T`` (edge ids
    ``len(weight) ..`` index ``extra``): vertex ``v``'s sum in each row, for ``v < num_rows``."""
    if not 0 <= num_rows <= parent.shape[-1]:
        raise ValueError(f"tree_path_table: 'num_rows' must lie in [0, N = {parent.shape[-1]}], got {num_rows}")
    d = tree_path_sum(torch.cat([weight, extra]), edge, parent, order)
    return d[:, :num_rows].T.contiguous()


def tree_path_table_gradient(grad: torch.Tensor, edge: torch.Tensor, parent: torch.Tensor, order: torch.Tensor,
                             num_edges: int) -> torch.Tensor:
    """``[num_edges]``: the transpose of :func:`tree_path_table`, ``grad [R, B]`` (the vertices
    from ``R`` on contribute nothing) scattered onto the edges of each vertex's walk."""
    B, n = parent.shape
    if grad.dim() != 2 or grad.shape[0] > n or grad.shape[1] != B:
        raise ValueError(f"tree_path_table_gradient: 'grad' must be [R, B = {B}] with R <= N = {n}, got "
                         f"{tuple(grad.shape)}")
    full = grad.new_zeros(B, n)
    full[:, :grad.shape[0]] = grad.T
    return tree_path_gradient(full, edge, parent, order, num_edges)


def predecessor_trees(pred: torch.Tensor, sources: torch.Tensor, edge_src: torch.Tensor, edge_map: torch.Tensor,
                      num_weights: int, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """``[3, B, N]`` int32 (edge, parent, order) of search trees from their CSR predecessors
    ``pred`` (``-1``: none): a vertex with ``pred = e`` hangs from ``edge_src[e]`` by the edge
    ``edge_map[e]``; the source is its own root; a vertex without ``pred`` (unreached) hangs
    from the source by the virtual edge ``num_weights``, or, with ``fallback`` ``[2, B, N]``
    (edge, parent; e.g. the row's previous tree), keeps its fallback edge and parent."""
    B, n = pred.shape
    E = edge_src.numel()
    check.values(check.index_flags("sources", sources, n) + check.index_flags("pred", pred, E, lower=-1))
    check.values(check.index_flags("edge_src", edge_src[pred[pred >= 0]], n)
                 + check.index_flags("edge_map", edge_map[pred[pred >= 0]], num_weights))
    ok = pred >= 0
    e = pred.clamp_min(0)
    src = sources.long().unsqueeze(1).expand(B, n)
    parent = torch.where(ok, edge_src[e], src).int()
    edge = torch.where(ok, edge_map[e], num_weights).int()
    if fallback is not None:
        keep = ~ok & (torch.arange(n, device=pred.device) != src)
        edge = torch.where(keep, fallback[0], edge)
        parent = torch.where(keep, fallback[1], parent)
    return torch.stack([edge, parent, tree_order(parent)])


def update_trees(trees: torch.Tensor, rows: torch.Tensor, pred: torch.Tensor, sources: torch.Tensor,
                 edge_src: torch.Tensor, edge_map: torch.Tensor, num_weights: int) -> torch.Tensor:
    """A copy of the cached trees ``trees`` ``[3, K, N]`` int32 whose rows ``rows`` ``[B]``
    (distinct) are the trees of the searches ``pred`` from ``sources``: :func:`predecessor_trees`
    with each row's own cached edge and parent as the fallback of its unreached vertices."""
    K = trees.size(1)
    flags = check.index_flags("rows", rows, K)
    if rows.numel():  # distinct: no row counted twice (one sync with the range check)
        count = torch.zeros(K + 1, dtype=torch.int64, device=rows.device).index_add_(
            0, rows.clamp(0, K), torch.ones_like(rows))
        flags.append(((count[:K] > 1).any(), lambda: "'rows' must be distinct rows of 'trees'"))
    check.values(flags)
    new = predecessor_trees(pred, sources, edge_src, edge_map, num_weights, trees[:2].index_select(1, rows))
    return trees.index_copy(1, rows, new)

