"""ProdigeEmbedding's cached search trees (training): distances are the current lengths summed
along the cached trees, a refresh gives the exact distances, eval / no_grad are exact, the cache
follows load_state_dict and reset_parameters, REINFORCE is rescaled to the fresh rows."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tgrep.nn import ProdigeEmbedding
from tgrep.nn.prodige import ProdigeGraph


def _walk(w, edge, parent, default):
    """Independent: each anchor row's vertex walks its cached tree in plain Python (edge
    ``len(w)``, hanging an unreached vertex from the anchor, has the default distance)."""
    K, N = parent.shape
    w = torch.cat([w, torch.tensor([default], dtype=w.dtype)])
    out = torch.empty(K, N, dtype=w.dtype)
    for b in range(K):
        for v in range(N):
            x, s = v, 0.0
            while int(parent[b, x]) != x:
                s += float(w[edge[b, x]])
                x = int(parent[b, x])
            out[b, v] = s
    return out


def _raw(emb):
    """Training-mode table without centring."""
    was, emb.center = emb.center, False
    try:
        return emb.table()
    finally:
        emb.center = was


def _exact(emb):
    """The exact distances of the deterministic graph, items -> anchors (the other direction)."""
    g = emb.graph
    was = g.training
    g.eval()
    with torch.no_grad():
        d = g(torch.arange(emb.num_embeddings), emb.anchors.expand(emb.num_embeddings, -1))
    g.train(was)
    return d


def test_cached_distances_are_current_lengths_along_cached_trees(seed):
    torch.manual_seed(seed)
    emb = ProdigeEmbedding(30, 4, budget=8.0, refresh_every=2)
    assert "refresh_every=2" in repr(emb)
    emb.train()
    before = emb._tree_parent.clone()
    t = _raw(emb)
    assert int(emb._tree_step) == 1
    # ceil(4 / 2) = 2 anchors searched afresh at step 0 (rows 0, 1), then rows 2, 3, then 0, 1 ...
    assert torch.equal(emb._tree_parent[2:], before[2:])
    assert torch.equal(emb.graph._last[1], emb.anchors[:2])
    w = F.softplus(emb.graph.weight_logit.detach())
    expected = _walk(w, emb._tree_edge, emb._tree_parent, float(emb.graph.default_distance.detach()))
    torch.testing.assert_close(t, expected[:, :30].T)
    # lengths change: the cached trees' path sums follow them (an upper bound of the distances)
    with torch.no_grad():
        emb.graph.weight_logit.add_(torch.randn(emb.graph.num_edges))
    t = _raw(emb)
    assert int(emb._tree_step) == 2
    w = F.softplus(emb.graph.weight_logit.detach())
    torch.testing.assert_close(t, _walk(w, emb._tree_edge, emb._tree_parent,
                                        float(emb.graph.default_distance.detach()))[:, :30].T)
    # gradients: those of the walks (autograd through an independent gather-and-sum)
    emb.graph.weight_logit.grad = None
    c = torch.randn(30, 4)
    (_raw(emb) * c).sum().backward()
    theta = emb.graph.weight_logit.detach().clone().requires_grad_()
    par, ed = emb._tree_parent, emb._tree_edge
    ref = []
    wt = torch.cat([F.softplus(theta), emb.graph.default_distance.detach().reshape(1)])
    for b in range(4):
        for v in range(30):
            x, s = v, wt.new_zeros(())
            while int(par[b, x]) != x:
                s = s + wt[ed[b, x]]
                x = int(par[b, x])
            ref.append(s * c[v, b])
    torch.stack(ref).sum().backward()
    torch.testing.assert_close(emb.graph.weight_logit.grad, theta.grad)


def test_refresh_gives_exact_distances_eval_and_no_grad_are_exact(seed):
    torch.manual_seed(seed)
    emb = ProdigeEmbedding(40, 6, budget=8.0, center=False, refresh_every=3)
    with torch.no_grad():
        emb.graph.presence_logit.fill_(30.0)  # p = 1: every sample is the whole graph
    emb.refresh_trees()
    emb.train()
    torch.testing.assert_close(_raw(emb), _exact(emb))  # fresh cache: exact
    with torch.no_grad():
        emb.graph.weight_logit.add_(2 * torch.randn(emb.graph.num_edges))
    exact = _exact(emb)
    stale = _raw(emb)  # 2 of 6 trees fresh, 4 stale: valid paths, never shorter
    assert bool((stale >= exact - 1e-5).all())
    # eval mode and no_grad inference are exact whatever the cache holds
    emb.eval()
    torch.testing.assert_close(emb(torch.arange(40)), exact)
    emb.train()
    step = int(emb._tree_step)
    with torch.no_grad():
        torch.testing.assert_close(emb(torch.arange(40)), exact)
    assert int(emb._tree_step) == step  # the cache is a training-only thing
    for _ in range(2):  # after refresh_every (3) training forwards every tree is fresh again
        _raw(emb)
    torch.testing.assert_close(_raw(emb), exact)
    # refresh_trees(): exact at once
    with torch.no_grad():
        emb.graph.weight_logit.add_(torch.randn(emb.graph.num_edges))
    emb.refresh_trees()
    torch.testing.assert_close(_raw(emb), _exact(emb))


def test_load_state_dict_and_reset_parameters_rebuild_the_cache(seed):
    torch.manual_seed(seed)
    a = ProdigeEmbedding(30, 4, budget=6.0, center=False)
    b = ProdigeEmbedding(30, 4, budget=10.0, center=False)  # another graph: another structure
    opt = torch.optim.Adam(a.parameters(), lr=0.1)
    for _ in range(5):
        loss = a(torch.randint(0, 30, (6, 5))).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        a.graph.presence_logit.fill_(30.0)
    b.load_state_dict(a.state_dict())
    assert b.graph.num_edges == a.graph.num_edges and int(b._tree_step) == 0
    b.train()
    torch.testing.assert_close(_raw(b), _exact(b))  # the cache holds the loaded graph's exact trees
    torch.testing.assert_close(_exact(b), _exact(a))
    with torch.no_grad():
        b.graph.weight_logit.add_(1.0)
    b.reset_parameters()
    assert int(b._tree_step) == 0
    with torch.no_grad():
        b.graph.presence_logit.fill_(30.0)
    b.refresh_trees()
    torch.testing.assert_close(_raw(b), _exact(b))
    assert "_tree_parent" not in b.state_dict() and not any(k.startswith("_tree") for k in b.state_dict())


def test_two_forwards_one_backward_and_arguments():
    torch.manual_seed(0)
    emb = ProdigeEmbedding(30, 4, refresh_every=2)
    x = torch.randint(0, 30, (5, 3))
    # gradient accumulation: the second forward updates the cache, the first one's graph still works
    (emb(x).sum() + emb(x).sum()).backward()
    assert emb.graph.weight_logit.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="refresh_every"):
        ProdigeEmbedding(30, 4, refresh_every=0)
    with pytest.raises(TypeError, match="refresh_every"):
        ProdigeEmbedding(30, 4, refresh_every=2.0)
    with pytest.raises(ValueError, match="refresh_every"):
        emb.refresh_every = 0
    assert emb.refresh_every == 2
    # refresh_every=1: every anchor searched afresh each step; more than K: one anchor per step
    for every, rows in ((1, 4), (10, 1)):
        e = ProdigeEmbedding(30, 4, refresh_every=every)
        e.train()
        e(x).sum().backward()
        assert e.graph._last is None or e.graph._last[1].numel() == rows
        e(x)
        assert e.graph._last[1].numel() == rows


def test_reinforce_scaled_to_the_fresh_rows():
    torch.manual_seed(0)
    emb = ProdigeEmbedding(30, 4, refresh_every=4)  # one fresh anchor per step
    emb.train()
    loss = emb(torch.randint(0, 30, (6, 5))).sum()
    last = emb.graph._last
    assert last[1].numel() == 1
    emb.reinforce(loss, baseline="none").backward()
    g_emb = emb.graph.presence_logit.grad.clone()
    emb.graph.presence_logit.grad = None
    emb.graph._last = last
    emb.graph.reinforce(loss, baseline="none").backward()
    torch.testing.assert_close(g_emb, 4 * emb.graph.presence_logit.grad)
    assert g_emb.abs().sum() > 0


def test_graph_without_cache_paths():
    # soft graphs and frozen lengths use the exact searches in training mode too
    torch.manual_seed(0)
    ei = torch.stack([torch.arange(20).repeat(2), torch.cat([torch.randint(0, 20, (20,)),
                                                             20 + torch.arange(20) % 3])])
    emb = ProdigeEmbedding(20, 3, graph=ProdigeGraph(ei, 23, soft=True), center=False)
    emb.train()
    step = int(emb._tree_step)
    emb(torch.arange(20)).sum().backward()
    assert int(emb._tree_step) == step and emb.graph._last[1].numel() == 3
    frozen = ProdigeEmbedding(20, 3, budget=8.0).requires_grad_(False)
    frozen.train()
    frozen(torch.arange(20))
    assert int(frozen._tree_step) == 0
    # presence frozen, lengths trained: the fresh searches use the deterministic graph
    emb = ProdigeEmbedding(20, 3, budget=8.0, center=False)
    emb.graph.presence_logit.requires_grad_(False)
    emb.train()
    a = _raw(emb)
    assert int(emb._tree_step) == 1 and emb.graph._last is None
    torch.testing.assert_close(a, _exact(emb))
    assert not math.isnan(float(a.sum()))
