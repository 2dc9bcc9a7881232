"""The benchmark peer ``benchmarks/otc_alg2_peer.py`` (the paper's Algorithm 2 in NumPy) against
independent computations and against tgrep's objective, on tiny graphs."""
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import otc_alg2_peer as peer  # noqa: E402

from tgrep.datasets import weighted_erdos_renyi  # noqa: E402
from tgrep.ops.ot_compress import ot_compress, ot_compression_cost, psi  # noqa: E402


def _graph(seed, n):
    gen = torch.Generator().manual_seed(seed)
    ei, _ = weighted_erdos_renyi(n, 0.4, generator=gen)
    u, v, _ = peer.undirected_edges(ei.numpy(), n)
    rng = np.random.default_rng(seed)
    c = rng.choice([0.01, 0.02], size=u.size)
    both = torch.as_tensor(np.stack([np.r_[u, v], np.r_[v, u]]))
    return u, v, c, both, torch.as_tensor(np.r_[c, c])


def test_capped_simplex_projection_is_exact():
    from scipy.optimize import minimize
    rng = np.random.default_rng(1)
    for _ in range(10):
        n = int(rng.integers(2, 9))
        y = rng.normal(size=n) * 2
        k = float(rng.integers(1, n + 1))
        x = peer.proj_capped_simplex(y, k)
        assert x.min() >= 0 and x.max() <= 1 and x.sum() <= k + 1e-12
        r = minimize(lambda z: 0.5 * ((z - y) ** 2).sum(), np.full(n, 0.0), jac=lambda z: z - y,
                     bounds=[(0, 1)] * n, constraints=[{"type": "ineq", "fun": lambda z: k - z.sum()}],
                     method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
        np.testing.assert_allclose(x, r.x, atol=1e-6)


def test_T_projection_matches_a_generic_qp_solver():
    from scipy.optimize import minimize
    rng = np.random.default_rng(2)
    for seed in range(4):
        n = 6 + seed
        u, v, c, _, _ = _graph(seed, n)
        y = rng.normal(size=n) * 0.03
        t = peer.proj_T(y, u, v, c)
        assert (np.abs(t[u] - t[v]) - c).max() <= 1e-12
        cons = [{"type": "ineq", "fun": (lambda x, i=i, s=s: c[i] - s * (x[u[i]] - x[v[i]]))}
                for i in range(u.size) for s in (1, -1)]
        r = minimize(lambda x: 0.5 * ((x - y) ** 2).sum(), np.zeros(n), jac=lambda x: x - y, constraints=cons,
                     method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
        np.testing.assert_allclose(t, r.x, atol=1e-6)


def test_psi_matches_tgrep():
    rng = np.random.default_rng(3)
    n = 7
    eps, t, rho0 = rng.random(n), rng.normal(size=n) * 0.1, rng.random(n)
    zeta = 0.05
    ours = peer.psi(eps, t, zeta, rho0, lam=0.7)
    theirs = psi(*(torch.as_tensor(a) for a in (eps, t)), torch.tensor([zeta], dtype=torch.float64),
                 torch.as_tensor(rho0), lam=0.7)
    assert ours == pytest.approx(float(theirs), rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_theorem5_value_equals_tgrep_objective(seed):
    """max over (t, zeta) of the peer's psi at eps = 1_S equals tgrep's exact cost of S."""
    n = 5 + seed
    u, v, c, both, cb = _graph(seed, n)
    S = np.random.default_rng(seed).choice(n, n // 2, replace=False)
    exact = float(ot_compression_cost(both, n, torch.as_tensor(S), cost=cb))
    assert peer.support_value(n, u, v, c, S) == pytest.approx(exact, rel=1e-6)


def test_alg2_objective_agrees_with_tgrep_on_tiny_graphs():
    """On graphs small enough to enumerate all k-subsets, Algorithm 2 (paper's settings) and
    ``ot_compress`` both land within a few percent of the best support, and close to each other."""
    excess_peer, excess_tgrep = [], []
    for seed in range(12):
        n = 6 + seed % 3
        k = n // 2
        u, v, c, both, cb = _graph(100 + seed, n)
        subs = list(itertools.combinations(range(n), k))
        P = len(subs)
        mask = torch.zeros(P * n, dtype=torch.bool)
        for i, s in enumerate(subs):
            mask[[i * n + w for w in s]] = True
        best = float(ot_compression_cost(torch.cat([both + i * n for i in range(P)], 1), P * n, mask,
                                         cost=cb.repeat(P), batch=torch.arange(P).repeat_interleave(n)).min())
        kept = peer.alg2(n, u, v, c, k)
        assert kept.size == k and len(set(kept.tolist())) == k
        cp = float(ot_compression_cost(both, n, torch.as_tensor(kept), cost=cb))
        ct = float(ot_compression_cost(both, n, ot_compress(both, n, k, cost=cb, refine=0), cost=cb))
        assert cp >= best * (1 - 1e-9) and ct >= best * (1 - 1e-9)
        excess_peer.append(cp / best - 1)
        excess_tgrep.append(ct / best - 1)
    assert np.mean(excess_peer) < 0.03 and np.mean(excess_tgrep) < 0.03
    assert abs(np.mean(excess_peer) - np.mean(excess_tgrep)) < 0.02
