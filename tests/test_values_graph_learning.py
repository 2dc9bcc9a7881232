"""Graph learning (Kalofolias & Perraudin, ICLR 2019) against independent computations: the log
model solved by scipy's L-BFGS-B on all pairs (for ``learn_graph``'s C++ solver and the dense
reference), the one-node problem and its θ bounds, the stopping rule, and every argument
``LearnedGraphTransform`` passes through."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch_geometric.data import Data

from tgrep.kernels.reference import graph_learning as ref
from tgrep.ops.graph_learning import learn_graph
from tgrep.transforms import LearnedGraphTransform


def _x(n=7, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _pairs(n):
    iu = np.triu_indices(n, 1)
    return iu[0], iu[1]


def _scipy_log_model(x, theta):
    """min_w 2θ Σ_e z_e w_e − Σ_i log d_i + Σ_e w_e² over w ≥ 0, every pair an edge once
    (= ‖W∘θZ‖₁,₁ − 1ᵀlog(W1) + ½‖W‖²_F for the symmetric W)."""
    x = x.numpy()
    n = x.shape[0]
    r, c = _pairs(n)
    z = ((x[r] - x[c]) ** 2).sum(1)

    def f(w):
        d = np.maximum(np.bincount(r, w, n) + np.bincount(c, w, n), 1e-12)  # (a step may leave a node empty)
        val = 2 * theta * z @ w - np.log(d).sum() + w @ w
        g = 2 * theta * z + 2 * w - 1 / d[r] - 1 / d[c]
        return val, g

    res = minimize(f, np.full(len(z), 0.3), jac=True, method="L-BFGS-B", bounds=[(0, None)] * len(z),
                   options=dict(ftol=1e-15, gtol=1e-11, maxiter=20000))
    W = np.zeros((n, n))
    W[r, c] = res.x
    return W + W.T


def _dense(ei, w, n):
    W = np.zeros((n, n))
    W[ei[0].numpy(), ei[1].numpy()] = w.double().numpy()
    return W


@pytest.mark.parametrize("theta", [0.3, 1.2])
def test_learn_graph_solves_the_log_model(theta):
    x = _x()
    want = _scipy_log_model(x, theta)
    assert (want > 1e-6).sum() < want.size - 7, "precondition: the solution is sparse"
    ei, w = learn_graph(x, 3, theta=theta, r=10, max_iter=20000, tol=1e-9, ties="keep")
    got = _dense(ei, w, 7)
    assert np.allclose(got, got.T) and np.all(np.diag(got) == 0)
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_dense_reference_solves_the_log_model():
    x = _x(seed=1)
    Z = torch.cdist(x, x) ** 2
    W = ref.dense_log_model(Z, 0.6, max_iter=20000, tol=1e-10).numpy()
    np.testing.assert_allclose(W, _scipy_log_model(x, 0.6), atol=2e-4)


def test_single_node_solve_and_theta_bounds():
    z = torch.tensor([0.1, 0.4, 0.5, 1.3, 2.0, 3.1], dtype=torch.float64)
    for theta in (0.2, 0.9, 3.0):
        res = minimize(lambda w: theta * w @ z.numpy() - np.log(w.sum()) + 0.5 * w @ w, np.full(6, 0.2),
                       jac=lambda w: theta * z.numpy() - 1 / w.sum() + w, method="L-BFGS-B", bounds=[(0, None)] * 6,
                       options=dict(ftol=1e-15, gtol=1e-12))
        got = ref.single_node_solve(z, theta).numpy()
        np.testing.assert_allclose(got, res.x, atol=1e-6)
    # θ strictly inside the bounds for k gives exactly k non-zeros (Theorem 3)
    zs = z.sort().values.unsqueeze(0)
    for k in (1, 2, 4):
        lo, hi = ref.theta_bounds(zs, k)
        lo, hi = float(lo.reshape(-1)[0]), float(hi.reshape(-1)[0])
        assert 0 <= lo < hi
        th = 2 * lo if hi == float("inf") else (lo * hi) ** 0.5 if lo > 0 else hi / 2
        assert int((ref.single_node_solve(z, th) > 0).sum()) == k


def test_stopping_rule_iterations_and_tolerance():
    x = _x(n=12, seed=2)
    _, _, few = learn_graph(x, 3, theta=0.5, max_iter=4, tol=1e-12, return_info=True)
    assert few["iterations"] == 4 and not few["converged"]
    _, _, loose = learn_graph(x, 3, theta=0.5, max_iter=5000, tol=1e-2, return_info=True)
    _, _, tight = learn_graph(x, 3, theta=0.5, max_iter=5000, tol=1e-6, return_info=True)
    assert loose["converged"] and tight["converged"]
    assert loose["iterations"] < tight["iterations"]
    # stops at the first iteration where both relative changes are below tol
    assert max(loose["rel_primal"], loose["rel_dual"]) < 1e-2
    assert max(tight["rel_primal"], tight["rel_dual"]) < 1e-6


def _same(a, b):
    return torch.equal(a.edge_index, b[0]) and torch.allclose(a.edge_weight, b[1].to(a.edge_weight.dtype))


@pytest.mark.parametrize("kw", [dict(r=1.5), dict(theta=0.4), dict(scale="max"), dict(scale=3.0), dict(max_iter=3),
                                dict(tol=0.5), dict(model="l2"), dict(max_w=0.1)])
def test_transform_passes_each_argument(kw):
    x = _x(n=14, d=2, seed=3).float()
    out = LearnedGraphTransform(4, **kw)(Data(x=x.clone()))
    want = learn_graph(x, 4, **kw)
    assert _same(out, want)
    default = learn_graph(x, 4)
    assert not (default[0].shape == want[0].shape and torch.equal(default[0], want[0])
                and torch.allclose(default[1], want[1])), f"precondition: {kw} changes the graph"
    assert out.edge_weight.dtype == want[1].dtype


def test_transform_reads_attr_and_batch():
    x = _x(n=10, d=2, seed=4).float()
    data = Data(pos=x.clone(), num_nodes=10)
    out = LearnedGraphTransform(3)(data)
    assert _same(out, learn_graph(x, 3))
    d2 = Data(x=torch.zeros(10, 1), feat=x.clone())
    assert _same(LearnedGraphTransform(3, attr="feat")(d2), learn_graph(x, 3))
    batch = torch.tensor([0] * 5 + [1] * 5)
    d3 = Data(x=x.clone(), batch=batch)
    got = LearnedGraphTransform(2)(d3)
    want = learn_graph(x, 2, batch=batch)
    assert _same(got, want)
    assert bool((batch[got.edge_index[0]] == batch[got.edge_index[1]]).all())


def test_reference_solver_with_a_prior_graph():
    # min 2 z.w - sum log d + ||w||^2 + c ||w - w0||^2 (each edge once), w >= 0
    x = _x(n=6, seed=5)
    n = 6
    r, c = _pairs(n)
    z = ((x.numpy()[r] - x.numpy()[c]) ** 2).sum(1) * 0.4
    w0 = np.linspace(0.0, 1.5, len(z))
    cc = 2.0

    def f(w):
        d = np.maximum(np.bincount(r, w, n) + np.bincount(c, w, n), 1e-12)
        val = 2 * z @ w - np.log(d).sum() + w @ w + cc * (w - w0) @ (w - w0)
        g = 2 * z + 2 * w + 2 * cc * (w - w0) - 1 / d[r] - 1 / d[c]
        return val, g

    want = minimize(f, np.full(len(z), 0.3), jac=True, method="L-BFGS-B", bounds=[(0, None)] * len(z),
                    options=dict(ftol=0, gtol=1e-12, maxiter=20000)).x
    t = torch.tensor
    got, stats = ref.log_model(t(r), t(c), t(z), n, max_iter=20000, tol=1e-10, w0=t(w0), c=cc)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    plain, _ = ref.log_model(t(r), t(c), t(z), n, max_iter=20000, tol=1e-10)
    assert not np.allclose(plain.numpy(), want, atol=1e-3), "precondition: the prior matters"


def test_solve_log_model_prior_needs_c():
    # the default c = 0: a prior graph without c changes nothing (the documented default)
    from tgrep.ops.graph_learning import solve_log_model

    x = _x(n=6, seed=6)
    r, c = _pairs(6)
    z = torch.tensor(((x.numpy()[r] - x.numpy()[c]) ** 2).sum(1) * 0.5)
    rr, cc = torch.tensor(r), torch.tensor(c)
    w0 = torch.linspace(0.0, 1.5, len(r), dtype=torch.float64)
    plain, _ = solve_log_model(rr, cc, z, 6, tol=1e-9, max_iter=5000)
    same, _ = solve_log_model(rr, cc, z, 6, tol=1e-9, max_iter=5000, w0=w0)
    torch.testing.assert_close(same, plain)
    prior, _ = solve_log_model(rr, cc, z, 6, tol=1e-9, max_iter=5000, w0=w0, c=2.0)
    assert not torch.allclose(prior, plain, atol=1e-3)


@pytest.mark.parametrize("tol", [1e-3, 1e-4, 1e-5])
def test_solver_stops_only_when_both_changes_are_below_tol(tol):
    for seed in range(3):
        x = _x(n=9, seed=10 + seed)
        _, _, info = learn_graph(x, 3, theta=0.4, max_iter=20000, tol=tol, return_info=True)
        assert info["converged"]
        assert info["rel_primal"] < tol and info["rel_dual"] < tol, info
