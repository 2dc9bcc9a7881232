"""Priors, edge costs and budgets of OT graph compression (Garg & Jaakkola, NeurIPS 2019):
plain torch, no host sync (they run inside compiled layers)."""
from __future__ import annotations

import torch
from torch_geometric.utils import scatter


def degree(edge_index: torch.Tensor, num_nodes: int, dtype=torch.float64) -> torch.Tensor:
    """Incident edge entries / 2: the degree for PyG undirected graphs (both directions listed)."""
    one = torch.full((edge_index.size(1),), 0.5, dtype=dtype, device=edge_index.device)
    return scatter(one, edge_index[0], 0, dim_size=num_nodes) + scatter(one, edge_index[1], 0, dim_size=num_nodes)


def normalise(rho0: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """``rho0`` scaled to unit mass per graph (graphs without mass are left at zero)."""
    tot = scatter(rho0, batch, 0, dim_size=num_graphs, reduce="sum")
    return rho0 / tot.clamp(min=1e-300)[batch]


def degree_prior(edge_index: torch.Tensor, batch: torch.Tensor, num_graphs: int, dtype=torch.float64) -> torch.Tensor:
    """``deg(v) / sum_u deg(u)`` per graph; uniform on a graph without edges."""
    deg = degree(edge_index, batch.numel(), dtype)
    tot = scatter(deg, batch, 0, dim_size=num_graphs, reduce="sum")
    cnt = scatter(torch.ones_like(deg), batch, 0, dim_size=num_graphs, reduce="sum")
    return torch.where(tot[batch] > 0, deg / tot.clamp(min=1e-300)[batch], 1.0 / cnt.clamp(min=1)[batch])


def degree_cost(edge_index: torch.Tensor, num_nodes: int, dtype=torch.float64) -> torch.Tensor:
    """``max(d_u, d_v)``, isolated ends counted as degree 1."""
    deg = degree(edge_index, num_nodes, dtype)
    return torch.maximum(deg[edge_index[0]], deg[edge_index[1]]).clamp(min=1.0)


def label_cost(edge_index: torch.Tensor, label: torch.Tensor, same: float, different: float,
               dtype=torch.float64) -> torch.Tensor:
    """``same`` where both ends share a label, else ``different``."""
    eq = label[edge_index[0]] == label[edge_index[1]]
    return torch.where(eq, torch.full(eq.shape, same, dtype=dtype, device=eq.device),
                       torch.full(eq.shape, different, dtype=dtype, device=eq.device))


def budgets(counts: torch.Tensor, ratio: float | None = None, k: int | None = None,
            k_per_graph: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]`` int64 budgets ``min(k_g, n_g)``: ``ceil(ratio n_g)``, a constant ``k`` or per graph
    (floating ``k_per_graph`` = ratios)."""
    n = counts.to(torch.float64)
    if k_per_graph is not None:
        kk = torch.ceil(k_per_graph.to(torch.float64) * n - 1e-9) if k_per_graph.is_floating_point() \
            else k_per_graph.to(torch.float64)
    elif ratio is not None:
        kk = torch.ceil(ratio * n - 1e-9)
    else:
        kk = torch.full_like(n, float(k))
    return torch.minimum(kk, n).long()
