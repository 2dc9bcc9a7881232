r"""PRODIGE: learnable stochastic graph metrics (Mazur et al., NeurIPS 2019).

:class:`ProdigeGraph` holds a set of candidate edges, each with a learnable length
:math:`w_e = \mathrm{softplus}(\theta^w_e)` and a learnable presence probability
:math:`p_e = \sigma(\theta^b_e)`; distances are shortest paths in a graph sampled edge by
edge (training) or in the deterministic graph of the edges with :math:`p_e \ge 0.5` (eval).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import reinforce_coefficients, shortest_paths
from ..utils import check, to_csr



_MAX_RECORDS = 64  # training forwards remembered until reinforce() consumes them


class _SparseGather(torch.autograd.Function):
    """``param[index]`` whose gradient w.r.t. ``param`` is a sparse COO tensor holding only the
    non-zero entries (what :class:`torch.optim.SparseAdam` expects)."""

    @staticmethod
    def forward(ctx, param, index):
        ctx.save_for_backward(index)
        ctx.shape = param.shape
        return param[index]

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        nz = grad != 0
        g = torch.sparse_coo_tensor(index[nz].unsqueeze(0), grad[nz], ctx.shape,
                                    check_invariants=False).coalesce()
        return g, None


def gather(param: torch.Tensor, index: torch.Tensor, sparse: bool) -> torch.Tensor:
    return _SparseGather.apply(param, index) if sparse else param[index]


def inverse_softplus(w: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = w`` (``w > 0``), stable for small and large ``w``."""
    return torch.where(w > 20, w, torch.log(torch.expm1(w.clamp_max(20))))


def knn_graph(x: torch.Tensor, k: int, *, metric: str = "euclidean", block: int = 1024) -> torch.Tensor:
    """``[2, N k]`` edges ``i -> j`` to the ``k`` nearest other rows (blocked ``cdist`` + ``topk``)."""
    check.one_of("metric", metric, ("euclidean", "cosine"))
    n = x.size(0)
    k = min(k, n - 1)
    if k <= 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    if metric == "cosine":
        x = F.normalize(x, dim=1)
    out = []
    for start in range(0, n, block):
        xb = x[start:start + block]
        d = -(xb @ x.T) if metric == "cosine" else torch.cdist(xb, x)
        d[torch.arange(xb.size(0)), torch.arange(start, start + xb.size(0))] = float("inf")
        out.append(d.topk(k, dim=1, largest=False).indices)
    dst = torch.cat(out).reshape(-1)
    src = torch.arange(n, device=x.device).repeat_interleave(k)
    return torch.stack([src, dst])


def coalesce_edges(edge_index: torch.Tensor, num_nodes: int, directed: bool) -> torch.Tensor:
    """Drop self-loops and duplicates (for undirected graphs ``(u, v)`` and ``(v, u)`` are the
    same edge, kept once as ``u < v``)."""
    src, dst = edge_index
    keep = src != dst
    src, dst = src[keep], dst[keep]
    if not directed:
        src, dst = torch.minimum(src, dst), torch.maximum(src, dst)
    key = torch.unique(src * num_nodes + dst)
    return torch.stack([key // num_nodes, key % num_nodes])


def merge_undirected(edge_index: torch.Tensor, num_nodes: int, weight: torch.Tensor):
    """Undirected candidate edges once each as ``u < v`` (``(u, v)`` and ``(v, u)`` merged,
    self-loops dropped), with the smallest ``weight`` of the merged copies."""
    src, dst = edge_index
    keep = src != dst
    lo, hi = torch.minimum(src, dst)[keep], torch.maximum(src, dst)[keep]
    key, inverse = torch.unique(lo * num_nodes + hi, return_inverse=True)
    merged = torch.full((key.numel(),), math.inf, dtype=weight.dtype, device=weight.device)
    merged.scatter_reduce_(0, inverse, weight[keep], reduce="amin")
    return torch.stack([key // num_nodes, key % num_nodes]), merged


class ProdigeGraph(nn.Module):
    r"""A learnable stochastic weighted graph whose shortest-path distances are the model
    (PRODIGE, Mazur et al., NeurIPS 2019, Sec. 3).

    Every candidate edge :math:`e` has a length :math:`w_e = \mathrm{softplus}(\theta^w_e)` and
    a presence probability :math:`p_e = \sigma(\theta^b_e)`. The distance between two vertices is

    .. math::
        d_G(u, v) = \min_{\pi \in \Pi_G(u, v)} \sum_{e \in \pi} w_e, \qquad G \sim p(G),

    or ``default_distance`` when no path exists. In training mode every search (row) draws its
    own graph; in eval mode the graph is deterministic: the edges with :math:`p_e \ge 0.5`.

    **Sampling.** Edge presence is drawn lazily per row by :func:`tgrep.ops.shortest_paths`,
    keyed by ``(seed, row, CSR edge)``. An undirected candidate edge is stored twice in CSR
    (once per direction) and *the two directions are sampled independently* with the same
    probability :math:`p_e`; both directions share the parameters :math:`\theta^w_e,\theta^b_e`.

    **Gradients.** Lengths get the path gradient (:math:`\partial d / \partial w_e = 1` on the
    returned shortest path). Presence logits get the REINFORCE estimator of eq. 3–4,

    .. math::
        \hat g_e = \frac{1}{B}\sum_b (L_b - \beta_b) \sum_{e' \in \hat G_b,\ e' \sim e} (b_{e'} - p_e),

    restricted to the edges :math:`\hat G_b` row :math:`b`'s Dijkstra inspected (out-edges of
    the vertices it settled), with a baseline :math:`\beta_b` that does not depend on row
    :math:`b`'s sample (leave-one-out mean of the other rows' losses, or a moving average), so
    :math:`E[\hat g] = \nabla_{\theta^b} E[\frac1B\sum_b L_b]` exactly. The user's loss drives it
    through *one* extra line::

        d = graph(src, dst)                       # training mode: sampled graphs
        per_row = ((d - target) ** 2).mean(-1)    # one loss per search row, [B]
        loss = per_row.mean() + lam * graph.sparsity() + graph.reinforce(per_row)
        loss.backward()

    :meth:`reinforce` returns a surrogate whose value is ``0`` and whose gradient w.r.t. the
    presence logits is :math:`\hat g` (it uses the samples of the last training-mode
    :meth:`forward`). If rows' losses are coupled (e.g. a classifier over several items' distances),
    pass the scalar loss instead: ``graph.reinforce(loss)``.

    Args:
        edge_index (LongTensor): ``[2, M]`` candidate edges. When undirected, an edge may be
            listed once or in both directions (the PyG convention): pairs are merged, keeping
            the smaller initial length, and self-loops (never on a shortest path) are dropped.
        num_nodes (int): number of vertices ``N``.
        directed (bool, optional): edges are one-way (default: ``False``).
        init_weight (float or Tensor, optional): initial lengths, a positive number or ``[M]``
            (default: ``1.0``).
        init_prob (float, optional): initial presence probability in ``(0, 1)``
            (default: ``0.9``).
        default_distance (float, optional): the distance of unreachable pairs (default: ``10.0``).
        learn_default_distance (bool, optional): make ``default_distance`` a parameter
            (default: ``False``).
        sparse (bool, optional): gradients of the edge parameters are sparse COO tensors, for
            :class:`torch.optim.SparseAdam` (like ``nn.Embedding(sparse=True)``) (default: ``False``).
    """

    def __init__(self, edge_index: torch.Tensor, num_nodes: int, *, directed: bool = False,
                 init_weight: float | torch.Tensor = 1.0, init_prob: float = 0.9, default_distance: float = 10.0,
                 learn_default_distance: bool = False, sparse: bool = False):
        super().__init__()
        check.positive_int("num_nodes", num_nodes)
        check.tensor("edge_index", edge_index, dtypes=check.INDEX_DTYPES, dim=2)
        if edge_index.size(0) != 2:
            raise ValueError(f"'edge_index' must have shape [2, M], got {tuple(edge_index.shape)}")
        if edge_index.size(1) == 0:
            raise ValueError("'edge_index' is empty: a ProdigeGraph needs at least one candidate edge")
        check.index_range("edge_index", edge_index, num_nodes)
        check.in_range("init_prob", init_prob, 0.0, 1.0, lo_open=True, hi_open=True)
        check.in_range("default_distance", default_distance, 0.0, math.inf, hi_open=True)
        edge_index = edge_index.long()
        M = edge_index.size(1)
        if isinstance(init_weight, torch.Tensor):
            check.tensor("init_weight", init_weight, dtypes=check.FLOAT_DTYPES, dim=1, finite=True)
            if init_weight.numel() != M or bool((init_weight <= 0).any()):
                raise ValueError(f"'init_weight' must be {M} positive lengths, one per candidate edge")
            w0 = init_weight.detach().float().to(edge_index.device)
        else:
            check.in_range("init_weight", init_weight, 0.0, math.inf, lo_open=True, hi_open=True)
            w0 = torch.full((M,), float(init_weight), device=edge_index.device)
        if not directed:
            edge_index, w0 = merge_undirected(edge_index, num_nodes, w0)
            if edge_index.size(1) == 0:
                raise ValueError("'edge_index' holds only self-loops: a ProdigeGraph needs at least one edge")
            M = edge_index.size(1)
        self.num_nodes, self.directed, self.sparse = num_nodes, directed, sparse
        self.init_prob = float(init_prob)
        self.register_buffer("edge_index", edge_index)
        self.register_buffer("init_weight", w0)
        indptr, indices, _, perm = to_csr(edge_index, num_nodes, None, undirected=not directed, return_perm=True)
        self.register_buffer("indptr", indptr)
        self.register_buffer("indices", indices)
        self.register_buffer("perm", perm)  # CSR edge -> parameter
        self.weight_logit = nn.Parameter(torch.empty(M, device=edge_index.device))
        self.presence_logit = nn.Parameter(torch.empty(M, device=edge_index.device))
        dd = torch.tensor(float(default_distance), device=edge_index.device)
        if learn_default_distance:
            self.default_distance = nn.Parameter(dd)
        else:
            self.register_buffer("default_distance", dd)
        self._init_default = float(default_distance)
        self._records: list[dict] = []
        self._ema = None
        self.reset_parameters()

    # ------------------------------------------------------------------ parameters
    def reset_parameters(self):
        with torch.no_grad():
            self.weight_logit.copy_(inverse_softplus(self.init_weight))
            self.presence_logit.fill_(math.log(self.init_prob / (1 - self.init_prob)))
            self.default_distance.fill_(self._init_default)
        self._records, self._ema = [], None

    @property
    def num_edges(self) -> int:
        """Number of candidate edges ``M`` (undirected edges counted once)."""
        return self.edge_index.size(1)

    @property
    def edge_weight(self) -> torch.Tensor:
        """``[M]`` current lengths ``softplus(weight_logit)``."""
        return F.softplus(self.weight_logit)

    @property
    def edge_prob(self) -> torch.Tensor:
        """``[M]`` current presence probabilities ``sigmoid(presence_logit)``."""
        return torch.sigmoid(self.presence_logit)

    def sparsity(self) -> torch.Tensor:
        r"""The λ-term of eq. 2: :math:`\frac{1}{|E|}\sum_e p_e` (differentiable; sparse grads
        over all candidate edges when ``sparse=True``)."""
        if self.sparse:
            idx = torch.arange(self.num_edges, device=self.presence_logit.device)
            return torch.sigmoid(gather(self.presence_logit, idx, True)).mean()
        return self.edge_prob.mean()

    def prune(self, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        """The deterministic graph: ``(edge_index [2, K], edge_weight [K])`` of the candidate
        edges with ``p >= threshold`` (undirected edges listed once)."""
        keep = self.kept(threshold)
        return self.edge_index[:, keep], self.edge_weight.detach()[keep]

    def num_stored_parameters(self, threshold: float = 0.5) -> int:
        """Numbers needed to store the pruned graph as the paper counts them: ``N + 2|E_kept|``
        (CSR offsets, then per edge a target id and a length). An undirected edge is stored
        once, under one endpoint (the reader adds the reverse direction), so it counts 2."""
        return self.num_nodes + 2 * int(self.kept(threshold).sum())

    def kept(self, threshold: float = 0.5) -> torch.Tensor:
        """``[M]`` bool: ``p >= threshold`` (at ``0.5`` exactly the eval-mode graph: logit ``>= 0``)."""
        check.in_range("threshold", threshold, 0.0, 1.0)
        if threshold == 0.5:
            return self.presence_logit.detach() >= 0
        return self.edge_prob.detach() >= threshold

    # ------------------------------------------------------------------ distances
    def _csr_weight(self, deterministic: bool) -> torch.Tensor:
        w = F.softplus(gather(self.weight_logit, self.perm, self.sparse))
        if deterministic:
            keep = self.presence_logit.detach()[self.perm] >= 0  # p >= 0.5
            w = torch.where(keep, w, torch.full_like(w, float("inf")))
        return w

    def forward(self, src: torch.Tensor, dst: torch.Tensor | None = None, *, seed: int | None = None) -> torch.Tensor:
        r"""Distances from ``src`` ``[B]`` to ``dst``: ``[B]`` (one target per row), ``[B, T]``
        (``T`` targets per row) or ``None`` (all vertices, ``[B, N]``).

        In training mode row :math:`b` searches its own sampled graph (``seed`` fixes the
        samples; default: a fresh one) and the samples are remembered for :meth:`reinforce`.
        Unreachable pairs get ``default_distance``.
        """
        device = self.indptr.device
        check.tensor("src", src, dtypes=check.INDEX_DTYPES, dim=1, device=device)
        check.index_range("src", src, self.num_nodes)
        targets = None
        if dst is not None:
            check.tensor("dst", dst, dtypes=check.INDEX_DTYPES, dim=(1, 2), device=device)
            if dst.size(0) != src.size(0):
                raise ValueError(f"'dst' must have {src.size(0)} rows like 'src', got shape {tuple(dst.shape)}")
            check.index_range("dst", dst, self.num_nodes)
            targets = dst.unsqueeze(1) if dst.dim() == 1 else dst
        if self.training:
            if seed is None:
                seed = int(torch.randint(0, 2**31 - 1, (1,)))
            w = self._csr_weight(False)
            p = torch.sigmoid(self.presence_logit.detach())[self.perm]
            dist, pred = shortest_paths(self.indptr, self.indices, w, src, targets, edge_prob=p, seed=seed,
                                        return_predecessors=True)
            if len(self._records) >= _MAX_RECORDS:
                warnings.warn(f"ProdigeGraph: {_MAX_RECORDS} training forwards without reinforce(); dropping the "
                              "oldest samples (call reinforce(loss) each step, or use eval mode)", RuntimeWarning)
                self._records.pop(0)
            self._records.append({"seed": seed, "src": src, "pred": pred, "p": p})
        else:
            dist = shortest_paths(self.indptr, self.indices, self._csr_weight(True), src, targets)
        dist = torch.where(torch.isinf(dist), self.default_distance.to(dist.dtype), dist)
        return dist.squeeze(1) if dst is not None and dst.dim() == 1 else dist

    # ------------------------------------------------------------------ REINFORCE
    def reinforce(self, loss: torch.Tensor, *, baseline: str = "auto", momentum: float = 0.9) -> torch.Tensor:
        r"""Surrogate whose gradient w.r.t. ``presence_logit`` is the REINFORCE estimate for
        the samples of the training-mode :meth:`forward` calls since the previous ``reinforce``
        (value ``0``; add it to the loss). Per-row losses need exactly one such forward; a scalar
        loss may depend on several (e.g. two embedding lookups in one step).

        Args:
            loss (Tensor): ``[B]`` per-row losses (row ``b``'s loss may depend only on row
                ``b``'s sample; the estimator is for the gradient of their *mean*), or a scalar
                loss depending on all rows (the estimator is for its gradient).
            baseline (str, optional): ``"loo"`` (leave-one-out mean of the other rows' losses;
                per-row losses with ``B >= 2`` only), ``"ema"`` (moving average of past batches'
                mean loss), ``"none"``, or ``"auto"`` (``"loo"`` when possible, else ``"ema"``).
                All keep the estimator unbiased (default: ``"auto"``).
            momentum (float, optional): decay of the ``"ema"`` baseline (default: ``0.9``).
        """
        recs = self._records
        if not recs:
            raise RuntimeError("reinforce() needs a training-mode forward() first (samples are taken from it)")
        check.tensor("loss", loss, dtypes=check.FLOAT_DTYPES, dim=(0, 1))
        check.one_of("baseline", baseline, ("auto", "loo", "ema", "none"))
        L = loss.detach().double().to(self.indptr.device)
        if bool(torch.isnan(L).any()):
            raise ValueError("'loss' contains NaN")
        per_row = L.dim() == 1
        if per_row and len(recs) > 1:
            raise ValueError(f"'loss' is per-row but {len(recs)} training forwards ran since the last reinforce(); "
                             "pass the scalar loss (it may depend on all of them)")
        B = recs[0]["src"].numel()
        if per_row and L.numel() != B:
            raise ValueError(f"'loss' must have one entry per row of the last forward ({B}), got {L.numel()}")
        if baseline == "auto":
            baseline = "loo" if per_row and B >= 2 else "ema"
        if baseline == "loo":
            if not per_row or B < 2:
                raise ValueError("baseline='loo' needs per-row losses of at least 2 rows")
            base = (L.sum() - L) / (B - 1)
        elif baseline == "ema":
            base = torch.full_like(L, 0.0 if self._ema is None else self._ema)
            mean = float(L.mean())
            self._ema = mean if self._ema is None else momentum * self._ema + (1 - momentum) * mean
        else:
            base = torch.zeros_like(L)
        if per_row:
            coef = self._reinforce_coef(recs[0], (L - base) / B)
        else:
            coef = sum(self._reinforce_coef(r, (L - base).expand(r["src"].numel())) for r in recs)
        self._records = []
        idx = coef.nonzero().squeeze(1)
        theta = gather(self.presence_logit, idx, self.sparse)
        s = (theta * coef[idx].to(theta.dtype)).sum()
        return s - s.detach()

    def forget_samples(self) -> None:
        """Drop the samples remembered for :meth:`reinforce` (e.g. after training-mode forwards
        whose loss should not train the presence logits)."""
        self._records = []

    def _reinforce_coef(self, rec: dict, adv: torch.Tensor) -> torch.Tensor:
        """``[M]`` Σ over rows and inspected CSR edges of ``adv[row] * (b - p)``, per parameter."""
        coef = reinforce_coefficients(self.indptr, rec["pred"], rec["src"], rec["seed"], rec["p"], adv)
        return torch.zeros(self.num_edges, dtype=torch.float64, device=coef.device).index_add_(0, self.perm, coef)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_vectors(cls, x: torch.Tensor, knn: int = 32, random_edges: int = 32, *, directed: bool = False,
                     metric: str = "euclidean", init_weight: str | float = "distance",
                     generator: torch.Generator | None = None, **kwargs) -> "ProdigeGraph":
        """Candidate edges from data (Sec. 3.3): each row of ``x`` ``[N, F]`` is linked to its
        ``knn`` nearest rows under ``metric`` and to ``random_edges`` uniformly random vertices
        (self-loops and duplicates dropped). ``init_weight="distance"`` starts each edge at the
        ``metric`` distance of its endpoints; a number starts all edges there. Other keyword
        arguments go to :class:`ProdigeGraph`."""
        check.tensor("x", x, dtypes=check.FLOAT_DTYPES, dim=2, finite=True)
        n = x.size(0)
        if n < 2:
            raise ValueError(f"'x' must have at least 2 rows, got {n}")
        check.positive_int("knn", knn, allow_zero=True)
        check.positive_int("random_edges", random_edges, allow_zero=True)
        if knn + random_edges == 0:
            raise ValueError("'knn' + 'random_edges' must be > 0")
        parts = [knn_graph(x.float(), knn, metric=metric)]
        if random_edges:
            src = torch.arange(n, device=x.device).repeat_interleave(random_edges)
            dst = torch.randint(0, n, (src.numel(),), generator=generator).to(x.device)
            parts.append(torch.stack([src, dst]))
        ei = coalesce_edges(torch.cat(parts, 1), n, directed)
        if isinstance(init_weight, str):
            check.one_of("init_weight", init_weight, ("distance",))
            xf = x.float()
            if metric == "cosine":
                xf = F.normalize(xf, dim=1)
                d = (1 - (xf[ei[0]] * xf[ei[1]]).sum(1)).clamp_min(0)
            else:
                d = (xf[ei[0]] - xf[ei[1]]).norm(dim=1)
            floor = 1e-3 * float(d.mean()) if float(d.mean()) > 0 else 1e-3
            init_weight = d.clamp_min(floor)
        return cls(ei, n, directed=directed, init_weight=init_weight, **kwargs)

    @classmethod
    def bipartite(cls, interactions: torch.Tensor, num_users: int, num_items: int, *, user_knn: int = 16,
                  item_knn: int = 16, **kwargs) -> "ProdigeGraph":
        """Collaborative-filtering graph (Sec. 4.2): vertices ``0..U-1`` are users and
        ``U..U+I-1`` items; candidate edges are every observed interaction ``interactions``
        ``[2, nnz]`` (user, item), plus each user's ``user_knn`` and each item's ``item_knn``
        nearest neighbours by cosine similarity of the rows / columns of the binary
        user-item matrix (``0`` for a purely bipartite graph). Undirected; keyword arguments go
        to :class:`ProdigeGraph`."""
        check.positive_int("num_users", num_users)
        check.positive_int("num_items", num_items)
        check.tensor("interactions", interactions, dtypes=check.INDEX_DTYPES, dim=2)
        if interactions.size(0) != 2 or interactions.size(1) == 0:
            raise ValueError(f"'interactions' must have shape [2, nnz > 0], got {tuple(interactions.shape)}")
        check.index_range("interactions[0] (users)", interactions[0], num_users)
        check.index_range("interactions[1] (items)", interactions[1], num_items)
        inter = interactions.long()
        parts = [torch.stack([inter[0], inter[1] + num_users])]
        if user_knn or item_knn:
            Fm = torch.zeros(num_users, num_items, device=inter.device)
            Fm[inter[0], inter[1]] = 1.0
            if user_knn:
                parts.append(knn_graph(Fm, user_knn, metric="cosine"))
            if item_knn:
                parts.append(knn_graph(Fm.T.contiguous(), item_knn, metric="cosine") + num_users)
        n = num_users + num_items
        ei = coalesce_edges(torch.cat(parts, 1), n, directed=False)
        kwargs.pop("directed", None)
        return cls(ei, n, directed=False, **kwargs)

    def extra_repr(self) -> str:
        return (f"num_nodes={self.num_nodes}, num_edges={self.num_edges}, directed={self.directed}, "
                f"default_distance={float(self.default_distance):g}, sparse={self.sparse}")
