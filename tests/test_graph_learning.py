import math

import pytest
import torch

import tgrep
from tgrep.kernels.reference import graph_learning as ref
from tgrep.ops.graph_learning import graph_learning_theta, learn_graph, solve_log_model


def _all_pairs(n):
    row, col = torch.triu_indices(n, n, 1)
    return row, col


def _pairwise(x):
    return torch.cdist(x.double(), x.double()).pow(2)


# ------------------------------------------------------------------ theta (Theorems 2-3)
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_single_node_has_exactly_k_nonzeros_inside_bounds(seed, k):
    z = torch.rand(30, dtype=torch.float64) * 5
    zs, _ = torch.sort(z)
    lower, upper = ref.theta_bounds(zs[None], k)
    lo, up = float(lower), float(upper)
    assert 0 < lo < up
    # the interval is [lower, upper): at θ = upper the k-th weight is exactly 0
    inside = [math.sqrt(lo * up) if math.isfinite(up) else 2 * lo,
              up * (1 - 1e-6) if math.isfinite(up) else 10 * lo, lo * (1 + 1e-6)]
    for theta in inside:
        w = ref.single_node_solve(z, theta)
        assert int((w > 1e-12).sum()) == k, theta
        # KKT of  min θwᵀz − log(wᵀ1) + ½‖w‖²  on the support
        lam = 1 / float(w.sum())
        assert torch.allclose(w[w > 0], lam - theta * z[w > 0], atol=1e-10)
        assert (lam - theta * z[w == 0] <= 1e-10).all()
    # just outside the interval the support changes
    assert int((ref.single_node_solve(z, lo * 0.99) > 1e-12).sum()) > k
    if math.isfinite(up):
        assert int((ref.single_node_solve(z, up * 1.01) > 1e-12).sum()) < k


def test_theta_infinite_upper_bounds_and_duplicates():
    z = torch.tensor([[1.0, 1.0, 1.0, 2.0, 3.0], [0.5, 1.0, 2.0, 2.5, 4.0]])
    # k = 1: the upper bound is always +inf -> theta = 1.1 * mean lower bound
    theta, lo, up = graph_learning_theta(z, 1, return_bounds=True)
    assert math.isinf(up) and theta == pytest.approx(1.1 * lo)
    # node 0 has 3 equal distances: for k = 2 its upper bound is inf (left out), its lower inf
    lower, upper = ref.theta_bounds(torch.sort(z.double(), 1)[0], 2)
    assert math.isinf(float(upper[0])) and math.isinf(float(lower[0]))
    theta, lo, up = graph_learning_theta(z, 2, return_bounds=True)
    assert lo == pytest.approx(float(lower[1])) and up == pytest.approx(float(upper[1]))
    assert theta == pytest.approx(math.sqrt(lo * up))
    # candidates missing for k+1 -> lower bound 0 (any small theta keeps all k)
    lower, _ = ref.theta_bounds(torch.tensor([[1.0, 2.0, math.inf]], dtype=torch.float64), 2)
    assert float(lower[0]) == 0.0
    with pytest.raises(ValueError, match="constant features"):
        graph_learning_theta(torch.zeros(4, 3), 2)
    with pytest.raises(ValueError, match="'z'"):
        graph_learning_theta(torch.rand(4, 3), 4)
    with pytest.raises(ValueError, match="'k'"):
        graph_learning_theta(torch.rand(4, 3), 0)


def test_theta_is_eq17_on_a_distance_matrix(seed):
    x = torch.randn(60, 4, dtype=torch.float64)
    Z = _pairwise(x)
    Zs = torch.sort(Z, 1)[0][:, 1:]             # drop the zero diagonal
    k = 4
    b = Zs[:, :k].sum(1)
    up = 1 / torch.sqrt(k * Zs[:, k - 1] ** 2 - b * Zs[:, k - 1])
    lo = 1 / torch.sqrt(k * Zs[:, k] ** 2 - b * Zs[:, k])
    theta = graph_learning_theta(Zs[:, torch.randperm(59)], k)
    assert theta == pytest.approx(math.sqrt(float(lo.mean()) * float(up.mean())), rel=1e-10)
    batch = torch.arange(60) // 30
    th = graph_learning_theta(Zs, k, batch=batch)
    assert th.shape == (2,)
    assert float(th[1]) == pytest.approx(math.sqrt(float(lo[30:].mean()) * float(up[30:].mean())))


# ------------------------------------------------------------------ solver
def test_solver_kkt_on_all_pairs(seed):
    n = 30
    x = torch.randn(n, 3, dtype=torch.float64)
    row, col = _all_pairs(n)
    Z = _pairwise(x)
    theta = graph_learning_theta(torch.sort(Z, 1)[0][:, 1:], 4)
    z = theta * Z[row, col]
    w, info = solve_log_model(row, col, z, n, max_iter=20000, tol=1e-10, step=0.9)
    assert info["converged"]
    act, inact = ref.kkt_residual(row, col, z, w, n)
    assert act < 1e-5 and inact < 1e-5
    assert (w >= 0).all() and (w <= 1 + 1e-9).all()     # Theorem 1: W(θZ, 1, 1) <= 1
    # the dense matrix solver (independent code) agrees
    W = ref.dense_log_model(Z, theta, max_iter=20000, tol=1e-10)
    assert torch.allclose(W, W.T) and (W.diagonal() == 0).all()
    assert torch.allclose(W[row, col], w, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_solver_matches_reference(seed, dtype):
    if not tgrep._backend.cpp_status("graph_learning")[0]:
        pytest.skip("C++ kernels unavailable here")
    n = 200
    x = torch.randn(n, 4)
    _, idx = tgrep.ops.knn(x, 8)
    lo = torch.minimum(torch.arange(n)[:, None], idx).reshape(-1)
    hi = torch.maximum(torch.arange(n)[:, None], idx).reshape(-1)
    key = torch.unique(lo * n + hi)
    row, col = key // n, key % n
    z = ((x[row] - x[col]) ** 2).sum(1).to(dtype) * 0.5
    out = {}
    for backend in ("reference", "cpp"):
        with tgrep.use_backend(backend):
            out[backend] = solve_log_model(row, col, z, n, max_iter=60, tol=1e-12)
    (w_r, i_r), (w_c, i_c) = out["reference"], out["cpp"]
    assert i_c["backend"] == "cpp" and i_r["backend"] == "reference"
    assert i_r["iterations"] == i_c["iterations"] == 60
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert torch.allclose(w_r, w_c, atol=tol, rtol=tol)
    # the relative change after 60 steps is ~1e-6: in float32 a difference of nearly equal numbers
    # (rounding noise ~ eps / 1e-6 = 6%), in float64 exact to many digits
    assert i_c["rel_primal"] == pytest.approx(i_r["rel_primal"], rel=0.1 if dtype == torch.float32 else 1e-6)


def _check_graph(ei, ew, n):
    assert ei.dtype == torch.long and ei.shape[0] == 2 and ew.shape == (ei.shape[1],)
    assert (ei[0] != ei[1]).all()                                   # no self loops
    assert (ew > 0).all() and torch.isfinite(ew).all()              # strictly positive
    A = torch.sparse_coo_tensor(ei, ew.double(), (n, n)).coalesce()
    assert A._nnz() == ei.shape[1]                                   # no duplicate entries
    D = A.to_dense()
    assert torch.allclose(D, D.T)                                    # both directions, same weight
    assert (torch.diff(ei[0]) >= 0).all()                            # sorted by source


def test_learn_graph_properties_and_degree(seed):
    # three blobs in 5-D: the mean degree follows k
    x = torch.cat([torch.randn(150, 5) + 4 * torch.randn(1, 5) for _ in range(3)])
    for k in (4, 8):
        ei, ew, theta, info = learn_graph(x, k, return_theta=True, return_info=True)
        _check_graph(ei, ew, x.shape[0])
        assert info["converged"] and theta > 0
        assert 0.7 * k <= info["mean_degree"] <= 1.3 * k
        assert info["isolated_nodes"] == 0
    ei2, ew2 = learn_graph(x, 4, scale="max")
    assert float(ew2.max()) == pytest.approx(1.0)
    ei3, ew3 = learn_graph(x, 4, scale="sum")
    assert float(ew3.sum()) == pytest.approx(x.shape[0], rel=1e-4)


def test_ivf_support_in_list_order_is_the_same_graph(seed, monkeypatch):
    """With ``knn='ivf'`` the later stages run on the nodes renumbered in the IVF's list order
    (``tgrep::knn_local``): the graph is the one learned in the caller's order, numbered back."""
    import tgrep.ops.graph_learning as gl

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3000, 6, generator=g) + 4 * torch.randint(0, 6, (3000, 1), generator=g).float()
    calls = []
    real = gl._knn_local

    def spy(xs, m, method, nt, verbose):
        out = real(xs, m, method, nt, verbose)
        calls.append(out[2])
        return out

    monkeypatch.setattr(gl, "_knn_local", spy)
    ei, ew, info = learn_graph(x, 6, knn="ivf", return_info=True)
    assert len(calls) == 1 and not torch.equal(calls[0], torch.arange(3000))   # really reordered
    monkeypatch.setattr(gl, "_knn_local", lambda xs, m, method, nt, verbose: (
        *gl._knn(xs, m, method=method, num_threads=nt), torch.arange(xs.shape[0])))
    ei0, ew0, info0 = learn_graph(x, 6, knn="ivf", return_info=True)
    _check_graph(ei, ew, 3000)
    assert torch.equal(ei, ei0) and info["support_edges"] == info0["support_edges"]
    assert torch.allclose(ew, ew0, rtol=1e-3, atol=1e-6 * float(ew0.max()))
    assert float((ew - ew0).abs().sum() / ew0.abs().sum()) < 1e-4
    # duplicates: the tie jitter (drawn in the caller's row order) and a second search
    xd = x[torch.randint(0, 600, (3000,), generator=g)]
    ei0, ew0, info0 = learn_graph(xd, 6, knn="ivf", return_info=True)
    monkeypatch.setattr(gl, "_knn_local", real)
    ei, ew, info = learn_graph(xd, 6, knn="ivf", return_info=True)
    assert info["jittered"] and info0["jittered"]
    assert torch.equal(ei, ei0)
    assert float((ew - ew0).abs().sum() / ew0.abs().sum()) < 1e-4


def test_small_graph_uses_all_pairs_and_matches_exact(seed):
    n, k = 12, 3                                  # n - 1 < r*k: the support is all pairs
    x = torch.randn(n, 2, dtype=torch.float64)
    ei, ew, theta = learn_graph(x, k, tol=1e-10, max_iter=20000, return_theta=True)
    _check_graph(ei, ew, n)
    W = ref.dense_log_model(_pairwise(x), theta, max_iter=20000, tol=1e-10)
    D = torch.zeros(n, n, dtype=torch.float64)
    D[ei[0], ei[1]] = ew
    assert torch.allclose(D, W, atol=1e-6)


def test_duplicates_and_constant_features(seed):
    x = torch.randn(40, 3)
    xd = torch.cat([x, x[:10]])                  # 10 exact duplicates
    ei, ew = learn_graph(xd, 5)
    _check_graph(ei, ew, 50)
    D = torch.zeros(50, 50)
    D[ei[0], ei[1]] = ew
    assert (D[torch.arange(10), torch.arange(40, 50)] > 0).all()   # duplicates are linked
    with pytest.raises(ValueError, match="constant features"):
        learn_graph(torch.ones(30, 4), 3)
    ei, ew, info = learn_graph(torch.ones(30, 4), 3, theta=1.0, return_info=True)  # explicit theta
    _check_graph(ei, ew, 30)
    assert info["isolated_nodes"] == 0 and info["converged"]


def test_bad_inputs():
    x = torch.randn(20, 3)
    with pytest.raises(ValueError, match="'x'"):
        learn_graph(torch.tensor([[float("nan"), 1.0]] * 20), 3)
    with pytest.raises(ValueError, match="'k'"):
        learn_graph(x, 0)
    with pytest.raises(TypeError, match="'k'"):
        learn_graph(x, 2.5)
    with pytest.raises(ValueError, match="'k'=19"):
        learn_graph(x, 19)                         # n <= k + 1
    with pytest.raises(ValueError, match="'r'"):
        learn_graph(x, 3, r=0.5)
    with pytest.raises(ValueError, match="'model'"):
        learn_graph(x, 3, model="gauss")
    with pytest.raises(ValueError, match="'scale'"):
        learn_graph(x, 3, scale="l1")
    with pytest.raises(ValueError, match="'theta'"):
        learn_graph(x, 3, theta=-1.0)
    with pytest.raises(ValueError, match="'k'=3"):
        learn_graph(x, 3, batch=torch.tensor([0] * 17 + [1] * 3))  # one example too small


def test_batch_is_one_graph_per_example(seed):
    x0 = torch.randn(40, 3, dtype=torch.float64)
    xs = [x0, 10 * x0, torch.randn(55, 3, dtype=torch.float64)]   # example 1 = example 0 scaled
    x = torch.cat(xs)
    batch = torch.cat([torch.full((len(xg),), g) for g, xg in enumerate(xs)])
    ei, ew, theta = learn_graph(x, 4, batch=batch, tol=1e-9, max_iter=5000, return_theta=True)
    _check_graph(ei, ew, 135)
    assert (batch[ei[0]] == batch[ei[1]]).all()
    # θ is per example and scale-free: W(θZ, 1, 1) is the same graph for x and 10x
    assert theta.shape == (3,) and float(theta[1]) == pytest.approx(float(theta[0]) / 100, rel=1e-9)
    D = torch.zeros(135, 135, dtype=torch.float64)
    D[ei[0], ei[1]] = ew
    off = 0
    for g, xg in enumerate(xs):
        ei_g, ew_g, th_g = learn_graph(xg, 4, tol=1e-9, max_iter=5000, return_theta=True)
        assert th_g == pytest.approx(float(theta[g]))
        Dg = torch.zeros(len(xg), len(xg), dtype=torch.float64)
        Dg[ei_g[0], ei_g[1]] = ew_g
        assert torch.allclose(D[off:off + len(xg), off:off + len(xg)], Dg, atol=1e-5)
        off += len(xg)
    assert torch.allclose(D[:40, :40], D[40:80, 40:80], atol=1e-6)


def test_l2_model(seed):
    x = torch.cat([torch.randn(60, 3) + 5 * torch.randn(1, 3) for _ in range(2)])
    ei, ew, alpha, info = learn_graph(x, 6, model="l2", return_theta=True, return_info=True)
    _check_graph(ei, ew, 120)
    assert float(ew.sum()) == pytest.approx(120, rel=1e-3)         # ||W||_{1,1} = n
    assert 0.5 * 6 <= info["mean_degree"] <= 1.5 * 6
    # projected-gradient fixed point: w = P(w − ∇/L) on the support
    row, col = _all_pairs(5)
    z = torch.rand(row.numel(), dtype=torch.float64)
    w = ref.l2_model(row, col, z, 5, 0.3, max_iter=5000, tol=1e-12)
    d = ref.degrees(row, col, w, 5)
    grad = 2 * z + 2 * 0.3 * (d[row] + d[col]) + 4 * 0.3 * w
    assert torch.allclose(ref.project_simplex(w - 0.1 * grad, 2.5), w, atol=1e-8)


def test_transform_on_batch(seed):
    from torch_geometric.data import Batch, Data

    from tgrep.transforms import LearnedGraphTransform

    data = [Data(x=torch.randn(n, 4), pos=torch.randn(n, 2)) for n in (15, 22, 30)]
    b = Batch.from_data_list(data)
    t = LearnedGraphTransform(k=3)
    assert repr(t).startswith("LearnedGraphTransform(k=3, r=3, model='log', theta=None, knn='auto'")
    out = t(b.clone())
    _check_graph(out.edge_index, out.edge_weight, b.num_nodes)
    assert (out.batch[out.edge_index[0]] == out.batch[out.edge_index[1]]).all()
    assert len(out.to_data_list()) == 3
    single = LearnedGraphTransform(k=3, attr="pos")(data[0].clone())
    _check_graph(single.edge_index, single.edge_weight, 15)
    with pytest.raises(ValueError, match="data.feat"):
        LearnedGraphTransform(k=3, attr="feat")(data[0].clone())


def test_verbose_reports_requested_and_obtained_degree(monkeypatch, capsys):
    monkeypatch.delenv("TGREP_QUIET", raising=False)
    learn_graph(torch.randn(80, 3), 4, verbose=True)
    err = capsys.readouterr().err
    assert "requested degree k=4" in err and "obtained mean degree" in err
    assert "knn: method='exact'" in err


def test_batch_with_an_empty_example_id(seed):
    x = torch.randn(50, 3)
    batch = torch.cat([torch.zeros(20, dtype=torch.long), torch.full((30,), 2)])   # example 1 is empty
    ei, ew, theta = learn_graph(x, 3, batch=batch, return_theta=True)
    _check_graph(ei, ew, 50)
    assert (batch[ei[0]] == batch[ei[1]]).all()
    assert theta.shape == (2,) and torch.isfinite(theta).all()   # compact ids: one θ per present example


def test_harmonic_label_propagation_on_two_cliques():
    import numpy as np
    import scipy.sparse as sp

    from tgrep.utils.label_propagation import harmonic_accuracy

    block = np.ones((5, 5)) - np.eye(5)
    W = sp.csr_matrix(np.block([[block, np.zeros((5, 5))], [np.zeros((5, 5)), block]]))
    W[4, 5] = W[5, 4] = 0.01  # a weak bridge
    labels = np.array([0] * 5 + [1] * 5)
    acc = harmonic_accuracy(W, labels, [np.array([0, 9]), np.array([1, 8])])
    assert acc.tolist() == [1.0, 1.0]
