"""k-means (``tgrep.ops.kmeans``) against independent computations: the result is a Lloyd fixed
point (labels = nearest centroid by ``torch.cdist``, centroids = member means), restarts keep the
run of least inertia, empty clusters keep their centroid, the stopping tolerance stops, and the
blocked assignment equals a plain argmin."""
import pytest
import torch

from tgrep.kernels.reference import kmeans as ref
from tgrep.ops.kmeans import assign_clusters, kmeans


def _blobs(n_per=30, centres=((0, 0), (6, 0), (0, 6), (6, 6), (3, 3)), spread=0.9, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.tensor(centres, dtype=torch.float64)
    x = c.repeat_interleave(n_per, 0) + spread * torch.randn(len(centres) * n_per, 2, generator=g, dtype=torch.float64)
    return x[torch.randperm(x.shape[0], generator=g)]


def _inertia(x, labels, cent):
    return float(((x - cent[labels]) ** 2).sum())


def test_result_is_a_lloyd_fixed_point():
    x = _blobs()
    labels, cent = kmeans(x, 5, iters=100, tol=0.0, seed=3, return_centroids=True)
    assert labels.dtype == torch.long and cent.shape == (5, 2)
    d = torch.cdist(x, cent)
    assert torch.equal(labels, d.argmin(1))
    for a in range(5):
        members = x[labels == a]
        assert members.shape[0] > 0
        torch.testing.assert_close(cent[a], members.mean(0), rtol=1e-9, atol=1e-9)


def test_restarts_keep_the_least_inertia_run():
    # 8 blobs, k=4: different seeds end in different local optima
    x = _blobs(n_per=12, centres=[(0, 0), (1, 9), (9, 1), (9, 9), (5, 5), (0, 5), (5, 0), (9, 5)], spread=1.5)
    runs = []
    for s in range(10, 16):
        lab, c = kmeans(x, 4, iters=30, seed=s, return_centroids=True)
        runs.append((_inertia(x, lab, c), lab))
    vals = [r[0] for r in runs]
    assert max(vals) - min(vals) > 1e-6, "precondition: the seeds disagree"
    lab, c = kmeans(x, 4, iters=30, seed=10, n_init=6, return_centroids=True)
    assert _inertia(x, lab, c) == pytest.approx(min(vals), rel=1e-12)
    assert torch.equal(lab, runs[vals.index(min(vals))][1])
    # n_init=1 is the first seed's run
    lab1 = kmeans(x, 4, iters=30, seed=10)
    assert torch.equal(lab1, runs[0][1])


def test_empty_clusters_keep_their_centroid():
    # reference update: cluster 2 receives no row and must keep its previous centroid exactly
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]], dtype=torch.float64)
    prev = torch.tensor([[1.0, 1.0], [11.0, 11.0], [-7.0, 3.0]], dtype=torch.float64)
    new = ref._update(x, torch.tensor([0, 0, 1, 1]), 3, prev, False)
    torch.testing.assert_close(new, torch.tensor([[1.0, 0.0], [11.0, 10.0], [-7.0, 3.0]], dtype=torch.float64))
    # through the op: 3 distinct points, 5 clusters -> duplicated seeds, empty clusters
    pts = torch.tensor([[1.0, 2.0], [5.0, -1.0], [-3.0, 4.0]], dtype=torch.float64)
    x = pts.repeat(4, 1)
    labels, cent = kmeans(x, 5, iters=10, seed=1, return_centroids=True)
    assert torch.isfinite(cent).all()
    assert (torch.cdist(cent, pts).min(1).values < 1e-12).all()  # every centroid is one of the points
    assert torch.equal(torch.cdist(x, cent).min(1).values, torch.zeros(12, dtype=torch.float64))


def test_tolerance_stops_and_iters_bound():
    x = _blobs(spread=1.6, seed=4)
    one = kmeans(x, 5, iters=1, seed=2, return_centroids=True)
    conv = kmeans(x, 5, iters=200, tol=0.0, seed=2, return_centroids=True)
    assert not torch.equal(one[0], conv[0]), "precondition: one Lloyd step is not converged"
    # a huge tolerance stops after the first step
    big = kmeans(x, 5, iters=200, tol=1e9, seed=2, return_centroids=True)
    assert torch.equal(big[0], one[0]) and torch.equal(big[1], one[1])
    # zero iterations: the k-means++ seeds themselves, every centroid a data row
    zero = kmeans(x, 5, iters=0, seed=2, return_centroids=True)
    assert (torch.cdist(zero[1], x).min(1).values == 0).all()
    assert torch.equal(zero[0], torch.cdist(x, zero[1]).argmin(1))
    # the default tolerance (1e-6) stops at the fixed point
    dflt = kmeans(x, 5, iters=200, seed=2, return_centroids=True)
    assert torch.equal(dflt[0], conv[0])


def test_sample_then_assign_every_row():
    x = _blobs(n_per=40, seed=5)
    labels, cent = kmeans(x, 5, sample=30, seed=0, return_centroids=True)
    assert torch.equal(labels, torch.cdist(x, cent).argmin(1))
    full = kmeans(x, 5, sample=x.shape[0], seed=0, return_centroids=True)
    assert not torch.equal(full[1], cent), "precondition: training on 30 rows differs"


@pytest.mark.parametrize("n,k", [(50, 7), (1500, 4100)])
def test_assign_clusters_is_nearest_centroid(n, k):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    c = torch.randn(k, 3, generator=g, dtype=torch.float64)
    assert n <= ref._block(k) or n > ref._block(k)  # (1500, 4100): several row blocks
    got = assign_clusters(x, c)
    assert torch.equal(got, torch.cdist(x, c).argmin(1))


def test_more_clusters_than_the_seeding_sample():
    # issue 12 item 8: k above init_sample (here 8 > 5)
    x = _blobs(n_per=6, seed=6)
    labels, cent = kmeans(x, 8, init_sample=5, seed=0, return_centroids=True)
    assert cent.shape == (8, 2) and torch.equal(labels, torch.cdist(x, cent).argmin(1))


def test_relative_tolerance_stops_after_a_small_step():
    # the stopping test is on the *relative* squared centroid move ||c1 - c0||^2 / ||c0||^2
    x = _blobs(spread=1.6, seed=4)
    c0 = kmeans(x, 5, iters=0, seed=2, return_centroids=True)[1]
    one = kmeans(x, 5, iters=1, seed=2, return_centroids=True)
    shift = float(((one[1] - c0) ** 2).sum() / (c0 ** 2).sum())
    assert 0 < shift < 0.2, shift
    two = kmeans(x, 5, iters=2, seed=2, return_centroids=True)
    assert not torch.equal(two[1], one[1]), "precondition: a second step moves the centroids"
    got = kmeans(x, 5, iters=50, tol=0.25, seed=2, return_centroids=True)
    assert torch.equal(got[1], one[1])


def test_default_seed_is_zero():
    x = _blobs(spread=2.0, seed=8)
    runs = {s: kmeans(x, 5, iters=1, seed=s) for s in (0, 1)}
    assert not torch.equal(runs[0], runs[1]), "precondition: the seed matters"
    assert torch.equal(kmeans(x, 5, iters=1), runs[0])
