"""Fuzz suite, part 2: properties of every public op on random inputs (hypothesis), each
backend against the reference and an independent computation (scipy, brute force, bisection,
pure-Python hashing, one-graph-at-a-time).

Bounded: ``FUZZ_EXAMPLES`` examples per property (``TGREP_FUZZ_EXAMPLES`` overrides; the
``slow`` twins run 10x more, only with ``TGREP_FUZZ_SLOW=1``), derandomized, no shrinking, no
example database, no deadline (the Triton interpreter is slow). Crash-prone calls live in :mod:`test_fuzz_malformed` (each in a subprocess).
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tgrep  # noqa: E402
import tgrep._ext  # noqa: E402
from tgrep import _backend, ops  # noqa: E402
from tgrep.kernels.reference import shortest_path as ref_sp  # noqa: E402
from tgrep.utils import to_csr  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("TGREP_FUZZ_EXAMPLES", "12"))
BACKENDS = [b for b in ("reference", "cpp", "triton")
            if _backend._usable(b, "cpu", tgrep._ext.cpp_kernel("shortest_path", "shortest_paths"))[0]]


def fuzz(n=None):
    """Settings of one property: ``n`` examples (default FUZZ_EXAMPLES), reproducible, no database."""
    # derandomized (the same examples every run: a strict xfail stays meaningful), no shrinking
    # (a failure reports its first example: bounded time)
    return settings(max_examples=n or FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=list(HealthCheck), print_blob=True)


def twice(*strategies):
    """Decorator factory: the property as a fast test and a ``slow`` twin with 10x the examples."""
    def make(test):
        fast = fuzz()(given(*strategies)(test))
        slow = pytest.mark.slow(pytest.mark.skipif(not os.environ.get("TGREP_FUZZ_SLOW"),
                                                   reason="10x fuzz examples: set TGREP_FUZZ_SLOW=1")(
            fuzz(10 * FUZZ_EXAMPLES)(given(*strategies)(test))))
        return fast, slow

    return make


# ----------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------
WEIGHTS = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, math.inf]), st.floats(0, 3, allow_nan=False))


@st.composite
def graphs(draw, max_n=10, max_e=30):
    n = draw(st.integers(1, max_n))
    e = draw(st.integers(0, max_e))
    src = draw(st.lists(st.integers(0, n - 1), min_size=e, max_size=e))
    dst = draw(st.lists(st.integers(0, n - 1), min_size=e, max_size=e))
    w = draw(st.lists(WEIGHTS, min_size=e, max_size=e))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    ei = torch.tensor([src, dst], dtype=torch.long).reshape(2, e)
    indptr, indices, weight = to_csr(ei, n, torch.tensor(w, dtype=dtype))
    return indptr, indices, weight


@st.composite
def searches(draw):
    indptr, indices, weight = draw(graphs())
    n, E = indptr.numel() - 1, indices.numel()
    B = draw(st.integers(0, 3))
    sources = torch.tensor(draw(st.lists(st.integers(0, n - 1), min_size=B, max_size=B)), dtype=torch.long)
    targets = None
    if draw(st.booleans()):
        T = draw(st.integers(0, 3))
        targets = torch.tensor(draw(st.lists(st.integers(0, n - 1), min_size=B * T, max_size=B * T)),
                               dtype=torch.long).reshape(B, T)
    prob = None
    if draw(st.booleans()):
        prob = torch.tensor(draw(st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]), min_size=E, max_size=E)),
                            dtype=torch.float64)
    seed = draw(st.integers(0, 2**40))
    return indptr, indices, weight, sources, targets, prob, seed


def _settled(pred, sources):
    return (pred >= 0) | (torch.arange(pred.size(1)) == sources[:, None])


def _tree_ok(dist_full, pred, indptr, indices, weight, sources, prob, seed):
    n = pred.size(1)
    edge_src = torch.repeat_interleave(torch.arange(n), indptr.diff())
    rows, verts = (pred >= 0).nonzero(as_tuple=True)
    e = pred[rows, verts]
    assert torch.equal(indices[e].long(), verts)
    assert torch.equal(dist_full[rows, edge_src[e]] + weight[e], dist_full[rows, verts])
    assert bool(torch.isfinite(dist_full[rows, verts]).all())
    if prob is not None:
        assert bool(ops.edge_presence(seed, rows, e, prob[e]).all())
    cur = torch.arange(n).expand_as(pred).clone()
    for _ in range(n + 1):
        p = pred.gather(1, cur)
        if not bool((p >= 0).any()):
            return
        cur = torch.where(p >= 0, edge_src[p.clamp(min=0)], cur)
    raise AssertionError("predecessor cycle")


def _scipy_dist(indptr, indices, weight, sources):
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    n = indptr.numel() - 1
    dense = np.full((n, n), np.inf)
    src = np.repeat(np.arange(n), np.diff(indptr.numpy()))
    np.minimum.at(dense, (src, indices.numpy()), weight.double().numpy())
    dense = np.where(np.isfinite(dense), np.maximum(dense, 1e-300), 0.0)
    return dijkstra(csr_matrix(dense), directed=True, indices=sources.numpy())


# ----------------------------------------------------------------------------------------
# PRODIGE: shortest_paths, reinforce_coefficients, edge_presence
# ----------------------------------------------------------------------------------------
def _shortest_paths_all_backends(case):
    indptr, indices, weight, sources, targets, prob, seed = case
    exp_d, exp_p = ref_sp.shortest_paths(indptr, indices, weight, sources, targets, prob, seed, True)
    full, _ = ref_sp.shortest_paths(indptr, indices, weight, sources, None, prob, seed, False)
    if prob is None and weight.dtype == torch.float64 and sources.numel():
        np.testing.assert_allclose(full.numpy(), _scipy_dist(indptr, indices, weight, sources), rtol=1e-12, atol=1e-250)
    for b in BACKENDS:
        with tgrep.use_backend(b):
            got = ops.shortest_paths(indptr, indices, weight, sources, targets, edge_prob=prob, seed=seed,
                                     return_predecessors=True)
        assert torch.equal(got.dist, exp_d), b
        assert torch.equal(_settled(got.pred, sources), _settled(exp_p, sources)), b
        if b == "cpp":
            assert torch.equal(got.pred, exp_p)  # same heap order as the spec: the same edges
        _tree_ok(torch.where(_settled(got.pred, sources), full, torch.inf), got.pred, indptr, indices, weight,
                 sources, prob, seed)


test_shortest_paths_all_backends, test_shortest_paths_all_backends_slow = twice(searches())(_shortest_paths_all_backends)


def _reinforce_equals_brute_force(case, adv):
    indptr, indices, weight, sources, _, prob, seed = case
    if prob is None:
        prob = torch.full((indices.numel(),), 0.5, dtype=torch.float64)
    B = sources.numel()
    _, pred = ref_sp.shortest_paths(indptr, indices, weight, sources, None, prob, seed, True)
    a = torch.tensor(adv[:B], dtype=torch.float64)
    # independent: loop over rows, settled vertices, their out-edges (PRODIGE eq. 4)
    exp = [0.0] * indices.numel()
    for b in range(B):
        for v in range(indptr.numel() - 1):
            if int(pred[b, v]) >= 0 or v == int(sources[b]):
                for e in range(int(indptr[v]), int(indptr[v + 1])):
                    kept = _keep_py(seed, b, e, float(prob[e]))
                    exp[e] += float(a[b]) * (float(kept) - float(prob[e]))
    for backend in BACKENDS:
        with tgrep.use_backend(backend):
            got = ops.reinforce_coefficients(indptr, pred, sources, seed, prob, a)
        torch.testing.assert_close(got, torch.tensor(exp, dtype=torch.float64), rtol=1e-12, atol=1e-12)


test_reinforce_equals_brute_force, test_reinforce_equals_brute_force_slow = twice(searches(), st.lists(st.floats(-2, 2), min_size=3, max_size=3))(_reinforce_equals_brute_force)


def _mix_py(x):
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _keep_py(seed, row, edge, p):
    h = _mix_py(edge ^ _mix_py(row ^ _mix_py((seed & 0xFFFFFFFF) ^ 0x9E3779B9)))
    return (h >> 8) * 2.0**-24 < p


def _edge_presence_is_the_documented_hash(seed, triples):
    rows = torch.tensor([t[0] for t in triples])
    edges = torch.tensor([t[1] for t in triples])
    p = torch.tensor([t[2] for t in triples], dtype=torch.float64)
    got = ops.edge_presence(seed, rows, edges, p).tolist()
    assert got == [_keep_py(seed, r, e, q) for r, e, q in triples]


test_edge_presence_is_the_documented_hash, test_edge_presence_is_the_documented_hash_slow = twice(st.integers(0, 2**62), st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**40),
                                                 st.floats(0, 1)), min_size=1, max_size=20))(_edge_presence_is_the_documented_hash)


# ----------------------------------------------------------------------------------------
# kNN, k-means, EDRep normalizers
# ----------------------------------------------------------------------------------------
@st.composite
def point_sets(draw, max_n=24, max_d=4):
    n = draw(st.integers(2, max_n))
    d = draw(st.integers(1, max_d))
    seed = draw(st.integers(0, 2**31))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    G = draw(st.integers(1, 3))
    sizes = torch.multinomial(torch.ones(G), n, replacement=True, generator=g).sort().values
    return x, sizes


def _knn_equals_brute_force(data, k, batched):
    x, batch = data
    batch = batch if batched else torch.zeros(x.size(0), dtype=torch.long)
    d2 = torch.cdist(x, x) ** 2
    d2[batch[:, None] != batch[None, :]] = math.inf
    d2.fill_diagonal_(math.inf)
    exp = d2.sort(1).values[:, :k]
    exp = torch.cat([exp, exp.new_full((x.size(0), k - exp.size(1)), math.inf)], 1)  # k > n - 1: padded
    for b in BACKENDS:
        with tgrep.use_backend(b):
            dist, idx = ops.knn(x, k, batch=batch if batched else None)
        have = torch.isfinite(exp)
        assert torch.equal(idx >= 0, have), b
        torch.testing.assert_close(torch.where(have, dist, 0), torch.where(have, exp, 0), rtol=1e-6,
                                   atol=1e-9 * float(exp[have].max()) if bool(have.any()) else 0)
        rows = torch.arange(x.size(0))[:, None].expand_as(idx)
        ok = idx >= 0
        assert bool((batch[idx[ok]] == batch[rows[ok]]).all()) and bool((idx[ok] != rows[ok]).all())


# was a strict xfail ("a derandomized example gives kNN distances that differ from the brute
# force"): the Triton kernel computed float64 inputs in float32 by the expansion
# ‖x‖² + ‖y‖² − 2x·y, whose cancellation is relative to ‖x‖², not to the (much smaller)
# distance (points ~1e-3 apart by ~1e-5: 0.6% off). Fixed at the root: float64 tiles are sums
# of squared differences in float64, and float32 results are recomputed from differences.
test_knn_equals_brute_force, test_knn_equals_brute_force_slow = twice(point_sets(), st.integers(1, 5), st.booleans())(_knn_equals_brute_force)


def _kmeans_labels_are_nearest_centroids(data, k, seed):
    x, _ = data
    k = min(k, x.size(0))
    labels, cent = ops.kmeans(x, k, seed=seed, return_centroids=True)
    assert labels.shape == (x.size(0),) and cent.shape == (k, x.size(1))
    d = torch.cdist(x, cent)
    best = d.min(1).values
    assert bool((d.gather(1, labels[:, None]).squeeze(1) <= best * (1 + 1e-9) + 1e-12).all())
    # a converged Lloyd step: each non-empty centroid is the mean of its members
    for a in labels.unique():
        torch.testing.assert_close(cent[a], x[labels == a].mean(0), rtol=1e-6, atol=1e-9 * float(x.abs().max()))


test_kmeans_labels_are_nearest_centroids, test_kmeans_labels_are_nearest_centroids_slow = twice(point_sets(max_n=30), st.integers(1, 6), st.integers(0, 100))(_kmeans_labels_are_nearest_centroids)


def _cluster_statistics_match_formula(data, k, weighted):
    y, _ = data
    m = y.size(0)
    g = torch.Generator().manual_seed(m * 7 + k)
    labels = torch.randint(0, k, (m,), generator=g)
    w = torch.rand(m, generator=g, dtype=y.dtype) + 0.1 if weighted else None
    log_w, mu, om = ops.cluster_statistics(y, labels, k, weights=w)
    for a in range(k):
        sel = labels == a
        c = int(sel.sum())
        if c == 0:
            assert float(log_w[a]) <= -1e29
            continue
        wa = w[sel] if weighted else torch.ones(c, dtype=y.dtype)
        torch.testing.assert_close(log_w[a], wa.sum().log())
        mean = (wa[:, None] * y[sel]).sum(0) / wa.sum()
        torch.testing.assert_close(mu[a], mean)
        if c == 1:
            assert bool((om[a] == 0).all())
        else:
            cen = y[sel] - mean
            cov = c / (c - 1) * (wa[:, None, None] * cen[:, :, None] * cen[:, None, :]).sum(0) / wa.sum()
            torch.testing.assert_close(om[a], cov)


test_cluster_statistics_match_formula, test_cluster_statistics_match_formula_slow = twice(point_sets(max_n=20), st.integers(1, 4), st.booleans())(_cluster_statistics_match_formula)


def _normalizers_match_logsumexp(data, m):
    x, _ = data
    x = x / (1 + x.abs().max())  # keep exp() finite for the brute force
    g = torch.Generator().manual_seed(m)
    y = torch.randn(m, x.size(1), generator=g, dtype=x.dtype) / 2
    exact = torch.logsumexp(x @ y.T, dim=1)
    for b in BACKENDS:
        with tgrep.use_backend(b):
            torch.testing.assert_close(ops.exact_log_normalizer(x, y), exact)
            # one cluster per row of y: omega = 0, mu = y_a -> the EDRep estimate is exact
            est = ops.log_normalizer(x, y, num_clusters=m, labels=torch.arange(m))
            torch.testing.assert_close(est, exact)
            log_w, mu, om = ops.cluster_statistics(y, torch.arange(m) % 2, 2 if m > 1 else 1) if m > 1 else \
                ops.cluster_statistics(y)
            direct = torch.logsumexp(log_w[None, :] + x @ mu.T + 0.5 * torch.einsum("nd,kde,ne->nk", x, om, x), 1)
            torch.testing.assert_close(ops.cluster_log_normalizer(x, log_w, mu, om), direct)


test_normalizers_match_logsumexp, test_normalizers_match_logsumexp_slow = twice(point_sets(max_n=16), st.integers(1, 6))(_normalizers_match_logsumexp)


# ----------------------------------------------------------------------------------------
# projections (against bisection on the KKT conditions), per-graph batches
# ----------------------------------------------------------------------------------------
def _bisect(f, lo, hi, iters=200):
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def _capped_simplex(y, k):
    # x = clip(y - tau, 0, 1), tau >= 0 the smallest with sum(x) <= k
    if float(y.clamp(0, 1).sum()) <= k:
        return y.clamp(0, 1)
    tau = _bisect(lambda t: float((y - t).clamp(0, 1).sum()) - k, 0.0, float(y.max()) + 1)
    return (y - tau).clamp(0, 1)


def _diag_simplex(y, eps):
    # x = (y - tau eps)_+ with sum(eps x) = 1 (KKT of min ||x - y||^2 s.t. eps.x = 1, x >= 0)
    f = lambda t: float((eps * (y - t * eps).clamp(min=0)).sum()) - 1  # noqa: E731
    lo, hi = -1.0, 1.0
    while f(lo) < 0:
        lo *= 2
    while f(hi) > 0:
        hi *= 2
    return (y - _bisect(f, lo, hi) * eps).clamp(min=0)


def _projections_match_bisection(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    y = torch.randn(n, generator=g, dtype=torch.float64) * 2
    ks = torch.rand(len(sizes), generator=g, dtype=torch.float64) * torch.tensor(sizes, dtype=torch.float64)
    eps = torch.rand(n, generator=g, dtype=torch.float64) * 0.95 + 0.05
    got_c = ops.project_capped_simplex(y, ks, batch=batch)
    got_d = ops.project_diag_simplex(y, eps, batch=batch)
    for i in range(len(sizes)):
        sel = batch == i
        torch.testing.assert_close(got_c[sel], _capped_simplex(y[sel], float(ks[i])), atol=1e-8, rtol=0)
        torch.testing.assert_close(got_d[sel], _diag_simplex(y[sel], eps[sel]), atol=1e-8, rtol=0)


test_projections_match_bisection, test_projections_match_bisection_slow = twice(st.lists(st.integers(1, 6), min_size=1, max_size=3), st.integers(0, 2**31))(_projections_match_bisection)


@st.composite
def batched_graphs(draw, max_graphs=3, max_n=7):
    G = draw(st.integers(1, max_graphs))
    seed = draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    eis, sizes, off = [], [], 0
    for _ in range(G):
        n = draw(st.integers(2, max_n))
        # a connected undirected graph: a random spanning tree plus a few extra edges
        parent = [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
        src = list(range(1, n)) + [int(v) for v in torch.randint(0, n, (n // 2,), generator=g)]
        dst = parent + [int(v) for v in torch.randint(0, n, (n // 2,), generator=g)]
        ei = torch.tensor([src, dst])
        ei = ei[:, ei[0] != ei[1]]
        ei = torch.cat([ei, ei.flip(0)], 1).unique(dim=1)
        eis.append(ei + off)
        sizes.append(n)
        off += n
    ei = torch.cat(eis, 1)
    batch = torch.repeat_interleave(torch.arange(G), torch.tensor(sizes))
    return ei, batch, sizes


def _project_lipschitz_is_feasible_and_idempotent(data, seed):
    ei, batch, sizes = data
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(ei.size(1), generator=g, dtype=torch.float64) + 0.1
    y = torch.randn(batch.numel(), generator=g, dtype=torch.float64)
    t = ops.project_lipschitz(y, ei, cost, batch=batch, num_iters=3000, tol=1e-12)
    viol = (t[ei[0]] - t[ei[1]] - cost).max()
    assert float(viol) <= 1e-5, float(viol)
    assert float((t - y).norm()) <= float((y - y.mean()).norm()) + float(y.norm()) + 1e-9
    # a feasible point is its own projection (zero is feasible: costs are positive)
    z = ops.project_lipschitz(torch.zeros_like(y), ei, cost, batch=batch)
    torch.testing.assert_close(z, torch.zeros_like(y), atol=1e-9, rtol=0)


test_project_lipschitz_is_feasible_and_idempotent, test_project_lipschitz_is_feasible_and_idempotent_slow = twice(batched_graphs(), st.integers(0, 2**31))(_project_lipschitz_is_feasible_and_idempotent)


# ----------------------------------------------------------------------------------------
# graph learning and OT compression: a batch equals its graphs one by one
# ----------------------------------------------------------------------------------------
def _graph_learning_batch_equals_one_by_one(data, k):
    x, batch = data
    sizes = torch.bincount(batch)
    smallest = int(sizes[sizes > 0].min())
    if smallest < 3:
        return
    k = min(k, smallest - 2)  # learn_graph needs k + 2 nodes per graph
    z = torch.rand(x.size(0), 5, dtype=torch.float64, generator=torch.Generator().manual_seed(k)).sort(1).values
    th = ops.graph_learning_theta(z, k, batch=batch)
    ei, w = ops.learn_graph(x, k, batch=batch)
    assert bool((w > 0).all()) and bool((ei[0] != ei[1]).all())
    assert bool((batch[ei[0]] == batch[ei[1]]).all())
    dense = torch.zeros(x.size(0), x.size(0), dtype=w.dtype)
    dense[ei[0], ei[1]] = w
    torch.testing.assert_close(dense, dense.T)
    off = 0
    for gi, c in enumerate(sizes.tolist()):
        if c == 0:
            continue
        sel = slice(off, off + c)
        th1 = ops.graph_learning_theta(z[sel], k)
        th_g = th[int(batch[off])] if isinstance(th, torch.Tensor) and th.dim() else th
        torch.testing.assert_close(torch.as_tensor(th_g, dtype=torch.float64), torch.as_tensor(th1, dtype=torch.float64))
        ei1, w1 = ops.learn_graph(x[sel], k)
        d1 = torch.zeros(c, c, dtype=w.dtype)
        d1[ei1[0], ei1[1]] = w1
        torch.testing.assert_close(dense[sel, sel], d1, rtol=1e-4, atol=1e-6)
        off += c


# was a strict xfail ("learn_graph on a batch differs from learn_graph on each graph alone,
# rtol 1e-4"): the batch was solved as one problem with one step γ (from the largest degree of
# any graph) and one stopping test on the joint relative change, so every graph stopped at a
# different point than alone (up to 3e-3 relative at tol 1e-5; 3e-6 at tol 1e-8). Fixed at the
# root: each graph of a batch is an independent problem with its own γ and stopping test.
test_graph_learning_batch_equals_one_by_one, test_graph_learning_batch_equals_one_by_one_slow = twice(point_sets(max_n=18, max_d=3), st.integers(1, 3))(_graph_learning_batch_equals_one_by_one)


def _ot_compress_batch_equals_one_by_one(data, frac):
    ei, batch, sizes = data
    n = batch.numel()
    k = [max(1, int(frac * s)) for s in sizes]
    perm = ops.ot_compress(ei, n, torch.tensor(k), batch=batch)
    assert torch.equal(torch.bincount(batch[perm], minlength=len(sizes)), torch.tensor(k))
    off = 0
    for gi, s in enumerate(sizes):
        sel = (ei[0] >= off) & (ei[0] < off + s)
        one = ops.ot_compress(ei[:, sel] - off, s, k[gi])
        assert torch.equal(perm[batch[perm] == gi] - off, one), gi
        off += s
    cost = ops.ot_compression_cost(ei, n, perm, batch=batch)
    assert bool(torch.isfinite(cost).all())


test_ot_compress_batch_equals_one_by_one, test_ot_compress_batch_equals_one_by_one_slow = twice(batched_graphs(), st.floats(0.2, 0.8))(_ot_compress_batch_equals_one_by_one)
