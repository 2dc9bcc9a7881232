"""Projections of OT graph compression against a generic solver (scipy SLSQP) and KKT checks."""
import numpy as np
import pytest
import scipy.optimize as so
import torch

from tgrep.ops.projections import project_capped_simplex, project_diag_simplex, project_lipschitz

D = torch.float64


def _rand_batch(sizes, scale=2.0):
    y = torch.randn(sum(sizes), dtype=D) * scale
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    # shuffle node order: the ops must not assume sorted batches
    p = torch.randperm(y.numel())
    return y[p], batch[p]


def _slsqp(fun_y, n, cons, bounds=None, x0=None):
    res = so.minimize(lambda z: 0.5 * ((z - fun_y) ** 2).sum(), np.zeros(n) if x0 is None else x0,
                      jac=lambda z: z - fun_y, bounds=bounds, constraints=cons, method="SLSQP",
                      options={"ftol": 1e-15, "maxiter": 1000})
    return res.x


def test_capped_simplex_matches_qp_and_kkt(seed):
    sizes = [1, 3, 6, 9]
    y, batch = _rand_batch(sizes)
    k = torch.tensor([0.5, 1.0, 2.5, 3.0], dtype=D)
    x = project_capped_simplex(y, k, batch)
    for g in range(len(sizes)):
        yi, xi, kk = y[batch == g].numpy(), x[batch == g].numpy(), float(k[g])
        ref = _slsqp(yi, yi.size, [{"type": "ineq", "fun": lambda z, kk=kk: kk - z.sum(), "jac": lambda z: -np.ones_like(z)}],
                     bounds=[(0, 1)] * yi.size)
        np.testing.assert_allclose(xi, ref, atol=1e-6)
        # feasibility + KKT: x = clip(y - theta, 0, 1) with theta >= 0, theta > 0 only if the budget binds
        assert xi.min() >= 0 and xi.max() <= 1 and xi.sum() <= kk + 1e-9
        free = (xi > 1e-9) & (xi < 1 - 1e-9)
        if free.any():
            theta = (yi - xi)[free]
            assert np.ptp(theta) < 1e-9 and theta[0] >= -1e-9
            if theta[0] > 1e-9:
                assert abs(xi.sum() - kk) < 1e-9


def test_capped_simplex_edge_cases(seed):
    y = torch.randn(5, dtype=D)
    assert torch.equal(project_capped_simplex(y, 0), torch.zeros(5, dtype=D))
    assert torch.allclose(project_capped_simplex(y, 10), y.clamp(0, 1))   # k >= n: plain clipping
    assert torch.allclose(project_capped_simplex(torch.tensor([3.0], dtype=D), 0.5), torch.tensor([0.5], dtype=D))
    y2, b2 = _rand_batch([4, 7])
    both = project_capped_simplex(y2, torch.tensor([1.5, 2.0], dtype=D), b2)
    for g, kk in ((0, 1.5), (1, 2.0)):
        assert torch.allclose(both[b2 == g], project_capped_simplex(y2[b2 == g], kk))
    with pytest.raises(ValueError, match="'k'"):
        project_capped_simplex(y, -1.0)
    with pytest.raises(ValueError, match="'y'"):
        project_capped_simplex(torch.tensor([float("nan")]), 1.0)
    with pytest.raises(TypeError, match="'y'"):
        project_capped_simplex(torch.arange(3), 1.0)


def test_diag_simplex_matches_qp(seed):
    sizes = [1, 4, 7]
    y, batch = _rand_batch(sizes, 1.0)
    eps = torch.rand(y.numel(), dtype=D)
    eps[torch.rand(y.numel()) < 0.25] = 0
    for g in range(len(sizes)):  # every graph needs a positive weight
        eps[torch.nonzero(batch == g)[0]] = 0.6
    x = project_diag_simplex(y, eps, batch)
    for g in range(len(sizes)):
        yi, ei, xi = y[batch == g].numpy(), eps[batch == g].numpy(), x[batch == g].numpy()
        ref = _slsqp(yi, yi.size, [{"type": "eq", "fun": lambda z, e=ei: (e * z).sum() - 1, "jac": lambda z, e=ei: e},
                                   {"type": "ineq", "fun": lambda z, e=ei: e * z, "jac": lambda z, e=ei: np.diag(e)}])
        np.testing.assert_allclose(xi, ref, atol=1e-6)
        assert abs((ei * xi).sum() - 1) < 1e-9 and (ei * xi).min() >= -1e-12
        assert np.allclose(xi[ei == 0], yi[ei == 0])


def test_diag_simplex_reduces_to_simplex_projection(seed):
    y = torch.randn(8, dtype=D)
    x = project_diag_simplex(y, torch.ones(8, dtype=D))
    s = torch.sort(y, descending=True)[0]
    css = torch.cumsum(s, 0) - 1
    rho = int((s - css / torch.arange(1, 9) > 0).sum())
    assert torch.allclose(x, (y - css[rho - 1] / rho).clamp(min=0))
    with pytest.raises(ValueError, match="all zero"):
        project_diag_simplex(y, torch.zeros(8, dtype=D))
    with pytest.raises(ValueError, match="'eps'"):
        project_diag_simplex(y, torch.full((8,), 2.0, dtype=D))


def _path_plus(n, extra):
    e = [(i, i + 1) for i in range(n - 1)] + extra
    ei = torch.tensor(e).t()
    return torch.cat([ei, ei.flip(0)], 1)


def test_lipschitz_matches_qp_and_kkt(seed):
    n = 7
    ei = _path_plus(n, [(0, 3), (2, 6), (1, 5)])
    c = torch.rand(ei.size(1) // 2, dtype=D) * 0.5 + 0.05
    c = torch.cat([c, c])
    y = torch.randn(n, dtype=D)
    t, mu = project_lipschitz(y, ei, c, num_iters=20000, tol=1e-11, return_dual=True)
    A = np.zeros((ei.size(1), n))
    A[np.arange(ei.size(1)), ei[0].numpy()] = 1
    A[np.arange(ei.size(1)), ei[1].numpy()] -= 1
    ref = _slsqp(y.numpy(), n, [{"type": "ineq", "fun": lambda z: c.numpy() - A @ z, "jac": lambda z: -A}])
    np.testing.assert_allclose(t.numpy(), ref, atol=1e-6)
    slack = c.numpy() - A @ t.numpy()
    assert slack.min() > -1e-8                                   # feasible
    assert (mu.numpy() >= 0).all() and abs(mu.numpy() @ slack) < 1e-8   # complementary slackness
    np.testing.assert_allclose(t.numpy(), y.numpy() - A.T @ mu.numpy(), atol=1e-12)  # stationarity


def test_lipschitz_directed_batched_edgeless(seed):
    # one directed edge 0 -> 1 of cost 0.1: only t_0 - t_1 <= 0.1 is imposed
    ei = torch.tensor([[0], [1]])
    t = project_lipschitz(torch.tensor([1.0, 0.0], dtype=D), ei, torch.tensor([0.1], dtype=D))
    assert torch.allclose(t, torch.tensor([0.55, 0.45], dtype=D), atol=1e-7)
    t = project_lipschitz(torch.tensor([0.0, 1.0], dtype=D), ei, torch.tensor([0.1], dtype=D))
    assert torch.allclose(t, torch.tensor([0.0, 1.0], dtype=D))
    # a batch equals its graphs one by one
    e1 = _path_plus(4, [(0, 2)])
    e2 = _path_plus(5, [(1, 4)]) + 4
    ei = torch.cat([e1, e2], 1)
    c = torch.rand(ei.size(1), dtype=D) + 0.1
    y = torch.randn(9, dtype=D)
    batch = torch.tensor([0] * 4 + [1] * 5)
    t = project_lipschitz(y, ei, c, batch, num_iters=5000, tol=1e-11)
    t1 = project_lipschitz(y[:4], e1, c[:e1.size(1)], num_iters=5000, tol=1e-11)
    t2 = project_lipschitz(y[4:], e2 - 4, c[e1.size(1):], num_iters=5000, tol=1e-11)
    assert torch.allclose(t, torch.cat([t1, t2]), atol=1e-7)
    # no edges: identity
    assert torch.equal(project_lipschitz(y, torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=D)), y)
    with pytest.raises(ValueError, match="strictly positive"):
        project_lipschitz(y[:4], e1, torch.zeros(e1.size(1), dtype=D))
    with pytest.raises(ValueError, match="'cost'"):
        project_lipschitz(y[:4], e1, torch.ones(3, dtype=D))
    with pytest.raises(ValueError, match="'edge_index'"):
        project_lipschitz(y[:2], e1, torch.ones(e1.size(1), dtype=D))


def test_projection_gradients(seed):
    # piecewise linear maps: gradcheck at random (almost surely smooth) points
    y, batch = _rand_batch([3, 5])
    y.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: project_capped_simplex(v, torch.tensor([1.5, 2.0], dtype=D), batch),
                                    (y,))
    e = torch.rand(8, dtype=D) * 0.9 + 0.1
    assert torch.autograd.gradcheck(lambda v: project_diag_simplex(v, e, batch), (y,))
