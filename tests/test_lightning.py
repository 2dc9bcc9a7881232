"""Each tgrep layer inside a LightningModule: a few training steps, a checkpoint, and
``load_from_checkpoint`` (under another seed) giving the same outputs and state."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

L = pytest.importorskip("lightning", reason="Lightning is the test extra: pip install -e '.[test]'")
import logging  # noqa: E402

logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no GPU/TPU/tips banners

from tgrep.nn import EDRepLoss, ProdigeEmbedding, ProdigeGraph  # noqa: E402
from tgrep.nn.pool import OTCoarsening  # noqa: E402


def _batch(seed: int, sizes=(7, 10, 12)):
    from torch_geometric.data import Batch, Data
    from torch_geometric.utils import erdos_renyi_graph, to_undirected

    g = torch.Generator().manual_seed(seed)
    graphs = []
    for i, n in enumerate(sizes):
        torch.manual_seed(seed * 100 + i)
        ei = to_undirected(erdos_renyi_graph(n, 0.4), num_nodes=n)
        ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])  # connected
        ei = to_undirected(torch.cat([ei, ring], 1), num_nodes=n)
        graphs.append(Data(x=torch.randn(n, 4, generator=g), edge_index=ei, y=torch.tensor([i % 2])))
    return Batch.from_data_list(graphs)


def _trainer(steps: int = 3):
    return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


class _Loader(torch.utils.data.Dataset):
    """``steps`` copies of one item (the LightningModules below build their own inputs)."""

    def __init__(self, item, steps=3):
        self.item, self.steps = item, steps

    def __len__(self):
        return self.steps

    def __getitem__(self, i):
        return self.item


def _loader(item=0, steps=3):
    return torch.utils.data.DataLoader(_Loader(item, steps), batch_size=None)


# ----------------------------------------------------------------------------- modules
class OTClassifier(L.LightningModule):
    def __init__(self, cost: str = "learned", hidden: int = 8):
        super().__init__()
        self.save_hyperparameters()
        from torch_geometric.nn import GCNConv, global_mean_pool

        self.conv = GCNConv(4, hidden)
        kw = {"in_channels": hidden} if cost == "learned" else {}
        # ratio 0.2: at 0.5 the relaxation's optimum moves no mass on these graphs (k max rho0 <= 1),
        # so its gradient w.r.t. the cost is exactly zero (see OTCoarsening's docstring)
        self.pool = OTCoarsening(0.2, cost=cost, num_iters=10, **kw)
        self.lin = torch.nn.Linear(hidden, 2)
        self.readout = global_mean_pool

    def forward(self, data):
        x = F.relu(self.conv(data.x, data.edge_index))
        x, ei, _, batch, perm, score = self.pool(x, data.edge_index, batch=data.batch)
        return self.lin(self.readout(x, batch)), perm

    def training_step(self, _, __):
        data = _batch(0)
        return F.cross_entropy(self(data)[0], data.y)

    def train_dataloader(self):
        return _loader()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


class GraphMetric(L.LightningModule):
    """ProdigeGraph fitted to random target distances (path gradients + REINFORCE)."""

    def __init__(self, num_nodes: int = 30, sparse: bool = False):
        super().__init__()
        self.save_hyperparameters()
        g = torch.Generator().manual_seed(0)  # the candidate edges are part of the architecture
        ei = torch.randint(0, num_nodes, (2, 4 * num_nodes), generator=g)
        self.graph = ProdigeGraph(ei, num_nodes, sparse=sparse)
        self.automatic_optimization = not sparse

    def training_step(self, _, __):
        src = torch.randint(0, self.hparams.num_nodes, (8,))
        dst = torch.randint(0, self.hparams.num_nodes, (8, 5))
        d = self.graph(src, dst)
        per_row = ((d - 2.0) ** 2).mean(1)
        loss = per_row.mean() + 0.1 * self.graph.sparsity() + self.graph.reinforce(per_row)
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()

    def train_dataloader(self):
        return _loader()

    def configure_optimizers(self):
        cls = torch.optim.SparseAdam if self.hparams.sparse else torch.optim.Adam
        return cls(list(self.parameters()), lr=0.05)


class EmbeddingClassifier(L.LightningModule):
    """``ProdigeEmbedding`` as the embedding table of a token classifier (SparseAdam + REINFORCE)."""

    def __init__(self, vocab: int = 40, dim: int = 6, sparse: bool = True, graph_seed: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        graph = None
        if graph_seed is not None:  # candidate edges fixed by a seed of their own
            g = torch.Generator().manual_seed(graph_seed)
            n = vocab + dim
            src = torch.arange(vocab).repeat(3)
            dst = torch.cat([torch.randint(0, vocab, (2 * vocab,), generator=g),
                             vocab + torch.randint(0, dim, (vocab,), generator=g)])
            graph = ProdigeGraph(torch.stack([src, dst]), n, sparse=sparse)
        self.emb = ProdigeEmbedding(vocab, dim, graph=graph, sparse=sparse) if graph is None else \
            ProdigeEmbedding(vocab, dim, graph=graph)
        self.lin = torch.nn.Linear(dim, 2)
        self.automatic_optimization = False

    def forward(self, tokens):
        return self.lin(self.emb(tokens).mean(1))

    def training_step(self, _, __):
        tokens = torch.randint(0, self.hparams.vocab, (16, 4))
        y = (tokens[:, 0] % 2)
        loss = F.cross_entropy(self(tokens), y)
        total = loss + 0.1 * self.emb.sparsity() + self.emb.reinforce(loss)
        opts = self.optimizers()
        for o in opts:
            o.zero_grad()
        self.manual_backward(total)
        for o in opts:
            o.step()

    def train_dataloader(self):
        return _loader()

    def configure_optimizers(self):
        sparse_cls = torch.optim.SparseAdam if self.hparams.sparse else torch.optim.Adam
        return [sparse_cls(list(self.emb.parameters()), lr=0.05), torch.optim.Adam(self.lin.parameters(), lr=0.05)]


class EDRepEmbedding(L.LightningModule):
    """An ``nn.Embedding`` trained with ``EDRepLoss`` on fixed random co-occurrence pairs."""

    def __init__(self, n: int = 60, dim: int = 8, refresh_every: int = 1):
        super().__init__()
        self.save_hyperparameters()
        self.emb = torch.nn.Embedding(n, dim)
        self.loss_fn = EDRepLoss(num_clusters=3, refresh_every=refresh_every)
        g = torch.Generator().manual_seed(1)
        rows = torch.arange(n).repeat(4)  # every row of x has a target distribution
        self.register_buffer("pairs", torch.stack([rows, torch.randint(0, n, (4 * n,), generator=g)]))

    def loss(self):
        x = self.emb.weight
        return self.loss_fn(x, x, (self.pairs, torch.ones(self.pairs.size(1))))

    def training_step(self, _, __):
        return self.loss()

    def train_dataloader(self):
        return _loader()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


# ----------------------------------------------------------------------------- helpers
def _fit_and_reload(model, tmp_path, steps=3):
    torch.manual_seed(123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's hints (num_workers, ...)
        _trainer(steps).fit(model)
    ckpt = tmp_path / "model.ckpt"
    trainer = _trainer(steps)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(ckpt)
    torch.manual_seed(987654)  # the fresh module is built under another seed
    loaded = type(model).load_from_checkpoint(ckpt, map_location="cpu")
    return model.eval(), loaded.eval()


def _same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=f"state {k}")


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("cost", ["learned", "degree"])
def test_otcoarsening_checkpoint_roundtrip(cost, tmp_path):
    model, loaded = _fit_and_reload(OTClassifier(cost=cost), tmp_path)
    _same_state(model, loaded)
    data = _batch(5)
    with torch.no_grad():
        (la, pa), (lb, pb) = model(data), loaded(data)
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    assert torch.equal(pa, pb)
    assert repr(model.pool) == repr(loaded.pool)


def test_otcoarsening_training_changes_the_learned_cost(tmp_path):
    """The checkpoint holds *trained* cost parameters (the test above is not vacuous)."""
    torch.manual_seed(0)
    fresh = OTClassifier(cost="learned")
    init = {k: v.clone() for k, v in fresh.pool.state_dict().items()}
    model, loaded = _fit_and_reload(fresh, tmp_path)
    changed = [k for k, v in loaded.pool.state_dict().items() if not torch.equal(v, init[k])]
    assert changed, "training did not move the learned edge cost"


@pytest.mark.parametrize("sparse", [False, True])
def test_prodige_graph_checkpoint_roundtrip(sparse, tmp_path):
    model, loaded = _fit_and_reload(GraphMetric(sparse=sparse), tmp_path)
    _same_state(model, loaded)
    logit = model.graph.presence_logit.detach()
    assert not torch.allclose(logit, torch.full_like(logit, float(logit[0])))  # training moved them
    src, dst = torch.arange(10), torch.randint(0, 30, (10, 6))
    with torch.no_grad():
        torch.testing.assert_close(model.graph(src, dst), loaded.graph(src, dst), rtol=0, atol=0)
    # training mode with a fixed seed samples the same graphs in both
    model.train(), loaded.train()
    torch.testing.assert_close(model.graph(src, dst, seed=7), loaded.graph(src, dst, seed=7), rtol=0, atol=0)
    model.graph.forget_samples(), loaded.graph.forget_samples()


@pytest.mark.parametrize("graph_seed", [0, None])
def test_prodige_embedding_checkpoint_roundtrip(graph_seed, tmp_path):
    model, loaded = _fit_and_reload(EmbeddingClassifier(graph_seed=graph_seed), tmp_path)
    _same_state(model, loaded)
    tokens = torch.randint(0, 40, (9, 4))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), loaded(tokens), rtol=0, atol=0)


@pytest.mark.parametrize("refresh_every", [1, 5])
def test_edrep_loss_checkpoint_roundtrip(refresh_every, tmp_path):
    model, loaded = _fit_and_reload(EDRepEmbedding(refresh_every=refresh_every), tmp_path, steps=3)
    _same_state(model, loaded)
    # the loss the next training step would see is the same after resuming
    with torch.no_grad():
        torch.testing.assert_close(model.loss(), loaded.loss())
