"""ProdigeCompression: the defaults on the paper's sanity check (small), budgets, the Module API,
argument validation (issue 12 items 9-10)."""
import math

import pytest
import torch

from tgrep.datasets import weighted_erdos_renyi
from tgrep.models import ProdigeCompression
from tgrep.models.prodige import backbone_pairs, hub_edges
from tgrep.ops import kmeans, shortest_paths
from tgrep.utils import to_csr


def _er(n, seed, p=0.3):
    gen = torch.Generator().manual_seed(seed)
    ei, w = weighted_erdos_renyi(n, p, generator=gen)
    D = shortest_paths(*to_csr(ei, n, w.double(), undirected=True), torch.arange(n))
    return ei, w, D


def _essential(ei, w, D):
    """True edges whose removal lengthens their endpoints' distance (scipy-free, by brute force)."""
    n, out = D.size(0), set()
    for k in range(ei.size(1)):
        keep = torch.ones(ei.size(1), dtype=torch.bool)
        keep[k] = False
        u, v = int(ei[0, k]), int(ei[1, k])
        d = shortest_paths(*to_csr(ei[:, keep], n, w[keep].double(), undirected=True), torch.tensor([u]),
                           torch.tensor([[v]]))
        if float(d) > float(D[u, v]) + 1e-9:
            out.add((min(u, v), max(u, v)))
    return out


@pytest.mark.parametrize("graph_seed", [0, 1, 2])
def test_defaults_recover_small_graph(graph_seed):
    """Sec. 4.1 sanity check at a small size, defaults only: distances reproduced, every edge
    the true graph needs on shortest paths kept, and (almost) nothing else."""
    ei, w, D = _er(12, graph_seed)
    m = ProdigeCompression(verbose=False, seed=graph_seed).fit(distances=D.float())
    assert m.fit(distances=D.float()) is m
    P = m.pairwise_distances()
    assert P.shape == (12, 12)
    assert float(((P.double() - D) ** 2).mean()) < 1e-3
    kept = {(min(a, b), max(a, b)) for a, b in m.graph.prune()[0].T.tolist()}
    need = _essential(ei, w, D)
    assert need <= kept and len(kept) <= 1.5 * len(need)
    assert m.parameters_per_instance() == m.graph.num_stored_parameters() / 12
    phases = {r["phase"] for r in m.history_}
    assert phases == {"train", "finetune"} and len(m.history_) == m.epochs + m.finetune_epochs
    assert set(m.history_[0]) == {"epoch", "phase", "loss", "params_per_instance", "lam", "seconds"}


def test_backbone_pairs_is_the_needed_edge_set():
    ei, w, D = _er(15, 5)
    got = {tuple(e) for e in backbone_pairs(D).T.tolist()}
    assert got == _essential(ei, w, D)
    # Euclidean points in general position: every pair has slack, all pairs are kept
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    assert backbone_pairs(torch.cdist(x, x)).size(1) == 15


@pytest.mark.parametrize("budget, extra", [(3.0, 0), (5.0, 5)])  # budget 3: no room for extra hub vertices
def test_budget_on_vectors_is_met_exactly_and_connected(seed, budget, extra):
    torch.manual_seed(seed)
    x = torch.randn(60, 4)
    m = ProdigeCompression(budget, knn=4, hubs=5, hub_links=2, verbose=False, seed=seed).fit(x)
    assert m.graph.num_nodes == 60 + extra  # the hub vertices are stored, so they count
    kept = int(m.graph.kept().sum())
    assert kept == int((budget * 60 - 60 - extra) // 2)
    assert m.graph.num_edges == kept  # rebuilt with the kept edges only
    assert m.parameters_per_instance() == (60 + extra + 2 * kept) / 60 <= budget
    P = m.pairwise_distances()
    assert P.shape == (60, 60)
    assert bool(torch.isfinite(P).all()) and float(P.max()) < float(m.graph.default_distance)  # connected
    D = torch.cdist(x, x)
    mse, mean = float(((P - D) ** 2).mean()), float(((D - D.mean()) ** 2).mean())
    if extra:
        assert mse < mean  # better than predicting the mean distance
    else:
        # budget 3 leaves a spanning tree: "better than the mean" failed on ~7% of seeds (6 and
        # 18 of 0..29), so the claim here is that the lengths were trained: far below the
        # tree metric of the minimum spanning tree with the true lengths
        from scipy.sparse.csgraph import minimum_spanning_tree, shortest_path

        T = torch.from_numpy(shortest_path(minimum_spanning_tree(D.double().numpy()), directed=False))
        assert mse < 0.25 * float(((T - D.double()) ** 2).mean())
    assert [r["phase"] for r in m.history_].count("prune") == 7 * 2  # 8 rounds, 2 epochs between


def test_hub_edges_match_farthest_point_sampling(seed):
    torch.manual_seed(seed)
    x = torch.randn(60, 4)
    ei = hub_edges(lambda h: (x - x[h]).norm(dim=1), 60, 5, 2, x.device)
    hubs = [0]  # farthest-point sampling from row 0, computed independently
    for _ in range(4):
        hubs.append(int(torch.cdist(x, x[hubs]).min(1).values.argmax()))
    near = torch.cdist(x, x[hubs]).argsort(1)[:, :2]
    want = {(i, hubs[j]) for i in range(60) for j in near[i].tolist() if i != hubs[j]}
    want |= {(a, b) for a in hubs for b in hubs if a < b}
    got = {tuple(sorted(e)) for e in ei.T.tolist() if e[0] != e[1]}
    assert got == {tuple(sorted(e)) for e in want}


def test_module_api_state_dict_forward_to():
    torch.manual_seed(0)
    x = torch.randn(30, 3)
    m = ProdigeCompression(4.0, epochs=1, finetune_epochs=1, knn=4, hubs=4, verbose=False, seed=0).fit(x)
    assert isinstance(m, torch.nn.Module) and "target_params_per_instance=4.0" in repr(m)
    i, j = torch.tensor([0, 1, 2]), torch.tensor([5, 6, 7])
    P = m.pairwise_distances()
    torch.testing.assert_close(m(i, j), P[i, j])
    fresh = ProdigeCompression()
    fresh.load_state_dict(m.state_dict())
    torch.testing.assert_close(fresh.pairwise_distances(), P)
    assert fresh.history_ == m.history_ and fresh.num_points == 30
    assert m.to("cpu") is m
    with pytest.raises(RuntimeError, match="fit"):
        ProdigeCompression().pairwise_distances()


def test_bad_inputs_named_at_construction():
    m = ProdigeCompression(verbose=False, epochs=1)
    with pytest.raises(ValueError, match="distances"):
        m.fit(distances=torch.tensor([[0.0, -1.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="distances"):
        m.fit(distances=torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="distances"):
        m.fit(distances=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="x"):
        m.fit(torch.tensor([[float("nan"), 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="exactly one"):
        m.fit()
    for kw, err in [(dict(target_params_per_instance=0.5), ValueError),
                    (dict(target_params_per_instance=math.nan), ValueError),
                    (dict(sparsity=math.nan), ValueError), (dict(sparsity=-1.0), ValueError),
                    (dict(lr=math.inf), ValueError), (dict(epochs=2.5), TypeError), (dict(seed=1.5), TypeError),
                    (dict(seed=True), TypeError), (dict(batch_size=0), ValueError), (dict(verbose="yes"), TypeError),
                    (dict(knn=0, hubs=0), ValueError), (dict(init_prob=1.5), TypeError),
                    (dict(default_distance=-1), TypeError), (dict(lambda_rate=math.nan), TypeError)]:
        name = next(iter(kw))
        with pytest.raises(err, match=name if err is ValueError or name in ("epochs", "seed", "verbose") else ""):
            ProdigeCompression(**kw)
    # issue 12 item 9: a budget that leaves no edge is refused by name (was ZeroDivisionError)
    with pytest.raises(ValueError, match="target_params_per_instance"):
        ProdigeCompression(1.05, verbose=False).fit(torch.randn(10, 2))
    m = ProdigeCompression(1.25, epochs=1, finetune_epochs=1, verbose=False, seed=0).fit(torch.randn(8, 2))
    assert int(m.graph.kept().sum()) == 1


def test_graph_constructor_arguments_named():
    from tgrep.nn import ProdigeGraph

    ei = torch.tensor([[0, 1], [1, 2]])
    for kw in (dict(init_prob=1.5), dict(init_prob=math.nan), dict(default_distance=-1.0),
               dict(default_distance=math.inf), dict(init_weight=0.0)):
        with pytest.raises(ValueError, match=next(iter(kw))):
            ProdigeGraph(ei, 3, **kw)
    with pytest.raises(TypeError, match="directed"):
        ProdigeGraph(ei, 3, directed=1)
    g = ProdigeGraph(ei, 3)
    with pytest.raises(TypeError, match="seed"):
        g(torch.tensor([0]), seed=1.5)
    d = g(torch.tensor([0, 1]), torch.tensor([2, 2]))
    with pytest.raises(ValueError, match="momentum"):
        g.reinforce(d, momentum=math.nan)
    with pytest.raises(ValueError, match="directed"):
        ProdigeGraph.bipartite(torch.tensor([[0], [0]]), 1, 1, directed=True)


def test_initial_lengths_at_least_squares_scale():
    """Lengths start at the candidate distances times s = <d_G, D> / <d_G, d_G> (d_G: the
    graph's shortest paths at unscaled lengths): checked against scipy's all-pairs Dijkstra
    (the fit samples targets, so to a few percent); on an exact backbone s = 1."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(3))
    m = ProdigeCompression(epochs=0, finetune_epochs=0, knn=3, hubs=3, hub_links=1, verbose=False, seed=0).fit(x)
    ei = m.graph.edge_index
    _, hubs = kmeans(x, 3, seed=0, return_centroids=True)  # the 3 extra (Steiner) vertices 40..42
    pts = torch.cat([x, hubs])
    assert m.graph.num_nodes == 43 and m.num_points == 40
    w = (pts[ei[0]] - pts[ei[1]]).norm(dim=1).double()
    s = m.graph.init_weight.double() / w
    assert float(s.max() - s.min()) < 1e-5 * float(s.mean())  # one factor for every edge
    A = csr_matrix((torch.cat([w, w]).numpy(), (torch.cat([ei[0], ei[1]]).numpy(), torch.cat([ei[1], ei[0]]).numpy())),
                   shape=(43, 43))
    d, D = torch.tensor(dijkstra(A))[:40, :40], torch.cdist(x.double(), x.double())
    want = float((d * D).sum() / (d * d).sum())
    assert want < 0.95 and float(s[0]) == pytest.approx(want, rel=0.05)
    _, _, Dg = _er(12, 4)
    m = ProdigeCompression(epochs=0, finetune_epochs=0, verbose=False, seed=0).fit(distances=Dg.float())
    torch.testing.assert_close(m.graph.init_weight, Dg.float()[m.graph.edge_index[0], m.graph.edge_index[1]])


def test_steiner_hubs_structure():
    """Hub vertices are k-means centroids (ids N..), each point links to its nearest hubs, each
    hub to its 64 nearest hubs and 4 nearest top-level hubs, top-level hubs pairwise; checked
    against cdist orderings computed here."""
    from tgrep.models.prodige import num_extra_vertices, steiner_hubs

    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(1))
    n, H = 300, 80
    pos, ei = steiner_hubs(x, H, 2, seed=0)
    _, hub = kmeans(x, H, seed=0, return_centroids=True)
    _, top = kmeans(hub, H // 10, seed=0, return_centroids=True)
    torch.testing.assert_close(pos, torch.cat([hub, top]))
    assert num_extra_vertices(H) == H + 8 == pos.size(0) and num_extra_vertices(65) == 65
    got = {(min(a, b), max(a, b)) for a, b in ei.T.tolist()}
    want = {(i, n + int(h)) for i in range(n) for h in torch.cdist(x, hub)[i].argsort()[:2]}
    Dh = torch.cdist(hub, hub).fill_diagonal_(math.inf)
    want |= {(n + min(a, int(b)), n + max(a, int(b))) for a in range(H) for b in Dh[a].argsort()[:64]}
    want |= {(n + a, n + H + int(t)) for a in range(H) for t in torch.cdist(hub, top)[a].argsort()[:4]}
    want |= {(n + H + a, n + H + b) for a in range(8) for b in range(a + 1, 8)}
    assert got == want
    # few hubs: all hub pairs, no top level
    pos, ei = steiner_hubs(x, 10, 1, seed=0)
    assert pos.size(0) == 10 and int((ei.min(0).values >= n).sum()) == 45
