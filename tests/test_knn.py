import pytest
import torch

import tgrep
from tgrep.kernels.reference.knn import knn_blocked, knn_dense
from tgrep.ops.knn import knn


def _check_same(d, i, d2, i2):
    assert torch.allclose(d, d2, atol=1e-4, rtol=1e-4, equal_nan=True)
    fin = torch.isfinite(d2)
    assert torch.equal(torch.isfinite(d), fin)
    # indices equal up to (rare) exact ties: the distance to the returned index must match
    assert (i[~fin] == -1).all()
    assert (i[fin] >= 0).all()


def _need(backend):
    if backend == "cpp" and not tgrep._backend.cpp_status("knn")[0]:
        pytest.skip("C++ kernels unavailable here")


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("use_batch", [False, True])
def test_knn_matches_dense(seed, backend, use_batch):
    _need(backend)
    n, d, k = 257, 5, 7
    x = torch.randn(n, d)
    batch = torch.sort(torch.randint(0, 6, (n,)))[0] if use_batch else None
    with tgrep.use_backend(backend):
        dist, idx = knn(x, k, batch=batch, chunk=50)
    d2, i2 = knn_dense(x, x, k, loop=False, self_query=True, batch_x=batch, batch_y=batch)
    _check_same(dist, idx, d2, i2)
    assert (idx == i2).float().mean() > 0.99
    assert (idx != torch.arange(n)[:, None]).all()          # no self
    if use_batch:
        ok = idx >= 0
        assert (batch[idx.clamp_min(0)][ok] == batch[:, None].expand_as(idx)[ok]).all()


def test_knn_blocked_small_blocks(seed):
    x = torch.randn(100, 3, dtype=torch.float64)
    d1, i1 = knn_blocked(x, x, 9, loop=False, self_query=True, chunk=7, block=11)
    d2, i2 = knn_dense(x, x, 9, loop=False, self_query=True)
    assert torch.allclose(d1, d2, atol=1e-9)
    assert torch.equal(i1, i2)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_knn_padding_and_duplicates(backend):
    _need(backend)
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    batch = torch.tensor([0, 0, 0, 1])
    with tgrep.use_backend(backend):
        dist, idx = knn(x, 3, batch=batch)
    assert dist[0, 0] == 0 and idx[0, 0] == 1          # the duplicate, not itself
    assert idx[0, 2] == -1 and torch.isinf(dist[0, 2])  # only 2 candidates in example 0
    assert (idx[3] == -1).all()                          # a lone node has none
    with tgrep.use_backend(backend):
        d_loop, i_loop = knn(x, 2, loop=True)
    assert (d_loop[:, 0] == 0).all()


def test_knn_bad_inputs():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="'x'"):
        knn(torch.tensor([[float("nan"), 0.0]] * 3), 1)
    with pytest.raises(ValueError, match="'k'"):
        knn(x, 0)
    with pytest.raises(TypeError, match="'x'"):
        knn(torch.ones(10, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="sorted"):
        knn(x, 2, batch=torch.tensor([1, 0] * 5))
    with pytest.raises(ValueError, match="'method'"):
        knn(x, 2, method="annoy")
    for method, mod in (("faiss", "faiss"), ("nndescent", "pynndescent")):
        try:
            __import__(mod)
        except ImportError:
            with pytest.raises(ImportError, match=method):
                knn(x, 2, method=method)


def test_external_method_wrapper_with_a_stand_in(monkeypatch, seed):
    """The faiss path (self removal among ties, padding) with a tiny stand-in module."""
    import sys
    import types

    import numpy as np

    class IndexFlatL2:
        def __init__(self, d):
            self.x = None

        def add(self, x):
            self.x = x

        def search(self, q, k):
            d = ((q[:, None, :] - self.x[None, :, :]) ** 2).sum(-1)
            i = np.argsort(d, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(d, i, 1), i

    monkeypatch.setitem(sys.modules, "faiss", types.SimpleNamespace(IndexFlatL2=IndexFlatL2))
    x = torch.randn(50, 3)
    x[1] = x[0]                                  # a duplicate: self may not come first
    dist, idx = knn(x, 4, method="faiss")
    d2, _ = knn_dense(x, x, 4, loop=False, self_query=True)
    assert torch.allclose(dist, d2, atol=1e-5)
    assert (idx != torch.arange(50)[:, None]).all()
    assert idx[0, 0] == 1 and idx[1, 0] == 0
    dist, idx = knn(x[:3], 4, method="faiss")   # only 2 candidates: padded
    assert (idx[:, 2:] == -1).all() and torch.isinf(dist[:, 2:]).all()


@pytest.mark.parametrize("use_batch", [False, True])
def test_knn_triton_matches_dense(seed, use_batch):
    pytest.importorskip("triton")
    n, d, k = 70, 5, 5
    x = torch.randn(n, d)
    batch = torch.sort(torch.randint(0, 4, (n,)))[0] if use_batch else None
    with tgrep.use_backend("triton"):
        dist, idx = knn(x, k, batch=batch)
    d2, i2 = knn_dense(x, x, k, loop=False, self_query=True, batch_x=batch, batch_y=batch)
    _check_same(dist, idx, d2, i2)
    assert (idx == i2).float().mean() > 0.99


@pytest.mark.cuda
def test_knn_cuda_larger(seed):
    x = torch.randn(5000, 64, device="cuda")
    dist, idx = knn(x, 31)
    d2, i2 = knn_dense(x.cpu(), x.cpu(), 31, loop=False, self_query=True)
    assert torch.allclose(dist.cpu(), d2, atol=1e-3, rtol=1e-4)
    assert (idx.cpu() == i2).float().mean() > 0.999
    ei, ew = tgrep.learn_graph(x, 10)
    assert ei.is_cuda and (ew > 0).all()


def test_ivf_recall_and_exact_distances():
    """IVF: the probe count is chosen by a sampled recall check (target 0.99), distances of the
    neighbours found are exact, no row is left without k neighbours, self excluded."""
    pytest.importorskip("faiss")
    from tgrep.kernels.reference.knn import knn_dense

    g = torch.Generator().manual_seed(3)
    centers = torch.randn(8, 6, generator=g) * 4
    x = centers[torch.randint(0, 8, (3000,), generator=g)] + torch.randn(3000, 6, generator=g)
    d, i = tgrep.ops.knn(x, 10, method="ivf")
    de, ie = knn_dense(x, x, 10, loop=False, self_query=True)
    rec = float((i[:, :, None] == ie[:, None, :]).any(1).double().mean())
    assert rec >= 0.97, rec
    assert bool((i >= 0).all()) and bool((i != torch.arange(3000)[:, None]).all())
    exact = ((x[:, None, :] - x[i]) ** 2).sum(-1)
    torch.testing.assert_close(d, exact, rtol=1e-4, atol=1e-4)
    assert bool((d.diff(dim=1) >= 0).all())
