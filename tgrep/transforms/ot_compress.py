r"""OT graph compression as a PyG transform (Garg & Jaakkola, NeurIPS 2019; not the AAAI 2021
"OTCoarsening" of Ma & Chen): the paper's own use, compute the compressed graphs once."""
from __future__ import annotations

import math
from typing import Union

import torch
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import BaseTransform

from ..nn.pool.select_ot import check_ratio
from ..ops.ot_compress import degree_cost, label_cost, ot_compress
from ..utils import check

COSTS = ("uniform", "degree", "label")


class OTCompress(BaseTransform):
    r"""Keeps, in every graph, the support of the cheapest compression of the degree prior
    :math:`\rho_0` under edge costs :math:`c` (:func:`tgrep.ot_compress`) and the induced
    subgraph: node-level attributes (``x``, ``pos``, node labels, ...) are restricted to the
    kept nodes, edge-level ones to the kept edges. Usable as ``pre_transform`` (computed
    once, stored with the processed dataset) or on a :class:`~torch_geometric.data.Batch`
    (all graphs in one batched solve; the result is a ``Batch`` again).

    Args:
        ratio (float or int, optional): fraction of nodes kept per graph (``ceil(ratio n)``),
            or the number kept (default: ``0.5``).
        cost (str, optional): ``'uniform'``, ``'degree'`` (:math:`\max(d_u, d_v)`) or
            ``'label'`` (0.01 / 0.02 from ``data[label_attr]``, integer labels or one-hot rows;
            the paper's Table 1 setting) (default: ``'label'``).
        label_attr (str, optional): node attribute holding the labels for ``cost='label'``
            (default: ``'x'``).
        lam (float, optional): :math:`\lambda` (default: ``1.0``).
        num_iters (int, optional): Mirror Prox iterations (default: ``30``).
        refine (int, optional): swap refinement width (see :func:`tgrep.ot_compress`)
            (default: ``0``).
    """

    def __init__(self, ratio: Union[int, float] = 0.5, cost: str = "label", label_attr: str = "x",
                 lam: float = 1.0, num_iters: int = 30, refine: int = 0):
        check.one_of("cost", cost, COSTS)
        self.ratio = check_ratio(ratio)
        self.cost, self.label_attr = cost, label_attr
        self.lam = check.in_range("lam", lam, 0, math.inf, lo_open=True, hi_open=True)
        self.num_iters = check.positive_int("num_iters", num_iters)
        self.refine = check.positive_int("refine", refine, allow_zero=True)

    def _cost(self, data, N):
        if self.cost == "uniform":
            return torch.ones(data.edge_index.size(1), dtype=torch.float64, device=data.edge_index.device)
        if self.cost == "degree":
            return degree_cost(data.edge_index, N)
        lab = data[self.label_attr] if self.label_attr in data else None
        if lab is None:
            raise ValueError(f"cost='label' needs node labels in data.{self.label_attr}")
        return label_cost(data.edge_index, lab)

    def forward(self, data: Data) -> Data:
        N = data.num_nodes
        batch = data.batch if isinstance(data, Batch) else None
        perm = ot_compress(data.edge_index, N, self.ratio, cost=self._cost(data, N), batch=batch, lam=self.lam,
                           num_iters=self.num_iters, refine=self.refine)
        if not isinstance(data, Batch):
            return data.subgraph(perm)
        # one batched solve, then each graph restricted to its kept nodes and batched again
        counts = torch.bincount(data.batch[perm], minlength=data.num_graphs).tolist()
        graphs = data.to_data_list()
        parts = torch.split(perm, counts)
        return Batch.from_data_list([g.subgraph(p - int(data.ptr[i])) for i, (g, p) in enumerate(zip(graphs, parts))])

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(ratio={self.ratio}, cost={self.cost!r}, label_attr={self.label_attr!r}, "
                f"lam={self.lam}, num_iters={self.num_iters}, refine={self.refine})")
