r"""Distance-preserving compression with a PRODIGE graph (Mazur et al., NeurIPS 2019, Sec. 4.1)."""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..nn.prodige import ProdigeGraph, bool_arg, knn_edges, undirected_edges
from ..ops import kmeans
from ..utils import check, log, progress

BACKBONE_MAX_N = 600  # fit(distances=D): all pairs + backbone test up to this size, else kNN + hubs
BACKBONE_RTOL = 1e-6  # a pair is implied by a two-hop detour at most this much (relative) longer
PRUNE_ROUNDS, ROUND_EPOCHS = 8, 2  # pruning to the budget: geometric rounds, fine-tune epochs between
DENSE_MAX_N = 4096  # fit(x): the [N, N] target distances are precomputed up to this size (64 MB)
HUB_KNN, HUB_FANOUT, TOP_LINKS = 64, 10, 4  # steiner_hubs: hub-hub candidates, hubs per top hub, top links
HUBS_PER_BUDGET = 15  # fit(x) with budget B: N (B - 3) / 15 hub vertices (600 on digits at B = 8)
DEFAULT_KNN = 4  # kNN candidate edges per point when no hub vertices are added (with them: none)
DEFAULT_LANDMARKS = 40  # data-point landmarks when the budget leaves no room for hub vertices


def select_edges(edge_index: torch.Tensor, score: torch.Tensor, num_nodes: int, k: int) -> torch.Tensor:
    """Indices of ``k`` edges: a maximum-``score`` spanning forest (Kruskal) first, so the kept
    graph is as connected as the candidates allow, then the highest-scoring other edges."""
    order = torch.argsort(score.detach(), descending=True).tolist()
    ei = edge_index.tolist()
    parent = list(range(num_nodes))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    tree, rest = [], []
    for e in order:
        ra, rb = find(ei[0][e]), find(ei[1][e])
        if ra != rb and len(tree) < k:
            parent[ra] = rb
            tree.append(e)
        else:
            rest.append(e)
    return torch.tensor(tree + rest[:max(0, k - len(tree))], dtype=torch.long, device=edge_index.device)


def farthest_points(dist_to, n: int, count: int, device) -> torch.Tensor:
    """``count`` landmark ids by farthest-point sampling from vertex 0; ``dist_to(h)`` gives the
    ``[n]`` distances of every point to point ``h``."""
    idx = [0]
    dmin = dist_to(0)
    for _ in range(min(count, n) - 1):
        h = int(dmin.argmax())
        idx.append(h)
        dmin = torch.minimum(dmin, dist_to(h))
    return torch.tensor(idx, device=device)


def hub_edges(dist_to, n: int, hubs: int, links: int, device) -> torch.Tensor:
    """Candidate edges through ``hubs`` landmarks (farthest-point sampled): every pair of hubs,
    and every point to its ``links`` nearest hubs. Such "traffic hubs" are what the paper
    observes in trained graphs (Sec. 4.1, Fig. 1); offering them lets sparse graphs route long
    distances in few hops."""
    h = farthest_points(dist_to, n, hubs, device)
    dh = torch.stack([dist_to(int(i)) for i in h], 1)  # [n, hubs]
    near = dh.topk(min(links, h.numel()), dim=1, largest=False).indices
    parts = [torch.stack([torch.arange(n, device=device).repeat_interleave(near.size(1)), h[near.reshape(-1)]])]
    if h.numel() > 1:
        parts.append(torch.combinations(h, 2).T)
    return torch.cat(parts, 1)


def steiner_hubs(x: torch.Tensor, hubs: int, links: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Extra ("Steiner") vertices for :meth:`ProdigeCompression.fit` on vectors ``x`` ``[N, F]``:
    ``hubs`` k-means centroids of the points (vertex ids ``N .. N + H - 1``) and, when there are
    more than ``HUB_KNN + 1`` of them, ``max(2, H // HUB_FANOUT)`` centroids of the hubs (a top
    level, the ids after). Candidate edges: each point to its ``links`` nearest hubs; each hub to
    its ``HUB_KNN`` nearest hubs (all hub pairs when ``H <= HUB_KNN + 1``) and its ``TOP_LINKS``
    nearest top hubs; every pair of top hubs. Returns ``(positions [V, F], edge_index [2, M])``
    (``V`` extra vertices). The vertices are not data points, so no loss term pins them: the
    lengths to and between them are free, and a shortest path between far points runs
    point -> hub -> ... -> hub -> point over them."""
    n, device = x.size(0), x.device
    _, hub = kmeans(x, hubs, seed=seed, return_centroids=True)
    hub = hub.to(x)
    near = torch.cdist(x, hub).topk(min(links, hubs), dim=1, largest=False).indices
    parts = [torch.stack([torch.arange(n, device=device).repeat_interleave(near.size(1)), n + near.reshape(-1)])]
    if hubs - 1 <= HUB_KNN:
        if hubs > 1:
            parts.append(n + torch.combinations(torch.arange(hubs, device=device), 2).T)
        return hub, torch.cat(parts, 1)
    parts.append(n + knn_edges(hub, HUB_KNN))
    top_n = max(2, hubs // HUB_FANOUT)
    _, top = kmeans(hub, top_n, seed=seed, return_centroids=True)
    top = top.to(x)
    up = torch.cdist(hub, top).topk(min(TOP_LINKS, top_n), dim=1, largest=False).indices
    parts.append(torch.stack([n + torch.arange(hubs, device=device).repeat_interleave(up.size(1)),
                              n + hubs + up.reshape(-1)]))
    parts.append(n + hubs + torch.combinations(torch.arange(top_n, device=device), 2).T)
    return torch.cat([hub, top]), torch.cat(parts, 1)


def num_extra_vertices(hubs: int) -> int:
    """Vertices :func:`steiner_hubs` adds for ``hubs`` hubs (the hubs and their top level)."""
    return hubs + (max(2, hubs // HUB_FANOUT) if hubs - 1 > HUB_KNN else 0)


def backbone_pairs(D: torch.Tensor, rtol: float = BACKBONE_RTOL, block: int = 64) -> torch.Tensor:
    r"""``[2, K]`` pairs ``u < v`` *not* implied by a two-hop detour:
    :math:`\min_{w \ne u, v} D_{uw} + D_{wv} > (1 + \text{rtol}) D_{uv}`. For a shortest-path
    metric these are exactly the edges every graph realising ``D`` needs (the others are
    shortest paths through a third vertex), so the candidate set is the compact "metric
    backbone"; for other distances the pairs with slack. ``O(N^3 / block)`` in blocks."""
    n = D.size(0)
    keep = torch.zeros(n, n, dtype=torch.bool, device=D.device)
    eye = torch.eye(n, dtype=torch.bool, device=D.device)
    for s in range(0, n, block):
        rows = torch.arange(s, min(s + block, n), device=D.device)
        via = D[rows][:, :, None] + D[None, :, :]  # [b, w, v]: u -> w -> v
        via = via.masked_fill(eye[rows][:, :, None], math.inf)  # w == u
        via = via.masked_fill(eye[None, :, :], math.inf)  # w == v
        keep[rows] = via.amin(1) > (1 + rtol) * D[rows]
    iu = torch.triu_indices(n, n, 1, device=D.device)
    return iu[:, keep[iu[0], iu[1]]]


class ProdigeCompression(nn.Module):
    r"""Learn a sparse weighted graph whose shortest-path distances reproduce given distances
    (PRODIGE eq. 5, with the sparsity penalty of eq. 2):

    .. math::
        \min_\theta\ E_{G \sim p_\theta}\Big[\frac{1}{|P|}\sum_{(i,j) \in P}
        \big(D_{ij} - d_G(v_i, v_j)\big)^2\Big] + \lambda \frac{1}{|E|}\sum_e p_\theta(e).

    Shaped like PyG's :class:`~torch_geometric.nn.models.Node2Vec`: an ``nn.Module`` whose
    :meth:`fit` trains it and returns ``self``; :meth:`forward` gives distances between vertex
    pairs, :meth:`pairwise_distances` all of them, and the ``state_dict`` (the graph's structure
    and parameters) loads into a fresh ``ProdigeCompression()`` in another process.

    **The algorithm** (no recipe to pass; the budget is the knob):

    1. *Candidate edges.* On vectors: "traffic hubs" that are *extra vertices*, not data points
       (:func:`steiner_hubs`): ``hubs`` k-means centroids, each point linked to its
       ``hub_links`` nearest, each hub to its 64 nearest hubs, and above them a top level of
       ``hubs / 10`` centroids of the hubs (all pairs; each hub to its 4 nearest). Sec. 4.1
       observes such hubs in trained graphs; as extra vertices no loss term pins them, so the
       lengths to and between them are free. They are stored, so they count: a graph costs
       ``N + V + 2|E|`` numbers (``V`` hub vertices). By default ``V ≈ N (B - 3) / 15`` with a
       budget ``B`` (``sqrt(N)`` without), and none when ``B <= 3`` leaves no room for them
       (then 40 farthest-point data points serve as hubs, with each point's 4 nearest neighbours). On a distance matrix of up to 600
       points: all pairs minus those implied by a two-hop detour (:func:`backbone_pairs`),
       which for a shortest-path metric is exactly the set of edges any realising graph needs;
       larger matrices use kNN + 40 farthest-point data-point hubs from ``D``.
       Lengths start at the target distances times the least-squares scale of the resulting
       graph distances (:meth:`_length_scale`; every shortest path scales with the lengths, so
       this is the best uniform start: about 0.5 on vectors, where detours through hubs
       overestimate, exactly 1 on a metric backbone).
    2. *Training.* ``epochs`` epochs of Adam over batches of ``batch_size`` sources and
       ``targets_per_row`` random targets (all when fewer): path gradients for the lengths;
       with ``sparsity`` :math:`\lambda > 0` also REINFORCE for the presence probabilities.
    3. *Sparsification.* With ``target_params_per_instance`` the graph is brought to exactly
       ``floor((budget N - N - V) / 2)`` edges in 8 geometric rounds that keep the edges carrying
       the most shortest paths times their length (a maximum-score spanning forest first), fine-tuning the lengths
       for 2 epochs after each round at the full learning rate. Without a budget the edges
       that no shortest path of an epoch uses, neither at the initial nor at the trained
       lengths, are dropped.
    4. *Fine-tune.* ``finetune_epochs`` epochs on the deterministic graph, learning rate
       decaying linearly to 0 (the Adam state carries over from the pruning rounds). The loss
       at a constant rate stalls at a noise floor; the decay is what brings it down.

    On scikit-learn's digits (1,797 points) the defaults reach a distance MSE 5.3x below
    metric MDS-4 at 4 numbers per point (0.0055 vs 0.029) and 2.02x below MDS-8 at 8
    (0.0032 vs 0.0064; ``benchmarks/README.md``).

    Args:
        target_params_per_instance (float, optional): memory budget in stored numbers per point
            (``N + V + 2|E|`` over ``N``, ``V`` hub vertices), ``> 1`` and leaving at least one edge (default: ``None``:
            no budget).
        sparsity (float, optional): :math:`\lambda` of eq. 2, ``>= 0``; ``> 0`` turns on
            REINFORCE for the edge probabilities (default: ``0.0``).
        epochs (int, optional): training epochs; each visits every point as a source once
            (default: ``6``).
        finetune_epochs (int, optional): final epochs on the deterministic graph (default: ``20``).
        lr (float, optional): Adam learning rate (default: ``0.045``).
        batch_size (int, optional): sources per step (default: ``32``).
        targets_per_row (int, optional): targets per source, all when ``>= N`` (default: ``2048``).
        knn (int, optional): nearest-neighbour candidate edges per point (:func:`tgrep.ops.knn`)
            (default: ``None``: none when hub vertices are added, else ``4``).
        hubs (int, optional): hub vertices for :meth:`fit` on vectors (:func:`steiner_hubs`;
            data-point landmarks for a large distance matrix) (default: ``None``:
            ``N (B - 3) / 15`` with a budget ``B``, ``sqrt(N)`` without; 40 landmarks).
        hub_links (int, optional): hubs linked to each point (default: ``4``).
        verbose (bool, optional): progress bars (default: ``True``).
        seed (int, optional): seed for hubs' order, batches and samples (default: ``None``).

    Attributes (after :meth:`fit`): ``graph`` (:class:`~tgrep.nn.ProdigeGraph`), ``history_``
    (one dict per epoch of every phase: ``epoch, phase, loss, params_per_instance, lam,
    seconds``), ``num_points`` (``N``).
    """

    def __init__(self, target_params_per_instance: float | None = None, *, sparsity: float = 0.0,
                 epochs: int = 6, finetune_epochs: int = 20, lr: float = 0.045, batch_size: int = 32,
                 targets_per_row: int = 2048, knn: int | None = None, hubs: int | None = None, hub_links: int = 4,
                 verbose: bool = True, seed: int | None = None):
        super().__init__()
        if target_params_per_instance is not None:
            check.in_range("target_params_per_instance", target_params_per_instance, 1.0, math.inf,
                           lo_open=True, hi_open=True)
        check.in_range("sparsity", sparsity, 0.0, math.inf, hi_open=True)
        check.positive_int("epochs", epochs, allow_zero=True)
        check.positive_int("finetune_epochs", finetune_epochs, allow_zero=True)
        check.in_range("lr", lr, 0.0, math.inf, lo_open=True, hi_open=True)
        check.positive_int("batch_size", batch_size)
        check.positive_int("targets_per_row", targets_per_row)
        if knn is not None:
            check.positive_int("knn", knn, allow_zero=True)
        if hubs is not None:
            check.positive_int("hubs", hubs, allow_zero=True)
        check.positive_int("hub_links", hub_links)
        bool_arg("verbose", verbose)
        if seed is not None:
            check.seed("seed", seed)
        if knn == 0 and hubs == 0:
            raise ValueError("'knn' and 'hubs' are both 0: no candidate edges for fit(x)")
        self.target_params_per_instance = target_params_per_instance
        self.sparsity, self.epochs, self.finetune_epochs, self.lr = float(sparsity), epochs, finetune_epochs, lr
        self.batch_size, self.targets_per_row = batch_size, targets_per_row
        self.knn, self.hubs, self.hub_links = knn, hubs, hub_links
        self.verbose, self.seed = verbose, seed
        self.graph: ProdigeGraph | None = None
        self.num_points = 0
        self.history_: list[dict] = []
        self._x = self._D = None

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict:
        return {"num_points": self.num_points, "history": self.history_}

    def set_extra_state(self, state: dict) -> None:
        self.num_points, self.history_ = int(state["num_points"]), list(state["history"])

    def _load_from_state_dict(self, state_dict, prefix, *args):
        if self.graph is None and prefix + "graph.edge_index" in state_dict:  # a fresh module: make room
            self.graph = ProdigeGraph(torch.tensor([[0], [1]]), 2)  # rebuilt by its own load
        super()._load_from_state_dict(state_dict, prefix, *args)

    # ------------------------------------------------------------------ fit
    def fit(self, x: torch.Tensor | None = None, *, distances: torch.Tensor | None = None) -> "ProdigeCompression":
        """Fit to the Euclidean distances of the rows of ``x`` ``[N, F]``, or to a symmetric
        non-negative ``distances`` ``[N, N]``; returns ``self``. Trains on the data's device."""
        if (x is None) == (distances is None):
            raise ValueError("pass exactly one of 'x' or 'distances'")
        gen = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        if self.seed is not None:
            torch.manual_seed(self.seed)
        if x is not None:
            check.tensor("x", x, dtypes=check.FLOAT_DTYPES, dim=2, finite=True)
            n = x.size(0)
            if n < 2:
                raise ValueError(f"'x' must have at least 2 rows, got {n}")
            x = x.detach().float()
            self._x, self._D, device = x, None, x.device
            if n <= DENSE_MAX_N:  # targets by lookup instead of per-batch vector differences
                self._D = torch.cat([torch.cdist(x[s:s + 512], x, compute_mode="donot_use_mm_for_euclid_dist")
                                     for s in range(0, n, 512)])
            H = self._num_hubs(n)
            k = self.knn if self.knn is not None else (0 if H else DEFAULT_KNN)
            parts = [knn_edges(x, k)] if k else []
            pts = x
            if H:
                hub_pos, hub_ei = steiner_hubs(x, H, self.hub_links, 0 if self.seed is None else self.seed)
                pts = torch.cat([x, hub_pos])
                parts.append(hub_ei)
            elif self.hubs != 0:  # no room for extra vertices (budget <= 3): landmark data points as hubs
                parts.append(hub_edges(lambda h: (x - x[h]).norm(dim=1), n, self.hubs or DEFAULT_LANDMARKS,
                                       self.hub_links, device))
            ei = undirected_edges(torch.cat(parts, 1), pts.size(0))
            w = (pts[ei[0]] - pts[ei[1]]).norm(dim=1)
            nv = pts.size(0)
        else:
            check.tensor("distances", distances, dtypes=check.FLOAT_DTYPES, dim=2, finite=True)
            n = distances.size(0)
            if distances.size(1) != n or n < 2:
                raise ValueError(f"'distances' must be square [N, N] with N >= 2, got {tuple(distances.shape)}")
            if bool((distances < 0).any()):
                raise ValueError(f"'distances' must be non-negative, got min {float(distances.min())}")
            if not torch.allclose(distances, distances.T, atol=1e-6 * float(distances.abs().max() + 1)):
                raise ValueError("'distances' must be symmetric")
            D = distances.detach().float()
            self._x, self._D, device = None, D, D.device
            if n <= BACKBONE_MAX_N:
                ei = backbone_pairs(D)
            else:
                k = self.knn if self.knn is not None else DEFAULT_KNN
                parts = [knn_edges_from_distances(D, k)] if k else []
                if self.hubs != 0:
                    parts.append(hub_edges(lambda h: D[h], n, self.hubs or DEFAULT_LANDMARKS, self.hub_links, device))
                ei = undirected_edges(torch.cat(parts, 1), n)
            w = D[ei[0], ei[1]]
            nv = n
        budget = self.target_params_per_instance
        if budget is not None and math.floor((budget - 1) * n / 2) < 1:
            raise ValueError(f"'target_params_per_instance' = {budget} leaves no edge for {n} points: "
                             f"(budget - 1) * N / 2 must be >= 1, i.e. budget >= {1 + 2 / n:.4g}")
        scale = float(w.mean()) if w.numel() and float(w.mean()) > 0 else 1.0
        dmax = float(self._targets(torch.arange(min(n, 512), device=device),
                                   torch.arange(n, device=device).expand(min(n, 512), n)).max())
        w = w.clamp_min(1e-3 * scale)
        self.num_points = n
        for rescaled in (False, True):  # the second graph starts at the least-squares scale of the first's
            self.graph = ProdigeGraph(ei, nv, init_weight=w, default_distance=max(2 * dmax, 1e-6)).to(device)
            if not rescaled:
                w = w * self._length_scale(gen)
        self.history_ = []
        self._train(gen)
        self._x = self._D = None
        return self

    def _num_hubs(self, n: int) -> int:
        """Hub vertices for ``fit(x)`` on ``n`` points: ``hubs``, or by default ``N (B - 3) / 15``
        with a budget ``B`` (``sqrt(N)`` without), at most as many as leave the budget room for a
        spanning tree over all ``N + V`` vertices (``3 V <= (B - 3) N + 2``)."""
        B = self.target_params_per_instance
        if self.hubs is not None:
            H = self.hubs
        else:
            H = round(n * (B - 3) / HUBS_PER_BUDGET) if B is not None else round(math.sqrt(n))
        H = max(0, min(H, n))
        if B is not None:
            room = max(0, math.floor(((B - 3) * n + 2) / 3))
            H = min(H, room)
            while H and num_extra_vertices(H) > room:
                H -= 1
        return H

    @torch.no_grad()
    def _length_scale(self, gen, rows: int = 256) -> float:
        r"""The factor :math:`s = \langle d_G, D\rangle / \langle d_G, d_G\rangle` minimising
        :math:`\sum (D_{ij} - s\, d_G(i, j))^2` over ``rows`` random sources' targets: scaling every
        length by ``s`` scales every shortest path by ``s`` (the paths do not change), so this is
        the best uniform start. Candidate lengths at the target distances overestimate far pairs
        (a detour through hubs is longer than the straight line), so ``s < 1`` on vectors; on an
        exact metric backbone ``s = 1``."""
        g = self.graph.eval()
        n, device = self.num_points, g.indptr.device
        src = torch.randperm(n, generator=gen)[:rows].to(device)
        T = min(self.targets_per_row, n)
        dst = torch.randint(0, n, (src.numel(), T), generator=gen).to(device)
        d, t = g(src, dst).double(), self._targets(src, dst).double()
        ok = d < float(g.default_distance)  # reachable pairs only
        den = float((d[ok] ** 2).sum())
        return min(max(float((d[ok] * t[ok]).sum()) / den, 1e-3), 1e3) if den > 0 else 1.0

    def _targets(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        if self._D is not None:
            return self._D[src[:, None], dst]
        x = self._x
        return (x[src][:, None, :] - x[dst]).norm(dim=-1)

    def _batches(self, gen):
        n, device = self.num_points, self.graph.indptr.device
        order = torch.randperm(n, generator=gen).to(device)
        T = self.targets_per_row
        for start in range(0, n, self.batch_size):
            src = order[start:start + self.batch_size]
            if T >= n:
                dst = torch.arange(n, device=device).expand(src.numel(), n)
            else:
                dst = torch.randint(0, n, (src.numel(), T), generator=gen).to(device)
            yield src, dst

    def _seed(self, gen) -> int:
        return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))

    def _record(self, phase, loss, t0):
        g, n = self.graph, self.num_points
        self.history_.append({"epoch": len(self.history_) + 1, "phase": phase, "loss": loss,
                              "params_per_instance": g.num_stored_parameters() / n, "lam": self.sparsity,
                              "seconds": time.perf_counter() - t0})

    def _train(self, gen):
        g, n = self.graph, self.num_points
        t0 = time.perf_counter()
        lam = self.sparsity
        budget = self.target_params_per_instance
        used0 = self._usage(gen) > 0 if budget is None else None  # shortest paths of the initial lengths
        opt = torch.optim.Adam(g.parameters() if lam else [g.weight_logit], lr=self.lr)
        g.train(lam > 0)  # without lambda the graph is deterministic: sampling only adds noise
        bar = progress(range(self.epochs), verbose=self.verbose, desc="PRODIGE", leave=True)
        for _ in bar:
            total, rows = 0.0, 0
            for src, dst in self._batches(gen):
                d = g(src, dst, seed=self._seed(gen))
                per_row = ((d - self._targets(src, dst)) ** 2).mean(1)
                loss = per_row.mean()
                if lam:
                    loss = loss + lam * g.sparsity() + g.reinforce(per_row)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(per_row.detach().sum())
                rows += src.numel()
            self._record("train", total / rows, t0)
            bar.set_postfix(loss=f"{total / rows:.4g}", params=f"{self.history_[-1]['params_per_instance']:.2f}")
        # pruning and fine-tune share one Adam; the learning rate decays linearly to 0 over the fine-tune
        rounds = 0
        if budget is not None:
            keep = int(math.floor((budget * n - g.num_nodes) / 2))
            cur = torch.nonzero(g.presence_logit.detach() >= 0).squeeze(1)
            rounds = PRUNE_ROUNDS if cur.numel() > keep else 0
        per_epoch = math.ceil(n / self.batch_size)
        pre = max(rounds - 1, 0) * ROUND_EPOCHS * per_epoch  # steps between pruning rounds: full rate
        total = max(1, self.finetune_epochs * per_epoch)
        opt = torch.optim.Adam([g.weight_logit], lr=self.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, max(0.0, 1 - (i - pre) / total)))
        if budget is not None:
            if rounds:
                start = cur.numel()
                for r in range(rounds):
                    k = max(keep, int(round(keep * (start / keep) ** ((rounds - 1 - r) / rounds))))
                    self._keep_only(cur[select_edges(g.edge_index[:, cur], self._prune_score(gen)[cur], g.num_nodes, k)])
                    g = self._compact(opt)
                    cur = torch.arange(g.num_edges, device=g.edge_index.device)
                    if r < rounds - 1:
                        self._finetune(gen, t0, ROUND_EPOCHS, "prune", opt, sched)
            log(f"PRODIGE: kept {cur.numel()} edges by shortest-path usage ({budget} params/instance)", self.verbose)
        else:  # drop the edges no shortest path uses (of an epoch, at the initial and trained lengths)
            used = used0 | (self._usage(gen) > 0)
            cur = torch.nonzero((g.presence_logit.detach() >= 0) & used).squeeze(1)
            if cur.numel():
                self._keep_only(cur)
                self._compact(opt)
        self._finetune(gen, t0, self.finetune_epochs, "finetune", opt, sched)
        g.eval()

    @torch.no_grad()
    def _compact(self, opt) -> ProdigeGraph:
        """Rebuild the graph with only its kept edges (``p >= 0.5``), so later searches do not
        scan the dropped ones; the parameters, the Adam state and the distances carry over."""
        g = self.graph
        keep = g.presence_logit.detach() >= 0
        if bool(keep.all()):
            return g
        new = ProdigeGraph(g.edge_index[:, keep], g.num_nodes, init_weight=g.init_weight[keep],
                           default_distance=float(g.default_distance)).to(g.edge_index.device)
        new.weight_logit.copy_(g.weight_logit[keep])
        new.presence_logit.copy_(g.presence_logit[keep])
        old = g.weight_logit
        state = opt.state.pop(old, {})
        opt.param_groups[0]["params"] = [new.weight_logit]
        opt.state[new.weight_logit] = {k: v[keep] if v.dim() and v.size(0) == keep.numel() else v
                                       for k, v in state.items()}
        new.train(g.training)
        self.graph = new
        return new

    @torch.no_grad()
    def _keep_only(self, keep: torch.Tensor) -> None:
        g = self.graph
        drop = torch.ones(g.num_edges, dtype=torch.bool, device=keep.device)
        drop[keep] = False
        g.presence_logit[drop] = torch.clamp(g.presence_logit[drop], max=-1.0)
        g.presence_logit[keep] = torch.clamp(g.presence_logit[keep], min=1e-3)

    def _prune_score(self, gen) -> torch.Tensor:
        """Pruning score of each edge: its shortest-path usage times its length (a long edge
        on many paths forces long detours when removed)."""
        return self._usage(gen) * self.graph.edge_weight.detach()

    def _usage(self, gen) -> torch.Tensor:
        """How many shortest paths of one epoch of batches in the deterministic graph run
        through each edge (the path gradient of the summed distances)."""
        g = self.graph
        g.eval()
        w = g.weight_logit
        usage = torch.zeros(g.num_edges, device=w.device)
        for src, dst in self._batches(gen):
            with torch.enable_grad():
                (gw,) = torch.autograd.grad(g(src, dst).sum(), w)
            usage += gw / torch.sigmoid(w.detach())  # d softplus / d logit = sigmoid
        return usage

    def _finetune(self, gen, t0, epochs, phase, opt, sched):
        if not epochs:
            return
        g = self.graph
        g.eval()
        bar = progress(range(epochs), verbose=self.verbose, desc=f"PRODIGE {phase}", leave=phase == "finetune")
        for _ in bar:
            total, rows = 0.0, 0
            for src, dst in self._batches(gen):
                per_row = ((g(src, dst) - self._targets(src, dst)) ** 2).mean(1)
                opt.zero_grad()
                per_row.mean().backward()
                opt.step()
                sched.step()
                total += float(per_row.detach().sum())
                rows += src.numel()
            self._record(phase, total / rows, t0)
            bar.set_postfix(loss=f"{total / rows:.4g}")

    # ------------------------------------------------------------------ results
    def _fitted(self) -> ProdigeGraph:
        if self.graph is None:
            raise RuntimeError("call fit() (or load_state_dict) first")
        return self.graph

    def forward(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Distances ``[B]`` between points ``i`` ``[B]`` and ``j`` ``[B]`` in the deterministic
        graph (``j`` may also be ``[B, T]``)."""
        g = self._fitted()
        return g.eval()(i, j)

    @torch.no_grad()
    def pairwise_distances(self, batch_size: int = 256) -> torch.Tensor:
        """``[N, N]`` distances in the deterministic graph (edges with ``p >= 0.5``)."""
        check.positive_int("batch_size", batch_size)
        g = self._fitted().eval()
        src = torch.arange(g.num_nodes, device=g.indptr.device)
        src = src[:self.num_points]
        return torch.cat([g(src[s:s + batch_size])[:, :self.num_points] for s in range(0, src.numel(), batch_size)])

    def parameters_per_instance(self) -> float:
        """``(N + V + 2|E_kept|) / N``: stored numbers per data point, ``V`` hub vertices included
        (see :meth:`ProdigeGraph.num_stored_parameters`)."""
        g = self._fitted()
        return g.num_stored_parameters() / self.num_points

    def __repr__(self) -> str:
        return (f"ProdigeCompression(target_params_per_instance={self.target_params_per_instance}, "
                f"sparsity={self.sparsity:g}, epochs={self.epochs}, finetune_epochs={self.finetune_epochs}, "
                f"lr={self.lr:g}, batch_size={self.batch_size}, targets_per_row={self.targets_per_row}, "
                f"knn={self.knn}, hubs={self.hubs}, hub_links={self.hub_links}, seed={self.seed})")


def knn_edges_from_distances(D: torch.Tensor, k: int) -> torch.Tensor:
    """``[2, N k]`` edges from each row of a distance matrix to its ``k`` nearest other rows."""
    n = D.size(0)
    k = min(k, n - 1)
    idx = D.masked_fill(torch.eye(n, dtype=torch.bool, device=D.device), math.inf).topk(k, 1, largest=False).indices
    return torch.stack([torch.arange(n, device=D.device).repeat_interleave(k), idx.reshape(-1)])
