"""PRODIGE: ProdigeGraph (REINFORCE unbiasedness by exact enumeration, path gradients, eval mode,
prune, SparseAdam), ProdigeEmbedding, ProdigeCompression, the weighted Erdős–Rényi generator."""
import itertools

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

import tgrep
from tgrep.kernels.reference import rng
from tgrep.nn import ProdigeGraph


@pytest.fixture(autouse=True)
def reference_backend():
    # tiny graphs: the pure reference spec is exact and fast enough; it also lets the
    # enumeration tests replace the random draws
    with tgrep.use_backend("reference"):
        yield


def force_samples(monkeypatch, table, num_edges):
    """Row r of every search sees exactly the CSR edges whose bit is set in table[r]."""
    table = torch.as_tensor(table, dtype=torch.long)

    def uniform(seed, row, edge):
        bits = (table[row.long()] >> edge.long()) & 1
        return torch.where(bits.bool(), 0.0, 1.0 - 2.0**-24).to(torch.float64)

    monkeypatch.setattr(rng, "uniform", uniform)


def subset_prob(graph, patterns):
    """P(row sample == pattern) as a differentiable function of the presence logits: [R]."""
    p = torch.sigmoid(graph.presence_logit)[graph.perm]  # [E]
    E = p.numel()
    bits = ((patterns[:, None] >> torch.arange(E)) & 1).to(p.dtype)
    return torch.where(bits.bool(), p, 1 - p).prod(1)


def tiny_graph(directed=False):
    if directed:
        ei = torch.tensor([[0, 0, 1, 2], [1, 2, 2, 3]])
        n = 4
    else:
        ei = torch.tensor([[0, 1, 0, 2], [1, 2, 2, 3]])
        n = 4
    g = ProdigeGraph(ei, n, directed=directed, init_weight=1.0, default_distance=5.0).double()
    with torch.no_grad():
        g.weight_logit.uniform_(-1, 2)
        g.presence_logit.uniform_(-1.5, 1.5)
    return g


def row_loss(d, target):
    return ((d - target) ** 2).sum(-1)


@pytest.mark.parametrize("directed", [False, True])
def test_reinforce_unbiased_by_enumeration(monkeypatch, seed, directed):
    g = tiny_graph(directed)
    E = g.indices.numel()
    patterns = torch.arange(2**E)
    force_samples(monkeypatch, patterns, E)
    R = patterns.numel()
    src = torch.zeros(R, dtype=torch.long)
    dst = torch.tensor([3, 1]).expand(R, 2)
    target = torch.rand(2, dtype=torch.float64) * 3
    d = g(src, dst)
    L = row_loss(d, target).detach()
    P = subset_prob(g, patterns)
    # exact gradient of E[L] w.r.t. the presence logits
    exact = torch.autograd.grad((P * L).sum(), g.presence_logit)[0]
    # expected REINFORCE estimate: weight row r by R * P(r) so the batch mean is the expectation
    g.zero_grad()
    g.reinforce(R * P.detach() * L, baseline="none").backward()
    est = g.presence_logit.grad.clone()
    assert torch.allclose(est, exact, atol=1e-10), (est, exact)
    assert exact.abs().max() > 1e-3  # the test is not vacuous
    # the restriction matters: summing (b - p) over *all* edges gives the same expectation too,
    # but the inspected set must be right for each sample: the baseline term vanishes exactly
    d = g(src, dst)
    g.zero_grad()
    g.reinforce(R * P.detach(), baseline="none").backward()
    assert g.presence_logit.grad.abs().max() < 1e-10


def test_reinforce_leave_one_out_unbiased(monkeypatch, seed):
    g = tiny_graph(directed=True)
    E = g.indices.numel()
    S = 2**E
    target = torch.rand(1, dtype=torch.float64) * 3
    P = subset_prob(g, torch.arange(S)).detach()
    # exact gradient of E[(L_0 + L_1) / 2] = E[L]
    force_samples(monkeypatch, torch.arange(S), E)
    d = g(torch.zeros(S, dtype=torch.long), torch.full((S, 1), 3))
    L = row_loss(d, target).detach()
    exact = torch.autograd.grad((subset_prob(g, torch.arange(S)) * L).sum(), g.presence_logit)[0]
    g.forget_samples()  # that forward was only for the exact expectation
    total = torch.zeros_like(exact)
    for i, j in itertools.product(range(S), repeat=2):
        force_samples(monkeypatch, torch.tensor([i, j]), E)
        d = g(torch.zeros(2, dtype=torch.long), torch.full((2, 1), 3))
        g.zero_grad()
        g.reinforce(row_loss(d, target), baseline="loo").backward()
        total += P[i] * P[j] * g.presence_logit.grad
    assert torch.allclose(total, exact, atol=1e-10)


@pytest.mark.parametrize("training", [True, False])
def test_path_gradient_matches_finite_differences(seed, training):
    torch.manual_seed(seed)
    x = torch.randn(12, 3, dtype=torch.float64)
    g = ProdigeGraph.from_vectors(x, knn=3, random_edges=2, init_prob=0.7).double()
    g.train(training)
    src = torch.randint(0, 12, (5,))
    dst = torch.randint(0, 12, (5, 3))
    c = torch.rand(5, 3, dtype=torch.float64) * 2

    def loss():
        g.forget_samples()
        return ((g(src, dst, seed=123) - c) ** 2).sum()

    g.zero_grad()
    loss().backward()
    grad = g.weight_logit.grad.clone()
    eps = 1e-6
    fd = torch.zeros_like(grad)
    with torch.no_grad():
        for m in range(g.num_edges):
            g.weight_logit[m] += eps
            up = loss()
            g.weight_logit[m] -= 2 * eps
            down = loss()
            g.weight_logit[m] += eps
            fd[m] = (up - down) / (2 * eps)
    assert torch.allclose(grad, fd, atol=1e-5), (grad - fd).abs().max()
    assert grad.abs().sum() > 0


def scipy_dist(edge_index, weight, n, default):
    dense = np.zeros((n, n))
    for (u, v), w in zip(edge_index.T.tolist(), weight.tolist()):
        dense[u, v] = dense[v, u] = w
    d = dijkstra(csr_matrix(dense), directed=False)
    d[np.isinf(d)] = default
    return d


def test_eval_mode_deterministic_and_prune_consistent(seed):
    torch.manual_seed(seed)
    x = torch.randn(15, 4)
    g = ProdigeGraph.from_vectors(x, knn=3, random_edges=1, default_distance=7.0)
    with torch.no_grad():
        g.presence_logit.normal_(0, 2)
    g.eval()
    src = torch.arange(15)
    d1, d2 = g(src).detach(), g(src).detach()
    assert torch.equal(d1, d2)
    ei, w = g.prune()
    assert ei.size(1) == int((g.edge_prob >= 0.5).sum())
    assert g.num_stored_parameters() == 15 + 2 * ei.size(1)
    ref = scipy_dist(ei, w.double(), 15, 7.0)
    assert np.allclose(d1.double().numpy(), ref, atol=1e-5)
    # a graph rebuilt from the pruned edges gives the same distances
    h = ProdigeGraph(ei, 15, init_weight=w, default_distance=7.0).eval()
    assert torch.allclose(h(src), d1, atol=1e-5)
    # training mode samples: different seeds give different distances (p in (0, 1))
    g.train()
    with torch.no_grad():
        g.presence_logit.fill_(0.0)
    assert not torch.equal(g(src, seed=1), g(src, seed=2))
    assert torch.equal(g(src, seed=3), g(src, seed=3))


def test_sparse_adam_step(seed):
    torch.manual_seed(seed)
    x = torch.randn(20, 3)
    g = ProdigeGraph.from_vectors(x, knn=2, random_edges=1, sparse=True)
    opt = torch.optim.SparseAdam(list(g.parameters()), lr=0.1)
    before_w, before_b = g.weight_logit.detach().clone(), g.presence_logit.detach().clone()
    src, dst = torch.arange(4), torch.randint(0, 20, (4, 2))
    per = ((g(src, dst) - 1.0) ** 2).sum(1)
    (per.mean() + g.reinforce(per)).backward()
    assert g.weight_logit.grad.is_sparse and g.presence_logit.grad.is_sparse
    gw = g.weight_logit.grad.coalesce()
    touched = gw.indices()[0][gw.values() != 0]
    opt.step()
    changed = (g.weight_logit.detach() != before_w).nonzero().squeeze(1)
    assert set(changed.tolist()) == set(touched.tolist()) and changed.numel() > 0
    assert not torch.equal(g.presence_logit.detach(), before_b)
    # with the sparsity term every presence logit moves
    opt.zero_grad()
    g.sparsity().backward()
    assert g.presence_logit.grad.is_sparse
    opt.step()


def test_learnable_default_distance_gets_gradient():
    ei = torch.tensor([[0], [1]])
    g = ProdigeGraph(ei, 3, learn_default_distance=True, default_distance=4.0).eval()
    d = g(torch.tensor([0, 0]), torch.tensor([1, 2]))
    assert d[1].item() == 4.0
    d.sum().backward()
    assert g.default_distance.grad.item() == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="edge_index"):
        ProdigeGraph(torch.tensor([[0, 5], [1, 2]]), 4)
    with pytest.raises(ValueError, match="empty"):
        ProdigeGraph(torch.empty(2, 0, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="num_nodes"):
        ProdigeGraph(torch.tensor([[0], [1]]), 0)
    with pytest.raises(ValueError, match="x"):
        ProdigeGraph.from_vectors(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="x"):
        ProdigeGraph.from_vectors(torch.zeros(1, 3))
    g = ProdigeGraph(torch.tensor([[0, 1], [1, 2]]), 3)
    with pytest.raises(ValueError, match="sources"):  # checked inside tgrep::shortest_paths
        g(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="dst"):
        g(torch.tensor([0]), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="forward"):
        g.reinforce(torch.zeros(1))
    g(torch.tensor([0, 1]), torch.tensor([2, 2]))
    with pytest.raises(ValueError, match="loss"):
        g.reinforce(torch.zeros(3))
    with pytest.raises(ValueError, match="loss"):
        g.reinforce(torch.tensor([float("nan"), 0.0]))
    with pytest.raises(ValueError, match="init_prob"):
        ProdigeGraph(torch.tensor([[0], [1]]), 2, init_prob=1.0)


# ---------------------------------------------------------------- ProdigeCompression / data
def test_weighted_erdos_renyi(seed):
    from tgrep.datasets import weighted_erdos_renyi
    from tgrep.datasets.erdos_renyi import _connected

    gen = torch.Generator().manual_seed(seed)
    ei, w = weighted_erdos_renyi(15, 0.25, generator=gen)
    assert ei.size(0) == 2 and bool((ei[0] < ei[1]).all()) and _connected(15, ei)
    assert bool((w >= 0).all() and (w < 1).all())
    assert not _connected(3, torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="p"):
        weighted_erdos_renyi(5, 1.5)


# ---------------------------------------------------------------- reinforce_coefficients op
def _cpp_available(name):
    from tgrep import _backend

    return _backend.cpp_status(name)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reinforce_coefficients_cpp_matches_reference(seed, dtype):
    from tgrep.ops import reinforce_coefficients, shortest_paths
    from tgrep.utils import to_csr

    if not _cpp_available("prodige_reinforce"):
        pytest.skip("C++ kernel prodige_reinforce not available")
    n = 40
    ei = torch.randint(0, n, (2, 150))
    indptr, indices, w = to_csr(ei, n, torch.rand(150, dtype=dtype), undirected=True)
    p = torch.rand(indices.numel(), dtype=dtype)
    src = torch.randint(0, n, (9,))
    tg = torch.randint(0, n, (9, 3))
    _, pred = shortest_paths(indptr, indices, w, src, tg, edge_prob=p, seed=seed, return_predecessors=True)
    adv = torch.randn(9, dtype=dtype)
    ref = reinforce_coefficients(indptr, pred, src, seed, p, adv)
    with tgrep.use_backend("cpp"):
        fast = reinforce_coefficients(indptr, pred, src, seed, p, adv)
    assert fast.dtype == torch.float64 and torch.allclose(fast, ref, atol=1e-12)
    assert ref.abs().sum() > 0
    # direct definition for one row
    settled = (pred[0] >= 0).clone()
    settled[src[0]] = True
    e_src = torch.repeat_interleave(torch.arange(n), indptr.diff())
    mask = settled[e_src]
    one = reinforce_coefficients(indptr, pred[:1], src[:1], seed, p, torch.ones(1, dtype=dtype))
    b = tgrep.ops.edge_presence(seed, torch.zeros(1, dtype=torch.long), torch.arange(p.numel()), p)
    assert torch.allclose(one, torch.where(mask, b.double() - p.double(), 0.0), atol=1e-12)
    with pytest.raises(ValueError, match="advantage"):
        reinforce_coefficients(indptr, pred, src, seed, p, adv[:3])


def test_reinforce_several_forwards_and_constructors(seed):
    torch.manual_seed(seed)
    x = torch.randn(30, 3)
    g = ProdigeGraph.from_vectors(x, knn=3, random_edges=2)
    ei = g.edge_index
    assert bool((ei[0] < ei[1]).all())  # undirected: once, u < v, no self-loops
    assert torch.unique(ei[0] * 30 + ei[1]).numel() == ei.size(1)
    nn_ = torch.cdist(x, x).fill_diagonal_(float("inf")).argmin(1)
    pairs = {(min(a, b), max(a, b)) for a, b in ei.T.tolist()}
    assert all((min(i, j), max(i, j)) in pairs for i, j in enumerate(nn_.tolist()))
    d1 = g(torch.arange(3), torch.tensor([4, 5, 6]))
    with pytest.raises(ValueError, match="loss"):
        g.reinforce(torch.zeros(4))
    loss = d1.sum()
    (loss + g.reinforce(loss)).backward()  # a scalar loss over the rows of the last forward
    assert g.presence_logit.grad.abs().sum() > 0
    assert g._last is None
    with pytest.raises(RuntimeError, match="forward"):
        g.reinforce(loss)
    # bipartite user-item graph
    inter = torch.tensor([[0, 0, 1, 2, 3], [0, 1, 1, 2, 2]])
    b = ProdigeGraph.bipartite(inter, 4, 3, user_knn=1, item_knn=1)
    pairs = {(u, v) for u, v in b.edge_index.T.tolist()}
    assert all((u, 4 + i) in pairs for u, i in inter.T.tolist())
    assert b.num_nodes == 7 and b.num_edges > inter.size(1)
    only = ProdigeGraph.bipartite(inter, 4, 3, user_knn=0, item_knn=0)
    assert only.num_edges == inter.size(1)
    with pytest.raises(ValueError, match="items"):
        ProdigeGraph.bipartite(torch.tensor([[0], [3]]), 4, 3)


def test_undirected_edge_index_in_pyg_convention_is_merged():
    # PyG lists each undirected edge in both directions: one parameter pair per edge
    ei = torch.tensor([[0, 1, 1, 2, 2, 2], [1, 0, 2, 1, 2, 0]])
    w = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0, 4.0])
    g = ProdigeGraph(ei, 3, init_weight=w)
    assert g.num_edges == 3  # {0,1}, {1,2}, {0,2}; the self-loop (2, 2) is dropped
    torch.testing.assert_close(g.init_weight, torch.tensor([1.0, 4.0, 2.0]))
    with pytest.raises(ValueError, match="self-loops"):
        ProdigeGraph(torch.tensor([[1], [1]]), 3)
    directed = ProdigeGraph(ei, 3, directed=True, init_weight=w)
    assert directed.num_edges == 5  # the self-loop is dropped, both directions kept


@pytest.mark.parametrize("soft", [False, True])
def test_soft_mode_unreachable_pairs_use_all_candidates(monkeypatch, soft, seed):
    """Soft mode: a pair with no path in its sampled graph gets its distance in the graph of
    all candidate edges (scipy Dijkstra on every edge), with the path gradient on that path;
    reachable pairs keep the sampled distance. Hard mode: default_distance, no length gradient."""
    g = tiny_graph()
    g.soft = soft
    E = int(g.indptr[-1])
    # row 0: only CSR edges leaving/entering vertex 0 and 1 along 0-1 present; row 1: everything
    keep01 = sum(1 << e for e in range(E) if {int(g.indices[e]), int(np.searchsorted(g.indptr, e, "right") - 1)}
                 == {0, 1})
    force_samples(monkeypatch, [keep01, (1 << E) - 1], E)
    g.train()
    src, dst = torch.tensor([0, 0]), torch.tensor([[1, 3], [1, 3]])
    d = g(src, dst, seed=0)
    w = g.edge_weight.detach().numpy()
    ei = g.edge_index.numpy()
    A = csr_matrix((np.r_[w, w], (np.r_[ei[0], ei[1]], np.r_[ei[1], ei[0]])), shape=(4, 4))
    full = dijkstra(A, indices=0)
    w01 = float(w[[i for i, (a, b) in enumerate(ei.T.tolist()) if {a, b} == {0, 1}][0]])
    assert d[0, 0].item() == pytest.approx(w01)  # row 0 holds only edge 0-1 (0-2-1 may be shorter)
    assert d[1, 1].item() == pytest.approx(full[3])
    assert d[0, 1].item() == pytest.approx(full[3] if soft else 5.0)
    d[0, 1].backward()
    grad = g.weight_logit.grad
    if soft:  # gradient sigmoid(theta) on the edges of the full graph's shortest path 0 -> 3
        _, pred = dijkstra(A, indices=0, return_predecessors=True)
        path, v = set(), 3
        while v != 0:
            path.add((min(v, pred[v]), max(v, pred[v])))
            v = pred[v]
        want = torch.tensor([float((a, b) in path) for a, b in ei.T.tolist()], dtype=grad.dtype)
        torch.testing.assert_close(grad, want * torch.sigmoid(g.weight_logit.detach()))
    else:
        assert grad is None or float(grad.abs().sum()) == 0.0
    assert f"soft={soft}" in repr(g)
    with pytest.raises(TypeError, match="soft"):
        ProdigeGraph(torch.tensor([[0], [1]]), 2, soft=1)


def test_soft_mode_compiles_fullgraph_without_recompiles():
    """The soft training forward (two searches + where) under torch.compile(fullgraph=True,
    dynamic=True): one graph across batch sizes, the eager values."""
    from tests._compile import count_compiles

    g = ProdigeGraph(torch.tensor([[0, 1, 2, 0], [1, 2, 3, 3]]), 5, init_prob=0.5, soft=True).train()
    calls = [(torch.arange(b) % 5, torch.arange(5).expand(b, 5), 7) for b in (2, 3, 4)]
    outs, graphs = count_compiles(lambda s, d, seed: g(s, d, seed=seed), *calls)
    assert graphs == 1
    for (s, d, seed), out in zip(calls, outs):
        torch.testing.assert_close(out, g(s, d, seed=seed))


def test_csr_probabilities_follow_every_change_of_presence_or_structure(seed):
    """The eager cache of sigmoid(presence_logit)[perm] (what a training search samples from) is
    never stale: an optimizer step, an in-place edit, a dtype change, a new CSR."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, 12, (2, 40), generator=g)
    graph = ProdigeGraph(ei, 12)

    def fresh():
        return torch.sigmoid(graph.presence_logit.detach()).index_select(0, graph.perm)

    p = graph._csr_prob()
    assert graph._csr_prob() is p and torch.equal(p, fresh())  # unchanged: kept
    opt = torch.optim.SGD(graph.parameters(), lr=1.0)
    graph.presence_logit.grad = torch.randn(graph.presence_logit.shape, generator=g)
    opt.step()
    assert torch.equal(graph._csr_prob(), fresh()) and not torch.equal(graph._csr_prob(), p)
    with torch.no_grad():
        graph.presence_logit[:3] = -5.0
    assert torch.equal(graph._csr_prob(), fresh())
    graph.double()
    assert graph._csr_prob().dtype == torch.float64 and torch.equal(graph._csr_prob(), fresh())
    keep = torch.rand(graph.num_edges, generator=g) < 0.5
    graph._set_csr(keep, park=False)
    assert graph._csr_prob().shape == graph.perm.shape and torch.equal(graph._csr_prob(), fresh())
