r"""The node selection of OT graph compression as a PyG :class:`~torch_geometric.nn.pool.select.Select`
(Garg & Jaakkola, NeurIPS 2019; not the AAAI 2021 "OTCoarsening" of Ma & Chen)."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor
from torch_geometric.nn.pool.select import Select, SelectOutput
from torch_geometric.utils import scatter

from ...kernels.reference import ot_costs
from ...ops.ot_compress import ot_compress
from ...utils import check


def check_ratio(ratio) -> Union[int, float]:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"'ratio' must be an int (nodes kept) or a float in (0, 1], got {type(ratio).__name__}")
    if isinstance(ratio, float):
        return check.in_range("ratio", ratio, 0.0, 1.0, lo_open=True)
    return check.positive_int("ratio", ratio)


class SelectOT(Select):
    r"""Selects, per graph, the support of the cheapest compression of the degree prior
    :math:`\rho_0` under edge costs :math:`c` (:func:`tgrep.ot_compress`, ``refine`` swaps),
    and scores the kept nodes by the gate :math:`\tanh(k_g \rho_{1,v})` (an even split
    :math:`\rho_{1,v} = 1/k_g` gives :math:`\tanh 1`), differentiable in a learned :math:`c`.

    ``forward(edge_index, cost, batch)`` returns a :class:`SelectOutput` with ``node_index``
    the kept nodes (sorted by graph, then index), one cluster per kept node, and ``weight``
    the gates; :meth:`transport_assignment` maps every node to the kept node its mass reaches
    most cheaply (``reduce='transport'``).

    Args:
        ratio (float or int): fraction of nodes kept per graph, or the number kept.
        lam (float, optional): :math:`\lambda` (default: ``1.0``).
        num_iters (int, optional): Mirror Prox iterations (default: ``30``).
        refine (int, optional): swap refinement width (default: ``0``).
        diff_iters (int, optional): iterations replayed for the gradients (default: ``3``).
    """

    def __init__(self, ratio: Union[int, float] = 0.5, lam: float = 1.0, num_iters: int = 30, refine: int = 0,
                 diff_iters: int = 3):
        super().__init__()
        self.ratio = check_ratio(ratio)
        self.lam = check.in_range("lam", lam, 0, math.inf, lo_open=True, hi_open=True)
        self.num_iters = check.positive_int("num_iters", num_iters)
        self.refine = check.positive_int("refine", refine, allow_zero=True)
        self.diff_iters = check.positive_int("diff_iters", diff_iters)

    def forward(self, edge_index: Tensor, cost: Tensor, batch: Optional[Tensor] = None,
                num_nodes: Optional[int] = None) -> SelectOutput:
        N = int(batch.numel()) if num_nodes is None else num_nodes
        info = ot_compress(edge_index, N, self.ratio, cost=cost, lam=self.lam, num_iters=self.num_iters,
                           batch=batch, refine=self.refine, diff_iters=self.diff_iters, return_info=True)
        perm = info.perm
        kb, _ = torch.ops.tgrep.ot_graphs(edge_index, batch, N)
        score = torch.tanh(info.k.to(info.rho1.dtype)[kb] * info.rho1)[perm]
        out = SelectOutput(node_index=perm, num_nodes=N, cluster_index=torch.arange(perm.numel(), device=perm.device),
                           num_clusters=perm.numel(), weight=score)
        out.mask = info.mask
        return out

    def transport_assignment(self, select: SelectOutput, edge_index: Tensor, cost: Tensor,
                             batch: Optional[Tensor] = None) -> SelectOutput:
        r"""Every node assigned to the kept node its mass reaches most cheaply under ``cost``
        (``cluster_index`` = that node's position in ``select.node_index``; nodes that reach
        none are left out), weighted by the degree prior :math:`\rho_0`."""
        mask = select.mask
        lab = torch.ops.tgrep.nearest_kept(edge_index.long(), cost.detach().to(torch.float64), mask)
        pos = torch.cumsum(mask.long(), 0) - 1
        nodes = torch.nonzero(lab >= 0).flatten()
        kb, counts = torch.ops.tgrep.ot_graphs(edge_index, batch, mask.numel())
        w = ot_costs.degree_prior(edge_index.long(), kb, counts.shape[0])
        return SelectOutput(node_index=nodes, num_nodes=mask.numel(), cluster_index=pos[lab[nodes]],
                            num_clusters=select.num_clusters, weight=w[nodes])

    @staticmethod
    def reduce(x: Tensor, assign: SelectOutput) -> Tensor:
        """The ``weight``-weighted mean of ``x`` over each cluster of ``assign``."""
        w = assign.weight.to(x.dtype)
        num = scatter(x[assign.node_index] * w.unsqueeze(-1), assign.cluster_index, 0, dim_size=assign.num_clusters)
        den = scatter(w, assign.cluster_index, 0, dim_size=assign.num_clusters)
        return num / den.clamp(min=1e-12).unsqueeze(-1)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(ratio={self.ratio}, lam={self.lam}, num_iters={self.num_iters}, "
                f"refine={self.refine}, diff_iters={self.diff_iters})")
