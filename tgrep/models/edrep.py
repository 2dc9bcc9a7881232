r"""The EDRep embedding algorithm (Dall'Amico & Belliardo, 2025, Algorithm 1)."""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .. import ops
from ..utils import check
from ..utils.progress import log, progress

__all__ = ["EDRep", "random_walk_operator"]


def _row_normalized(row: Tensor, col: Tensor, val: Tensor, n: int, m: int) -> Tensor:
    deg = torch.zeros(n, dtype=val.dtype, device=val.device).index_add_(0, row, val)
    lonely = (deg <= 0).nonzero().flatten()
    if lonely.numel():  # a row without mass keeps its own node: P_ii = 1
        if n != m:
            raise ValueError(f"'P' has {lonely.numel()} empty row(s) (first: row {int(lonely[0])}); "
                             "a non-square P must give every row positive mass")
        row = torch.cat([row, lonely])
        col = torch.cat([col, lonely])
        val = torch.cat([val, torch.ones_like(lonely, dtype=val.dtype)])
        deg[lonely] = 1.0
    return torch.sparse_coo_tensor(torch.stack([row, col]), val / deg[row], (n, m),
                                   check_invariants=False).coalesce()


def random_walk_operator(edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None = None,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    r"""Sparse :math:`T = D^{-1}A` (``[n, n]`` COO) of a graph; isolated nodes get a self-loop."""
    check.tensor("edge_index", edge_index, dtypes=check.INDEX_DTYPES, dim=2)
    if edge_index.shape[0] != 2:
        raise ValueError(f"'edge_index' must have shape [2, E], got {tuple(edge_index.shape)}")
    n = check.positive_int("num_nodes", num_nodes)
    check.index_range("edge_index", edge_index, n)
    if edge_weight is None:
        val = torch.ones(edge_index.shape[1], dtype=dtype, device=edge_index.device)
    else:
        check.tensor("edge_weight", edge_weight, dtypes=check.FLOAT_DTYPES, dim=1, device=edge_index.device,
                     finite=True)
        check.same_length("edge_weight", edge_weight, "edge_index", edge_index.t())
        if bool((edge_weight < 0).any()):
            raise ValueError("'edge_weight' must be non-negative")
        val = edge_weight.to(dtype)
    return _row_normalized(edge_index[0].long(), edge_index[1].long(), val, n, n)


class EDRep(torch.nn.Module):
    r"""Node (or item) embeddings by the EDRep algorithm (Dall'Amico & Belliardo, 2025, Alg. 1).

    Minimizes over unit-norm rows :math:`x_i` the cross-entropy between the rows of a
    probability matrix :math:`P` and :math:`\mathrm{SoftMax}(XX^\top)` plus the centering
    term (eq. 6-7), with the softmax normalizers estimated in linear time
    (:func:`tgrep.ops.log_normalizer`). Each epoch computes the full gradient (eq. 8)

    .. math::
        g_i = -[(P + P^\top)X]_i + \tfrac{2}{n}\textstyle\sum_j x_j
        + \nabla_{x_i} \log \hat Z_i \quad(\mu_\alpha, \Omega_\alpha \text{ held fixed}),

    projects it on the tangent space, :math:`g'_i = g_i - (g_i^\top x_i)x_i`,
    :math:`g''_i = g'_i/\|g'_i\|`, and steps :math:`x_i \leftarrow \sqrt{1-\eta^2}\,x_i - \eta g''_i`
    with :math:`\eta` decreasing linearly from ``eta`` to 0. With ``num_clusters > 1`` the
    algorithm runs once with one cluster, clusters that embedding by k-means and reruns with
    the labels fixed (the paper's workaround, Sec. 3.2).

    For a graph, :math:`P = \frac{1}{w}\sum_{t=1}^{w}(D^{-1}A)^t` is never formed: products
    :math:`PX` and :math:`P^\top X` are taken right to left (Sec. 3.3), ``O(w E d)``.

    Args:
        embedding_dim (int): :math:`d`. (default: ``128``)
        num_clusters (int): :math:`\kappa`. (default: ``1``)
        epochs (int): training epochs. (default: ``30``)
        eta (float): initial step :math:`\eta_0 \in (0, 1]`. (default: ``0.8``)
        walk_length (int): :math:`w`, the powers of :math:`D^{-1}A` averaged in :math:`P`.
            (default: ``5``)
        seed (int, optional): seed of the initialization and k-means. (default: ``None``: 0)
        device (torch.device, optional): where to compute. (default: the input's device)
        verbose (bool): progress bar per epoch. (default: ``True``)
    """

    def __init__(self, embedding_dim: int = 128, *, num_clusters: int = 1, epochs: int = 30, eta: float = 0.8,
                 walk_length: int = 5, seed: int | None = None, device=None, verbose: bool = True):
        super().__init__()
        self.embedding_dim = check.positive_int("embedding_dim", embedding_dim)
        self.num_clusters = check.positive_int("num_clusters", num_clusters)
        self.epochs = check.positive_int("epochs", epochs)
        self.eta = check.in_range("eta", eta, 0.0, 1.0, lo_open=True)
        self.walk_length = check.positive_int("walk_length", walk_length)
        self.seed = 0 if seed is None else int(seed)
        self.device = None if device is None else torch.device(device)
        self.verbose = verbose
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Forget the fitted embedding and labels."""
        self.embedding: Tensor | None = None
        self.labels: Tensor | None = None

    # ------------------------------------------------------------------ P as an operator
    def _operator(self, source, num_nodes):
        if isinstance(source, Tensor) and source.layout in (torch.sparse_coo, torch.sparse_csr):
            p = source.to_sparse_coo().coalesce() if source.layout == torch.sparse_csr else source.coalesce()
            if p.dim() != 2 or p.shape[0] != p.shape[1]:
                raise ValueError(f"'P' must be a square [n, n] sparse matrix, got shape {tuple(p.shape)}")
            val = p.values()
            if not val.is_floating_point():
                raise TypeError(f"'P' must be floating point, got {val.dtype}")
            if val.numel() and (not bool(torch.isfinite(val).all()) or bool((val < 0).any())):
                raise ValueError("'P' must hold finite, non-negative entries")
            if self.device is not None:
                p = p.to(self.device)
            r, c = p.indices()
            p = _row_normalized(r, c, p.values().float(), p.shape[0], p.shape[1])
            return [self._csr(p)], [self._csr(p.t().coalesce())], 1, p.shape[0]
        if isinstance(source, Tensor) and source.layout == torch.strided and source.dim() == 2 \
                and source.shape[0] == 2 and not source.is_floating_point():
            if num_nodes is None:
                num_nodes = int(source.max()) + 1 if source.numel() else 0
            ei = source if self.device is None else source.to(self.device)
            t = random_walk_operator(ei, num_nodes)
            return [self._csr(t)], [self._csr(t.t().coalesce())], self.walk_length, num_nodes
        raise TypeError("fit_transform expects an edge_index [2, E] (integer) or a sparse [n, n] matrix P")

    @staticmethod
    def _csr(p: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return p.to_sparse_csr()

    @staticmethod
    def _power_mean(ops_list, power: int, x: Tensor) -> Tensor:
        acc, z = torch.zeros_like(x), x
        for _ in range(power):
            for op in ops_list:
                z = torch.sparse.mm(op, z)
            acc += z
        return acc / power

    # ------------------------------------------------------------------ Algorithm 1
    def gradient(self, fwd, bwd, power: int, x: Tensor, labels: Tensor | None) -> Tensor:
        """Eq. (8): the gradient of the summed loss w.r.t. ``x`` with the statistics fixed."""
        k = 1 if labels is None else int(labels.max()) + 1
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            log_z = ops.log_normalizer(xg, x.detach(), num_clusters=k, labels=labels, detach_stats=True)
            (g,) = torch.autograd.grad(log_z.sum(), xg)
        n = x.shape[0]
        return g - self._power_mean(fwd, power, x) - self._power_mean(bwd, power, x) \
            + (2.0 / n) * x.sum(0, keepdim=True)

    def _run(self, fwd, bwd, power, n, labels, gen, desc) -> Tensor:
        dev = fwd[0].device
        x = torch.randn(n, self.embedding_dim, generator=gen).to(dev)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        for epoch in progress(range(self.epochs), verbose=self.verbose, desc=desc):
            eta = self.eta * (1.0 - epoch / self.epochs)
            g = self.gradient(fwd, bwd, power, x, labels)
            g = g - (g * x).sum(1, keepdim=True) * x
            g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
            x = math.sqrt(1.0 - eta * eta) * x - eta * g
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)  # guard against round-off drift
        return x

    @torch.no_grad()
    def fit_transform(self, source, num_nodes: int | None = None) -> Tensor:
        r"""Fit and return the ``[n, embedding_dim]`` embedding (unit-norm rows).

        Args:
            source: ``edge_index [2, E]`` of a graph (then :math:`P=\frac1w\sum_t(D^{-1}A)^t`)
                or any sparse non-negative ``[n, n]`` matrix :math:`P` (rows normalized here;
                empty rows get :math:`P_{ii}=1`).
            num_nodes (int, optional): number of nodes for ``edge_index``.
        """
        fwd, bwd, power, n = self._operator(source, num_nodes)
        if n == 0:
            raise ValueError("the graph has no nodes")
        if self.embedding_dim > 0 and n < 2:
            raise ValueError("EDRep needs at least 2 nodes")
        gen = torch.Generator().manual_seed(self.seed)
        x = self._run(fwd, bwd, power, n, None, gen, "EDRep (k=1)")
        labels = None
        if self.num_clusters > 1:
            if self.num_clusters > n:
                raise ValueError(f"'num_clusters' ({self.num_clusters}) must not exceed the number of nodes ({n})")
            labels = ops.kmeans(x, self.num_clusters, seed=self.seed)
            log(f"EDRep: rerun with {self.num_clusters} clusters", self.verbose)
            x = self._run(fwd, bwd, power, n, labels, gen, f"EDRep (k={self.num_clusters})")
        self.embedding, self.labels = x, labels
        return x

    def forward(self, index: Tensor | None = None) -> Tensor:
        """The fitted embedding (rows ``index``)."""
        if self.embedding is None:
            raise RuntimeError("EDRep: call fit_transform first")
        return self.embedding if index is None else self.embedding[index]

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.embedding_dim}, num_clusters={self.num_clusters}, "
                f"epochs={self.epochs}, eta={self.eta}, walk_length={self.walk_length})")
