"""The FBF solver's starting point and its diagonal steps (tgrep/kernels/reference/graph_learning.py,
twin of csrc/cpu/graph_learning.cpp) against independent computations."""
import math

import pytest
import torch

import tgrep
from tgrep.kernels.reference import graph_learning as ref
from tgrep.ops.graph_learning import solve_log_model


def _random_support(n, p, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.triu(torch.rand(n, n, generator=g) < p, 1)
    row, col = A.nonzero().t()
    z = torch.rand(row.numel(), generator=g, dtype=torch.float64) * 2
    return row, col, z


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warm_start_is_the_mean_of_the_per_node_closed_forms(seed):
    n = 30
    row, col, z = _random_support(n, 0.3, seed)
    row = torch.cat([row, torch.tensor([n - 1])])                # one node of degree 1 ...
    col = torch.cat([col, torch.tensor([n - 2])])
    z = torch.cat([z, torch.tensor([0.5], dtype=torch.float64)])
    keep = (row != n - 3) & (col != n - 3)                        # ... and one without edges
    row, col, z = row[keep], col[keep], z[keep]
    w, v = ref.warm_start(row, col, z, n)
    per_node = torch.zeros(2, z.numel(), dtype=torch.float64)
    for i in range(n):
        inc = ((row == i) | (col == i)).nonzero().reshape(-1)      # the node's support edges
        if inc.numel() == 0:
            continue
        sol = ref.single_node_solve(z[inc], 1.0)                   # Algorithm 1 of the paper
        for e, we in zip(inc.tolist(), sol.tolist()):
            per_node[0 if int(row[e]) == i else 1, e] = we
    torch.testing.assert_close(w, per_node.mean(0))
    d = torch.zeros(n, dtype=torch.float64).index_add_(0, row, w).index_add_(0, col, w)
    want_v = torch.where(d > 0, -1 / d.clamp_min(1e-300), torch.zeros_like(d))
    torch.testing.assert_close(v, want_v)
    assert float(v[n - 3]) == 0.0
    # the cap applies to the start too
    wc, _ = ref.warm_start(row, col, z, n, max_w=0.2)
    assert float(wc.max()) <= 0.2


def test_steps_are_mean_degree_preconditioned():
    n = 12
    row = torch.cat([torch.zeros(10, dtype=torch.long), torch.tensor([1, 2, 4])])   # a hub (node 0) and 3 more edges
    col = torch.cat([torch.arange(1, 11), torch.tensor([2, 3, 5])])
    tau, s = ref.graph_steps(row, col, n, 0.9, 0.0, torch.zeros(n, dtype=torch.long), 1)
    deg = torch.bincount(row, minlength=n) + torch.bincount(col, minlength=n)
    rho = float(deg.sum()) / float((deg > 0).sum())               # node 11 is isolated: not counted
    assert float(tau) == pytest.approx(0.9 / (2 + math.sqrt(2 * rho)))
    assert float(s) == pytest.approx(rho * float(tau))
    sigma = ref.node_sigma(row, col, n, s, torch.zeros(n, dtype=torch.long))
    torch.testing.assert_close(sigma, float(s) / deg.clamp_min(1).double())
    # the convergence bound: ‖Γ^½ [[2I, Kᵀ], [−K, 0]] Γ^½‖ ≤ 2τ + ‖Σ^½ K T^½‖ < 1
    K = torch.zeros(n, row.numel(), dtype=torch.float64)
    K[row, torch.arange(row.numel())] = 1
    K[col, torch.arange(row.numel())] = 1
    M = sigma.sqrt()[:, None] * K * math.sqrt(float(tau))
    assert 2 * float(tau) + float(torch.linalg.matrix_norm(M, 2)) < 1


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_solver_with_a_hub_reaches_the_dense_solution(backend):
    """A support with a hub of degree n − 1 (the case the uniform step ``1/‖K‖`` slows down on)
    converges to the dense model restricted to the same mask."""
    if backend == "cpp" and not tgrep._backend.cpp_status("graph_learning")[0]:
        pytest.skip("C++ kernels unavailable here")
    n = 40
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    Z = torch.cdist(x, x).pow(2)
    mask = torch.triu(torch.rand(n, n, generator=g) < 0.15, 1)
    mask[0, 1:] = True
    row, col = mask.nonzero().t()
    with tgrep.use_backend(backend):
        w, info = solve_log_model(row, col, 0.8 * Z[row, col], n, tol=1e-10, max_iter=20000)
    W = torch.zeros(n, n, dtype=torch.float64)
    W[row, col] = w
    W = W + W.t()
    sym = mask | mask.t()
    Wd = ref.dense_log_model(Z, 0.8, mask=sym, tol=1e-11, max_iter=60000)
    torch.testing.assert_close(W, Wd, atol=2e-6, rtol=0)
    assert info["converged"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_warm_start_equals_reference(dtype):
    from tgrep._ext import load_cpp

    mod = load_cpp("graph_learning")
    if mod is None:
        pytest.skip("C++ kernels unavailable here")
    n = 50
    row, col, z = _random_support(n, 0.2, 7)
    z = z.to(dtype)
    ptr, nbr, eid, first = mod.build_csr(row, col, n)
    zs = z[eid].contiguous()
    for max_w in (math.inf, 0.3):
        w, v = mod.warm_start_csr(ptr, nbr, zs, max_w, 2)
        # the reference on the same support in the CSR's numbering
        node = torch.repeat_interleave(torch.arange(n), ptr.diff())
        mine = node < nbr.long()
        wr, vr = ref.warm_start(node[mine], nbr.long()[mine], zs[mine], n, max_w)
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(w[mine], wr, **tol)
        torch.testing.assert_close(v, vr, **tol)
        both = torch.zeros(z.numel(), dtype=w.dtype).index_add_(0, eid, w) / 2   # both slots of an edge agree
        torch.testing.assert_close(w[first], both, **tol)
    with pytest.raises(RuntimeError):
        mod.warm_start_csr(ptr, (nbr + n).contiguous(), zs, math.inf, 1)   # neighbour ids out of range
