r"""``ProdigeEmbedding``: items as distances to anchor vertices of a PRODIGE graph (Sec. 4.3, eq. 7)."""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.shortest_path import seed_tensor
from ..utils import check
from .prodige import ProdigeGraph, _seed, bool_arg, gather, undirected_edges


def _refresh_after_load(module, incompatible_keys) -> None:
    module._sync_pruning()  # the checkpoint's pruning state (perhaps a new graph to hook)
    module.refresh_trees()  # new lengths (and perhaps a new graph): the cached trees are stale


def _after_backward(ref) -> None:
    module = ref()
    if module is not None:
        module._after_backward()


def _budget_edges(n: int, K: int, budget: float, num_items: int, hubs: int = 0) -> int:
    """Edges so that ``N + 2|E|`` (anchors and hub vertices included) is ``budget`` numbers per item."""
    return int(math.floor((budget * num_items - (n + K + hubs)) / 2))


HUBS_PER_ANCHOR = 3  # hidden hub vertices: 3 K of them
HUB_LINKS = 32  # candidate hub edges per item (every hub when there are at most 32)
PRUNE_START, PRUNE_EVERY, PRUNE_ROUNDS = 250, 20, 8  # pruning rounds, in training steps
PRUNED_LOGIT = -30.0  # presence logit of a pruned edge (never sampled, not kept)


def _prune_schedule(start: int, keep: int) -> list[int]:
    """Edges kept after each pruning round: geometric from ``start`` candidates to ``keep``."""
    R = PRUNE_ROUNDS
    return [max(keep, int(round(keep * (start / keep) ** ((R - 1 - r) / R)))) for r in range(R)]


class ProdigeEmbedding(nn.Module):
    r"""A drop-in replacement for ``nn.Embedding(num_embeddings, embedding_dim)`` whose vectors
    are shortest-path distances in a learnable stochastic graph (PRODIGE, Mazur et al. 2019, eq. 7):

    .. math::
        \mathrm{emb}(i) = \big(d_G(v_i, a_1), \dots, d_G(v_i, a_K)\big), \qquad K = \text{embedding\_dim},

    where :math:`v_0..v_{n-1}` are item vertices and :math:`a_1..a_K` extra anchor vertices
    (vertices ``n .. n+K-1`` of the graph). Unreachable anchors give the graph's (learnable)
    ``default_distance``. With ``center=True`` (the default for ``direction="anchors"``) each
    dimension is centred on its mean over the items,
    :math:`\mathrm{emb}(i)_k = d_G(v_i, a_k) - \operatorname{sg}\big[\frac1n \sum_j d_G(v_j, a_k)\big]`
    (``sg``: no gradient through the mean; the padding item is left out of it): a translation
    per dimension, which a following layer's bias absorbs, so it changes nothing the model can
    express -- but raw distances share a large positive offset, and a linear layer on top of
    them trains far slower (planted hierarchy benchmark: 0.72 vs 0.99 test accuracy after 10
    epochs).

    **Storage budget.** ``budget`` is the number of stored numbers per item, counted as the
    paper does (``N + 2|E|`` for the graph, every vertex included, divided by
    ``num_embeddings``); by default it equals ``embedding_dim``, the numbers per item of an
    ``nn.Embedding`` (at least ``3 + K / n``: one edge per item).

    **Hub vertices, pruned to the budget in training.** When the budget leaves room for one edge
    per item and per hub, the graph gets :math:`H = 3K` hidden *hub* vertices (ids
    ``n + K .. n + K + H - 1``; they are not items, no output reads them) and one more, the last
    vertex, which only parks pruned edges (see below). The candidate graph is over-complete: every
    item is linked to ``min(H, 32)`` random hubs and every hub to every anchor (initial lengths
    ``U(0.5, 1.5)``), so an item's vector is a min over its hubs' distance profiles,
    :math:`\mathrm{emb}(i)_k = \min_h w_{ih} + d_G(h, a_k)`, and training chooses which hubs carry
    it: items that carry the same evidence come to share hubs. The graph is then pruned to the
    budget by the training itself, in ``8`` rounds at training steps ``250, 270, .., 390`` (a step
    = a backward pass that reaches the lengths in training mode; a hook on the length logits
    counts them, outside any compiled graph), geometrically from the candidates to
    :math:`\lfloor (\text{budget}\, n - N) / 2 \rfloor` edges: each round first keeps, for every item
    and hub, the one edge that alone best keeps its distances to the anchors, then the edges
    the most (anchor, item) shortest paths run through. A pruned edge gets presence logit
    ``-30`` (never sampled, not kept, so :meth:`num_stored_parameters` meets the budget after
    the last round and counts the candidates before it) and leaves the searched CSR (until the
    last round its slots are parked under the last vertex, which no search reaches, so the
    arrays keep their size; the last round drops them: under ``torch.compile`` that is one
    recompile). The parameters keep their ``[M]`` shape, so the user's optimizer is unaffected;
    the lengths' softplus and Adam work stays ``O(M)``, so a step after pruning still costs
    more than one on a budget-sized graph (see **Cost**).
    :meth:`prune_to_budget` runs the remaining rounds at once (a run shorter than 390 steps);
    :meth:`reset_parameters` restores the candidates. Planted hierarchy task of the benchmark
    (16 classes, 470 steps; 9 seeds), test accuracy with a linear / LayerNorm head: budget 4: 0.978 / 0.912
    (``nn.Embedding(1000, 4)`` 0.977 / 0.875; before the hubs, a budget-sized random graph:
    0.83 / 0.66); budget 16: 0.998 / 0.994 (``nn.Embedding(1000, 16)`` 0.999 / 0.986; before:
    0.993 / 0.981). Without room for the hubs (a budget below about
    :math:`3 + 10K/n`) the candidate graph is built at the budget's size instead, nothing is
    pruned: each item is linked to one random anchor (every anchor gets items) and to random
    other items; a budget above the hub candidates' size fills the rest with random item–item
    edges, nothing pruned either.

    **Training.** In an ordinary training loop (no extra line) the edge *lengths* and the
    default distance learn by path gradients (and the pruning above runs); each training-mode
    search samples the edges with
    their presence probability (0.9 at start, so this acts as edge dropout), the deterministic
    eval-mode graph uses every edge with :math:`p_e \ge 0.5`. To also learn *which* edges to keep
    (REINFORCE, eq. 3–4), add one term; the graph then can only get sparser than the budget::

        loss = F.cross_entropy(model(tokens), y)
        (loss + emb.reinforce(loss)).backward()

    (only the anchors searched afresh in that forward drew new samples; :meth:`reinforce`
    scales their estimate to ``K`` rows).

    **Cost.** An eval-mode (or ``torch.no_grad()``) forward runs ``K`` exact searches from the
    anchors (undirected graphs) and gathers every token's row from the resulting ``[n, K]``
    table, so each distinct item is computed once and the cost does not depend on the batch
    size. Training reuses searches: every anchor keeps its last shortest-path tree (buffers,
    not saved in the ``state_dict``), each training forward searches
    :math:`\lceil K / \text{refresh\_every} \rceil` anchors afresh (in rotation, each in its
    own sampled graph) and takes *every* anchor's distances as the current lengths summed along
    its cached tree (``tgrep::tree_path_table``: :func:`tgrep.ops.tree_path_sums` written
    straight as the ``[n, K]`` table, one pass per tree; the gradient is the path gradient along
    the same trees). A cached path is a path of the graph, so its length is
    an upper bound of the current distance, exact when the tree is fresh; no tree is older than
    ``refresh_every`` steps; a vertex a fresh sampled search does not reach keeps its path of
    the anchor's previous tree (edge dropout no longer cuts it off to the default distance for
    ``refresh_every`` steps). The trees are rebuilt exactly by :meth:`refresh_trees`, which runs
    at construction, after ``load_state_dict`` and after :meth:`reset_parameters`. No host
    synchronisation, so ``torch.compile(fullgraph=True)`` works (``direction="anchors"``). A
    bag-of-words training step of ``ProdigeEmbedding(2000, 16)`` (batch 64 x 50, 1 thread, CPU
    time) is 4.4x ``nn.Embedding(2000, 16)``'s before pruning (64.8k candidate edges
    searched) and 3.9-4.0x after (15.0k kept; softplus and Adam still run over the 64.8k lengths).
    Soft graphs, directed graphs (``direction="items"``) and frozen lengths use exact searches
    in training too.

    **Checkpoints.** The graph structure is in the ``state_dict`` (buffers, the pruned CSR and
    the pruning state ``prune_state`` = [training steps counted, edges to keep] included): a
    checkpoint loads into a freshly built ``ProdigeEmbedding`` of the same ``num_embeddings``
    and ``embedding_dim`` whatever its seed or budget (the graph is rebuilt to the
    checkpoint's, a run resumed mid-pruning continues the rounds); other sizes raise a
    ``ValueError`` saying which.

    Args:
        num_embeddings (int): number of items ``n``.
        embedding_dim (int): embedding size ``K`` = number of anchor vertices.
        padding_idx (int, optional): as in ``nn.Embedding``: this item's output is all zeros
            and gets no gradient (its vertex has no edges) (default: ``None``).
        budget (float, optional): stored numbers per item, ``>= 3 + K / n`` (one edge per item) (default:
            ``None``: ``embedding_dim``, or that bound if it is larger).
        sparse (bool, optional): sparse gradients for the edge parameters, as in
            ``nn.Embedding``: every parameter is then sparse, so
            ``SparseAdam(emb.parameters())`` works as it does for ``nn.Embedding``; the default
            distance is then fixed instead of learned (default: ``False``).
        graph (ProdigeGraph, optional): use this graph instead of building one: items
            ``0..n-1``, anchors ``n..n+K-1``, then any hidden vertices (e.g. the hub vertices of
            :meth:`from_pretrained`'s compression; they count in the stored numbers)
            (``budget`` is then ignored) (default: ``None``).
        direction (str, optional): ``"anchors"`` (``K`` searches from the anchors; undirected
            graphs) or ``"items"`` (one search per distinct item in the batch, stopping at the
            anchors; any graph, not ``fullgraph``-compilable) (default: ``"anchors"``, or
            ``"items"`` for a directed ``graph``).
        generator (torch.Generator, optional): random source of the candidate graph
            (default: ``None``: torch's global generator).
        center (bool, optional): centre every dimension on its mean over the items (see
            above; needs ``direction="anchors"``, where the whole table is computed anyway)
            (default: ``None``: ``True`` for ``direction="anchors"``, else ``False``).
        refresh_every (int, optional): in training, each anchor's search tree is recomputed
            every ``refresh_every`` forwards (:math:`\lceil K / \text{refresh\_every} \rceil`
            anchors per forward, so a tree is at most :math:`K / \lceil K / r \rceil` forwards
            old) and reused with the current lengths in between (see **Cost**); ``1`` searches
            every anchor at every step. Planted hierarchy benchmark, budget 4, 7 seeds, test
            accuracy with a linear / LayerNorm head (measured on the random budget-sized graph,
            before the hub vertices): ``4`` 0.810 / 0.662, ``6`` 0.817 / 0.647,
            ``8`` 0.796 / 0.642 (``1`` without the fallback paths of **Cost**: 0.793 / 0.618);
            the bag-of-words step of ``ProdigeEmbedding(2000, 16)`` was 4.5-4.9x
            ``nn.Embedding``'s at ``6``, 8.4-8.9x at ``1`` on that graph (default: ``6``).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 budget: float | None = None, sparse: bool = False, graph: ProdigeGraph | None = None,
                 direction: str | None = None, generator: torch.Generator | None = None,
                 center: bool | None = None, refresh_every: int = 6):
        super().__init__()
        check.positive_int("num_embeddings", num_embeddings)
        check.positive_int("embedding_dim", embedding_dim)
        bool_arg("sparse", sparse)
        n, K = num_embeddings, embedding_dim
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, int):
                raise TypeError(f"'padding_idx' must be an int, got {type(padding_idx).__name__}")
            if not -n <= padding_idx < n:
                raise ValueError(f"'padding_idx' must be within num_embeddings ({n}), got {padding_idx}")
            padding_idx = padding_idx + n if padding_idx < 0 else padding_idx
        if direction is not None:
            check.one_of("direction", direction, ("anchors", "items"))
        if graph is None:
            lo = 3.0 + K / n   # N + 2|E| with one edge per item: the smallest graph that reaches every item
            budget = max(float(K), lo) if budget is None else budget
            check.in_range("budget", budget, lo, math.inf, hi_open=True)
            ei, w0, num_nodes, target = self._candidates(n, K, budget, padding_idx, generator)
            graph = ProdigeGraph(ei, num_nodes, init_weight=w0, learn_default_distance=not sparse, sparse=sparse)
        else:
            target = 0
        if not isinstance(graph, ProdigeGraph):
            raise TypeError(f"'graph' must be a ProdigeGraph, got {type(graph).__name__}")
        elif graph.num_nodes < n + K:
            raise ValueError(f"'graph' must have at least num_embeddings + embedding_dim = {n + K} vertices "
                             f"(items, then anchors, then any hidden vertices), got {graph.num_nodes}")
        direction = direction or ("items" if graph.directed else "anchors")
        if direction == "anchors" and graph.directed:
            raise ValueError("direction='anchors' needs an undirected graph")
        center = direction == "anchors" if center is None else bool_arg("center", center)
        if center and direction != "anchors":
            raise ValueError("center=True needs direction='anchors' (the mean is over every item's distances)")
        self.center = center
        self.num_embeddings, self.embedding_dim, self.padding_idx = n, K, padding_idx
        self.budget, self.direction, self.sparse = budget, direction, sparse
        self.graph = graph
        self.refresh_every = refresh_every
        dev = graph.indptr.device
        self.register_buffer("anchors", torch.arange(n, n + K, device=dev))
        # the cached search trees (training only; rebuilt, never saved: see refresh_trees)
        N = graph.num_nodes
        # [3, K, N]: per anchor the edge into each vertex, its parent, the vertices parents first
        self.register_buffer("_tree_cache", torch.zeros(3, K, N, dtype=torch.int32, device=dev), persistent=False)
        self.register_buffer("_tree_step", torch.zeros((), dtype=torch.long, device=dev), persistent=False)
        # per CSR slot, int32 (half the bytes of predecessor_trees' random lookups): its source
        # vertex and its parameter edge (graph.perm); rebuilt with the trees
        self.register_buffer("_edge_src", torch.zeros(0, dtype=torch.int32, device=dev), persistent=False)
        self.register_buffer("_edge_map", torch.zeros(0, dtype=torch.int32, device=dev), persistent=False)
        # pruning to the budget: [training steps seen, edges to keep (0: no pruning)]; saved
        self.register_buffer("prune_state", torch.tensor([0, target], dtype=torch.long, device=dev))
        self._steps, self._target, self._hook, self._hooked = 0, target, None, None
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self._sync_pruning()
        self.refresh_trees()

    @staticmethod
    def _candidates(n, K, budget, padding_idx, generator):
        """``(edge_index, init_weight, num_nodes, keep)``: the candidate graph and the number of
        edges pruning keeps (``0``: the candidates already fit the budget). With room for hub
        vertices (``3 K`` of them, ids ``n + K ..``; one edge per item and per hub must fit), every
        item is linked to ``min(3 K, 32)`` random hubs and every hub to every anchor; otherwise
        each item is linked to one random anchor (a random permutation, so every anchor is used)
        and to random other items, up to the budget."""
        items = torch.arange(n)
        if padding_idx is not None:
            items = items[items != padding_idx]
        m = items.numel()
        H = HUBS_PER_ANCHOR * K
        keep = _budget_edges(n, K, budget, n, H + 1)  # + the last vertex, which parks pruned edges
        if keep >= m + H and m > 0:
            c = min(H, HUB_LINKS)
            hubs = n + K + torch.rand(m, H, generator=generator).argsort(1)[:, :c]
            hub_ids = n + K + torch.arange(H)
            ei = torch.cat([torch.stack([items.repeat_interleave(c), hubs.reshape(-1)]),
                            torch.stack([hub_ids.repeat_interleave(K), (n + torch.arange(K)).repeat(H)])], 1)
            extra = keep - ei.size(1)
            if extra > 0 and m > 1:  # a large budget: random item-item edges fill it, nothing to prune
                ei = torch.cat([ei, items[torch.randint(0, m, (2, extra), generator=generator)]], 1)
            ei = undirected_edges(ei, n + K + H + 1)
            w0 = 0.5 + torch.rand(ei.size(1), generator=generator)
            return ei, w0, n + K + H + 1, keep if ei.size(1) > keep else 0
        total = _budget_edges(n, K, budget, n)
        anchor = n + torch.randperm(max(m, K), generator=generator)[:m] % K
        parts = [torch.stack([items, anchor])]
        extra = total - m
        if extra > 0 and m > 1:
            src = items[torch.randint(0, m, (extra,), generator=generator)]
            dst = items[torch.randint(0, m, (extra,), generator=generator)]
            parts.append(torch.stack([src, dst]))
        ei = undirected_edges(torch.cat(parts, 1), n + K)
        w0 = 0.5 + torch.rand(ei.size(1), generator=generator)
        return ei, w0, n + K, 0

    @classmethod
    def from_pretrained(cls, embeddings: torch.Tensor, freeze: bool = True, padding_idx: int | None = None, *,
                        embedding_dim: int | None = None, budget: float | None = None, sparse: bool = False,
                        verbose: bool = False, seed: int = 0, **compression_kwargs) -> "ProdigeEmbedding":
        r"""Start from pre-trained vectors ``embeddings`` ``[n, D]`` (paper Sec. 4.3): ``K``
        anchors are placed at k-means centroids of the vectors (:func:`tgrep.ops.kmeans`), and
        the ``n + K`` points are compressed into a graph of ``budget`` numbers per item by
        distance-preserving compression (:class:`tgrep.models.ProdigeCompression`, eq. 5), so
        :math:`\mathrm{emb}(i)_k \approx \lVert x_i - c_k \rVert`.

        Args:
            embeddings (Tensor): ``[n, D]`` vectors.
            freeze (bool, optional): as in ``nn.Embedding.from_pretrained``: the graph is not
                trained further (default: ``True``).
            padding_idx (int, optional): see the class (default: ``None``).
            embedding_dim (int, optional): anchors ``K`` (default: ``None``: ``D``).
            budget (float, optional): stored numbers per item (default: ``None``: ``K``).
            **compression_kwargs: passed to :class:`~tgrep.models.ProdigeCompression`.
        """
        from ..models.prodige import ProdigeCompression
        from ..ops import kmeans

        check.tensor("embeddings", embeddings, dtypes=check.FLOAT_DTYPES, dim=2, finite=True)
        bool_arg("freeze", freeze)
        n, D = embeddings.shape
        K = D if embedding_dim is None else check.positive_int("embedding_dim", embedding_dim)
        if n < 2 or K > n:
            raise ValueError(f"'embeddings' must have at least 2 rows and embedding_dim ({K}) rows, got {n}")
        budget = float(K) if budget is None else check.in_range("budget", budget, 2.0 + (K + 1) / n, math.inf,
                                                                 lo_open=True, hi_open=True)
        x = embeddings.detach().float()
        _, centroids = kmeans(x, K, seed=seed, return_centroids=True)
        pts = torch.cat([x, centroids.to(x)])
        m = ProdigeCompression(target_params_per_instance=budget * n / (n + K), verbose=verbose, seed=seed,
                               **compression_kwargs).fit(pts)
        ei, w = m.graph.prune()
        if padding_idx is not None:
            p = padding_idx + n if padding_idx < 0 else padding_idx
            keep = (ei[0] != p) & (ei[1] != p)
            ei, w = ei[:, keep], w[keep]
        graph = ProdigeGraph(ei.cpu(), m.graph.num_nodes, init_weight=w.cpu().clamp_min(1e-6),  # + hub vertices
                             default_distance=float(m.graph.default_distance), learn_default_distance=True,
                             sparse=sparse)
        emb = cls(n, K, padding_idx, sparse=sparse, graph=graph, center=False)  # emb(i)_k ~ ||x_i - c_k||
        emb.budget = budget
        emb.requires_grad_(not freeze)
        return emb

    @property
    def refresh_every(self) -> int:
        """In training, each anchor's search tree is recomputed every this many forwards."""
        return self._refresh_every

    @refresh_every.setter
    def refresh_every(self, value: int) -> None:
        self._refresh_every = check.positive_int("refresh_every", value)

    def reset_parameters(self):
        self.graph.reset_parameters()  # every candidate edge again
        self.prune_state[0] = 0
        self._steps = 0
        self.refresh_trees()

    # ------------------------------------------------------------------ pruning to the budget
    def _sync_pruning(self) -> None:
        """Read the pruning state (after construction or a load) and hook the length logits."""
        steps, target = (int(v) for v in self.prune_state.tolist())
        self._steps, self._target = steps, target
        w = self.graph.weight_logit
        if self._hooked is None or self._hooked() is not w:  # a new graph: hook its lengths
            if self._hook is not None:
                self._hook.remove()
            self._hook, self._hooked = None, None
            if target > 0 and not self.pruning_done():
                ref = weakref.ref(self)
                self._hook = w.register_post_accumulate_grad_hook(lambda p: _after_backward(ref))
                self._hooked = weakref.ref(w)  # (a Parameter attribute would register itself)

    def __getstate__(self):  # pickling / deepcopy: the hook is re-made on the copy's parameter
        state = dict(super().__getstate__())
        state["_hook"], state["_hooked"] = None, None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._sync_pruning()

    def pruning_done(self) -> bool:
        """Whether the graph is at its budget (always for a given ``graph`` or when the
        candidates fit the budget; else after the last pruning round)."""
        return self._target <= 0 or self._steps >= PRUNE_START + (PRUNE_ROUNDS - 1) * PRUNE_EVERY

    def _after_backward(self) -> None:
        """Counts training steps (backward passes reaching the lengths in training mode) and
        runs the pruning round due at this step."""
        if not self.training or self.pruning_done():
            return
        self._steps += 1
        self.prune_state[0] = self._steps
        r, rem = divmod(self._steps - PRUNE_START, PRUNE_EVERY)
        if r >= 0 and rem == 0:
            self._prune_round(_prune_schedule(self.graph.num_edges, self._target)[r], final=r == PRUNE_ROUNDS - 1)

    @torch.no_grad()
    def _prune_round(self, k: int, final: bool = False) -> None:
        r"""Keep ``k`` of the kept edges: for every item and hub vertex ``v`` the edge ``(u, v)``
        that alone keeps its distances best (least :math:`\sum_k w_{uv} + d(u, a_k) - d(v, a_k)`),
        then the most used others (usage = how many (anchor, item) shortest paths of the eval-mode
        graph run through the edge). The others get presence logit ``PRUNED_LOGIT`` and leave the
        searched CSR (the parameters stay, so the optimizer is unaffected): parked until the
        ``final`` round, which drops their slots."""
        g = self.graph
        alive = g.presence_logit >= 0
        if int(alive.sum()) <= k:
            if final:
                g._set_csr(alive, park=False)
                self.refresh_trees()
            return
        self.refresh_trees()
        n, K, N, M = self.num_embeddings, self.embedding_dim, g.num_nodes, g.num_edges
        dev = g.indptr.device
        item = torch.zeros(N, device=dev)
        item[:n] = 1.0
        if self.padding_idx is not None:
            item[self.padding_idx] = 0.0
        edge, parent, order = self._tree_cache.unbind(0)
        usage = torch.ops.tgrep.tree_path_gradient(item.expand(K, N).contiguous(), edge, parent, order, M + 1)[:M]
        pri = torch.where(alive, usage, torch.full_like(usage, -1.0))
        # first, for each item and hub, the one edge that alone keeps its distances best
        w = torch.cat([g.edge_weight.detach(), g.default_distance.detach().reshape(1)])
        D = torch.ops.tgrep.tree_path_sum(w, edge, parent, order)  # [K, N] eval-mode distances
        inf = torch.full((M,), math.inf, device=dev)
        for side in (0, 1):
            v, u = g.edge_index[side], g.edge_index[1 - side]
            err = torch.where(alive, (w[:M] + D[:, u] - D[:, v]).sum(0), inf)  # >= 0: d(v) <= w + d(u)
            best = torch.full((N,), math.inf, device=dev).scatter_reduce(0, v, err, "amin")
            first = (err == best[v]) & alive & ((v < n) | (v >= n + K))
            pri = torch.where(first, usage + 1e9, pri)
        keep = torch.zeros(M, dtype=torch.bool, device=dev)
        keep[pri.topk(k).indices] = True
        g.presence_logit.masked_fill_(~keep, PRUNED_LOGIT)
        g._set_csr(keep, park=not final)
        g._last = None
        self.refresh_trees()

    def prune_to_budget(self) -> None:
        """Run the remaining pruning rounds now (e.g. for a run shorter than the schedule), so
        :meth:`num_stored_parameters` meets the budget."""
        if self.pruning_done():
            return
        r0 = max(0, -(-(self._steps - PRUNE_START) // PRUNE_EVERY))
        for r, k in enumerate(_prune_schedule(self.graph.num_edges, self._target)[r0:], r0):
            self._prune_round(k, final=r == PRUNE_ROUNDS - 1)
        self._steps = PRUNE_START + (PRUNE_ROUNDS - 1) * PRUNE_EVERY
        self.prune_state[0] = self._steps
        self._sync_pruning()

    @torch.no_grad()
    def refresh_trees(self) -> None:
        """Recompute every anchor's cached search tree now, exactly, in the deterministic
        (eval-mode) graph, and restart the rotation. Runs at construction, after
        :meth:`reset_parameters` and after ``load_state_dict`` (new lengths, perhaps a new graph);
        call it after changing the graph's parameters or structure by hand (stale trees still
        give valid path lengths, refreshed within ``refresh_every`` steps, but a changed
        structure needs it)."""
        g = self.graph
        if g.directed:
            return
        dev = g.indptr.device
        shape = (3, self.embedding_dim, g.num_nodes)
        if self._tree_cache.shape != shape:  # a loaded checkpoint with another number of vertices
            self._tree_cache = torch.zeros(shape, dtype=torch.int32, device=dev)
        self._edge_src = torch.repeat_interleave(torch.arange(g.num_nodes, device=dev, dtype=torch.int32),
                                                 g.indptr.diff())
        self._edge_map = g.perm.to(torch.int32)
        w = g._csr_weight(True).detach()
        _, pred = torch.ops.tgrep.shortest_paths(g.indptr, g.indices, w, self.anchors, None, None,
                                                 seed_tensor(0, dev), True)
        # (edge, parent, order) per anchor: the edge into each vertex as a *parameter* edge id,
        # its parent vertex (itself for the anchor), the vertices parents first; a vertex the
        # search did not reach hangs from the anchor by the virtual edge M (the default distance)
        self._tree_cache.copy_(torch.ops.tgrep.predecessor_trees(pred, self.anchors, self._edge_src, self._edge_map,
                                                                 g.num_edges))
        self._tree_step.zero_()

    @property
    def _tree_edge(self) -> torch.Tensor:
        return self._tree_cache[0]

    @property
    def _tree_parent(self) -> torch.Tensor:
        return self._tree_cache[1]

    def _uses_trees(self) -> bool:
        g = self.graph
        return (self.direction == "anchors" and self.training and torch.is_grad_enabled() and not g.soft
                and not g.directed and g.weight_logit.requires_grad)

    def _tree_table(self) -> torch.Tensor:
        """``[n, K]`` training-mode distances of the items to the anchors: ``ceil(K / refresh_every)``
        anchors (rotating) get a fresh search in a sampled graph, every anchor's distances are the
        current lengths summed along its cached tree (``tgrep::tree_path_table``, differentiable)."""
        g = self.graph
        K, dev = self.embedding_dim, g.indptr.device
        r = min(K, -(-K // self.refresh_every))
        # the small ops first, together (each small op right after a large one is several times
        # slower on CPU: its code is no longer in cache)
        rows = (self._tree_step * r + torch.arange(r, device=dev)) % K
        src = rows + self.num_embeddings  # = self.anchors[rows]
        seed = _seed(None, dev)
        with torch.no_grad():
            self._tree_step.add_(1)
        theta = g.weight_logit
        # edge M: the default distance, the length of an unreached vertex's virtual edge
        default = g.default_distance.to(theta.dtype).reshape(1)
        if g.sparse:  # sparse gradients: through the sparse gather
            theta = gather(theta, torch.arange(g.num_edges, device=dev), True)
        w = F.softplus(theta)  # [M]: one length per parameter edge
        w_csr = w.detach().index_select(0, self._edge_map)  # = g.perm, int32: half the index bytes
        if g.presence_logit.requires_grad:  # as ProdigeGraph.forward: a sampled graph per row
            p = g._csr_prob()
            _, pred = torch.ops.tgrep.shortest_paths(g.indptr, g.indices, w_csr, src, None, p, seed, True)
            g._last = (seed, src, pred, p)
        else:  # frozen presence: the deterministic graph
            w_csr = g._kept_only(w_csr)
            _, pred = torch.ops.tgrep.shortest_paths(g.indptr, g.indices, w_csr, src, None, None, seed, True)
        # a vertex the sampled graph does not reach keeps its path of the anchor's previous tree
        # (a path of the candidate graph), not the default distance; the updated cache is a new
        # tensor, saved for backward as it is (never written in place: two forwards before one
        # backward stay correct)
        trees = torch.ops.tgrep.update_trees(self._tree_cache, rows, pred, src, self._edge_src, self._edge_map,
                                             g.num_edges)
        self._tree_cache = trees
        edge, parent, order = trees.unbind(0)
        # the items' rows only, already as the [n, K] table (no concatenated lengths, no transpose)
        return torch.ops.tgrep.tree_path_table(w, default, edge, parent, order, self.num_embeddings)

    def sparsity(self) -> torch.Tensor:
        """The graph's λ-term (mean edge probability)."""
        return self.graph.sparsity()

    def reinforce(self, loss: torch.Tensor, **kwargs) -> torch.Tensor:
        """The graph's REINFORCE surrogate for the last training forward (see
        :meth:`ProdigeGraph.reinforce`); pass the scalar loss. Only the anchors searched afresh
        in that forward drew new samples, so their estimate is scaled by ``K / (fresh anchors)``:
        the expected gradient of a full set of ``K`` fresh searches."""
        last = self.graph._last
        fresh = self.embedding_dim if last is None else last[1].numel()
        s = self.graph.reinforce(loss, **kwargs)
        return s if fresh >= self.embedding_dim else s * (self.embedding_dim / fresh)

    def num_stored_parameters(self) -> int:
        """Numbers stored by the pruned graph (``N + 2|E_kept|``, anchors included)."""
        return self.graph.num_stored_parameters()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        a = state_dict.get(prefix + "anchors")
        extra = state_dict.get(prefix + "graph._extra_state")
        if isinstance(a, torch.Tensor) and isinstance(extra, dict):
            n_ck = int(a[0]) if a.numel() else int(extra["num_nodes"])  # anchors are n .. n+K-1
            if a.numel() != self.embedding_dim or n_ck != self.num_embeddings:
                raise ValueError(f"ProdigeEmbedding checkpoint is for num_embeddings={n_ck}, "
                                 f"embedding_dim={a.numel()}; this module has num_embeddings={self.num_embeddings}, "
                                 f"embedding_dim={self.embedding_dim}: build it with those sizes")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def table(self) -> torch.Tensor:
        """``[n, K]`` the embedding of every item (one set of searches; in training mode a sample;
        centred when ``center``; the padding row is not zeroed here)."""
        if self._uses_trees():
            t = self._tree_table()
        else:
            t = self.graph(self.anchors, None)[:, :self.num_embeddings].T.contiguous()  # rows gather fast
        if not self.center:
            return t
        with torch.no_grad():
            total, count = t.sum(0), t.size(0)
            if self.padding_idx is not None:
                total, count = total - t[self.padding_idx], count - 1
            mean = total / max(count, 1)
        return t - mean

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        check.tensor("index", index, dtypes=check.INDEX_DTYPES, device=self.anchors.device)
        K = self.embedding_dim
        if self.direction == "anchors":
            out = F.embedding(index, self.table())  # out-of-range ids: IndexError, as nn.Embedding
        else:
            flat = index.reshape(-1)
            if flat.numel() == 0:
                return self.graph.default_distance.new_zeros(*index.shape, K)
            check.index_range("index", flat, self.num_embeddings)
            uniq, inv = torch.unique(flat, return_inverse=True)
            out = self.graph(uniq, self.anchors.expand(uniq.numel(), K))[inv].reshape(*index.shape, K)
        if self.padding_idx is not None:
            out = out.masked_fill((index == self.padding_idx).unsqueeze(-1), 0.0)
        return out

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        s += f", budget={self.budget}, num_edges={self.graph.num_edges}, direction={self.direction!r}"
        s += f", center={self.center}, refresh_every={self.refresh_every}"
        return s + (", sparse=True" if self.sparse else "")
