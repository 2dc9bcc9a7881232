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
    if lonely.numel() and n == m:  # a row without mass keeps its own node: P_ii = 1
        row = torch.cat([row, lonely])
        col = torch.cat([col, lonely])
        val = torch.cat([val, torch.ones_like(lonely, dtype=val.dtype)])
        deg[lonely] = 1.0
    deg = torch.where(deg > 0, deg, torch.ones_like(deg))  # non-square: an empty row stays empty
    return torch.sparse_coo_tensor(torch.stack([row, col]), val / deg[row], (n, m),
                                   check_invariants=False).coalesce()


def random_walk_operator(edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None = None,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    r"""Sparse :math:`T = D^{-1}A` (``[n, n]`` COO) of a graph; isolated nodes get a self-loop."""
    n = check.positive_int("num_nodes", num_nodes)
    check.edge_index("edge_index", edge_index, n)
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

    Minimizes over unit-norm rows the cross-entropy between the rows of a probability matrix
    :math:`P \in \mathbb{R}^{n\times m}` and :math:`\mathrm{SoftMax}(XY^\top)` plus the
    centering terms (eq. 6-7), with the softmax normalizers estimated in linear time
    (:func:`tgrep.ops.log_normalizer`, statistics of :math:`Y` held fixed: eq. 8). Each epoch
    computes the full gradient, projects it on the tangent space,
    :math:`g'_i = g_i - (g_i^\top x_i)x_i`, :math:`g''_i = g'_i/\|g'_i\|`, and steps
    :math:`x_i \leftarrow \sqrt{1-\eta^2}\,x_i - \eta g''_i` with :math:`\eta` decreasing
    linearly from ``eta`` to 0. With ``num_clusters > 1`` the algorithm runs once with one
    cluster, clusters :math:`Y` by k-means and reruns with the labels fixed (Sec. 3.2).

    With :math:`p_0` the null-model vector (``p0``, default all ones, :math:`E = \sum_a p_{0a}`):

    * ``sym=True`` (:math:`Y = X`, square :math:`P`):
      :math:`g = \nabla\log\hat Z - (P + P^\top)X + \frac1E[\mathbf 1 (p_0^\top X) + p_0 (\mathbf 1^\top X)]`,
      the exact gradient of the summed loss with centering :math:`\frac1E(\sum_i x_i)^\top(\sum_a p_{0a} x_a)`
      (:math:`\frac1n\|\sum_i x_i\|^2` for :math:`p_0 = \mathbf 1`);
    * ``sym=False`` (separate :math:`X \in \mathbb{R}^{n\times d}`, :math:`Y \in \mathbb{R}^{m\times d}`,
      rectangular :math:`P`), the original package's gradients:
      :math:`g_X = \nabla_X\log\hat Z - PY + \frac1E\mathbf 1(p_0^\top Y) + \frac1n\mathbf 1(\mathbf 1^\top X)`,
      :math:`g_Y = -P^\top X + \frac1E p_0(\mathbf 1^\top X) + \frac1E p_0(p_0^\top Y)`.

    :math:`P` is never formed: products :math:`PY` and :math:`P^\top X` are taken factor by
    factor, right to left (Sec. 3.3), ``O(E d)`` per factor. Given a list of sparse factors
    :math:`[F_0, \dots, F_{L-1}]` (each row-normalized here), :math:`P = F_{L-1}\cdots F_0`
    (``sum_partials=False``) or :math:`P = \frac1L\sum_{t<L} F_t\cdots F_0`
    (``sum_partials=True``, square factors); a graph's ``edge_index`` gives
    :math:`P = \frac1w\sum_{t=1}^{w}(D^{-1}A)^t` (``walk_length`` factors :math:`D^{-1}A`,
    summed partials).

    Args:
        embedding_dim (int): :math:`d`. (default: ``128``)
        num_clusters (int): :math:`\kappa`. (default: ``1``)
        epochs (int): training epochs. (default: ``30``)
        eta (float): initial step :math:`\eta_0 \in (0, 1]`. (default: ``0.8``)
        walk_length (int): :math:`w`, the powers of :math:`D^{-1}A` averaged in :math:`P`
            (``edge_index`` input only). (default: ``5``)
        sym (bool): one embedding :math:`X = Y` (``True``) or two (``False``; required for a
            rectangular :math:`P`). (default: ``True``)
        sum_partials (bool): a list of factors is averaged over its partial products instead of
            multiplied. (default: ``False``)
        seed (int, optional): seed of the initialization and k-means. (default: ``None``: 0)
        device (torch.device, optional): where to compute. (default: the input's device)
        verbose (bool): progress bar per epoch. (default: ``True``)
    """

    def __init__(self, embedding_dim: int = 128, *, num_clusters: int = 1, epochs: int = 30, eta: float = 0.8,
                 walk_length: int = 5, sym: bool = True, sum_partials: bool = False, seed: int | None = None,
                 device=None, verbose: bool = True):
        super().__init__()
        self.embedding_dim = check.positive_int("embedding_dim", embedding_dim)
        self.num_clusters = check.positive_int("num_clusters", num_clusters)
        self.epochs = check.positive_int("epochs", epochs)
        self.eta = check.in_range("eta", eta, 0.0, 1.0, lo_open=True)
        self.walk_length = check.positive_int("walk_length", walk_length)
        self.sym, self.sum_partials = bool(sym), bool(sum_partials)
        self.seed = 0 if seed is None else check.seed("seed", seed)
        self.device = None if device is None else torch.device(device)
        self.verbose = verbose
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Forget the fitted embeddings and labels."""
        self.embedding: Tensor | None = None
        self.target_embedding: Tensor | None = None
        self.labels: Tensor | None = None

    # ------------------------------------------------------------------ P as an operator
    def _factor(self, p, name: str) -> Tensor:
        if not (isinstance(p, Tensor) and p.layout in (torch.sparse_coo, torch.sparse_csr) and p.dim() == 2):
            raise TypeError(f"'{name}' must be a 2-D sparse (COO or CSR) tensor")
        p = p.to_sparse_coo().coalesce() if p.layout == torch.sparse_csr else p.coalesce()
        val = p.values()
        if not val.is_floating_point():
            raise TypeError(f"'{name}' must be floating point, got {val.dtype}")
        if val.numel() and (not bool(torch.isfinite(val).all()) or bool((val < 0).any())):
            raise ValueError(f"'{name}' must hold finite, non-negative entries")
        if self.device is not None:
            p = p.to(self.device)
        r, c = p.indices()
        return _row_normalized(r, c, p.values().float(), p.shape[0], p.shape[1])

    def _operator(self, source, num_nodes):
        """``(factors, transposed factors, sum_partials, n, m)`` with ``P = F_{L-1} ... F_0``."""
        if isinstance(source, (list, tuple)):
            if not source:
                raise ValueError("'P' given as a list needs at least one factor")
            fs = [self._factor(f, f"P[{i}]") for i, f in enumerate(source)]
            for i in range(1, len(fs)):
                if fs[i].shape[1] != fs[i - 1].shape[0]:
                    raise ValueError(f"P = P[-1] @ ... @ P[0]: P[{i}] has {fs[i].shape[1]} columns but P[{i - 1}] "
                                     f"has {fs[i - 1].shape[0]} rows")
            if self.sum_partials and any(f.shape[0] != f.shape[1] for f in fs):
                raise ValueError("sum_partials=True needs square factors")
            sums = self.sum_partials
        elif isinstance(source, Tensor) and source.layout in (torch.sparse_coo, torch.sparse_csr):
            fs, sums = [self._factor(source, "P")], False
        elif isinstance(source, Tensor) and source.layout == torch.strided and source.dim() == 2 \
                and source.shape[0] == 2 and not source.is_floating_point():
            if num_nodes is None:
                num_nodes = int(source.max()) + 1 if source.numel() else 0
            ei = source if self.device is None else source.to(self.device)
            fs, sums = [random_walk_operator(ei, num_nodes)] * self.walk_length, True
        else:
            raise TypeError("fit_transform expects an edge_index [2, E] (integer), a sparse matrix P "
                            "or a list of sparse factors")
        n, m = fs[-1].shape[0], fs[0].shape[1]
        if self.sym and n != m:
            raise ValueError(f"P is {n} x {m} (rectangular): pass sym=False for separate X and Y")
        cache = {}
        csr = [cache.setdefault(id(f), self._csr(f)) for f in fs]
        cache_t = {}
        csr_t = [cache_t.setdefault(id(f), self._csr(f.t().coalesce())) for f in fs]
        return csr, csr_t, sums, n, m

    @staticmethod
    def _csr(p: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return p.to_sparse_csr()

    @staticmethod
    def _p_times(fs, sums: bool, y: Tensor) -> Tensor:
        """``P y``: right to left through the factors (or the mean of the partial products)."""
        z, acc = y, None
        for f in fs:
            z = torch.sparse.mm(f, z)
            if sums:
                acc = z if acc is None else acc + z
        return acc / len(fs) if sums else z

    @staticmethod
    def _pt_times(fs_t, sums: bool, x: Tensor) -> Tensor:
        """``P^T x``; for the partial sums by Horner: ``h_t = F_t^T (x + h_{t+1})``."""
        if not sums:
            z = x
            for f in reversed(fs_t):
                z = torch.sparse.mm(f, z)
            return z
        h = None
        for f in reversed(fs_t):
            h = torch.sparse.mm(f, x if h is None else x + h)
        return h / len(fs_t)

    # ------------------------------------------------------------------ Algorithm 1
    def gradient(self, op, x: Tensor, y: Tensor | None, labels: Tensor | None, p0: Tensor | None = None):
        """``(g_X, g_Y)`` (``g_Y`` is ``None`` when ``sym``): the gradients above."""
        fs, fs_t, sums, n, m = op
        yy = x if y is None else y
        k = 1 if labels is None else int(labels.max()) + 1
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            log_z = ops.log_normalizer(xg, yy.detach(), num_clusters=k, labels=labels, detach_stats=True)
            (gz,) = torch.autograd.grad(log_z.sum(), xg)
        p0v = torch.ones(m, dtype=x.dtype, device=x.device) if p0 is None else p0.to(x.dtype)
        e = p0v.sum()
        sx = x.sum(0, keepdim=True)
        if y is None:  # sym: exact gradient of the summed loss
            g = gz - self._p_times(fs, sums, x) - self._pt_times(fs_t, sums, x) \
                + ((p0v[:, None] * x).sum(0, keepdim=True) + p0v[:, None] * sx) / e
            return g, None
        sp = (p0v[:, None] * y).sum(0, keepdim=True)
        gx = gz - self._p_times(fs, sums, y) + sp / e + sx / n
        gy = -self._pt_times(fs_t, sums, x) + p0v[:, None] * sx / e + p0v[:, None] * sp / e
        return gx, gy

    @staticmethod
    def _step(x: Tensor, g: Tensor, eta: float) -> Tensor:
        g = g - (g * x).sum(1, keepdim=True) * x
        g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        x = math.sqrt(1.0 - eta * eta) * x - eta * g
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)  # guard against round-off drift

    def _init(self, rows: int, gen, dev) -> Tensor:
        x = torch.randn(rows, self.embedding_dim, generator=gen).to(dev)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def _run(self, op, labels, p0, gen, desc):
        fs, _, _, n, m = op
        dev = fs[0].device
        x = self._init(n, gen, dev)
        y = None if self.sym else self._init(m, gen, dev)
        for epoch in progress(range(self.epochs), verbose=self.verbose, desc=desc):
            eta = self.eta * (1.0 - epoch / self.epochs)
            gx, gy = self.gradient(op, x, y, labels, p0)
            x = self._step(x, gx, eta)
            if y is not None:
                y = self._step(y, gy, eta)
        return x, y

    @torch.no_grad()
    def fit_transform(self, source, num_nodes: int | None = None, *, p0: Tensor | None = None) -> Tensor:
        r"""Fit and return the ``[n, embedding_dim]`` embedding :math:`X` (unit-norm rows);
        with ``sym=False`` the ``[m, d]`` :math:`Y` is :attr:`target_embedding`.

        Args:
            source: ``edge_index [2, E]`` of a graph (then :math:`P=\frac1w\sum_t(D^{-1}A)^t`),
                a sparse non-negative ``[n, m]`` matrix :math:`P`, or a list of sparse factors
                (see the class docstring). Rows are normalized here; an empty row of a square
                factor gets :math:`P_{ii}=1`, of a rectangular one stays empty.
            num_nodes (int, optional): number of nodes for ``edge_index``.
            p0 (Tensor, optional): the null-model vector ``[m]`` (non-negative, not all zero).
                (default: all ones)
        """
        op = self._operator(source, num_nodes)
        n, m = op[3], op[4]
        if n == 0:
            raise ValueError("the graph has no nodes")
        if n < 2:
            raise ValueError("EDRep needs at least 2 nodes")
        if p0 is not None:
            check.tensor("p0", p0, dtypes=check.FLOAT_DTYPES, dim=1, device=op[0][0].device, finite=True)
            check.dense("p0", p0)
            if p0.shape[0] != m:
                raise ValueError(f"'p0' must have one entry per column of P ({m}), got {p0.shape[0]}")
            if bool((p0 < 0).any()) or not bool((p0 > 0).any()):
                raise ValueError("'p0' must be non-negative and not all zero")
        gen = torch.Generator().manual_seed(self.seed)
        x, y = self._run(op, None, p0, gen, "EDRep (k=1)")
        labels = None
        if self.num_clusters > 1:
            rows = x if y is None else y
            if self.num_clusters > rows.shape[0]:
                raise ValueError(f"'num_clusters' ({self.num_clusters}) must not exceed the number of rows "
                                 f"({rows.shape[0]})")
            labels = ops.kmeans(rows, self.num_clusters, seed=self.seed)
            log(f"EDRep: rerun with {self.num_clusters} clusters", self.verbose)
            x, y = self._run(op, labels, p0, gen, f"EDRep (k={self.num_clusters})")
        self.embedding, self.target_embedding, self.labels = x, y, labels
        return x

    def forward(self, index: Tensor | None = None) -> Tensor:
        """The fitted embedding (rows ``index``)."""
        if self.embedding is None:
            raise RuntimeError("EDRep: call fit_transform first")
        return self.embedding if index is None else self.embedding[index]

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.embedding_dim}, num_clusters={self.num_clusters}, "
                f"epochs={self.epochs}, eta={self.eta}, walk_length={self.walk_length}, sym={self.sym}, "
                f"sum_partials={self.sum_partials}, seed={self.seed})")
