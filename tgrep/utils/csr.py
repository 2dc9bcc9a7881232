"""Conversions between PyG's ``edge_index`` and the CSR layout the kernels take."""
from __future__ import annotations

import torch

from . import check


def to_csr(edge_index: torch.Tensor, num_nodes: int | None = None, edge_weight: torch.Tensor | None = None, *,
           undirected: bool = False, return_perm: bool = False):
    """Convert a PyG ``edge_index`` (and weights) to CSR over source vertices.

    Args:
        edge_index (LongTensor): ``[2, E]`` edges ``source -> target``.
        num_nodes (int, optional): number of vertices ``N`` (default: ``max(edge_index) + 1``).
        edge_weight (Tensor, optional): ``[E]`` weights (default: all ones).
        undirected (bool, optional): if ``True``, every edge is also added reversed
            (edges listed in both directions already are then duplicated, which shortest
            paths do not mind: the lightest copy wins) (default: ``False``).
        return_perm (bool, optional): also return ``perm`` ``[E']`` with the index into
            the input edges of each CSR edge, to map per-edge parameters (default: ``False``).

    Returns:
        ``(indptr [N+1], indices [E'], weight [E'])`` (and ``perm``), sorted by source
        then target; ``indptr``/``indices`` are int64.
    """
    check.edge_index("edge_index", edge_index)
    edge_index = edge_index.long()
    if num_nodes is None:
        num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
    check.positive_int("num_nodes", num_nodes, allow_zero=True)
    check.index_range("edge_index", edge_index, num_nodes)
    E = edge_index.size(1)
    if edge_weight is None:
        edge_weight = torch.ones(E, device=edge_index.device)
    check.tensor("edge_weight", edge_weight, dim=1, device=edge_index.device, dtypes=check.FLOAT_DTYPES)
    check.same_length("edge_index", edge_index, "edge_weight", edge_weight, dim=-1)
    src, dst = edge_index
    perm = torch.arange(E, device=edge_index.device)
    if undirected:
        src, dst = torch.cat([src, dst]), torch.cat([dst, src])
        perm = torch.cat([perm, perm])
        edge_weight = torch.cat([edge_weight, edge_weight])
    key = src * max(num_nodes, 1) + dst
    order = torch.argsort(key, stable=True)
    src, dst, w, perm = src[order], dst[order], edge_weight[order], perm[order]
    counts = torch.bincount(src, minlength=num_nodes)
    indptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=edge_index.device)
    indptr[1:] = torch.cumsum(counts, 0)
    out = (indptr, dst, w)
    return out + (perm,) if return_perm else out


def csr_to_edge_index(indptr: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The ``[2, E]`` ``edge_index`` of a CSR graph (the inverse of :func:`to_csr`)."""
    n = indptr.numel() - 1
    src = torch.repeat_interleave(torch.arange(n, device=indptr.device), indptr.diff())
    return torch.stack([src, indices.long()])
