"""``LearnedGraphTransform``: replace a kNN graph by a learned one (Kalofolias & Perraudin, ICLR 2019)."""
from __future__ import annotations

import torch
from torch_geometric.data import Data
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform

from ..ops.graph_learning import learn_graph


@functional_transform("learned_graph")
class LearnedGraphTransform(BaseTransform):
    r"""Learns a weighted graph from node signals with the log model of "Large-scale graph
    learning from smooth signals" (Kalofolias & Perraudin, ICLR 2019) (functional name:
    :obj:`learned_graph`).

    .. math::
        W = \arg\min_{W \in \mathcal W}\; \|W \circ \theta Z\|_{1,1}
        - \mathbf 1^\top \log(W \mathbf 1) + \tfrac12 \|W\|_F^2,
        \qquad Z_{ij} = \|x_i - x_j\|^2,

    solved on the edges of an ``r·k``-nearest-neighbour graph, with θ set from the desired
    degree ``k`` (see :func:`tgrep.learn_graph`). Sets :obj:`data.edge_index` (both directions,
    no self-loops) and :obj:`data.edge_weight` (strictly positive); on a
    :class:`~torch_geometric.data.Batch` one graph is learned per example (no edges between
    examples).

    Args:
        k (int): desired mean degree. (default: ``10``)
        r (float): support factor: ``⌈r·k⌉`` nearest-neighbour candidates per node. (default: ``3``)
        model (str): ``'log'`` or ``'l2'``. (default: ``'log'``)
        theta (float, optional): fixed θ instead of the automatic one. (default: :obj:`None`)
        knn (str): ``'auto'``, ``'exact'``, ``'faiss'`` or ``'nndescent'``. (default: ``'auto'``)
        max_iter (int): solver iterations at most. (default: ``1000``)
        tol (float): solver tolerance (relative change). (default: ``1e-5``)
        scale (str or float): ``'none'``, ``'max'``, ``'sum'`` or a factor. (default: ``'none'``)
        attr (str, optional): node attribute holding the signals; :obj:`None` takes
            :obj:`data.x` if present, else :obj:`data.pos`. (default: ``'x'``)
        verbose (bool): progress and requested vs obtained degree. (default: :obj:`False`)
    """

    def __init__(self, k: int = 10, *, r: float = 3, model: str = "log", theta: float | None = None,
                 knn: str = "auto", max_iter: int = 1000, tol: float = 1e-5, scale: str | float = "none",
                 attr: str | None = "x", verbose: bool = False) -> None:
        self.k, self.r, self.model, self.theta = k, r, model, theta
        self.knn, self.max_iter, self.tol, self.scale = knn, max_iter, tol, scale
        self.attr, self.verbose = attr, verbose

    def forward(self, data: Data) -> Data:
        if self.attr is None:
            x = data.x if getattr(data, "x", None) is not None else getattr(data, "pos", None)
            name = "x or pos"
        else:
            x, name = getattr(data, self.attr, None), self.attr
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"LearnedGraphTransform needs node signals in data.{name}, found none")
        if x.dim() == 1:
            x = x.unsqueeze(1)
        x = x.float() if not x.is_floating_point() else x
        batch = getattr(data, "batch", None)
        edge_index, edge_weight = learn_graph(
            x, self.k, r=self.r, theta=self.theta, model=self.model, knn=self.knn,
            max_iter=self.max_iter, tol=self.tol, batch=batch, scale=self.scale, verbose=self.verbose)
        data.edge_index = edge_index
        data.edge_weight = edge_weight
        if "edge_attr" in data:
            data.edge_attr = None
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(k={self.k}, r={self.r}, model='{self.model}')"
