"""Weighted Erdős–Rényi graphs (the PRODIGE sanity check, Mazur et al. 2019, Sec. 4.1)."""
from __future__ import annotations

import torch

from ..utils import check


def _connected(n: int, ei: torch.Tensor) -> bool:
    label = torch.arange(n)
    while True:  # label propagation to the component minimum
        new = label.clone()
        new.scatter_reduce_(0, ei[0], label[ei[1]], reduce="amin")
        new.scatter_reduce_(0, ei[1], label[ei[0]], reduce="amin")
        if torch.equal(new, label):
            return bool((label == 0).all())
        label = new


def weighted_erdos_renyi(num_nodes: int, p: float = 0.25, *, low: float = 0.0, high: float = 1.0,
                         connected: bool = True, generator: torch.Generator | None = None,
                         max_tries: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    r"""An undirected :math:`G(n, p)` graph with i.i.d. :math:`U(\text{low}, \text{high})` edge weights.

    Args:
        num_nodes (int): number of vertices ``n >= 1``.
        p (float, optional): edge probability (default: ``0.25``).
        low (float, optional): smallest weight (default: ``0.0``).
        high (float, optional): largest weight (default: ``1.0``).
        connected (bool, optional): redraw until the graph is connected (default: ``True``).
        generator (torch.Generator, optional): source of randomness (default: ``None``).
        max_tries (int, optional): redraws before giving up (default: ``10000``).

    Returns:
        ``(edge_index [2, E], edge_weight [E])`` with each edge once, ``u < v``.
    """
    check.positive_int("num_nodes", num_nodes)
    check.in_range("p", p, 0.0, 1.0)
    check.in_range("low", low, 0.0, float("inf"), hi_open=True)
    if not high > low:
        raise ValueError(f"'high' must be > 'low', got {high} <= {low}")
    iu = torch.triu_indices(num_nodes, num_nodes, 1)
    for _ in range(max_tries):
        keep = torch.rand(iu.size(1), generator=generator) < p
        ei = iu[:, keep]
        w = low + (high - low) * torch.rand(ei.size(1), generator=generator)
        if not connected or num_nodes == 1 or _connected(num_nodes, ei):
            return ei, w
    raise ValueError(f"no connected G({num_nodes}, {p}) found in {max_tries} draws; raise 'p'")
