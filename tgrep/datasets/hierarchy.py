r"""Planted hierarchical clusters: token sequences whose label is a cluster of a tree of items."""
from __future__ import annotations

import torch
from torch import Tensor

from ..utils import check

__all__ = ["hierarchical_sequences"]


def hierarchical_sequences(num_sequences: int = 3000, num_items: int = 1000, branching: tuple = (4, 4, 4),
                           length: int = 30, *, leaf_frac: float = 0.25, sibling_frac: float = 0.25,
                           label_level: int = 1, generator: torch.Generator | None = None
                           ) -> tuple[Tensor, Tensor, Tensor]:
    r"""A classification task whose items form a planted hierarchy of clusters.

    The ``num_items`` items are split evenly into the leaves of a tree with ``branching``
    children per level (default 4 x 4 x 4 = 64 leaf clusters). Each sequence picks a leaf
    cluster :math:`c`; each of its ``length`` tokens is drawn from :math:`c` with probability
    ``leaf_frac``, from the other leaves under :math:`c`'s parent with probability
    ``sibling_frac``, else uniformly from all items. The label is :math:`c`'s ancestor at
    ``label_level`` (0 = the root's children; default 1: 16 classes), so an item's usefulness
    comes from where it sits in the tree: items close in the tree carry the same evidence.

    Returns:
        ``(x [num_sequences, length] int64, y [num_sequences] int64, path [num_items,
        len(branching)] int64)``, ``path[i, l]`` the cluster id of item ``i`` at level ``l``.
    """
    check.positive_int("num_sequences", num_sequences)
    check.positive_int("num_items", num_items)
    check.positive_int("length", length)
    if not branching or any(int(b) < 1 for b in branching):
        raise ValueError(f"'branching' must be a non-empty sequence of positive ints, got {branching}")
    check.in_range("leaf_frac", leaf_frac, 0.0, 1.0)
    check.in_range("sibling_frac", sibling_frac, 0.0, 1.0 - leaf_frac)
    if not 0 <= label_level < len(branching):
        raise ValueError(f"'label_level' must be in [0, {len(branching)}), got {label_level}")
    leaves = 1
    for b in branching:
        leaves *= int(b)
    if num_items < leaves * 2:
        raise ValueError(f"'num_items' must be at least 2 per leaf cluster ({2 * leaves}), got {num_items}")
    g = generator
    leaf_of = torch.randperm(num_items, generator=g) % leaves       # item -> leaf cluster
    # cluster id at every level: leaf index in mixed radix, truncated
    path, rest = [], torch.arange(leaves)
    sizes = [int(b) for b in branching]
    for lvl in range(len(sizes)):
        below = 1
        for b in sizes[lvl + 1:]:
            below *= b
        path.append(rest // below)
    leaf_path = torch.stack(path, 1)                                # [leaves, L] ids, level l in [0, prod(b[:l+1]))
    item_path = leaf_path[leaf_of]
    order = torch.argsort(leaf_of, stable=True)                     # items grouped by leaf
    start = torch.searchsorted(leaf_of[order], torch.arange(leaves))
    count = torch.bincount(leaf_of, minlength=leaves)
    fan = sizes[-1]
    leaf = torch.randint(0, leaves, (num_sequences,), generator=g)
    u = torch.rand(num_sequences, length, generator=g)
    sib = (leaf // fan * fan)[:, None] + torch.randint(0, fan, (num_sequences, length), generator=g)
    src_leaf = torch.where(u < leaf_frac, leaf[:, None], sib)
    pick = (torch.rand(num_sequences, length, generator=g) * count[src_leaf]).long()
    clustered = order[start[src_leaf] + pick]
    noise = torch.randint(0, num_items, (num_sequences, length), generator=g)
    x = torch.where(u < leaf_frac + sibling_frac, clustered, noise)
    y = leaf_path[leaf, label_level]
    return x, y, item_path
