"""PRODIGE internals (``tgrep.nn.ProdigeGraph``) against independent computations: the value and
gradient of ``sparsity()``, the leave-one-out / moving-average / scalar baselines of
``reinforce()`` (by linearity: a baseline is a shift of the losses), the REINFORCE surrogate on a
graph whose samples are known, the stored-number counts, and eval-mode distances against scipy."""
import math

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from tgrep.nn import ProdigeGraph


def _graph(sparse=False, init_prob=0.6, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    n = 10  # vertex 9 is isolated: unreachable
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 0, 2, 4, 1, 3],
                       [1, 2, 3, 4, 5, 6, 7, 8, 4, 6, 8, 5, 7]])
    G = ProdigeGraph(ei, n, init_prob=init_prob, sparse=sparse, **kw)
    with torch.no_grad():
        G.weight_logit.copy_(torch.randn(G.num_edges, generator=g))
        G.presence_logit.add_(0.8 * torch.randn(G.num_edges, generator=g))
    return G


def _grad(G, loss_fn):
    G.presence_logit.grad = None
    loss_fn().backward()
    g = G.presence_logit.grad
    return g.to_dense() if g.is_sparse else g.clone()


@pytest.mark.parametrize("sparse", [False, True])
def test_sparsity_value_and_gradient(sparse):
    G = _graph(sparse=sparse)
    theta = G.presence_logit.detach().double()
    p = 1 / (1 + torch.exp(-theta))
    s = G.sparsity().detach()
    assert float(s) == pytest.approx(float(p.mean()), rel=1e-6)
    grad = _grad(G, G.sparsity)
    torch.testing.assert_close(grad.double(), p * (1 - p) / G.num_edges, rtol=1e-5, atol=1e-9)


def test_stored_numbers_and_prune():
    G = _graph()
    p = torch.sigmoid(G.presence_logit.detach())
    assert G.expected_stored_numbers() == pytest.approx(10 + 2 * float(p.sum()), rel=1e-6)
    for thr in (0.5, 0.3, 0.8):
        k = int((p >= thr).sum())
        assert G.num_stored_parameters(thr) == 10 + 2 * k
    keep = p >= 0.5
    assert 0 < int(keep.sum()) < G.num_edges  # precondition: some edges pruned
    ei, w = G.prune()
    assert torch.equal(ei, G.edge_index[:, keep])
    torch.testing.assert_close(w, torch.nn.functional.softplus(G.weight_logit.detach())[keep])


def test_eval_distances_match_scipy_on_the_kept_graph():
    G = _graph(default_distance=7.5).eval()
    ei, w = G.prune()
    n = 10
    A = csr_matrix((w.double().numpy(), (ei[0].numpy(), ei[1].numpy())), shape=(n, n))
    want = dijkstra(A, directed=False)
    want[np.isinf(want)] = 7.5
    got = G(torch.arange(n)).detach().double().numpy()
    assert (want == 7.5).any(), "precondition: some pair unreachable"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    sub = G(torch.tensor([0, 3]), torch.tensor([[8, 5], [1, 3]])).detach().double().numpy()
    np.testing.assert_allclose(sub, [[want[0, 8], want[0, 5]], [want[3, 1], want[3, 3]]], rtol=1e-5, atol=1e-5)


def _reinforce_grad(G, L, seed, **kw):
    G.train()
    src = torch.arange(6)
    G(src, seed=seed)
    return _grad(G, lambda: G.reinforce(L, **kw))


def test_loo_baseline_is_the_mean_of_the_other_rows():
    G = _graph()
    L = torch.tensor([0.3, 2.0, -1.0, 0.7, 4.0, 1.5], dtype=torch.float64)
    B = L.numel()
    loo = L - (L.sum() - L) / (B - 1)
    g_loo = _reinforce_grad(G, L, 5, baseline="loo")
    g_auto = _reinforce_grad(G, L, 5)  # "auto" = "loo" for per-row losses
    g_ref = _reinforce_grad(G, loo, 5, baseline="none")
    assert float(g_ref.abs().max()) > 1e-4, "precondition: a non-zero estimate"
    torch.testing.assert_close(g_loo, g_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_auto, g_ref, rtol=1e-5, atol=1e-7)
    g_none = _reinforce_grad(G, L, 5, baseline="none")
    assert not torch.allclose(g_none, g_ref, atol=1e-5)


def test_ema_baseline_and_momentum():
    G = _graph()
    L1 = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.0, 1.5], dtype=torch.float64)
    L2 = torch.tensor([2.0, -1.0, 0.5, 4.0, 1.0, 3.0], dtype=torch.float64)
    L3 = torch.tensor([0.2, 0.4, 0.1, 0.3, 2.0, 1.0], dtype=torch.float64)
    m = 0.7
    g1 = _reinforce_grad(G, L1, 1, baseline="ema", momentum=m)  # no history: baseline 0
    torch.testing.assert_close(g1, _reinforce_grad(G, L1, 1, baseline="none"), rtol=1e-5, atol=1e-7)
    g2 = _reinforce_grad(G, L2, 2, baseline="ema", momentum=m)  # baseline = mean(L1)
    torch.testing.assert_close(g2, _reinforce_grad(G, L2 - L1.mean(), 2, baseline="none"), rtol=1e-5, atol=1e-7)
    ema = m * float(L1.mean()) + (1 - m) * float(L2.mean())
    g3 = _reinforce_grad(G, L3, 3, baseline="ema", momentum=m)
    torch.testing.assert_close(g3, _reinforce_grad(G, L3 - ema, 3, baseline="none"), rtol=1e-5, atol=1e-7)


def test_scalar_loss_weights_every_row_by_the_loss():
    G = _graph()
    s = torch.tensor(1.7, dtype=torch.float64)
    g = _reinforce_grad(G, s, 4, baseline="none")
    # per-row advantages are L_b / B: a scalar loss s is every row at advantage s
    torch.testing.assert_close(g, _reinforce_grad(G, torch.full((6,), 1.7 * 6, dtype=torch.float64), 4,
                                                  baseline="none"), rtol=1e-5, atol=1e-7)


def test_reinforce_surrogate_on_a_fully_sampled_graph():
    # p = 1 - 1e-4: every edge is drawn present, every row settles every vertex and reads every
    # CSR edge, so c_e = 2 (1 - p) sum_b a_b per undirected parameter (two CSR directions)
    ei = torch.tensor([[0, 1, 2, 0], [1, 2, 3, 3]])
    G = ProdigeGraph(ei, 4, init_prob=1 - 1e-4)
    p = float(torch.sigmoid(G.presence_logit.detach())[0])  # float32, as the search reads it
    L = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    G.train()
    G(torch.tensor([0, 2, 3]), seed=11)
    out = G.reinforce(L, baseline="none")
    assert float(out.detach()) == 0.0
    out.backward()
    want = 2 * (1 - p) * float(L.sum()) / 3
    torch.testing.assert_close(G.presence_logit.grad.double(), torch.full((4,), want, dtype=torch.float64),
                               rtol=1e-4, atol=0)
    # leave-one-out advantages sum to zero: no signal when every row reads every edge
    G.presence_logit.grad = None
    G(torch.tensor([0, 2, 3]), seed=11)
    G.reinforce(L, baseline="loo").backward()
    assert float(G.presence_logit.grad.abs().max()) < 1e-12


def test_sparse_reinforce_equals_dense():
    Gd, Gs = _graph(), _graph(sparse=True)
    L = torch.tensor([0.3, 2.0, -1.0, 0.7, 4.0, 1.5], dtype=torch.float64)
    gd = _reinforce_grad(Gd, L, 9)
    gs = _reinforce_grad(Gs, L, 9)
    torch.testing.assert_close(gs, gd, rtol=1e-6, atol=1e-9)


def test_sparse_adam_step_moves_exactly_the_touched_presence_logits():
    # the SparseAdam step of the docs: every logit with a non-zero gradient moves, by about lr
    G = _graph(sparse=True)
    opt = torch.optim.SparseAdam([G.presence_logit], lr=0.05)
    before = G.presence_logit.detach().clone()
    G.train()
    G(torch.arange(6), seed=3)
    (G.sparsity() + G.reinforce(torch.tensor([0.3, 2.0, -1.0, 0.7, 4.0, 1.5], dtype=torch.float64))).backward()
    grad = G.presence_logit.grad.coalesce().to_dense()
    opt.step()
    moved = G.presence_logit.detach() - before
    nz = grad != 0
    assert bool(nz.all())  # sparsity() touches every candidate edge
    # the first Adam step is -lr * sign(grad) (up to eps)
    torch.testing.assert_close(moved, -0.05 * torch.sign(grad), rtol=1e-3, atol=1e-6)


def test_default_distance_and_init_prob_are_used():
    G = ProdigeGraph(torch.tensor([[0], [1]]), 3, init_prob=0.25, default_distance=4.0, init_weight=2.5).eval()
    assert float(G.edge_prob[0]) == pytest.approx(0.25, rel=1e-6)
    assert float(G.edge_weight[0]) == pytest.approx(2.5, rel=1e-5)
    d = G(torch.tensor([0]))
    torch.testing.assert_close(d, torch.tensor([[0.0, 4.0, 4.0]]))  # p < 0.5: the edge is pruned
    G2 = ProdigeGraph(torch.tensor([[0], [1]]), 3, init_prob=0.75, init_weight=2.5).eval()
    torch.testing.assert_close(G2(torch.tensor([0])), torch.tensor([[0.0, 2.5, 10.0]]))
    assert math.isclose(G2._init_default, 10.0)


def test_unfitted_compression_state_loads_as_unfitted():
    from tgrep.models import ProdigeCompression

    state = ProdigeCompression(4).state_dict()
    fresh = ProdigeCompression(4)
    fresh.load_state_dict(state)
    assert fresh.graph is None
    with pytest.raises(Exception, match="fit"):
        fresh.pairwise_distances()
