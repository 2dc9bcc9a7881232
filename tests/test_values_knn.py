"""kNN (``tgrep.ops.knn``) against brute force (``torch.cdist``): every method's distances are
the true squared distances of the indices it returns, exact search returns the true
neighbours (padding ``inf`` / ``-1`` when ``k`` exceeds the candidates, ``loop``, ``batch``),
and approximate methods find a point that is everyone's nearest neighbour."""
import pytest
import torch

from tgrep.ops.knn import knn


def _brute(x, k, loop=False, batch=None):
    d = torch.cdist(x.double(), x.double()) ** 2
    if not loop:
        d.fill_diagonal_(float("inf"))
    if batch is not None:
        d[batch[:, None] != batch[None, :]] = float("inf")
    v, i = torch.sort(d, dim=1, stable=True)
    return v[:, :k], i[:, :k]


def _x(n=40, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("loop", [False, True])
def test_exact_equals_brute_force(loop):
    x = _x()
    dist, idx = knn(x, 5, loop=loop, method="exact")
    bd, bi = _brute(x, 5, loop)
    assert torch.equal(idx, bi)
    torch.testing.assert_close(dist.double(), bd, rtol=1e-9, atol=1e-9)
    if loop:
        assert torch.equal(idx[:, 0], torch.arange(40))


def test_more_neighbours_than_candidates_are_padded():
    x = _x(n=3)
    dist, idx = knn(x, 5, method="exact")
    assert idx.shape == (3, 5) and dist.shape == (3, 5)
    bd, bi = _brute(x, 2)
    assert torch.equal(idx[:, :2], bi) and bool((idx[:, 2:] == -1).all())
    assert bool(torch.isinf(dist[:, 2:]).all())
    torch.testing.assert_close(dist[:, :2].double(), bd, rtol=1e-9, atol=1e-12)


def test_batch_neighbours_stay_in_their_example():
    x = _x(n=30, seed=1)
    batch = torch.tensor([0] * 10 + [3] * 4 + [7] * 16)
    dist, idx = knn(x, 6, batch=batch, method="exact")
    bd, bi = _brute(x, 6, batch=batch)
    ok = torch.isfinite(bd)
    assert torch.equal(torch.where(ok, bi, torch.full_like(bi, -1)), idx)
    assert bool((idx[10:14, 3:] == -1).all())  # a 4-node example has 3 candidates


@pytest.mark.parametrize("method", ["hnsw"])  # (nndescent: a numba compile of minutes)
def test_approximate_methods_return_true_distances_and_find_the_hub(method):
    if method == "hnsw":
        pytest.importorskip("faiss")
    else:
        pytest.importorskip("pynndescent")
    # row 0 at the origin, the others at +-2 e_i: the hub is at 2, any other pair at >= 2 sqrt 2
    e = 2.0 * torch.eye(40)
    x = torch.cat([torch.zeros(1, 40), e, -e])
    dist, idx = knn(x, 3, method=method)
    assert idx.shape == (81, 3) and bool((idx >= 0).all()) and bool((idx != torch.arange(81)[:, None]).all())
    assert bool((idx[1:, 0] == 0).all()), "the hub is everyone's nearest neighbour"
    true = ((x[:, None, :].double() - x[idx].double()) ** 2).sum(-1)
    torch.testing.assert_close(dist.double(), true, rtol=1e-4, atol=1e-5)
    assert bool((dist[:, 1:] >= dist[:, :-1]).all())  # ascending


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_every_backend_pads_and_matches_brute_force(backend):
    import tgrep

    x = _x(n=4, seed=3)
    with tgrep.use_backend(backend):
        dist, idx = knn(x, 6, method="exact")
        dl, il = knn(x, 2, method="exact", loop=True)
    bd, bi = _brute(x, 3)
    assert torch.equal(idx[:, :3], bi) and bool((idx[:, 3:] == -1).all()) and bool(torch.isinf(dist[:, 3:]).all())
    torch.testing.assert_close(dist[:, :3].double(), bd, rtol=1e-9, atol=1e-12)
    assert torch.equal(il[:, 0], torch.arange(4)) and torch.equal(il[:, 1], bi[:, 0])


def test_a_missing_optional_package_only_blocks_its_own_method(monkeypatch):
    import sys

    K = sys.modules["tgrep.ops.knn"]  # (the name tgrep.ops.knn is the function)
    monkeypatch.setattr(K, "_have", lambda module: module != "pynndescent")
    x = _x(n=12, seed=4)
    dist, idx = knn(x, 3, method="exact")
    assert torch.equal(idx, _brute(x, 3)[1])
    with pytest.raises(ImportError, match="pynndescent"):
        knn(x, 3, method="nndescent")
