"""ProdigeEmbedding as a drop-in for nn.Embedding: shapes, padding_idx, budget, checkpoints
across processes, torch.compile, from_pretrained; ProdigeGraph's compile and state_dict."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tgrep.nn import ProdigeEmbedding, ProdigeGraph

ROOT = Path(__file__).resolve().parents[1]


def _counting_compile(fn):
    """``(compiled fn, counter)``: ``fn`` compiled (fullgraph, dynamic) by a backend that counts
    the graphs Dynamo builds (``counter[0]``)."""
    n = [0]

    def backend(gm, example):
        n[0] += 1
        return gm.forward

    torch._dynamo.reset()
    return torch.compile(fn, backend=backend, fullgraph=True, dynamic=True), n


def _count_compiles(fn, inputs):
    """Compile ``fn`` (fullgraph, dynamic) and count the graphs Dynamo builds over ``inputs``."""
    f, n = _counting_compile(fn)
    outs = [f(*a) for a in inputs]
    return n[0], outs


def test_shapes_directions_and_gradients(seed):
    torch.manual_seed(seed)
    emb = ProdigeEmbedding(20, 3, budget=8.0, center=False)  # raw distances: both directions agree
    assert "20, 3" in repr(emb) and "budget=8.0" in repr(emb) and "center=False" in repr(emb)
    idx = torch.randint(0, 20, (4, 5))
    emb.eval()
    ref = emb.graph(torch.arange(20), torch.arange(20, 23).expand(20, 3))  # items -> anchors
    a = emb(idx)
    emb.direction = "items"
    b = emb(idx)
    assert a.shape == (4, 5, 3)
    torch.testing.assert_close(a, ref[idx])
    torch.testing.assert_close(b, ref[idx])
    emb.direction = "anchors"
    # training: an ordinary loop reaches the lengths and the default distance, no warning
    emb.train()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(70):
            emb(idx).sum().backward()
    assert emb.graph.weight_logit.grad.abs().sum() > 0
    assert emb.graph.presence_logit.grad is None
    # reinforce reaches the presence logits
    y = emb(idx).sum(-1).mean()
    (y + emb.reinforce(y)).backward()
    assert emb.graph.presence_logit.grad.abs().sum() > 0
    emb.reset_parameters()
    assert torch.allclose(emb.graph.edge_prob, torch.full_like(emb.graph.edge_prob, 0.9))
    assert emb(torch.empty(0, dtype=torch.long)).shape == (0, 3)
    with pytest.raises(IndexError):
        emb(torch.tensor([20]))  # an anchor vertex is not an item
    with pytest.raises(ValueError, match="graph"):
        ProdigeEmbedding(5, 2, graph=ProdigeGraph(torch.tensor([[0], [1]]), 3))
    with pytest.raises(ValueError, match="budget"):
        ProdigeEmbedding(20, 3, budget=2.0)
    with pytest.raises(TypeError, match="padding_idx"):
        ProdigeEmbedding(20, 3, padding_idx=1.5)
    with pytest.raises(ValueError, match="padding_idx"):
        ProdigeEmbedding(20, 3, padding_idx=20)
    with pytest.raises(TypeError, match="sparse"):
        ProdigeEmbedding(20, 3, sparse=1)


def test_budget_counts_like_the_paper():
    from tgrep.nn.prodige_embedding import HUB_LINKS

    # (n, K, budget, hub vertices): 3 K hubs when one edge per item and per hub fits the budget
    for n, K, budget, H in ((200, 8, 8.0, 24), (500, 16, 16.0, 48), (300, 4, 6.5, 12), (300, 4, 3.1, 0),
                            (100, 4, 40.0, 12)):
        emb = ProdigeEmbedding(n, K, budget=budget, generator=torch.Generator().manual_seed(0))
        g = emb.graph
        assert g.num_nodes == n + K + H + (H > 0)  # + the vertex that parks pruned edges
        if H and budget < 40:  # over-complete: every item linked to min(3 K, HUB_LINKS) hubs, pruned in training
            assert emb.num_stored_parameters() > budget * n and not emb.pruning_done()
            assert g.num_edges == n * min(H, HUB_LINKS) + H * K
            emb.prune_to_budget()
        assert emb.pruning_done()
        stored = emb.num_stored_parameters()
        assert stored <= budget * n and stored >= 0.9 * budget * n  # duplicates merged: a little under
        kept = g.edge_index[:, g.kept()]
        assert g.indices.numel() == 2 * kept.size(1)  # the searches scan the kept edges only
        deg = torch.bincount(kept.reshape(-1), minlength=g.num_nodes)
        assert bool((deg[n:n + K] > 0).all()) and bool((deg[:n] > 0).all())  # every anchor and item linked
        emb.eval()
        assert bool((emb.table() < float(g.default_distance.detach()) - 1).all())  # every item reaches every anchor


def test_pruning_runs_in_an_ordinary_training_loop(seed):
    from tgrep.nn.prodige_embedding import PRUNE_EVERY, PRUNE_ROUNDS, PRUNE_START

    torch.manual_seed(seed)
    n, K, budget = 60, 4, 5.0
    emb = ProdigeEmbedding(n, K, budget=budget)
    model = torch.nn.Sequential(emb, torch.nn.Flatten(), torch.nn.Linear(3 * K, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = emb.graph
    M, theta = g.num_edges, g.weight_logit
    x, y = torch.randint(0, n, (16, 3)), torch.randint(0, 2, (16,))
    last = PRUNE_START + (PRUNE_ROUNDS - 1) * PRUNE_EVERY
    kept = []
    for step in range(1, last + 3):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        kept.append(int(g.kept().sum()))
        assert emb.pruning_done() == (step >= last)
    assert kept[PRUNE_START - 2] == M > kept[PRUNE_START - 1]  # the first round at step PRUNE_START
    rounds = [i for i in range(1, len(kept)) if kept[i] < kept[i - 1]]
    assert len(rounds) == PRUNE_ROUNDS and rounds[-1] == last - 1
    assert g.num_stored_parameters() <= budget * n
    # the parameters are the optimizer's, unchanged in shape; pruned edges are never sampled
    assert g.weight_logit is theta and g.num_edges == M and any(p is theta for p in opt.param_groups[0]["params"])
    assert int(emb.prune_state[0]) == last
    emb.eval()
    assert torch.isfinite(model(x)).all()
    emb.reset_parameters()  # every candidate edge again, the schedule restarts
    assert not emb.pruning_done() and int(g.kept().sum()) == M and int(g.indptr[-2]) == 2 * M


def test_padding_idx_zero_output_no_gradient():
    torch.manual_seed(0)
    emb = ProdigeEmbedding(30, 4, padding_idx=0)
    ref = torch.nn.Embedding(30, 4, padding_idx=0)
    assert int((emb.graph.edge_index == 0).sum()) == 0  # the padding vertex costs no edges
    x = torch.tensor([[0, 3, 0], [5, 0, 7]])
    out = emb(x)
    assert torch.equal(out[x == 0], torch.zeros(3, 4)) and bool((out[x != 0] != 0).all())
    assert torch.equal(ref(x)[x == 0], torch.zeros(3, 4))
    out.sum().backward()
    # the padding token contributes nothing: same gradient as without the padding positions
    g1 = emb.graph.weight_logit.grad.clone()
    emb.zero_grad()
    emb.graph.weight_logit.grad = None
    torch.manual_seed(1)
    emb.eval()
    (emb(x) * (x != 0).unsqueeze(-1)).sum().backward()
    g2 = emb.graph.weight_logit.grad
    emb.graph.weight_logit.grad = None
    emb(x).sum().backward()
    torch.testing.assert_close(emb.graph.weight_logit.grad, g2)
    assert g1.abs().sum() > 0
    assert ProdigeEmbedding(30, 4, padding_idx=-1).padding_idx == 29


def test_sparse_gradients_with_sparse_adam():
    torch.manual_seed(0)
    emb = ProdigeEmbedding(40, 4, sparse=True)
    # as with nn.Embedding(sparse=True): every parameter is sparse, so SparseAdam takes them all
    opt = torch.optim.SparseAdam(list(emb.parameters()), lr=0.05)
    assert not emb.graph.default_distance.requires_grad
    before = emb.graph.weight_logit.detach().clone()
    loss = emb(torch.randint(0, 40, (8, 5))).sum()
    (loss + emb.reinforce(loss)).backward()
    assert emb.graph.weight_logit.grad.is_sparse and emb.graph.presence_logit.grad.is_sparse
    opt.step()
    assert not torch.equal(before, emb.graph.weight_logit.detach())


CKPT_SCRIPT = textwrap.dedent("""
    import sys, torch
    from tgrep.nn import ProdigeEmbedding
    mode, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(seed)
    model = torch.nn.Sequential(ProdigeEmbedding(50, 6, padding_idx=0), torch.nn.Flatten(), torch.nn.Linear(18, 2))
    x = torch.tensor([[0, 1, 2], [3, 49, 7]])
    steps = int(sys.argv[4])
    if mode == "save":
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(steps):
            loss = model(x).square().mean()
            opt.zero_grad(); (loss + model[0].reinforce(loss)).backward(); opt.step()
        torch.save(model.state_dict(), path)
    else:
        model.load_state_dict(torch.load(path))
    g = model[0].graph
    print(int(model[0].prune_state[0]), model[0].pruning_done(), int(g.kept().sum()), g.indices.numel())
    model.eval()
    with torch.no_grad():
        torch.save(model(x), path + "." + mode + ".out")
""")


def test_checkpoint_loads_in_another_process_with_another_seed(tmp_path):
    script = tmp_path / "ckpt.py"
    script.write_text(CKPT_SCRIPT)
    path = str(tmp_path / "model.pt")
    env = {"PYTHONPATH": str(ROOT), "TGREP_QUIET": "1", "PATH": "/usr/bin:/bin"}
    from tgrep.nn.prodige_embedding import PRUNE_EVERY, PRUNE_ROUNDS, PRUNE_START

    last = PRUNE_START + (PRUNE_ROUNDS - 1) * PRUNE_EVERY
    # 5 steps: the candidate graph; then mid-pruning (first round done); then pruned to the budget
    for steps in (5, PRUNE_START + 10, last + 10):
        printed = []
        for mode, seed in (("save", 1), ("load", 2)):
            r = subprocess.run([sys.executable, str(script), mode, path, str(seed), str(steps)], capture_output=True,
                               text=True, env=env, timeout=300)
            assert r.returncode == 0, r.stderr
            printed.append(r.stdout.split())
        assert printed[0] == printed[1]  # pruning state, kept edges, searched CSR: as saved
        assert printed[0][0] == str(min(steps, last)) and printed[0][1] == str(steps >= last)  # counts to the end
        a, b = torch.load(path + ".save.out"), torch.load(path + ".load.out")
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_of_another_shape_rebuilds_or_errors():
    torch.manual_seed(0)
    a = ProdigeEmbedding(30, 4, budget=3.5)  # no room for hub vertices: 34 vertices
    b = ProdigeEmbedding(30, 4, budget=10.0)  # other candidate graph: 12 hub vertices, more edges
    assert a.graph.num_edges != b.graph.num_edges and b.graph.num_nodes == 47
    b.load_state_dict(a.state_dict())
    assert b.graph.num_edges == a.graph.num_edges and b.graph.num_nodes == 34
    a.eval(), b.eval()
    x = torch.arange(30)
    torch.testing.assert_close(a(x), b(x))
    # a pruned hub graph (its CSR scans a subset of the candidates) into a module without hubs
    c = ProdigeEmbedding(30, 4, budget=10.0)
    c.prune_to_budget()
    d = ProdigeEmbedding(30, 4, budget=3.5)
    d.load_state_dict(c.state_dict())
    assert d.graph.num_nodes == 47 and d.pruning_done() and torch.equal(d.graph.indices, c.graph.indices)
    c.eval(), d.eval()
    torch.testing.assert_close(c(x), d(x))
    d.train()
    d(x).sum().backward()  # the tree cache follows the new number of vertices
    with pytest.raises(ValueError, match="num_embeddings=30"):
        ProdigeEmbedding(31, 4).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="embedding_dim=4"):
        ProdigeEmbedding(29, 5).load_state_dict(a.state_dict())
    # a bare ProdigeGraph rebuilds too (other nodes / direction)
    g = ProdigeGraph(torch.tensor([[0, 1], [1, 2]]), 3, directed=True)
    g.load_state_dict(a.graph.state_dict())
    assert g.num_nodes == 34 and not g.directed and g.num_edges == a.graph.num_edges


def test_compile_fullgraph_train_and_eval_no_recompiles():
    torch.manual_seed(0)
    emb = ProdigeEmbedding(40, 4, padding_idx=0)
    g = emb.graph
    for training in (True, False):
        emb.train(training)
        sizes = [(3, 5), (4, 7), (9, 2), (2, 11)]
        torch.manual_seed(1)
        xs = [(torch.randint(0, 40, s),) for s in sizes]
        n, outs = _count_compiles(emb, xs)
        assert n == 1, f"{n} graphs for ProdigeEmbedding (training={training})"
        if not training:
            for (x,), o in zip(xs, outs):
                torch.testing.assert_close(o, emb(x))
        srcs = [(torch.randint(0, 44, (b,)), torch.randint(0, 44, (b, t))) for b, t in ((3, 2), (5, 4), (8, 3))]
        n, outs = _count_compiles(g, srcs)
        assert n == 1, f"{n} graphs for ProdigeGraph (training={training})"
        if not training:
            for (s, d), o in zip(srcs, outs):
                torch.testing.assert_close(o, g(s, d))
    # training-mode compiled forward feeds reinforce like eager
    emb.train()
    f = torch.compile(emb, fullgraph=True, backend="eager")
    loss = f(torch.randint(0, 40, (4, 3))).sum()
    (loss + emb.reinforce(loss)).backward()
    assert g.presence_logit.grad.abs().sum() > 0


def test_deepcopy_and_pickle_keep_their_own_pruning_count():
    import copy
    import io

    torch.manual_seed(0)
    emb = ProdigeEmbedding(60, 4, budget=5.0)
    buf = io.BytesIO()
    torch.save(emb, buf)  # the whole module (the hook is re-made on load)
    buf.seek(0)
    copies = [copy.deepcopy(emb), torch.load(buf, weights_only=False)]
    x = torch.randint(0, 60, (8, 3))
    for i, c in enumerate(copies, 1):
        c(x).sum().backward()  # training mode: a step of the copy, not of the original
        assert c._steps == 1 and emb._steps == 0
        c.prune_to_budget()
        assert c.num_stored_parameters() <= 5.0 * 60 and not emb.pruning_done()


def test_compiled_training_prunes_without_recompiles():
    # the pruning rounds run in a hook on the length logits (outside the compiled graph); the
    # CSR keeps its size (pruned slots are parked) until the last round drops them: two graphs
    from tgrep.nn.prodige_embedding import PRUNE_EVERY, PRUNE_ROUNDS, PRUNE_START

    torch.manual_seed(0)
    emb = ProdigeEmbedding(60, 4, budget=5.0)
    model = torch.nn.Sequential(emb, torch.nn.Flatten(), torch.nn.Linear(12, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    f, n = _counting_compile(model)
    assert not emb.pruning_done()
    for step in range(PRUNE_START + (PRUNE_ROUNDS - 1) * PRUNE_EVERY):
        b = 16 + step % 3
        loss = torch.nn.functional.cross_entropy(f(torch.randint(0, 60, (b, 3))), torch.randint(0, 2, (b,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert emb.pruning_done() and emb.num_stored_parameters() <= 5.0 * 60
    assert n[0] == 1, f"{n[0]} graphs before the last round"
    b = 17
    loss = torch.nn.functional.cross_entropy(f(torch.randint(0, 60, (b, 3))), torch.randint(0, 2, (b,)))
    loss.backward()
    assert n[0] == 2, f"{n[0]} graphs"


@pytest.mark.slow
def test_from_pretrained_preserves_distances_to_centroids():
    torch.manual_seed(0)
    x = torch.randn(120, 4)
    emb = ProdigeEmbedding.from_pretrained(x, budget=8.0, seed=0)
    assert emb.embedding_dim == 4 and not any(p.requires_grad for p in emb.parameters())
    assert emb.num_stored_parameters() <= 8.0 * 120 + 1
    emb.eval()
    out = emb(torch.arange(120))
    from tgrep.ops import kmeans
    _, c = kmeans(x, 4, seed=0, return_centroids=True)
    target = torch.cdist(x, c)
    mse = float(((out - target) ** 2).mean())
    assert mse < 0.2 * float(target.var())  # far better than a constant


def test_frozen_embedding_is_deterministic_in_training_mode():
    torch.manual_seed(0)
    emb = ProdigeEmbedding(30, 4).requires_grad_(False)  # what from_pretrained(freeze=True) gives
    x = torch.randint(0, 30, (5, 6))
    emb.train()
    a = emb(x)
    emb.eval()
    torch.testing.assert_close(a, emb(x))


def test_state_dict_keeps_flat_edge_keys_and_the_ema_baseline():
    # the edge parameters live in EdgeParameter submodules (for DDP's sparse gradients), but the
    # checkpoint keys stay 'graph.weight_logit' / 'graph.presence_logit'; the 'ema' REINFORCE
    # baseline is in the extra state, so a resumed run continues with the same baseline
    torch.manual_seed(0)
    for sparse in (False, True):
        emb = ProdigeEmbedding(30, 4, sparse=sparse)
        sd = emb.state_dict()
        assert "graph.weight_logit" in sd and "graph.presence_logit" in sd
        assert not any("_edge_" in k for k in sd)
        emb(torch.randint(0, 30, (5, 3))).sum()
        emb.reinforce(torch.tensor(1.5), baseline="ema")
        assert emb.graph._ema == 1.5
        with torch.no_grad():
            emb.graph.weight_logit.normal_()
        fresh = ProdigeEmbedding(30, 4, sparse=sparse, generator=torch.Generator().manual_seed(9))
        fresh.load_state_dict(emb.state_dict())
        assert torch.equal(fresh.graph.weight_logit, emb.graph.weight_logit)
        assert fresh.graph._ema == 1.5
        assert {n for n, _ in fresh.named_parameters()} == {n for n, _ in emb.named_parameters()}


def test_reinforce_distributed_needs_a_bool():
    emb = ProdigeEmbedding(20, 3)
    emb(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="distributed"):
        emb.reinforce(torch.tensor(1.0), distributed="yes")


def test_hierarchical_sequences_plant_the_tree():
    from tgrep.datasets import hierarchical_sequences

    g = torch.Generator().manual_seed(3)
    x, y, path = hierarchical_sequences(400, 96, (2, 3, 4), 40, leaf_frac=0.6, sibling_frac=0.2, generator=g)
    assert x.shape == (400, 40) and y.shape == (400,) and path.shape == (96, 3)
    assert int(x.min()) >= 0 and int(x.max()) < 96
    # levels nest: the level-l id determines the level-(l-1) id
    assert torch.equal(path[:, 0], path[:, 1] // 3) and torch.equal(path[:, 1], path[:, 2] // 4)
    assert torch.bincount(path[:, 2], minlength=24).min() == 4  # items split evenly over the 24 leaves
    # the most frequent leaf among a sequence's tokens is (almost always) under its label
    leaf = path[x, 2]
    top = torch.mode(leaf, dim=1).values
    assert float((top // 4 == y).float().mean()) > 0.95
    with pytest.raises(ValueError, match="num_items"):
        hierarchical_sequences(10, 20, (4, 4, 4))


def test_center_subtracts_the_item_mean_without_gradient(seed):
    torch.manual_seed(seed)
    emb = ProdigeEmbedding(30, 4, padding_idx=2)
    assert emb.center and "center=True" in repr(emb)
    emb.eval()
    raw = emb.graph(torch.arange(30), torch.arange(30, 34).expand(30, 4))  # independent: items -> anchors
    keep = torch.arange(30) != 2
    idx = torch.randint(0, 30, (6, 5))
    expected = (raw - raw[keep].mean(0))[idx].masked_fill((idx == 2).unsqueeze(-1), 0.0)
    torch.testing.assert_close(emb(idx), expected)
    # no gradient through the mean: exactly the gradient of the raw distances (so a batch's
    # gradient stays on its own items' paths, sparse gradients stay sparse)
    w = torch.randn(30, 4)
    grads = []
    for center in (True, False):
        emb.center = center
        emb.zero_grad()
        (emb.table() * w).sum().backward()
        grads.append(emb.graph.weight_logit.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0
    with pytest.raises(ValueError, match="center"):
        ProdigeEmbedding(10, 2, direction="items", center=True, budget=4.0)
    with pytest.raises(TypeError, match="center"):
        ProdigeEmbedding(10, 2, center=1, budget=4.0)
    assert not ProdigeEmbedding(10, 2, direction="items", budget=4.0).center


def test_smallest_budget_is_met_or_refused():
    """A budget below one edge per item (``3 + K / n`` numbers per item) is refused; at that
    bound the candidate graph fits it (nothing to prune)."""
    n, K = 300, 4
    with pytest.raises(ValueError, match="'budget'"):
        ProdigeEmbedding(n, K, budget=3.0)
    emb = ProdigeEmbedding(n, K, budget=3.0 + K / n)
    assert emb.num_stored_parameters() <= (3.0 + K / n) * n + 1e-9
