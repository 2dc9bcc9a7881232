"""The inverted-file kNN's C++ pieces (csrc/cpu/knn.cpp) against plain-torch twins, and their
bounds checks: per-row probe lists (``centroid_probes``) and heap selection through gathered
rows (``knn_select(rows=...)``)."""
import pytest
import torch

from tgrep._ext import load_cpp

mod = load_cpp("knn")
pytestmark = pytest.mark.skipif(mod is None, reason="the C++ extension could not be built here")


def _probes_reference(x, cent, home, cnbr, p):
    out = []
    for i in range(x.shape[0]):
        cand = cnbr[home[i]]
        d = ((x[i] - cent[cand]) ** 2).sum(1).double()
        d[cand == home[i]] = -1.0
        order = sorted(range(cand.numel()), key=lambda j: (float(d[j]), j))
        out.append(cand[order[:p]])
    return torch.stack(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_centroid_probes_equal_reference(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 7, generator=g)
    cent = torch.randn(25, 7, generator=g)
    home = torch.cdist(x, cent).argmin(1)
    cnbr = torch.topk(torch.cdist(cent, cent), 10, dim=1, largest=False).indices.contiguous()
    for threads in (1, 2):
        got = mod.centroid_probes(x, cent, home, cnbr, 5, threads)
        assert torch.equal(got, _probes_reference(x, cent, home, cnbr, 5))
    assert torch.equal(got[:, 0], home)


def test_centroid_probes_rejects_bad_indices():
    x, cent = torch.randn(10, 3), torch.randn(4, 3)
    home = torch.zeros(10, dtype=torch.long)
    cnbr = torch.arange(4).repeat(4, 1).contiguous()
    for h, c, p in [(home + 4, cnbr, 2), (home - 1, cnbr, 2), (home, cnbr + 7, 2), (home, cnbr, 5), (home, cnbr, 0),
                    (home[:9].contiguous(), cnbr, 2)]:
        with pytest.raises(RuntimeError):
            mod.centroid_probes(x, cent, h, c, p, 1)


def test_knn_select_through_rows_equals_dense():
    """Blocks of gathered rows (the search by list) update exactly the heaps named by ``rows``."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(60, 4, generator=g)
    xn = (x * x).sum(1)
    k = 5
    bd = torch.full((60, k), float("inf"))
    bi = torch.full((60, k), -1, dtype=torch.long)
    empty = torch.empty(0, dtype=torch.long)
    for c0 in range(0, 60, 20):                       # every list of 20 against a random half of the rows
        rows = torch.sort(torch.randperm(60, generator=g)[:30]).values
        G = (x[rows] @ x[c0:c0 + 20].t()).contiguous()
        mod.knn_select(G, xn[rows].contiguous(), xn[c0:c0 + 20].contiguous(), c0, 0, True, empty, empty, rows, bd, bi, 1)
    d, order = torch.sort(bd, 1)
    i = torch.gather(bi, 1, order)
    seen = torch.zeros(60, 60, dtype=torch.bool)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(60, 4, generator=g)
    for c0 in range(0, 60, 20):
        rows = torch.sort(torch.randperm(60, generator=g)[:30]).values
        seen[rows[:, None], torch.arange(c0, c0 + 20)[None, :]] = True
    seen.fill_diagonal_(False)
    dist = torch.cdist(x, x) ** 2
    dist[~seen] = float("inf")
    want_d, want_i = torch.topk(dist, k, dim=1, largest=False)
    torch.testing.assert_close(d, want_d, rtol=1e-4, atol=1e-4)
    ok = torch.isfinite(want_d)
    assert torch.equal(i[ok], want_i[ok]) and bool((i[~ok] == -1).all())


def test_knn_select_rejects_out_of_range():
    G = torch.zeros(3, 4)
    qn, yn = torch.zeros(3), torch.zeros(4)
    empty = torch.empty(0, dtype=torch.long)
    bd, bi = torch.full((5, 2), float("inf")), torch.full((5, 2), -1, dtype=torch.long)
    with pytest.raises(RuntimeError):   # a heap row past the heaps
        mod.knn_select(G, qn, yn, 0, 0, False, empty, empty, torch.tensor([0, 1, 5]), bd, bi, 1)
    with pytest.raises(RuntimeError):   # one heap per block row expected without rows
        mod.knn_select(G, qn, yn, 0, 0, False, empty, empty, empty, bd, bi, 1)
    with pytest.raises(RuntimeError):   # norms of the wrong length
        mod.knn_select(G, torch.zeros(2), yn, 0, 0, False, empty, empty, torch.tensor([0, 1, 2]), bd, bi, 1)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_neighbor_distances(backend, dtype):
    """``tgrep::neighbor_distances``: from differences, symmetric bit for bit, 0 for duplicates,
    inf for missing neighbours, out-of-range ids refused; opcheck."""
    import tgrep

    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 9, generator=g).to(dtype)
    x[7] = x[3]                                                   # a duplicate
    idx = torch.randint(0, 40, (40, 6), generator=g)
    idx[3, 0], idx[7, 0], idx[5, 2] = 7, 3, -1
    with tgrep.use_backend(backend):
        d = torch.ops.tgrep.neighbor_distances(x, idx)
        torch.library.opcheck(torch.ops.tgrep.neighbor_distances.default, (x, idx))
        with pytest.raises(ValueError, match="idx"):
            torch.ops.tgrep.neighbor_distances(x, torch.full((40, 2), 40))
    want = ((x[:, None, :].double() - x[idx.clamp_min(0)].double()) ** 2).sum(-1)
    ok = idx >= 0
    torch.testing.assert_close(d[ok].double(), want[ok], rtol=1e-5, atol=1e-6)
    assert d.dtype == dtype and float(d[5, 2]) == float("inf")
    assert float(d[3, 0]) == 0.0 and float(d[7, 0]) == 0.0
    with tgrep.use_backend(backend):
        back = torch.ops.tgrep.neighbor_distances(x, torch.arange(40)[:, None])
    assert bool((back == 0).all())                                 # every row to itself: exactly 0
    pairs = torch.stack([torch.arange(40).repeat_interleave(6), idx.reshape(-1)], 1)[ok.reshape(-1)]
    with tgrep.use_backend(backend):
        for i, j in pairs[:20].tolist():                          # symmetric in (i, j), bit for bit
            a = torch.ops.tgrep.neighbor_distances(x, torch.full((40, 1), j))[i, 0]
            b = torch.ops.tgrep.neighbor_distances(x, torch.full((40, 1), i))[j, 0]
            assert float(a) == float(b)
