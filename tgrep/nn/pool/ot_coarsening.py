r"""OT graph compression as a PyG pooling layer.

Implements Garg & Jaakkola, *Solving graph compression via optimal transport* (NeurIPS 2019)
-- **not** the AAAI 2021 "OTCoarsening" of Ma & Chen (*Unsupervised learning of graph
hierarchical abstractions with differentiable coarsening and optimal transport*), an
unrelated method that shares the name. Built as PyG builds its pooling layers: a selection
(:class:`SelectOT`) and a connection (PyG's ``FilterEdges``), both made once in ``__init__``.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor
from torch_geometric.nn.pool.connect import FilterEdges

from ...ops.ot_compress import degree_cost, label_cost
from ...utils import check
from .select_ot import SelectOT, check_ratio

COSTS = ("uniform", "degree", "label", "learned")
REDUCES = ("select", "transport")


class EdgeCostNet(torch.nn.Module):
    r"""Learned edge cost :math:`c_{uv} = s \cdot \mathrm{softplus}(\mathrm{MLP}([h_u + h_v,
    |h_u - h_v|])) + c_{\min}`: symmetric in the endpoints (both directions of an undirected
    edge get the same cost) and strictly positive.

    Args:
        in_channels (int): node feature size.
        hidden_channels (int, optional): hidden size of the MLP (default: ``16``).
        scale (float, optional): :math:`s` (default: ``0.02``).
        min_cost (float, optional): :math:`c_{\min} > 0` (default: ``1e-3``).
    """

    def __init__(self, in_channels: int, hidden_channels: int = 16, scale: float = 0.02, min_cost: float = 1e-3):
        super().__init__()
        check.positive_int("in_channels", in_channels)
        check.positive_int("hidden_channels", hidden_channels)
        self.scale = check.in_range("scale", scale, 0, math.inf, lo_open=True, hi_open=True)
        self.min_cost = check.in_range("min_cost", min_cost, 0, math.inf, lo_open=True, hi_open=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2 * in_channels, hidden_channels), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden_channels, 1))
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.mlp:
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def forward(self, x, edge_index):
        a, b = x[edge_index[0]], x[edge_index[1]]
        h = self.mlp(torch.cat([a + b, (a - b).abs()], -1)).squeeze(-1)
        return self.scale * torch.nn.functional.softplus(h) + self.min_cost


class OTCoarsening(torch.nn.Module):
    r"""Pooling by optimal-transport graph compression (Garg & Jaakkola, *Solving graph
    compression via optimal transport*, NeurIPS 2019). Not the AAAI 2021 "OTCoarsening" of
    Ma & Chen, a different (differentiable-coarsening) method with the same name.

    Every graph keeps the support :math:`S` (:math:`|S| = \lceil \mathrm{ratio} \cdot n\rceil`,
    or ``ratio`` nodes if it is an int) of the distribution that is cheapest to reach from the
    degree prior :math:`\rho_0` by moving mass along edges of cost :math:`c`:

    .. math::
        \min_{|S| \le k} \min_{\rho_1 \in \Delta(S)} W_c(\rho_0, \rho_1)
            + \tfrac{\lambda}{2} \|\rho_1\|^2 ,

    solved for the whole batch at once by :func:`tgrep.ot_compress` (Mirror Prox on the
    Boolean relaxation, C++ on CPU) inside :class:`SelectOT`. The kept nodes' features are
    gated by

    .. math::
        \mathbf x'_v = \mathrm{multiplier} \cdot \tanh(k_g \rho_{1,v}) \cdot \mathbf x_v ,

    so gradients reach :math:`\mathbf x` (and a learned cost, through ``diff_iters`` Mirror
    Prox iterations replayed at the solution), and the edges are those of the induced
    subgraph (PyG's ``FilterEdges``).

    **The selection of a non-learned cost is fixed**: with ``cost='uniform'``, ``'degree'`` or
    ``'label'`` the kept nodes and gates depend on the graph alone, not on ``x``, so they are the
    same every epoch. The layer does not cache them (mini-batches change between epochs);
    compute them once instead with :class:`tgrep.transforms.OTCompress` as a
    ``pre_transform`` (the paper's own use) when the gate need not be learned.

    **When a learned cost gets no gradient**: the gradient is that of the relaxation's
    solution. Where that solution moves no mass (roughly when :math:`k_g \max_v \rho_{0,v} \le 1`:
    e.g. ``ratio=0.5`` with the degree prior on molecule-sized graphs) the selection and gates do
    not depend on the cost locally and its gradient is exactly zero; the cost network then learns
    nothing. Smaller ratios (e.g. ``0.2``) or strongly varying degrees make the cost matter.

    Args:
        ratio (float or int, optional): fraction of nodes kept per graph, or the number of
            nodes kept if an int (default: ``0.5``).
        cost (str, optional): edge cost: ``'uniform'`` (1), ``'degree'``
            (:math:`\max(d_u, d_v)`, the heavy-edge analogue of Sec. 3.4), ``'label'`` (0.01 if
            ``node_label`` agrees on both ends, else 0.02, as in the paper's experiments) or
            ``'learned'`` (:class:`EdgeCostNet` on the endpoint features; needs
            ``in_channels``; the paper's Sec. 3.3 left learning the cost to future work)
            (default: ``'degree'``).
        in_channels (int, optional): feature size, for ``cost='learned'`` (default: ``None``).
        lam (float, optional): quadratic regulariser :math:`\lambda` (default: ``1.0``).
        num_iters (int, optional): Mirror Prox iterations (default: ``30``).
        multiplier (float, optional): multiplies the pooled features (default: ``1.0``).
        reduce (str, optional): ``'select'`` keeps the kept nodes' own features;
            ``'transport'`` replaces them by the :math:`\rho_0`-weighted mean of the features of
            the nodes whose mass reaches them most cheaply (each node goes to its nearest kept
            node under :math:`c`) (default: ``'select'``).
        refine (int, optional): swap refinement of the rounding (see
            :func:`tgrep.ot_compress`; costly, off in the layer) (default: ``0``).
        hidden_channels (int, optional): hidden size of the learned cost (default: ``16``).
        diff_iters (int, optional): Mirror Prox iterations replayed at the solution for the
            gradients of a learned cost (default: ``3``).
    """

    def __init__(self, ratio: Union[int, float] = 0.5, *, cost: str = "degree", in_channels: Optional[int] = None,
                 lam: float = 1.0, num_iters: int = 30, multiplier: float = 1.0, reduce: str = "select",
                 refine: int = 0, hidden_channels: int = 16, diff_iters: int = 3):
        super().__init__()
        check.one_of("cost", cost, COSTS)
        check.one_of("reduce", reduce, REDUCES)
        check.in_range("multiplier", multiplier, -math.inf, math.inf, lo_open=True, hi_open=True)
        if cost == "learned" and in_channels is None:
            raise ValueError("'in_channels' is required for cost='learned'")
        self.ratio, self.cost, self.in_channels, self.lam = check_ratio(ratio), cost, in_channels, lam
        self.num_iters, self.multiplier, self.reduce, self.refine = num_iters, multiplier, reduce, refine
        self.hidden_channels, self.diff_iters = hidden_channels, diff_iters
        self.select = SelectOT(ratio, lam=lam, num_iters=num_iters, refine=refine, diff_iters=diff_iters)
        self.connect = FilterEdges()
        self.cost_net = EdgeCostNet(in_channels, hidden_channels) if cost == "learned" else None
        self.reset_parameters()

    def reset_parameters(self):
        if self.cost_net is not None:
            self.cost_net.reset_parameters()

    def edge_cost(self, x: Tensor, edge_index: Tensor, node_label: Optional[Tensor] = None) -> Tensor:
        """The edge costs this layer uses on a batch."""
        if self.cost == "uniform":
            return torch.ones(edge_index.size(1), dtype=torch.float64, device=x.device)
        if self.cost == "degree":
            return degree_cost(edge_index, x.size(0))
        if self.cost == "label":
            if node_label is None:
                raise ValueError("cost='label' needs 'node_label' in forward()")
            return label_cost(edge_index, node_label)
        return self.cost_net(x, edge_index)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor] = None,
                batch: Optional[Tensor] = None, node_label: Optional[Tensor] = None):
        r"""Returns ``(x, edge_index, edge_attr, batch, perm, score)`` like
        :class:`torch_geometric.nn.TopKPooling`; ``perm`` holds the kept nodes sorted by graph
        then index, ``score`` their gates."""
        check.tensor("x", x, dim=2)
        check.edge_index("edge_index", edge_index, device=x.device)
        if edge_attr is not None:
            check.tensor("edge_attr", edge_attr, device=x.device)
            if edge_attr.size(0) != edge_index.size(1):
                raise ValueError(f"'edge_attr' must have one row per edge ({edge_index.size(1)}), "
                                 f"got {edge_attr.size(0)}")
        if node_label is not None and node_label.size(0) != x.size(0):
            raise ValueError(f"'node_label' must have one row per node ({x.size(0)}), got {node_label.size(0)}")
        if batch is None:
            batch = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
        cost = self.edge_cost(x, edge_index, node_label)
        sel = self.select(edge_index, cost, batch, num_nodes=x.size(0))
        if self.reduce == "transport":
            xk = self.select.reduce(x, self.select.transport_assignment(sel, edge_index, cost, batch))
        else:
            xk = x[sel.node_index]
        score = sel.weight.to(x.dtype)
        x_out = xk * score.unsqueeze(-1)
        if self.multiplier != 1:
            x_out = self.multiplier * x_out
        con = self.connect(sel, edge_index, edge_attr, batch)
        return x_out, con.edge_index, con.edge_attr, con.batch, sel.node_index, score

    def __repr__(self) -> str:
        args = [f"ratio={self.ratio}", f"cost={self.cost!r}", f"in_channels={self.in_channels}", f"lam={self.lam}",
                f"num_iters={self.num_iters}", f"multiplier={self.multiplier}", f"reduce={self.reduce!r}",
                f"refine={self.refine}", f"hidden_channels={self.hidden_channels}", f"diff_iters={self.diff_iters}"]
        return f"{self.__class__.__name__}({', '.join(args)})"


def ot_pool(x: Tensor, edge_index: Tensor, ratio: Union[int, float] = 0.5, *, cost: Optional[Tensor] = None,
            edge_attr: Optional[Tensor] = None, batch: Optional[Tensor] = None, lam: float = 1.0,
            num_iters: int = 30, refine: int = 0, multiplier: float = 1.0, reduce: str = "select",
            diff_iters: int = 3):
    r"""Functional OT pooling (Garg & Jaakkola, NeurIPS 2019): :class:`OTCoarsening` with a given
    ``cost [E]`` (default: ones). Returns ``(x, edge_index, edge_attr, batch, perm, score)``."""
    check.one_of("reduce", reduce, REDUCES)
    pool = OTCoarsening(ratio, cost="uniform", lam=lam, num_iters=num_iters, multiplier=multiplier, reduce=reduce,
                        refine=refine, diff_iters=diff_iters)
    if cost is not None:
        pool.edge_cost = lambda x_, ei_, lab_=None: cost  # type: ignore[method-assign]
    return pool(x, edge_index, edge_attr, batch)
