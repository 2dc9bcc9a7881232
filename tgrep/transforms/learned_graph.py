"""``LearnedGraphTransform``: replace a kNN graph by a learned one (Kalofolias & Perraudin, ICLR 2019)."""
from __future__ import annotations

import math

import torch
from torch_geometric.data import Data
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform

from ..ops.graph_learning import MODELS, SCALES, TIES, learn_graph
from ..ops.knn import METHODS as KNN_METHODS
from ..utils import check


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
    :class:`~torch_geometric.data.Batch` one graph is learned per example in one call (no edges
    between examples; cost linear in the total number of nodes).

    ``repr`` lists every argument that changes the output, so PyG's processed-dataset check
    (which compares ``pre_transform`` reprs) notices any change.

    Args:
        k (int): desired mean degree. (default: ``10``)
        r (float): support factor: ``⌈r·k⌉`` nearest-neighbour candidates per node. (default: ``3``)
        model (str): ``'log'`` or ``'l2'``. (default: ``'log'``)
        theta (float, optional): fixed θ instead of the automatic one. (default: :obj:`None`)
        knn (str): ``'auto'``, ``'exact'``, ``'hnsw'``, ``'faiss'`` or ``'nndescent'``. (default: ``'auto'``)
        max_iter (int): solver iterations at most. (default: ``1000``)
        tol (float): solver tolerance (relative change). (default: ``1e-5``)
        scale (str or float): ``'none'``, ``'max'``, ``'sum'`` or a factor. (default: ``'none'``)
        max_w (float): upper bound of every weight. (default: ``inf``)
        ties (str): ``'jitter'`` (break tied distances, e.g. one-hot features, so the degree
            follows ``k``) or ``'keep'``. (default: ``'jitter'``)
        attr (str, optional): node attribute holding the signals; :obj:`None` takes
            :obj:`data.x` if present, else :obj:`data.pos`. (default: :obj:`None`)
        verbose (bool): progress and requested vs obtained degree. (default: :obj:`False`)
    """

    def __init__(self, k: int = 10, *, r: float = 3, model: str = "log", theta: float | None = None,
                 knn: str = "auto", max_iter: int = 1000, tol: float = 1e-5, scale: str | float = "none",
                 max_w: float = math.inf, ties: str = "jitter", attr: str | None = None,
                 verbose: bool = False) -> None:
        check.positive_int("k", k)
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (r >= 1 and math.isfinite(r)):
            raise ValueError(f"'r' must be a finite number >= 1, got {r!r}")
        check.one_of("model", model, MODELS)
        if theta is not None:
            check.in_range("theta", theta, 0.0, math.inf, lo_open=True, hi_open=True)
        check.one_of("knn", knn, KNN_METHODS)
        check.positive_int("max_iter", max_iter)
        check.in_range("tol", tol, 0.0, 1.0, lo_open=True)
        if isinstance(scale, str):
            check.one_of("scale", scale, SCALES)
        else:
            check.in_range("scale", scale, 0.0, math.inf, lo_open=True, hi_open=True)
        check.in_range("max_w", max_w, 0.0, math.inf, lo_open=True)
        check.one_of("ties", ties, TIES)
        if attr is not None and not isinstance(attr, str):
            raise TypeError(f"'attr' must be a str or None, got {type(attr).__name__}")
        self.k, self.r, self.model, self.theta = k, r, model, theta
        self.knn, self.max_iter, self.tol, self.scale = knn, max_iter, tol, scale
        self.max_w, self.ties, self.attr, self.verbose = max_w, ties, attr, verbose

    def forward(self, data: Data) -> Data:
        if self.attr is None:
            x = data.x if getattr(data, "x", None) is not None else getattr(data, "pos", None)
            name = "x or data.pos"
        else:
            x, name = getattr(data, self.attr, None), self.attr
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"LearnedGraphTransform needs node signals in data.{name}, found none")
        if x.dim() == 1:
            x = x.unsqueeze(1)
        if x.layout != torch.strided:
            x = x.to_dense()
        x = x.float() if not x.is_floating_point() else x
        batch = getattr(data, "batch", None)
        edge_index, edge_weight = learn_graph(
            x, self.k, r=self.r, theta=self.theta, model=self.model, knn=self.knn,
            max_iter=self.max_iter, tol=self.tol, batch=batch, scale=self.scale, max_w=self.max_w,
            ties=self.ties, verbose=self.verbose)
        data.edge_index = edge_index
        data.edge_weight = edge_weight
        if "edge_attr" in data:
            data.edge_attr = None
        return data

    def __repr__(self) -> str:
        # every argument that changes the output (not `verbose`)
        args = dict(k=self.k, r=self.r, model=self.model, theta=self.theta, knn=self.knn, max_iter=self.max_iter,
                    tol=self.tol, scale=self.scale, max_w=self.max_w, ties=self.ties, attr=self.attr)
        return f"{self.__class__.__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
