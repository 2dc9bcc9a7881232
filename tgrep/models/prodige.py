r"""Distance-preserving compression with a PRODIGE graph (Mazur et al., NeurIPS 2019, Sec. 4.1)."""
from __future__ import annotations

import math
import time

import torch

from ..nn.prodige import ProdigeGraph, undirected_edges


def coalesce_edges(ei, n, directed):
    return undirected_edges(ei, n)
from ..utils import check, log, progress


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


def hub_edges(x: torch.Tensor, hubs: int, links: int) -> torch.Tensor:
    """Candidate edges through ``hubs`` landmark rows of ``x`` chosen by farthest-point sampling
    (from row 0): every pair of hubs, and every row to its ``links`` nearest hubs. Such
    "traffic hubs" are what the paper observes in trained graphs (Sec. 4.1, Fig. 1); offering
    them as candidates lets sparse graphs route long distances in few hops."""
    n = x.size(0)
    hubs = min(hubs, n)
    idx = [0]
    dmin = (x - x[0]).norm(dim=1)
    for _ in range(hubs - 1):
        h = int(dmin.argmax())
        idx.append(h)
        dmin = torch.minimum(dmin, (x - x[h]).norm(dim=1))
    h = torch.tensor(idx, device=x.device)
    near = torch.cdist(x, x[h]).topk(min(links, hubs), dim=1, largest=False).indices
    parts = [torch.stack([torch.arange(n, device=x.device).repeat_interleave(near.size(1)), h[near.reshape(-1)]])]
    if hubs > 1:
        parts.append(torch.combinations(h, 2).T)
    ei = torch.cat(parts, 1)
    return ei[:, ei[0] != ei[1]]


class ProdigeCompression:
    r"""Learn a sparse weighted graph whose shortest-path distances reproduce given distances
    (eq. 5), with the sparsity penalty of eq. 2:

    .. math::
        \min_\theta\ E_{G \sim p_\theta}\Big[\frac{1}{|P|}\sum_{(i,j) \in P}
        \big(D_{ij} - d_G(v_i, v_j)\big)^2\Big] + \lambda \frac{1}{|E|}\sum_e p_\theta(e),

    where each step samples ``batch_size`` source vertices and ``targets_per_row`` targets per
    source (all vertices when ``N`` is smaller). Lengths get path gradients, presence logits
    REINFORCE (:meth:`ProdigeGraph.reinforce`, leave-one-out baseline); Adam optimizes both.

    With ``target_params_per_instance`` the coefficient :math:`\lambda` is tuned during training:
    every step :math:`\log\lambda` moves by ``lambda_rate`` times the (clipped) log-ratio of the
    expected size :math:`1 + 2\sum_e p_e / N` to a goal that decreases geometrically from the
    initial size to the budget over the first ``anneal`` fraction of the steps, which drives the
    graph gradually towards few, nearly deterministic edges. At the end the deterministic graph
    is set to exactly ``floor((budget - 1) N / 2)`` edges: a maximum-score spanning forest first,
    then the highest-scoring other edges, where the score is the presence probability
    (``select="probability"``) or the number of shortest paths through the edge
    (``select="usage"``, optionally in ``prune_rounds`` geometric steps with short fine-tunes in
    between). Finally the lengths of the deterministic graph are fine-tuned for
    ``finetune_epochs`` epochs (path gradients only).

    On scikit-learn's digits at 4 numbers per item, ``hubs=40, knn=8, random_edges=0,
    sparsity=0.0, select="usage", prune_rounds=8, lr_decay=True`` reaches 3.2x lower distance
    MSE than metric MDS-4, where the λ controller with ``select="probability"`` stays above MDS
    (``benchmarks/README.md``).

    Args:
        knn (int, optional): nearest-neighbour candidate edges per point for :meth:`fit` on
            vectors (default: ``32``).
        random_edges (int, optional): random candidate edges per point (default: ``32``).
        sparsity (float, optional): :math:`\lambda`; the starting value when a budget is given
            (default: ``None``: ``0`` without a budget, ``|E| / 100`` with one).
        target_params_per_instance (float, optional): memory budget, numbers per point
            (``> 1``) (default: ``None``).
        epochs (int, optional): training epochs (each visits every vertex as a source once)
            (default: ``100``).
        lr (float, optional): Adam learning rate (default: ``0.05``).
        batch_size (int, optional): sources per step (default: ``256``).
        targets_per_row (int, optional): targets per source (default: ``64``).
        init_prob (float, optional): initial edge probability (default: ``0.9``).
        init_weight (str or float, optional): ``"distance"`` (each candidate edge starts at its
            target distance), ``"random"`` (``U(0, 1)`` times the mean distance) or a number
            (default: ``"distance"``).
        default_distance (float, optional): distance of unreachable pairs (default: ``None``:
            twice the largest target distance seen).
        finetune_epochs (int, optional): epochs of length-only training on the deterministic
            graph at the end (default: ``10``).
        lambda_rate (float, optional): largest per-step change of :math:`\log\lambda` made by the
            budget controller (default: ``0.05``).
        anneal (float, optional): fraction of the training steps over which the expected size is
            brought down geometrically from its initial value to the budget, so the graph thins
            gradually and REINFORCE can keep the edges that matter (default: ``0.7``).
        hubs (int, optional): for :meth:`fit` on vectors, also offer candidate edges through
            this many landmark rows (farthest-point sampled): all hub pairs and each row to its
            ``hub_links`` nearest hubs (see :func:`hub_edges`) (default: ``0``: none).
        hub_links (int, optional): hubs linked to each row when ``hubs > 0`` (default: ``4``).
        select (str, optional): which edges form the budgeted graph at the end: ``"probability"``
            (the most probable) or ``"usage"`` (those on the most sampled shortest paths over one
            more epoch of batches); a maximum-score spanning forest is kept first either way
            (default: ``"probability"``).
        prune_rounds (int, optional): with ``select="usage"``, reach the budget in this many
            geometric steps; after the first, usage is counted on the current deterministic graph,
            whose lengths are fine-tuned for ``round_epochs`` epochs between steps (default: ``1``).
        round_epochs (int, optional): fine-tune epochs between pruning rounds (default: ``2``).
        lr_decay (bool, optional): decay the learning rate linearly to ``0`` over the final
            fine-tune (default: ``False``).
        device (str or torch.device, optional): where to train (default: the data's device).
        verbose (bool, optional): progress bar with loss and parameters per instance
            (default: ``True``).
        seed (int, optional): seed for candidate edges, batches and samples (default: ``None``).

    Attributes (after :meth:`fit`): ``graph`` (:class:`ProdigeGraph`), ``history_`` (one dict
    per epoch: ``epoch, loss, params_per_instance, lam, seconds``), ``lam_`` (final λ).
    """

    def __init__(self, *, knn: int = 32, random_edges: int = 32, sparsity: float | None = None,
                 target_params_per_instance: float | None = None, epochs: int = 100, lr: float = 0.05,
                 batch_size: int = 256, targets_per_row: int = 64, init_prob: float = 0.9,
                 init_weight: str | float = "distance", default_distance: float | None = None,
                 finetune_epochs: int = 10, lambda_rate: float = 0.05, anneal: float = 0.7,
                 hubs: int = 0, hub_links: int = 4, select: str = "probability", prune_rounds: int = 1,
                 round_epochs: int = 2, lr_decay: bool = False, device=None, verbose: bool = True, seed: int | None = None):
        check.positive_int("knn", knn, allow_zero=True)
        check.positive_int("random_edges", random_edges, allow_zero=True)
        if sparsity is not None:
            check.in_range("sparsity", sparsity, 0.0, math.inf, hi_open=True)
        if target_params_per_instance is not None:
            check.in_range("target_params_per_instance", target_params_per_instance, 1.0, math.inf,
                           lo_open=True, hi_open=True)
        check.positive_int("epochs", epochs)
        check.in_range("lr", lr, 0.0, math.inf, lo_open=True, hi_open=True)
        check.positive_int("batch_size", batch_size)
        check.positive_int("targets_per_row", targets_per_row)
        check.positive_int("finetune_epochs", finetune_epochs, allow_zero=True)
        if isinstance(init_weight, str):
            check.one_of("init_weight", init_weight, ("distance", "random"))
        else:
            check.in_range("init_weight", init_weight, 0.0, math.inf, lo_open=True, hi_open=True)
        self.knn, self.random_edges, self.sparsity = knn, random_edges, sparsity
        self.target_params_per_instance = target_params_per_instance
        self.epochs, self.lr, self.batch_size, self.targets_per_row = epochs, lr, batch_size, targets_per_row
        self.init_prob, self.init_weight, self.default_distance = init_prob, init_weight, default_distance
        check.in_range("anneal", anneal, 0.0, 1.0, lo_open=True)
        self.finetune_epochs, self.lambda_rate, self.anneal = finetune_epochs, lambda_rate, anneal
        check.positive_int("hubs", hubs, allow_zero=True)
        check.positive_int("hub_links", hub_links)
        self.hubs, self.hub_links = hubs, hub_links
        check.one_of("select", select, ("probability", "usage"))
        self.select = select
        check.positive_int("prune_rounds", prune_rounds)
        check.positive_int("round_epochs", round_epochs, allow_zero=True)
        self.prune_rounds, self.round_epochs, self.lr_decay = prune_rounds, round_epochs, bool(lr_decay)
        self.device, self.verbose, self.seed = device, verbose, seed
        self.graph: ProdigeGraph | None = None
        self.history_: list[dict] = []

    # ------------------------------------------------------------------ fit
    def fit(self, x: torch.Tensor | None = None, *, distances: torch.Tensor | None = None) -> "ProdigeCompression":
        """Fit to the Euclidean distances of the rows of ``x`` ``[N, F]``, or to a given
        symmetric non-negative ``distances`` ``[N, N]`` (all pairs become candidate edges)."""
        if (x is None) == (distances is None):
            raise ValueError("pass exactly one of 'x' or 'distances'")
        gen = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        if self.seed is not None:
            torch.manual_seed(self.seed)
        if x is not None:
            check.tensor("x", x, dtypes=check.FLOAT_DTYPES, dim=2, finite=True)
            if x.size(0) < 2:
                raise ValueError(f"'x' must have at least 2 rows, got {x.size(0)}")
            device = torch.device(self.device) if self.device is not None else x.device
            x = x.to(device=device, dtype=torch.float32)
            self._x, self._D = x, None
            n = x.size(0)
            probe = torch.randint(0, n, (min(n, 512),), generator=gen).to(device)
            dmax = float(torch.cdist(x[probe], x).max())
            graph_kw = dict(init_prob=self.init_prob, default_distance=self.default_distance or 2 * dmax)
            iw = "distance" if self.init_weight in ("distance", "random") else float(self.init_weight)
            graph = ProdigeGraph.from_vectors(x, self.knn, self.random_edges, init_weight=iw, generator=gen,
                                              **graph_kw)
            if self.hubs:
                ei = coalesce_edges(torch.cat([graph.edge_index, hub_edges(x, self.hubs, self.hub_links)], 1), n,
                                    False)
                w = (x[ei[0]] - x[ei[1]]).norm(dim=1)
                w = w.clamp_min(1e-3 * float(w.mean()) if float(w.mean()) > 0 else 1e-3)
                graph = ProdigeGraph(ei, n, init_weight=w if iw == "distance" else iw, **graph_kw)
        else:
            check.tensor("distances", distances, dtypes=check.FLOAT_DTYPES, dim=2, finite=True)
            n = distances.size(0)
            if distances.size(1) != n or n < 2:
                raise ValueError(f"'distances' must be square [N, N] with N >= 2, got {tuple(distances.shape)}")
            if bool((distances < 0).any()):
                raise ValueError(f"'distances' must be non-negative, got min {float(distances.min())}")
            if not torch.allclose(distances, distances.T, atol=1e-6 * float(distances.abs().max() + 1)):
                raise ValueError("'distances' must be symmetric")
            device = torch.device(self.device) if self.device is not None else distances.device
            D = distances.to(device=device, dtype=torch.float32)
            self._x, self._D = None, D
            iu = torch.triu_indices(n, n, 1, device=device)
            w = D[iu[0], iu[1]]
            floor = 1e-3 * float(w.mean()) if float(w.mean()) > 0 else 1e-3
            iw = w.clamp_min(floor) if self.init_weight in ("distance", "random") else float(self.init_weight)
            graph = ProdigeGraph(iu, n, init_weight=iw, init_prob=self.init_prob,
                                 default_distance=self.default_distance or 2 * float(D.max()) or 1.0)
        if self.init_weight == "random":
            with torch.no_grad():
                scale = float(graph.init_weight.mean())
                graph.init_weight.copy_(scale * torch.rand(graph.num_edges, generator=gen).to(device).clamp_min(1e-3))
                graph.reset_parameters()
        self.graph, self.n_ = graph.to(device), n
        self._train(gen)
        return self

    def _targets(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        if self._D is not None:
            return self._D[src[:, None], dst]
        x = self._x
        return (x[src][:, None, :] - x[dst]).norm(dim=-1)

    def _batches(self, gen):
        n, device = self.n_, self.graph.indptr.device
        order = torch.randperm(n, generator=gen).to(device)
        T = self.targets_per_row
        for start in range(0, n, self.batch_size):
            src = order[start:start + self.batch_size]
            if T >= n:
                dst = torch.arange(n, device=device).expand(src.numel(), n)
            else:
                dst = torch.randint(0, n, (src.numel(), T), generator=gen).to(device)
            yield src, dst

    def _train(self, gen):
        g, n = self.graph, self.n_
        budget = self.target_params_per_instance
        lam = self.sparsity if self.sparsity is not None else (g.num_edges / 100 if budget else 0.0)
        opt = torch.optim.Adam(g.parameters(), lr=self.lr)
        self.history_ = []
        t0 = time.perf_counter()
        bar = progress(range(self.epochs), verbose=self.verbose, desc="PRODIGE", leave=True)
        g.train()
        step, total_steps = 0, self.epochs * math.ceil(n / self.batch_size)
        soft0 = g.num_stored_parameters() / n
        for epoch in bar:
            total, rows = 0.0, 0
            for src, dst in self._batches(gen):
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
                d = g(src, dst, seed=seed)
                per_row = ((d - self._targets(src, dst)) ** 2).mean(1)
                loss = per_row.mean() + g.reinforce(per_row)
                if lam:
                    loss = loss + lam * g.sparsity()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(per_row.detach().sum())
                rows += src.numel()
                step += 1
                if budget:  # proportional control of log(lambda): expected size follows the schedule
                    soft = g.num_stored_parameters() / n
                    frac = min(1.0, step / max(1.0, self.anneal * total_steps))
                    goal = budget * (soft0 / budget) ** (1 - frac) if soft0 > budget else budget
                    lam *= math.exp(self.lambda_rate * min(1.0, max(-1.0, math.log(soft / goal))))
            ppi = g.num_stored_parameters() / n
            soft = 1 + 2 * float(g.edge_prob.detach().sum()) / n
            self.history_.append({"epoch": epoch + 1, "loss": total / rows, "params_per_instance": ppi,
                                  "expected_params_per_instance": soft, "lam": lam, "seconds": time.perf_counter() - t0, "phase": "train"})
            bar.set_postfix(loss=f"{total / rows:.4g}", params=f"{ppi:.2f}", lam=f"{lam:.3g}")
        self.lam_ = lam
        self._ft_done = 0
        if budget:  # land on the budget: the deterministic graph is the most probable / most used edges
            keep = max(0, int(math.floor((budget * n - n) / 2)))
            rounds = self.prune_rounds if self.select == "usage" else 1
            cur = torch.arange(g.num_edges, device=g.edge_index.device)
            for r in range(rounds):
                k = int(round(keep * (cur.numel() / keep) ** ((rounds - 1 - r) / rounds))) if r else \
                    int(round(keep * (g.num_edges / keep) ** ((rounds - 1) / rounds)))
                k = max(keep, min(k, cur.numel()))
                with torch.no_grad():
                    score = self._usage(gen, deterministic=r > 0) if self.select == "usage" else g.presence_logit
                    cur = cur[select_edges(g.edge_index[:, cur], score[cur], n, k)]
                    drop = torch.ones(g.num_edges, dtype=torch.bool, device=cur.device)
                    drop[cur] = False
                    g.presence_logit[drop] = torch.clamp(g.presence_logit[drop], max=-1.0)
                    g.presence_logit[cur] = torch.clamp(g.presence_logit[cur], min=1e-3)
                if r < rounds - 1:
                    self.finetune_decay = False
                    self._finetune(gen, t0, self.round_epochs)
            log(f"PRODIGE: kept {min(keep, g.num_edges)} edges by {self.select} ({budget} params/instance)",
                self.verbose)
        self.finetune_decay = self.lr_decay
        self._finetune(gen, t0, self.finetune_epochs)
        g.eval()

    def _usage(self, gen, deterministic: bool = False) -> torch.Tensor:
        """How many shortest paths (one epoch of training batches; sampled graphs, or the
        deterministic graph) run through each edge."""
        g = self.graph
        was = g.training
        g.train(not deterministic)
        usage = torch.zeros(g.num_edges, device=g.weight_logit.device)
        with torch.enable_grad():
            for src, dst in self._batches(gen):
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
                g.weight_logit.grad = None
                g(src, dst, seed=seed).sum().backward()
                usage += g.weight_logit.grad / torch.sigmoid(g.weight_logit.detach())
                g.forget_samples()
        g.weight_logit.grad = None
        g.presence_logit.grad = None
        g.train(was)
        return usage

    def _finetune(self, gen, t0, epochs):
        if not epochs:
            return
        g, n = self.graph, self.n_
        g.eval()
        opt = torch.optim.Adam([g.weight_logit], lr=self.lr)
        steps = epochs * math.ceil(n / self.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(0.0, 1 - i / steps) if self.finetune_decay else 1.0)
        bar = progress(range(epochs), verbose=self.verbose, desc="PRODIGE fine-tune", leave=True)
        for epoch in bar:
            total, rows = 0.0, 0
            for src, dst in self._batches(gen):
                per_row = ((g(src, dst) - self._targets(src, dst)) ** 2).mean(1)
                opt.zero_grad()
                per_row.mean().backward()
                opt.step()
                sched.step()
                total += float(per_row.detach().sum())
                rows += src.numel()
            self._ft_done += 1
            self.history_.append({"epoch": self.epochs + self._ft_done, "loss": total / rows,
                                  "params_per_instance": g.num_stored_parameters() / n, "lam": self.lam_,
                                  "seconds": time.perf_counter() - t0, "phase": "finetune"})
            bar.set_postfix(loss=f"{total / rows:.4g}")

    # ------------------------------------------------------------------ results
    def _fitted(self) -> ProdigeGraph:
        if self.graph is None:
            raise RuntimeError("call fit() first")
        return self.graph

    @torch.no_grad()
    def pairwise_distances(self, batch_size: int = 256) -> torch.Tensor:
        """``[N, N]`` distances in the deterministic graph (edges with ``p >= 0.5``)."""
        g = self._fitted()
        was = g.training
        g.eval()
        src = torch.arange(self.n_, device=g.indptr.device)
        out = torch.cat([g(src[i:i + batch_size]) for i in range(0, self.n_, batch_size)])
        g.train(was)
        return out

    def parameters_per_instance(self) -> float:
        """``(N + 2|E_kept|) / N``: stored numbers per point (see :meth:`ProdigeGraph.num_stored_parameters`)."""
        return self._fitted().num_stored_parameters() / self.n_

    def __repr__(self) -> str:
        return (f"ProdigeCompression(knn={self.knn}, random_edges={self.random_edges}, sparsity={self.sparsity}, "
                f"target_params_per_instance={self.target_params_per_instance}, epochs={self.epochs}, lr={self.lr})")
