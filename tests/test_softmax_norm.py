"""EDRep softmax normalizers: kernels vs reference, gradients, accuracy, bad input."""
from __future__ import annotations

import math

import pytest
import torch

import tgrep
from tgrep.kernels.reference import softmax_norm as ref
from tgrep.ops import (cluster_log_normalizer, cluster_statistics, exact_log_normalizer, kmeans,
                       log_normalizer)


def _stats(k, d, dtype=torch.float64):
    log_w = torch.randn(k, dtype=dtype)
    mu = 0.3 * torch.randn(k, d, dtype=dtype)
    a = 0.2 * torch.randn(k, d, d, dtype=dtype)
    omega = a @ a.transpose(1, 2)
    return log_w, mu, omega


def test_chunked_kernel_matches_formula(seed):
    n, d, k = 37, 6, 4
    x = 0.5 * torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    log_w, mu, omega = (t.requires_grad_() for t in _stats(k, d))
    want = ref.cluster_lse_formula(x, log_w, mu, omega)
    got = cluster_log_normalizer(x, log_w, mu, omega)
    torch.testing.assert_close(got, want)
    g = torch.randn(n, dtype=torch.float64)
    gw = torch.autograd.grad(want, (x, log_w, mu, omega), g)
    gg = torch.autograd.grad(got, (x, log_w, mu, omega), g)
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b)
    # small row blocks exercise the blocking
    torch.testing.assert_close(ref.cluster_lse_forward(x.detach(), log_w.detach(), mu.detach(), omega.detach(),
                                                       block=5), want.detach())


def test_gradcheck_float64(seed):
    n, d, k = 7, 3, 3
    x = 0.5 * torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    log_w, mu, omega = (t.requires_grad_() for t in _stats(k, d))
    assert torch.autograd.gradcheck(cluster_log_normalizer, (x, log_w, mu, omega))
    # through the statistics into y (detach_stats=False)
    y = 0.5 * torch.randn(12, d, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(12) % 3
    w = torch.rand(12, dtype=torch.float64) + 0.5
    fn = lambda x_, y_: log_normalizer(x_, y_, labels=labels, weights=w, detach_stats=False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, y))


def test_stats_follow_paper_eq5(seed):
    y = torch.randn(50, 4, dtype=torch.float64)
    labels = torch.randint(0, 3, (50,))
    labels[:3] = torch.arange(3)
    log_w, mu, omega = cluster_statistics(y, labels, 3)
    for a in range(3):
        ya = y[labels == a]
        assert math.isclose(float(log_w[a]), math.log(ya.shape[0]))
        torch.testing.assert_close(mu[a], ya.mean(0))
        torch.testing.assert_close(omega[a], torch.cov(ya.t()))  # 1/(|V|-1) normalization
    # the paper's formula written out: log m + log sum_a pi_a exp(x mu_a + x Omega_a x / 2)
    x = 0.3 * torch.randn(9, 4, dtype=torch.float64)
    pi = torch.exp(log_w) / 50
    z = sum(pi[a] * torch.exp(x @ mu[a] + 0.5 * ((x @ omega[a]) * x).sum(1)) for a in range(3))
    torch.testing.assert_close(log_normalizer(x, y, labels=labels), math.log(50) + torch.log(z))


def test_exact_matches_logsumexp(seed):
    x = torch.randn(23, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(17, 5, dtype=torch.float64, requires_grad=True)
    got = exact_log_normalizer(x, y, chunk=4)
    want = torch.logsumexp(x @ y.t(), 1)
    torch.testing.assert_close(got, want)
    g = torch.randn(23, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, (x, y), g), torch.autograd.grad(want, (x, y), g)):
        torch.testing.assert_close(a, b)
    w = torch.rand(17, dtype=torch.float64)
    torch.testing.assert_close(exact_log_normalizer(x, y, weights=w),
                               torch.logsumexp(x @ y.t() + torch.log(w)[None], 1))
    assert torch.autograd.gradcheck(lambda a, b: exact_log_normalizer(a, b, chunk=3), (x[:5], y[:6]))


def test_estimate_equals_exact_for_gaussian_clusters(seed):
    """Rows of y exactly Gaussian within clusters, m large: the estimate is the exact value."""
    d, k, m = 6, 3, 60_000
    centers = 0.4 * torch.randn(k, d, dtype=torch.float64)
    sizes = torch.tensor([0.5, 0.3, 0.2])
    labels = torch.multinomial(sizes, m, replacement=True)
    chol = 0.15 * torch.randn(k, d, d, dtype=torch.float64)
    y = centers[labels] + torch.einsum("mde,me->md", chol[labels], torch.randn(m, d, dtype=torch.float64))
    x = torch.randn(40, d, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    exact = exact_log_normalizer(x, y)
    est = log_normalizer(x, y, labels=labels)
    assert (est - exact).abs().max() < 5e-3
    # k-means finds the clusters well enough too, and more clusters help on clustered data
    err1 = (log_normalizer(x, y) - exact).abs().median()
    err3 = (log_normalizer(x, y, num_clusters=3, seed=seed) - exact).abs().median()
    assert err3 < err1 and err3 < 5e-3


def test_degenerate_clusters(seed):
    x = torch.randn(8, 4, dtype=torch.float64)
    pts = torch.randn(3, 4, dtype=torch.float64)
    y = torch.cat([pts[0:1], pts[1:2].repeat(5, 1), pts[2:3].repeat(2, 1)])  # 1 member, 0 variance
    labels = torch.tensor([0, 1, 1, 1, 1, 1, 2, 2])
    est = log_normalizer(x, y, labels=labels)
    torch.testing.assert_close(est, exact_log_normalizer(x, y))  # point clusters: exact
    # an empty cluster (labels never use 3) adds nothing
    est5 = log_normalizer(x, y, labels=labels, num_clusters=5)
    torch.testing.assert_close(est5, est)
    assert torch.isfinite(est5).all()


def test_float16_and_empty_x(seed):
    x = torch.randn(10, 8).half()
    y = torch.randn(30, 8).half()
    out = log_normalizer(x, y, num_clusters=2)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert log_normalizer(torch.zeros(0, 8), torch.randn(5, 8)).shape == (0,)


def test_bad_inputs():
    x, y = torch.randn(4, 3), torch.randn(6, 3)
    with pytest.raises(ValueError, match="'x' contains NaN"):
        log_normalizer(torch.full((4, 3), float("nan")), y)
    with pytest.raises(ValueError, match="'y' contains NaN"):
        exact_log_normalizer(x, y.masked_fill(y > 0, float("inf")))
    with pytest.raises(ValueError, match="same number of columns"):
        log_normalizer(x, torch.randn(6, 4))
    with pytest.raises(ValueError, match="num_clusters"):
        log_normalizer(x, y, num_clusters=7)
    with pytest.raises(TypeError, match="'x'"):
        log_normalizer(torch.ones(4, 3, dtype=torch.long), y)
    with pytest.raises(ValueError, match="'labels'"):
        log_normalizer(x, y, labels=torch.tensor([0, 1, 2, 3, 4, -1]))
    with pytest.raises(ValueError, match="'labels'"):
        log_normalizer(x, y, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="'weights' must be >= 0"):
        log_normalizer(x, y, weights=-torch.ones(6))
    with pytest.raises(ValueError, match="'y' must have at least one row"):
        log_normalizer(x, torch.zeros(0, 3))
    with pytest.raises(ValueError, match="'mu' must have shape"):
        cluster_log_normalizer(x, torch.zeros(2), torch.zeros(3, 3), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="'chunk'"):
        exact_log_normalizer(x, y, chunk=0)


def test_kmeans_deterministic_and_correct(seed):
    centers = 5 * torch.eye(4)
    truth = torch.randint(0, 4, (400,))
    pts = centers[truth] + 0.1 * torch.randn(400, 4)
    a = kmeans(pts, 4, seed=seed)
    b = kmeans(pts, 4, seed=seed)
    assert torch.equal(a, b)
    # same partition as the truth up to relabeling
    pairs = torch.unique(truth * 4 + a)
    assert pairs.numel() == 4
    lab, cent = kmeans(pts, 4, seed=seed, n_init=3, return_centroids=True)
    assert cent.shape == (4, 4)
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans(pts[:3], 4)


def test_triton_kernel_interpreter(seed):
    """The Triton kernel (under TRITON_INTERPRET on CPU) against the reference formula."""
    if not torch.cuda.is_available() and not tgrep._backend.triton_interpret():
        pytest.skip("triton needs CUDA or TRITON_INTERPRET=1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    n, d, k = 70, 20, 3
    x = (0.5 * torch.randn(n, d, device=dev)).requires_grad_()
    log_w, mu, omega = (t.float().to(dev).requires_grad_() for t in _stats(k, d))
    g = torch.randn(n, device=dev)
    with tgrep.use_backend("triton"):
        got = cluster_log_normalizer(x, log_w, mu, omega)
        grads = torch.autograd.grad(got, (x, log_w, mu, omega), g)
    want = ref.cluster_lse_formula(x, log_w, mu, 0.5 * (omega + omega.transpose(1, 2)))
    wgrads = torch.autograd.grad(want, (x, log_w, mu, omega), g)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, wgrads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
def test_triton_kernel_cuda_large(seed):
    n, d, k = 100_000, 64, 8
    x = torch.randn(n, d, device="cuda") / 8
    y = torch.randn(50_000, d, device="cuda") / 8
    with tgrep.use_backend("triton"):
        got = log_normalizer(x, y, num_clusters=k, seed=seed)
    with tgrep.use_backend("reference"):
        want = log_normalizer(x, y, num_clusters=k, seed=seed)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
