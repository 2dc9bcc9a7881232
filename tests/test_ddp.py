"""DistributedDataParallel (2 gloo processes) for ProdigeGraph / ProdigeEmbedding (sparse
gradients, SparseAdam, REINFORCE) and OTCoarsening(cost='learned').

What is synchronised, and what these tests pin down:

* DDP all-reduces (averages) every parameter's gradient -- the path gradients, the sparsity
  term and the REINFORCE surrogate (``module.reinforce(loss)``, called on ``ddp.module`` after
  the forward) alike, dense or sparse: the edge parameters live in ``EdgeParameter``
  (``nn.Embedding``) submodules, which is how DDP knows to expect sparse COO gradients (gloo
  all-reduces them). With equal per-rank batches the result is the gradient of the *union
  batch* whenever the loss is a mean of per-row terms.
* REINFORCE baselines are global under ``torch.distributed``: ``'loo'`` averages the other rows
  of *all* ranks and ``'ema'`` tracks the global mean loss (one all_reduce of the loss sum and
  row count), so the DDP gradient equals the single-process union-batch estimator and the
  ``'ema'`` state is the same on every rank. ``distributed=False`` keeps them per rank (then the
  DDP gradient is the mean of the ranks' own estimators).
* Samples: ``forward`` without ``seed=`` folds the process rank into the seed it draws, so ranks
  seeded alike (``lightning.seed_everything``) still draw independent graphs.
* The sample bookkeeping (``reinforce`` consumes the samples of the forwards since the last
  call) is per process and needs no synchronisation; replicas stay identical after
  SparseAdam / Adam steps.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from tgrep.nn import ProdigeEmbedding, ProdigeGraph
from tgrep.nn.pool import OTCoarsening

pytestmark = pytest.mark.slow  # one spawn of 2 processes (~20 s) for the whole file

WORLD = 2
N, B, T = 24, 6, 4          # graph vertices, rows per rank, targets per row
LAM = 0.3
# ----------------------------------------------------------------------------- the case
def _graph(sparse: bool) -> ProdigeGraph:
    g = torch.Generator().manual_seed(11)
    src = torch.arange(N).repeat(3)
    dst = torch.randint(0, N, (3 * N,), generator=g)
    ring = torch.stack([torch.arange(N), (torch.arange(N) + 1) % N])
    graph = ProdigeGraph(torch.cat([torch.stack([src, dst]), ring], 1), N, sparse=sparse,
                         init_weight=torch.ones(4 * N))
    with torch.no_grad():  # varied lengths and probabilities, fixed by the seed
        graph.weight_logit.add_(0.5 * torch.randn(graph.num_edges, generator=g))
        graph.presence_logit.add_(torch.randn(graph.num_edges, generator=g))
    return graph


def _rows(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    src = torch.randint(0, N, (B,), generator=g)
    dst = torch.randint(0, N, (B, T), generator=g)
    target = 1 + 2 * torch.rand(B, T, generator=g)
    return src, dst, target, 1000 + rank  # the rank's sample seed


def _graph_loss(graph, module, rank, baseline, beta=None, distributed=None):
    """Rank ``rank``'s loss: per-row MSE to targets + sparsity + REINFORCE (one forward)."""
    src, dst, target, seed = _rows(rank)
    d = module(src, dst, seed=seed)
    per_row = ((d - target) ** 2).mean(1)
    adv = per_row if beta is None else per_row - beta
    return per_row.mean() + LAM * graph.sparsity() + graph.reinforce(adv, baseline=baseline, distributed=distributed)


def _grads(graph):
    return [p.grad.to_dense().clone() if p.grad.is_sparse else p.grad.clone() for p in
            (graph.weight_logit, graph.presence_logit)]


def _tokens(rank: int):
    g = torch.Generator().manual_seed(200 + rank)
    tokens = torch.randint(0, 20, (8, 3), generator=g)
    return tokens, tokens[:, 0] % 2


class _TokenClassifier(torch.nn.Module):
    def __init__(self, sparse: bool = True):
        super().__init__()
        gg = torch.Generator().manual_seed(5)
        n, k = 20, 4
        src = torch.arange(n).repeat(3)
        dst = torch.cat([torch.randint(0, n, (2 * n,), generator=gg), n + torch.randint(0, k, (n,), generator=gg)])
        self.emb = ProdigeEmbedding(n, k, graph=ProdigeGraph(torch.stack([src, dst]), n + k, sparse=sparse))
        self.lin = torch.nn.Linear(k, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(2, k, generator=gg))
            self.lin.bias.copy_(torch.randn(2, generator=gg))
            self.emb.graph.presence_logit.add_(torch.randn(self.emb.graph.num_edges, generator=gg))

    def forward(self, tokens):
        return self.lin(self.emb(tokens).mean(1))


def _ot_model():
    from torch_geometric.nn import GCNConv

    torch.manual_seed(3)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = GCNConv(4, 8)
            self.pool = OTCoarsening(0.5, cost="learned", in_channels=8, num_iters=10)
            self.lin = torch.nn.Linear(8, 2)

        def forward(self, x, edge_index, batch):
            from torch_geometric.nn import global_mean_pool

            h = F.relu(self.conv(x, edge_index))
            h, _, _, b, perm, _ = self.pool(h, edge_index, batch=batch)
            return self.lin(global_mean_pool(h, b)), perm

    return Net().double()


def _ot_graphs():
    from torch_geometric.data import Data
    from torch_geometric.utils import to_undirected

    g = torch.Generator().manual_seed(8)
    out = []
    for i, n in enumerate((6, 9, 7, 11, 8, 10)):
        ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
        extra = torch.randint(0, n, (2, n), generator=g)
        ei = to_undirected(torch.cat([ring, extra], 1), num_nodes=n)
        out.append(Data(x=torch.randn(n, 4, generator=g, dtype=torch.float64), edge_index=ei,
                        y=torch.tensor([i % 2])))
    return out


def _batch(graphs):
    from torch_geometric.data import Batch

    return Batch.from_data_list(graphs)


# ----------------------------------------------------------------------------- the workers
def _attempt(out, key, fn):
    """Run scenario ``fn``; record its result, or the error it raised, under ``key``."""
    try:
        out[key] = fn()
    except Exception as exc:  # recorded, asserted in the test process
        out[("error", key)] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _worker(rank, world, init_file, out_dir):
    import datetime

    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    dist = torch.distributed
    out = {}

    def one_backward(sparse, baseline, distributed=None):  # 1. ProdigeGraph: path + sparsity + REINFORCE
        graph = _graph(sparse)
        ddp = DDP(graph)
        _graph_loss(graph, ddp, rank, baseline, distributed=distributed).backward()
        return _grads(graph)

    for sparse in (False, True):
        for baseline in ("none", "loo"):
            _attempt(out, ("grad", sparse, baseline), lambda: one_backward(sparse, baseline))
        _attempt(out, ("grad_local", sparse, "loo"), lambda: one_backward(sparse, "loo", False))

    def two_steps(sparse):  # 2. two optimiser steps (SparseAdam when sparse), replicas must agree
        graph = _graph(sparse)
        ddp = DDP(graph)
        cls = torch.optim.SparseAdam if sparse else torch.optim.Adam
        opt = cls(list(graph.parameters()), lr=0.05)
        for _ in range(2):
            opt.zero_grad()
            _graph_loss(graph, ddp, rank, "none").backward()
            opt.step()
        return [p.detach().clone() for p in graph.parameters()]

    for sparse in (False, True):
        _attempt(out, ("steps", sparse), lambda: two_steps(sparse))

    def ema():  # 3. the 'ema' baseline state after two steps, and the second step's gradients
        graph = _graph(False)
        ddp = DDP(graph)
        for _ in range(2):
            graph.zero_grad()
            _graph_loss(graph, ddp, rank, "ema").backward()
        return graph._ema, _grads(graph)

    _attempt(out, "ema", ema)

    def same_seed():  # 4. samples when every rank has the same global seed (seed_everything)
        graph = _graph(False)
        ddp = DDP(graph)
        torch.manual_seed(0)
        src, dst, _, _ = _rows(0)
        d = ddp(src, dst).detach()
        graph.forget_samples()
        return d

    _attempt(out, "same_seed_dist", same_seed)

    def embedding(sparse):  # 5. ProdigeEmbedding classifier: graph (SparseAdam or Adam) + head (Adam)
        model = _TokenClassifier(sparse)
        ddp = DDP(model)
        cls = torch.optim.SparseAdam if sparse else torch.optim.Adam
        opts = [cls(list(model.emb.parameters()), lr=0.05), torch.optim.Adam(model.lin.parameters(), lr=0.05)]
        grad0 = None
        for step in range(2):
            tokens, y = _tokens(rank)
            torch.manual_seed(300 + 10 * step + rank)  # the rank's samples (seed drawn in forward)
            loss = F.cross_entropy(ddp(tokens), y)
            total = loss + LAM * model.emb.sparsity() + model.emb.reinforce(loss, baseline="none")
            for o in opts:
                o.zero_grad()
            total.backward()
            if step == 0:
                grad0 = [p.grad.to_dense().clone() if p.grad.is_sparse else p.grad.clone() for p in model.parameters()]
            for o in opts:
                o.step()
        return grad0, [p.detach().clone() for p in model.parameters()]

    for sparse in (False, True):
        _attempt(out, ("emb", sparse), lambda: embedding(sparse))

    def ot():  # 6. OTCoarsening(cost='learned'): each rank gets half of the graphs
        model = _ot_model()
        ddp = DDP(model)
        data = _batch(_ot_graphs()[rank::world])
        logits, perm = ddp(data.x, data.edge_index, data.batch)
        loss = F.cross_entropy(logits, data.y)
        loss.backward()
        return [p.grad.clone() for p in model.parameters()], loss.detach()

    _attempt(out, "ot", ot)
    gathered = [None] * world
    dist.all_gather_object(gathered, out)
    if rank == 0:
        torch.save(gathered, os.path.join(out_dir, "ddp.pt"))
    dist.destroy_process_group()


def _get(runs, rank, key):
    err = runs[rank].get(("error", key))
    assert err is None, f"rank {rank}, scenario {key}: {err}"
    return runs[rank][key]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Both ranks' results of every scenario (one spawn of 2 gloo processes for them all)."""
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return torch.load(tmp / "ddp.pt", weights_only=False)


# ----------------------------------------------------------------------------- single process
def _union_grads(sparse: bool, baseline: str):
    """The union batch's gradient, from one process: each rank's rows with the rank's samples,
    REINFORCE with the union batch's baseline ('none': 0; 'loo': mean of the other 2B-1 rows)."""
    graph = _graph(sparse)
    beta = None
    if baseline == "loo":
        with torch.no_grad():
            losses = []
            for r in range(WORLD):
                src, dst, target, seed = _rows(r)
                losses.append(((graph(src, dst, seed=seed) - target) ** 2).mean(1))
                graph.forget_samples()
            allr = torch.cat(losses)
            loo = (allr.sum() - allr) / (allr.numel() - 1)
            beta = loo.view(WORLD, B)
    total = 0
    for r in range(WORLD):
        total = total + _graph_loss(graph, graph, r, "none", None if beta is None else beta[r]) / WORLD
    total.backward()
    return _grads(graph)


def _rank_mean_grads(sparse: bool, baseline: str):
    """The mean over ranks of each rank's own gradient (what averaging gradients gives)."""
    acc = None
    for r in range(WORLD):
        graph = _graph(sparse)
        _graph_loss(graph, graph, r, baseline).backward()
        g = _grads(graph)
        acc = g if acc is None else [a + b for a, b in zip(acc, g)]
    return [a / WORLD for a in acc]


def _close(a, b, **kw):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, **kw)


# ----------------------------------------------------------------------------- tests
SPARSE = [False, True]


@pytest.mark.parametrize("sparse", SPARSE)
@pytest.mark.parametrize("key", [("grad", "none"), ("grad_local", "loo")])
def test_prodige_graph_gradients_are_the_rank_mean(ddp_runs, sparse, key):
    """Path, sparsity and REINFORCE gradients are all-reduced by DDP (dense and sparse COO);
    with per-rank baselines (distributed=False) that is the mean of the ranks' own estimators."""
    kind, baseline = key
    expected = _rank_mean_grads(sparse, baseline)
    for rank in range(WORLD):
        got = _get(ddp_runs, rank, (kind, sparse, baseline))
        _close(got, expected)
    assert expected[1].abs().sum() > 0 and expected[0].abs().sum() > 0  # not vacuous


def test_sparse_gradients_reach_ddp_as_sparse(ddp_runs):
    # DDP expects sparse gradients from nn.Embedding(sparse=True) parameters only: the edge
    # parameters are held by such modules, so the sparse run trains (it used to raise in DDP's reducer)
    graph = _graph(True)
    assert all(isinstance(m, torch.nn.Embedding) and m.sparse for m in (graph._edge_weight, graph._edge_presence))
    for rank in range(WORLD):
        assert _get(ddp_runs, rank, ("grad", True, "none"))[0].abs().sum() > 0


@pytest.mark.parametrize("sparse", SPARSE)
@pytest.mark.parametrize("baseline", ["none", "loo"])
def test_prodige_graph_matches_the_union_batch(ddp_runs, sparse, baseline):
    expected = _union_grads(sparse, baseline)
    for rank in range(WORLD):
        _close(_get(ddp_runs, rank, ("grad", sparse, baseline)), expected)
    if baseline == "loo":  # the global baseline differs from the per-rank one: the test can fail
        local = _rank_mean_grads(sparse, "loo")
        assert not torch.allclose(local[1], expected[1])


@pytest.mark.parametrize("sparse", SPARSE)
def test_optimizer_steps_keep_replicas_identical(ddp_runs, sparse):
    """Two Adam (dense) / SparseAdam (sparse) steps: the replicas agree, and equal one process
    stepping on the averaged (union-batch) gradient."""
    a, b = _get(ddp_runs, 0, ("steps", sparse)), _get(ddp_runs, 1, ("steps", sparse))
    _close(a, b, rtol=0, atol=0)
    graph = _graph(sparse)
    cls = torch.optim.SparseAdam if sparse else torch.optim.Adam
    opt = cls(list(graph.parameters()), lr=0.05)
    for _ in range(2):
        grads = None
        for r in range(WORLD):
            opt.zero_grad()
            _graph_loss(graph, graph, r, "none").backward()
            g = [p.grad.coalesce() if p.grad.is_sparse else p.grad.clone() for p in graph.parameters()]
            grads = g if grads is None else [x + y for x, y in zip(grads, g)]
        for p, g in zip(graph.parameters(), grads):
            p.grad = (g / WORLD).coalesce() if g.is_sparse else g / WORLD
        opt.step()
    _close(a, [p.detach() for p in graph.parameters()])


def test_ema_baseline_is_the_same_on_every_rank(ddp_runs):
    """The 'ema' baseline tracks the global mean loss: equal on every rank, equal to one process
    seeing the union batch, and the second step's gradient is the union-batch estimator."""
    (e0, g0), (e1, g1) = _get(ddp_runs, 0, "ema"), _get(ddp_runs, 1, "ema")
    assert e0 == pytest.approx(e1, rel=1e-12)
    graph = _graph(False)
    ema = None
    for step in range(2):
        graph.zero_grad()
        losses = []
        total = 0
        for r in range(WORLD):
            src, dst, target, seed = _rows(r)
            per_row = ((graph(src, dst, seed=seed) - target) ** 2).mean(1)
            losses.append(per_row.detach())
            beta = 0.0 if ema is None else ema
            total = total + (per_row.mean() + LAM * graph.sparsity()
                             + graph.reinforce(per_row - beta, baseline="none")) / WORLD
        total.backward()
        mean = float(torch.cat(losses).double().mean())
        ema = mean if ema is None else 0.9 * ema + 0.1 * mean
    assert e0 == pytest.approx(ema, rel=1e-12)
    _close(g0, _grads(graph))
    _close(g1, _grads(graph))


def test_same_global_seed_gives_independent_samples_per_rank(ddp_runs):
    assert not torch.equal(_get(ddp_runs, 0, "same_seed_dist"), _get(ddp_runs, 1, "same_seed_dist"))


@pytest.mark.parametrize("sparse", SPARSE)
def test_prodige_embedding_classifier_with_reinforce(ddp_runs, sparse, monkeypatch):
    """A classifier over ProdigeEmbedding (graph: SparseAdam or Adam; head: Adam), scalar loss with
    REINFORCE: DDP's gradients are the mean of the ranks' own, and the replicas stay identical."""
    import tgrep.nn.prodige as prodige

    acc = None
    for r in range(WORLD):
        model = _TokenClassifier(sparse)
        tokens, y = _tokens(r)
        torch.manual_seed(300 + r)
        monkeypatch.setattr(prodige, "_rank", lambda r=r: r)  # the seed rank r folds in
        loss = F.cross_entropy(model(tokens), y)
        (loss + LAM * model.emb.sparsity() + model.emb.reinforce(loss, baseline="none")).backward()
        g = [p.grad.to_dense() if p.grad.is_sparse else p.grad for p in model.parameters()]
        acc = g if acc is None else [a + b for a, b in zip(acc, g)]
    expected = [a / WORLD for a in acc]
    for rank in range(WORLD):
        _close(_get(ddp_runs, rank, ("emb", sparse))[0], expected)
    _close(_get(ddp_runs, 0, ("emb", sparse))[1], _get(ddp_runs, 1, ("emb", sparse))[1], rtol=0, atol=0)


def test_otcoarsening_learned_matches_the_union_batch(ddp_runs):
    """OTCoarsening(cost='learned'): half the graphs per rank == all the graphs in one process
    (each graph is compressed on its own, so the batch split does not change the result)."""
    model = _ot_model()
    data = _batch(_ot_graphs())
    logits, _ = model(data.x, data.edge_index, data.batch)
    loss = F.cross_entropy(logits, data.y)
    loss.backward()
    expected = [p.grad for p in model.parameters()]
    for rank in range(WORLD):
        _close(_get(ddp_runs, rank, "ot")[0], expected, rtol=1e-6, atol=1e-9)
    mean_loss = sum(float(_get(ddp_runs, r, "ot")[1]) for r in range(WORLD)) / WORLD
    assert mean_loss == pytest.approx(float(loss.detach()), rel=1e-9)
    assert model.pool.cost_net.mlp[0].weight.grad.abs().sum() > 0  # the cost is trained
