r"""PRODIGE: learnable stochastic graph metrics (Mazur et al., NeurIPS 2019).

:class:`ProdigeGraph` holds a set of candidate edges, each with a learnable length
:math:`w_e = \mathrm{softplus}(\theta^w_e)` and a learnable presence probability
:math:`p_e = \sigma(\theta^b_e)`; distances are shortest paths in a graph sampled edge by
edge (training) or in the deterministic graph of the edges with :math:`p_e \ge 0.5` (eval).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import coalesce, remove_self_loops

from .. import library  # noqa: F401  (registers torch.ops.tgrep.*)
from ..ops import knn as ops_knn
from ..ops import reinforce_coefficients
from ..ops.shortest_path import seed_tensor
from ..utils import check, to_csr


class _SparseGather(torch.autograd.Function):
    """``param[index]`` whose gradient w.r.t. ``param`` is a sparse COO tensor (what
    :class:`torch.optim.SparseAdam` expects; it coalesces). No data-dependent shapes, so it
    traces under ``torch.compile``."""

    @staticmethod
    def forward(ctx, param, index):
        ctx.save_for_backward(index)
        ctx.shape = param.shape
        return param[index]

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return torch.sparse_coo_tensor(index.unsqueeze(0), grad, ctx.shape, check_invariants=False), None


def gather(param: torch.Tensor, index: torch.Tensor, sparse: bool) -> torch.Tensor:
    return _SparseGather.apply(param, index) if sparse else param[index]


class EdgeParameter(nn.Embedding):
    """Holds one learnable number per candidate edge (``weight`` ``[M]``) the way
    ``nn.Embedding`` holds its table. :class:`~torch.nn.parallel.DistributedDataParallel`
    expects sparse gradients only from parameters of ``nn.Embedding`` / ``nn.EmbeddingBag``
    modules with ``sparse=True`` (it checks the module type when it builds its buckets), so
    this is what makes ``ProdigeGraph(sparse=True)`` trainable under DDP."""

    def __init__(self, num_edges: int, sparse: bool, device=None):
        nn.Module.__init__(self)  # nn.Embedding's table is [n, d]; this one is [M]
        self.num_embeddings, self.embedding_dim, self.sparse = num_edges, 1, sparse
        self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq = None, None, 2.0, False
        self.weight = nn.Parameter(torch.empty(num_edges, device=device))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return gather(self.weight, index, self.sparse)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, sparse={self.sparse}"


# the edge parameters live in EdgeParameter submodules; the state_dict keeps the flat names
_EDGE_PARAMS = {"weight_logit": "_edge_weight", "presence_logit": "_edge_presence"}


def _flat_edge_keys(module, state_dict, prefix, local_metadata):
    for name, holder in _EDGE_PARAMS.items():
        key = f"{prefix}{holder}.weight"
        if key in state_dict:
            state_dict[prefix + name] = state_dict.pop(key)


def _nested_edge_keys(module, state_dict, prefix, *args):
    for name, holder in _EDGE_PARAMS.items():
        if prefix + name in state_dict:
            state_dict[f"{prefix}{holder}.weight"] = state_dict.pop(prefix + name)


def inverse_softplus(w: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = w`` (``w > 0``), stable for small and large ``w``."""
    return torch.where(w > 20, w, torch.log(torch.expm1(w.clamp_max(20))))


def undirected_edges(edge_index: torch.Tensor, num_nodes: int, weight: torch.Tensor | None = None):
    """Undirected edges once each as ``u < v`` (``(u, v)`` and ``(v, u)`` merged, self-loops
    dropped; with ``weight``, the smallest of the merged copies): ``edge_index`` or
    ``(edge_index, weight)``. PyG's :func:`~torch_geometric.utils.coalesce` does the merging."""
    src, dst = edge_index.long()
    ei = torch.stack([torch.minimum(src, dst), torch.maximum(src, dst)])
    ei, weight = remove_self_loops(ei, weight)
    if weight is None:
        return coalesce(ei, num_nodes=num_nodes)
    return coalesce(ei, weight, num_nodes=num_nodes, reduce="min")


def bool_arg(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"'{name}' must be a bool, got {type(value).__name__}")
    return value


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


_RANK_STRIDE = 0x2545F491  # odd: distinct ranks give distinct seeds for the same draw


def _seed(seed, device) -> torch.Tensor:
    """The 0-d int64 seed tensor the ops take (``None``: drawn from torch's generator, no sync;
    under ``torch.distributed`` the process rank is folded in, so ranks seeded alike still
    draw independent samples)."""
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 0 or seed.dtype != torch.int64:
            raise TypeError("'seed' must be an int or a 0-d int64 tensor")
        return seed
    if seed is not None:
        check.seed("seed", seed)
        return seed_tensor(seed, device)
    drawn = seed_tensor(None, device)
    rank = _rank()  # a Python int (constant-folded by torch.compile)
    return drawn if rank == 0 else (drawn + rank * _RANK_STRIDE) % (2**31 - 1)


class ProdigeGraph(nn.Module):
    r"""A learnable stochastic weighted graph whose shortest-path distances are the model
    (PRODIGE, Mazur et al., NeurIPS 2019, Sec. 3).

    Every candidate edge :math:`e` has a length :math:`w_e = \mathrm{softplus}(\theta^w_e)` and
    a presence probability :math:`p_e = \sigma(\theta^b_e)`. The distance between two vertices is

    .. math::
        d_G(u, v) = \min_{\pi \in \Pi_G(u, v)} \sum_{e \in \pi} w_e, \qquad G \sim p(G),

    or ``default_distance`` when no path exists. In training mode every search (row) draws its
    own graph; in eval mode the graph is deterministic: the edges with :math:`p_e \ge 0.5`.

    **Sampling.** Edge presence is drawn lazily per row by ``tgrep::shortest_paths``, keyed by
    ``(seed, row, CSR edge)``. An undirected candidate edge is stored twice in CSR (once per
    direction) and *the two directions are sampled independently* with the same probability
    :math:`p_e`; both directions share the parameters :math:`\theta^w_e,\theta^b_e`.

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
    presence logits is :math:`\hat g`, for the samples of the *last* training-mode
    :meth:`forward`. If rows' losses are coupled (e.g. a classifier over several items'
    distances), pass the scalar loss instead: ``graph.reinforce(loss)``. Without
    :meth:`reinforce` only the lengths (and a learnable ``default_distance``) are trained; the
    presence probabilities stay where they are, so training-mode searches act as edge dropout.

    **Checkpoints.** The graph structure (``edge_index``, CSR arrays, initial lengths) lives in
    buffers, the number of vertices and the direction in the extra state: a ``state_dict``
    loads into any ``ProdigeGraph`` (built with another seed or other candidate edges) and
    rebuilds it to the checkpoint's structure. ``forward`` makes no host synchronisation
    (value checks run inside the custom op), so it works under ``torch.compile(fullgraph=True)``.

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
        default_distance (float, optional): the distance of unreachable pairs, ``> 0``
            (default: ``10.0``).
        learn_default_distance (bool, optional): make ``default_distance`` a parameter
            (default: ``False``).
        soft (bool, optional): the original PRODIGE's soft mode: in training mode a pair with
            no path in its sampled graph takes its distance in the graph of *all* candidate
            edges (absent edges stay usable), so it gets a path gradient instead of the
            constant ``default_distance``. One extra search per row; eval mode is unchanged
            (default: ``False``).
        sparse (bool, optional): gradients of the edge parameters are sparse COO tensors, for
            :class:`torch.optim.SparseAdam` (like ``nn.Embedding(sparse=True)``) (default: ``False``).
    """

    def __init__(self, edge_index: torch.Tensor, num_nodes: int, *, directed: bool = False,
                 init_weight: float | torch.Tensor = 1.0, init_prob: float = 0.9, default_distance: float = 10.0,
                 learn_default_distance: bool = False, sparse: bool = False, soft: bool = False):
        super().__init__()
        check.positive_int("num_nodes", num_nodes)
        if num_nodes >= 2**31 - 1:  # vertex ids are int32 in the CSR and in every search kernel
            raise ValueError(f"'num_nodes' must be below 2^31 - 1, got {num_nodes}")
        check.edge_index("edge_index", edge_index, num_nodes)
        if edge_index.size(1) == 0:
            raise ValueError("'edge_index' is empty: a ProdigeGraph needs at least one candidate edge")
        bool_arg("directed", directed)
        bool_arg("learn_default_distance", learn_default_distance)
        bool_arg("sparse", sparse)
        self.soft = bool_arg("soft", soft)
        check.in_range("init_prob", init_prob, 0.0, 1.0, lo_open=True, hi_open=True)
        check.in_range("default_distance", default_distance, 0.0, math.inf, lo_open=True, hi_open=True)
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
        if directed:
            edge_index, w0 = remove_self_loops(edge_index, w0)
            if edge_index.size(1):
                edge_index, w0 = coalesce(edge_index, w0, num_nodes=num_nodes, reduce="min")
        else:
            edge_index, w0 = undirected_edges(edge_index, num_nodes, w0)
        if edge_index.size(1) == 0:
            raise ValueError("'edge_index' holds only self-loops: a ProdigeGraph needs at least one edge")
        self.num_nodes, self.directed, self.sparse = num_nodes, directed, sparse
        self.init_prob, self.learn_default_distance = float(init_prob), learn_default_distance
        self._init_default = float(default_distance)
        dd = torch.tensor(float(default_distance), device=edge_index.device)
        if learn_default_distance:
            self.default_distance = nn.Parameter(dd)
        else:
            self.register_buffer("default_distance", dd)
        self._set_structure(edge_index, w0)
        self.register_state_dict_post_hook(_flat_edge_keys)
        self.register_load_state_dict_pre_hook(_nested_edge_keys)
        self.reset_parameters()

    @property
    def weight_logit(self) -> nn.Parameter:
        """``[M]`` length logits (``state_dict`` key ``weight_logit``)."""
        return self._edge_weight.weight

    @property
    def presence_logit(self) -> nn.Parameter:
        """``[M]`` presence logits (``state_dict`` key ``presence_logit``)."""
        return self._edge_presence.weight

    def _set_structure(self, edge_index: torch.Tensor, w0: torch.Tensor) -> None:
        """(Re)build the buffers and edge parameters for ``edge_index`` (canonical: coalesced,
        ``u < v`` when undirected)."""
        M, dev = edge_index.size(1), edge_index.device
        self.register_buffer("edge_index", edge_index)
        self.register_buffer("init_weight", w0)
        self._set_csr(None)
        self._edge_weight = EdgeParameter(M, self.sparse, dev)    # .weight_logit
        self._edge_presence = EdgeParameter(M, self.sparse, dev)  # .presence_logit
        self._last = None  # the samples of the last training forward, for reinforce()
        self._ema = None
        self._prob_cache = None  # see _csr_prob

    def _set_csr(self, keep: torch.Tensor | None, park: bool = True) -> None:
        """The CSR arrays the searches scan: every candidate edge (``keep=None``) or only the
        candidate edges ``keep`` (``[M]`` bool). With ``park``, the slots of the others are parked
        as self-loops of the last vertex, which must have no candidate edge: it is never reached,
        so they are never scanned, and the arrays keep their size (``torch.compile`` treats module
        buffers as static: a shrinking CSR recompiles); else they are dropped (the value checks
        and per-slot work of every search then shrink too). The edge parameters stay ``[M]``
        (``perm`` maps each CSR slot to its parameter), so an optimizer holding them is
        unaffected. Left-out edges should have low presence logits, as :meth:`kept` and the
        stored numbers count by them (``ProdigeEmbedding``'s pruning sets both)."""
        if keep is None:
            indptr, indices, _, perm = to_csr(self.edge_index, self.num_nodes, None, undirected=not self.directed,
                                              return_perm=True)
        else:
            last = self.num_nodes - 1
            ids = torch.nonzero(keep).squeeze(1)
            indptr, indices, _, perm = to_csr(self.edge_index[:, ids], self.num_nodes, None,
                                              undirected=not self.directed, return_perm=True)
            out = torch.nonzero(~keep).squeeze(1).repeat_interleave(1 if self.directed else 2)
            if not park:
                out = out[:0]
            elif out.numel() and bool(((self.edge_index == last).any(0) & keep).any()):
                raise ValueError("the last vertex parks the left-out edges: it must not have a kept edge")
            indptr = indptr.clone()
            indptr[-1] += out.numel()
            indices = torch.cat([indices, torch.full_like(out, last)])
            perm = torch.cat([ids[perm], out])
        # int32 targets (N < 2^31 - 1, checked at construction): the C++ search reads them in
        # place with the lengths, 8 bytes per edge, instead of repacking them
        indices = indices.to(torch.int32)
        for name, t in (("indptr", indptr), ("indices", indices), ("perm", perm)):  # perm: CSR edge -> parameter
            self.register_buffer(name, t)

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict:
        return {"num_nodes": self.num_nodes, "directed": self.directed, "reinforce_ema": self._ema}

    def set_extra_state(self, state: dict) -> None:
        # the structure is applied in _load_from_state_dict, before the tensors are copied
        self._ema = state.get("reinforce_ema") if isinstance(state, dict) else None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        extra = state_dict.get(prefix + "_extra_state")
        ei = state_dict.get(prefix + "edge_index")
        if isinstance(extra, dict) and isinstance(ei, torch.Tensor) and (
                extra.get("num_nodes") != self.num_nodes or extra.get("directed") != self.directed
                or ei.shape != self.edge_index.shape or not torch.equal(ei.to(self.edge_index.device),
                                                                          self.edge_index)):
            # another candidate graph: rebuild to the checkpoint's structure, then copy values
            dev = self.edge_index.device
            self.num_nodes, self.directed = int(extra["num_nodes"]), bool(extra["directed"])
            self._set_structure(ei.to(dev).long(), state_dict[prefix + "init_weight"].to(dev).float())
        for name in ("indices", "perm"):  # the checkpoint's CSR may scan only some of the candidates
            t = state_dict.get(prefix + name)
            if isinstance(t, torch.Tensor) and t.shape != getattr(self, name).shape:
                self.register_buffer(name, torch.empty(t.shape, dtype=t.dtype, device=self.edge_index.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # ------------------------------------------------------------------ parameters
    def reset_parameters(self):
        self._set_csr(None)  # every candidate edge searched again (after ProdigeEmbedding's pruning)
        with torch.no_grad():
            self.weight_logit.copy_(inverse_softplus(self.init_weight))
            self.presence_logit.fill_(math.log(self.init_prob / (1 - self.init_prob)))
            self.default_distance.fill_(self._init_default)
        self._last, self._ema = None, None

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

    def expected_stored_numbers(self) -> float:
        r""":math:`N + 2\sum_e p_e`: the expected :meth:`num_stored_parameters` of a sampled graph."""
        return self.num_nodes + 2 * float(self.edge_prob.detach().sum())

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
        if self.sparse:  # sparse grads need the gather first
            w = F.softplus(gather(self.weight_logit, self.perm, True))
        else:  # softplus over the M parameters, then to the 2M CSR slots
            w = F.softplus(self.weight_logit)[self.perm]
        return self._kept_only(w) if deterministic else w

    def _kept_only(self, w_csr: torch.Tensor) -> torch.Tensor:
        """CSR slot lengths ``w_csr`` with the absent edges (:math:`p < 0.5`) at ``inf``: the
        deterministic (eval-mode) graph."""
        keep = self.presence_logit.detach()[self.perm] >= 0  # p >= 0.5
        return torch.where(keep, w_csr, torch.full_like(w_csr, float("inf")))

    def _csr_prob(self) -> torch.Tensor:
        """``sigmoid(presence_logit)[perm]`` (detached), the CSR slots' presence probabilities.
        In eager mode it is kept until ``presence_logit`` or ``perm`` changes (a new tensor or an
        in-place write, which bumps the tensor's version): without REINFORCE the presence logits
        do not train, and the training forward would recompute the same ``2M`` numbers each step."""
        logit, perm = self.presence_logit, self.perm
        if torch.compiler.is_compiling():
            return torch.sigmoid(logit.detach()).index_select(0, perm)
        # the tensors themselves (an id could be reused) with their versions and data pointers
        # (`.to()` may swap a parameter's data without a version bump)
        key = (logit._version, logit.data_ptr(), perm._version, perm.data_ptr())
        c = self._prob_cache  # (logit, perm, key, probabilities)
        if c is not None and c[0] is logit and c[1] is perm and c[2] == key:
            return c[3]
        p = torch.sigmoid(logit.detach()).index_select(0, perm)
        self._prob_cache = (logit, perm, key, p)
        return p

    def forward(self, src: torch.Tensor, dst: torch.Tensor | None = None, *, seed: int | None = None) -> torch.Tensor:
        r"""Distances from ``src`` ``[B]`` to ``dst``: ``[B]`` (one target per row), ``[B, T]``
        (``T`` targets per row) or ``None`` (all vertices, ``[B, N]``).

        In training mode (unless ``presence_logit`` is frozen, e.g. ``requires_grad_(False)``)
        row :math:`b` searches its own sampled graph (``seed``, an int or a
        0-d int64 tensor, fixes the samples; default: a fresh one) and the samples are
        remembered for :meth:`reinforce`. Unreachable pairs get ``default_distance``. Index
        ranges are checked inside the op (``ValueError``), so there is no host sync here.
        """
        device = self.indptr.device
        check.tensor("src", src, dtypes=check.INDEX_DTYPES, dim=1, device=device)
        targets = None
        if dst is not None:
            check.tensor("dst", dst, dtypes=check.INDEX_DTYPES, dim=(1, 2), device=device)
            if dst.size(0) != src.size(0):
                raise ValueError(f"'dst' must have {src.size(0)} rows like 'src', got shape {tuple(dst.shape)}")
            targets = dst.unsqueeze(1) if dst.dim() == 1 else dst
        seed_t = _seed(seed, device)
        if self.training and self.presence_logit.requires_grad:  # frozen presence: the deterministic graph
            w = self._csr_weight(False)
            p = self._csr_prob()
            dist, pred = torch.ops.tgrep.shortest_paths(self.indptr, self.indices, w, src, targets, p, seed_t, True)
            self._last = (seed_t, src, pred, p)  # one slot (a list would recompile per length)
            if self.soft:  # unreachable in the sample: the all-candidates graph's distance
                full, _ = torch.ops.tgrep.shortest_paths(self.indptr, self.indices, w, src, targets, None, seed_t,
                                                         w.requires_grad and torch.is_grad_enabled())
                dist = torch.where(torch.isinf(dist), full, dist)
        else:
            w = self._csr_weight(True)
            need_pred = w.requires_grad and torch.is_grad_enabled()
            dist, _ = torch.ops.tgrep.shortest_paths(self.indptr, self.indices, w, src, targets, None, seed_t,
                                                     need_pred)
        # distances are >= 0 (the op refuses negative lengths), so inf is the only non-finite value
        dist = torch.where(dist == math.inf, self.default_distance.to(dist.dtype), dist)
        return dist.squeeze(1) if dst is not None and dst.dim() == 1 else dist

    # ------------------------------------------------------------------ REINFORCE
    def reinforce(self, loss: torch.Tensor, *, baseline: str = "auto", momentum: float = 0.9,
                  distributed: bool | None = None) -> torch.Tensor:
        r"""Surrogate whose gradient w.r.t. ``presence_logit`` is the REINFORCE estimate for
        the samples of the last training-mode :meth:`forward` (value ``0``; add it to the loss).

        Args:
            loss (Tensor): ``[B]`` per-row losses (row ``b``'s loss may depend only on row
                ``b``'s sample; the estimator is for the gradient of their *mean*), or a scalar
                loss depending on all rows (the estimator is for its gradient).
            baseline (str, optional): ``"loo"`` (leave-one-out mean of the other rows' losses;
                per-row losses with ``B >= 2`` only), ``"ema"`` (moving average of past batches'
                mean loss), ``"none"``, or ``"auto"`` (``"loo"`` when possible, else ``"ema"``).
                All keep the estimator unbiased (default: ``"auto"``).
            momentum (float, optional): decay of the ``"ema"`` baseline, in ``[0, 1)``
                (default: ``0.9``).
            distributed (bool, optional): compute the baseline over the *global* batch of all
                processes (one ``all_reduce`` of the loss sum and row count), so that under
                :class:`~torch.nn.parallel.DistributedDataParallel` (which averages the ranks'
                gradients) the estimate equals the single-process one on the union batch and the
                ``"ema"`` state is the same on every rank. Every rank must then call
                :meth:`reinforce` at the same step, as DDP's backward requires anyway
                (default: ``None``: when ``torch.distributed`` is initialised with more than one
                process).
        """
        check.tensor("loss", loss, dtypes=check.FLOAT_DTYPES, dim=(0, 1))
        check.one_of("baseline", baseline, ("auto", "loo", "ema", "none"))
        check.in_range("momentum", momentum, 0.0, 1.0, hi_open=True)
        if distributed is None:
            distributed = _world_size() > 1
        else:
            bool_arg("distributed", distributed)
        if self._last is None:
            raise RuntimeError("reinforce() needs a training-mode forward() first (samples are taken from it)")
        seed, src, pred, p = self._last
        L = loss.detach().double().to(self.indptr.device)
        per_row = L.dim() == 1
        B = src.numel()
        if per_row and L.numel() != B:
            raise ValueError(f"'loss' must have one entry per row of the last forward ({B}), got {L.numel()}")
        if baseline == "auto":
            baseline = "loo" if per_row and B >= 2 else "ema"
        if baseline == "loo" and (not per_row or B < 2):
            raise ValueError("baseline='loo' needs per-row losses of at least 2 rows")
        # [sum of losses, rows, NaN count] over the global batch (a scalar loss counts as one row)
        stats = torch.stack([L.sum(), L.new_tensor(float(L.numel())), torch.isnan(L).sum().double()])
        if distributed and baseline in ("loo", "ema"):
            torch.distributed.all_reduce(stats)
        total, rows, nans = stats.tolist()  # the one host sync (the NaN check needs it anyway)
        if nans:
            raise ValueError("'loss' contains NaN")
        if baseline == "loo":
            if rows < 2:
                raise ValueError("baseline='loo' needs per-row losses of at least 2 rows")
            base = (total - L) / (rows - 1)
        elif baseline == "ema":
            base = torch.full_like(L, 0.0 if self._ema is None else self._ema)
            mean = total / rows
            self._ema = mean if self._ema is None else momentum * self._ema + (1 - momentum) * mean
        else:
            base = torch.zeros_like(L)
        adv = (L - base) / B if per_row else (L - base).expand(B)
        coef = reinforce_coefficients(self.indptr, pred, src, seed, p, adv)
        coef = torch.zeros(self.num_edges, dtype=torch.float64, device=coef.device).index_add_(0, self.perm, coef)
        self._last = None
        theta = gather(self.presence_logit, torch.arange(self.num_edges, device=coef.device), self.sparse) \
            if self.sparse else self.presence_logit
        s = (theta * coef.to(theta.dtype)).sum()
        return s - s.detach()

    def forget_samples(self) -> None:
        """Drop the samples remembered for :meth:`reinforce`."""
        self._last = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_vectors(cls, x: torch.Tensor, knn: int = 32, random_edges: int = 32, *, directed: bool = False,
                     metric: str = "euclidean", init_weight: str | float = "distance",
                     generator: torch.Generator | None = None, **kwargs) -> "ProdigeGraph":
        """Candidate edges from data (Sec. 3.3): each row of ``x`` ``[N, F]`` is linked to its
        ``knn`` nearest rows under ``metric`` (:func:`tgrep.ops.knn`; ``"cosine"`` searches the
        normalised rows) and to ``random_edges`` uniformly random vertices (self-loops and
        duplicates dropped). ``init_weight="distance"`` starts each edge at the ``metric``
        distance of its endpoints; a number starts all edges there. Other keyword arguments go
        to :class:`ProdigeGraph`."""
        check.tensor("x", x, dtypes=check.FLOAT_DTYPES, dim=2, finite=True)
        n = x.size(0)
        if n < 2:
            raise ValueError(f"'x' must have at least 2 rows, got {n}")
        check.positive_int("knn", knn, allow_zero=True)
        check.positive_int("random_edges", random_edges, allow_zero=True)
        check.one_of("metric", metric, ("euclidean", "cosine"))
        bool_arg("directed", directed)
        if knn + random_edges == 0:
            raise ValueError("'knn' + 'random_edges' must be > 0")
        xf = x.detach().float()
        if metric == "cosine":
            xf = F.normalize(xf, dim=1)
        ei = knn_edges(xf, knn)
        if random_edges:
            src = torch.arange(n, device=x.device).repeat_interleave(random_edges)
            dst = torch.randint(0, n, (src.numel(),), generator=generator).to(x.device)
            ei = torch.cat([ei, torch.stack([src, dst])], 1)
        ei, _ = remove_self_loops(ei)
        ei = coalesce(ei, num_nodes=n) if directed else undirected_edges(ei, n)
        if isinstance(init_weight, str):
            check.one_of("init_weight", init_weight, ("distance",))
            if metric == "cosine":
                d = (1 - (xf[ei[0]] * xf[ei[1]]).sum(1)).clamp_min(0)
            else:
                d = (xf[ei[0]] - xf[ei[1]]).norm(dim=1)
            init_weight = d.clamp_min(1e-3 * float(d.mean()) if float(d.mean()) > 0 else 1e-3)
        return cls(ei, n, directed=directed, init_weight=init_weight, **kwargs)

    @classmethod
    def bipartite(cls, interactions: torch.Tensor, num_users: int, num_items: int, *, user_knn: int = 16,
                  item_knn: int = 16, **kwargs) -> "ProdigeGraph":
        """Collaborative-filtering graph (Sec. 4.2): vertices ``0..U-1`` are users and
        ``U..U+I-1`` items; candidate edges are every observed interaction ``interactions``
        ``[2, nnz]`` (user, item), plus each user's ``user_knn`` and each item's ``item_knn``
        nearest neighbours by cosine similarity of their interaction sets (computed from the
        sparse interaction matrix in blocks; ``0`` for a purely bipartite graph). Undirected;
        keyword arguments go to :class:`ProdigeGraph`."""
        check.positive_int("num_users", num_users)
        check.positive_int("num_items", num_items)
        check.positive_int("user_knn", user_knn, allow_zero=True)
        check.positive_int("item_knn", item_knn, allow_zero=True)
        check.tensor("interactions", interactions, dtypes=check.INDEX_DTYPES, dim=2)
        if interactions.size(0) != 2 or interactions.size(1) == 0:
            raise ValueError(f"'interactions' must have shape [2, nnz > 0], got {tuple(interactions.shape)}")
        check.index_range("interactions[0] (users)", interactions[0], num_users)
        check.index_range("interactions[1] (items)", interactions[1], num_items)
        if kwargs.get("directed", False):
            raise ValueError("'directed': a bipartite PRODIGE graph is undirected")
        inter = coalesce(interactions.long(), num_nodes=max(num_users, num_items))
        parts = [torch.stack([inter[0], inter[1] + num_users])]
        if user_knn:
            parts.append(cosine_knn_sparse(inter, num_users, num_items, user_knn))
        if item_knn:
            parts.append(cosine_knn_sparse(inter.flip(0), num_items, num_users, item_knn) + num_users)
        n = num_users + num_items
        return cls(undirected_edges(torch.cat(parts, 1), n), n, **kwargs)

    def extra_repr(self) -> str:
        return (f"num_nodes={self.num_nodes}, num_edges={self.num_edges}, directed={self.directed}, "
                f"init_prob={self.init_prob:g}, default_distance={self._init_default:g}, "
                f"learn_default_distance={self.learn_default_distance}, sparse={self.sparse}, soft={self.soft}")


def knn_edges(x: torch.Tensor, k: int) -> torch.Tensor:
    """``[2, n k]`` edges ``i -> j`` to the ``k`` nearest other rows of ``x`` (:func:`tgrep.ops.knn`;
    padding dropped)."""
    n = x.size(0)
    k = min(k, n - 1)
    if k <= 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    _, idx = ops_knn(x, k)
    src = torch.arange(n, device=x.device).repeat_interleave(k)
    ei = torch.stack([src, idx.reshape(-1).long()])
    return ei[:, ei[1] >= 0]


def cosine_knn_sparse(pairs: torch.Tensor, num_rows: int, num_cols: int, k: int, block: int = 1024) -> torch.Tensor:
    """``[2, ·]`` edges from each row of the binary sparse matrix given by ``pairs`` ``[2, nnz]``
    (row, col) to its ``k`` most cosine-similar other rows (rows sharing no column excluded);
    ``block`` rows at a time, so memory is ``O(block * num_rows + nnz)``, never rows x cols."""
    dev = pairs.device
    ones = torch.ones(pairs.size(1), device=dev)
    A = torch.sparse_coo_tensor(pairs, ones, (num_rows, num_cols)).coalesce()
    At = torch.sparse_coo_tensor(pairs.flip(0), ones, (num_cols, num_rows)).coalesce()
    norm = torch.bincount(pairs[0], minlength=num_rows).float().clamp_min(1).sqrt()
    out = []
    kk = min(k, num_rows - 1)
    if kk <= 0:
        return torch.empty(2, 0, dtype=torch.long, device=dev)
    for start in range(0, num_rows, block):
        rows = torch.arange(start, min(start + block, num_rows), device=dev)
        S = torch.sparse.mm(A.index_select(0, rows), At).to_dense() / (norm[rows, None] * norm[None, :])
        S[torch.arange(rows.numel(), device=dev), rows] = -1.0
        val, idx = S.topk(kk, dim=1)
        keep = val > 0
        out.append(torch.stack([rows[:, None].expand_as(idx)[keep], idx[keep]]))
    return torch.cat(out, 1)
