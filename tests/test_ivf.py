"""The inverted-file kNN's C++ pieces (csrc/cpu/knn.cpp) against plain-torch twins, and their
bounds checks: the nearest-centroid selection (``smallest_k``), the heaps back in row order
(``heaps_to_lists``), the stuck-row test (``stuck_rows``) and heap selection through gathered
rows (``knn_select(rows=...)``)."""
import pytest
import torch

from tgrep._ext import load_cpp

mod = load_cpp("knn")
pytestmark = pytest.mark.skipif(mod is None, reason="the C++ extension could not be built here")


def _smallest_reference(D, p):
    """Column ids of the ``p`` smallest entries per row, ascending, ties by column, NaN last."""
    out = []
    for row in D.tolist():
        key = [((v != v), v if v == v else 0.0, j) for j, v in enumerate(row)]
        out.append([j for _, _, j in sorted(key)[:p]])
    return torch.tensor(out, dtype=torch.long).reshape(D.shape[0], p)


def test_smallest_k_equals_reference(seed):
    g = torch.Generator().manual_seed(seed)
    for trial in range(60):
        m, B = (int(v) for v in torch.randint(1, 25, (2,), generator=g))
        p = int(torch.randint(1, B + 1, (), generator=g))
        D = torch.randint(0, 4, (m, B), generator=g).float()        # many ties
        if trial % 3 == 0:
            D[torch.rand(m, B, generator=g) < 0.3] = float("nan")
        if trial % 5 == 0:
            D[torch.rand(m, B, generator=g) < 0.3] = float("inf")
        for threads in (1, 2):
            assert torch.equal(mod.smallest_k(D, p, threads), _smallest_reference(D, p))


def test_smallest_k_rejects_bad_sizes():
    D = torch.rand(3, 4)
    for p in (0, 5, -1):
        with pytest.raises(RuntimeError):
            mod.smallest_k(D, p, 1)
    with pytest.raises(RuntimeError):
        mod.smallest_k(D.double(), 2, 1)


def test_heaps_to_lists_equals_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 40, 6
    order = torch.randperm(n, generator=g)
    bd = torch.randint(0, 5, (n, k), generator=g).float()
    bi = torch.randint(-1, n, (n, k), generator=g)
    bd[bi < 0] = float("inf")
    bd[torch.rand(n, k, generator=g) < 0.1] = float("inf")          # an infinite slot is empty too
    D, I = mod.heaps_to_lists(bd, bi, order, 2)
    for h in range(n):
        pairs = sorted((float(bd[h, j]), int(order[bi[h, j]])) for j in range(k)
                       if bi[h, j] >= 0 and bd[h, j] < float("inf"))
        pairs += [(float("inf"), -1)] * (k - len(pairs))
        r = int(order[h])
        assert D[r].tolist() == [d for d, _ in pairs]
        assert I[r].tolist() == [i for _, i in pairs]


def test_heaps_to_lists_rejects_bad_indices():
    bd, bi = torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.long)
    order = torch.arange(4)
    for o, i in [(torch.tensor([0, 1, 1, 3]), bi), (torch.tensor([0, 1, 2, 4]), bi), (order, bi + 4),
                 (order, bi - 2), (order[:3].contiguous(), bi)]:
        with pytest.raises(RuntimeError):
            mod.heaps_to_lists(bd, i, o, 1)


def test_stuck_rows_equals_torch_test(seed):
    """The C++ stuck-row test is its torch twin ``ann.stuck_rows``."""
    from tgrep.kernels.reference import ann

    g = torch.Generator().manual_seed(seed)
    n, k = 50, 4
    D = torch.sort(torch.rand(n, k, generator=g) * 4, 1).values
    I = torch.randint(-1, n, (n, k), generator=g)
    I[:5, 0] = torch.arange(5)                                        # rows listing themselves
    assert torch.equal(mod.stuck_rows(D, I, ann.STUCK), ann.stuck_rows(D, I))
    with pytest.raises(RuntimeError):
        mod.stuck_rows(D, I + n, ann.STUCK)


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


@pytest.mark.parametrize("n, list_size", [(40, 8), (700, 16), (3000, 64)])
def test_ivf_lists_are_clean_and_near_exact(seed, n, list_size):
    """Many small lists (the two-level quantizer with few cells): no row lists itself or a
    neighbour twice, rows are sorted, the distances are exact, and the recall is high."""
    from tgrep.kernels.reference import ann

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g) + 4 * torch.randint(0, 5, (n, 1), generator=g).float()
    k = 8
    info = {}
    d, i = ann.ivf(x, k, False, mod=mod, list_size=list_size, seed=seed % 1000, info=info)
    assert info["lists"] > 1
    s = torch.sort(i, 1).values
    assert not bool((s[:, 1:] == s[:, :-1]).any()) and not bool((i == torch.arange(n)[:, None]).any())
    assert bool((i >= 0).all()) and bool((d[:, 1:] >= d[:, :-1]).all())
    ex = ((x[:, None, :] - x[i]) ** 2).sum(-1)
    scale = float((x - x.mean(0)).pow(2).sum(1).max())      # the ‖q‖² + ‖y‖² − 2 q·y form rounds at this scale
    assert torch.allclose(d, ex, rtol=1e-4, atol=1e-5 * scale)
    de = torch.cdist(x, x).pow(2).fill_diagonal_(float("inf")).topk(k, dim=1, largest=False).indices
    rec = float((i[:, :, None] == de[:, None, :]).any(2).float().mean())
    assert rec >= 0.97, info


def test_two_level_home_is_nearest_centroid(seed):
    """The two-level quantizer's home of a row is its nearest centroid (for almost every row)."""
    from tgrep.kernels.reference import ann

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(20000, 8, generator=g) + 3 * torch.randn(20, 8, generator=g)[torch.randint(0, 20, (20000,),
                                                                                                generator=g)]
    faiss = ann._faiss(1)
    cent, top, cands = ann._two_level(x, 100, seed % 1000, faiss)
    near = ann._nearest_fine(mod, x, torch.arange(20000), top, cent, cands, 5, 1)
    exact = torch.cdist(x, cent).argmin(1)
    assert float((near[:, 0] == exact).float().mean()) >= 0.995
    assert not bool((torch.sort(near, 1).values[:, 1:] == torch.sort(near, 1).values[:, :-1]).any())


@pytest.mark.parametrize("n, list_size", [(700, 16), (3000, 64)])
def test_ivf_local_is_the_same_lists_in_list_order(seed, n, list_size):
    """``ivf(local=True)``: the same neighbour lists as the row-order search, row ``h`` being
    row ``order[h]`` of ``x`` and the ids positions in that order."""
    from tgrep.kernels.reference import ann

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g) + 4 * torch.randint(0, 5, (n, 1), generator=g).float()
    k = 8
    d, i = ann.ivf(x, k, False, mod=mod, list_size=list_size, seed=seed % 1000)
    dl, il, order = ann.ivf(x, k, False, mod=mod, list_size=list_size, seed=seed % 1000, local=True)
    assert torch.equal(torch.sort(order).values, torch.arange(n))
    assert not torch.equal(order, torch.arange(n))                  # a real reordering
    back = torch.where(il >= 0, order[il.clamp_min(0)], il)
    assert torch.equal(torch.sort(back, 1).values, torch.sort(i[order], 1).values)
    assert torch.equal(dl, d[order])
    assert bool((dl[:, 1:] >= dl[:, :-1]).all()) and not bool((il == torch.arange(n)[:, None]).any())


def test_repair_through_rows_of_equals_repair_of_permuted_rows(seed):
    """``_repair(rows_of=order)`` on lists in a permuted order gives what the repair of the
    permuted points gives (the stuck rows searched exactly, ids as positions)."""
    from tgrep.kernels.reference import ann

    g = torch.Generator().manual_seed(seed)
    n, kk = 300, 5
    x = torch.randn(n, 4, generator=g)
    order = torch.randperm(n, generator=g)
    D = torch.rand(n, kk, generator=g).sort(1).values * 50 + 10       # far: many rows look stuck
    I = torch.randint(0, n, (n, kk), generator=g)
    also = torch.rand(n, generator=g) < 0.1
    D1, I1, D2, I2 = D.numpy().copy(), I.numpy().copy(), D.numpy().copy(), I.numpy().copy()
    f1 = ann._repair(x[order], D1, I1, kk, self_excluded=True, also=also, mod=mod)
    f2 = ann._repair(x, D2, I2, kk, self_excluded=True, also=also, mod=mod, rows_of=order)
    assert f1 == f2 > 0
    assert torch.equal(torch.from_numpy(I1), torch.from_numpy(I2))
    assert torch.allclose(torch.from_numpy(D1), torch.from_numpy(D2), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_knn_local_op(seed, backend):
    """``tgrep::knn_local``: a permutation ``order`` and the lists of ``tgrep::knn`` in it
    (the IVF's list order on the C++ kernel; the identity for exact and on the reference)."""
    import tgrep

    g = torch.Generator().manual_seed(seed)
    n, k = 2000, 6
    x = torch.randn(n, 5, generator=g) + 4 * torch.randint(0, 4, (n, 1), generator=g).float()
    with tgrep.use_backend(backend):
        torch.library.opcheck(torch.ops.tgrep.knn_local.default, (x[:300], k, False, "ivf", 1, False))
        for method in ("ivf", "exact"):
            d, i, order = torch.ops.tgrep.knn_local(x, k, False, method, 1, False)
            d0, i0 = torch.ops.tgrep.knn(x, k, None, False, method, 0, 1, False)
            assert torch.equal(torch.sort(order).values, torch.arange(n))
            if method == "exact" or backend == "reference":
                assert torch.equal(order, torch.arange(n))
            back = torch.where(i >= 0, order[i.clamp_min(0)], i)
            assert torch.equal(torch.sort(back, 1).values, torch.sort(i0[order], 1).values)
            assert torch.allclose(d, d0[order])
        with pytest.raises(ValueError, match="NaN"):
            bad = x.clone()
            bad[3, 1] = float("nan")
            torch.ops.tgrep.knn_local(bad, k, False, "ivf", 1, False)


def test_exact_sample_blocks_equal_brute_force(seed):
    """``_exact_sample``: the exact nearest of the sampled rows, self excluded, over row blocks
    merged (blocks smaller than ``kk`` included)."""
    from tgrep.kernels.reference import ann

    g = torch.Generator().manual_seed(seed)
    n, kk = 900, 7
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    q = torch.randperm(n, generator=g)[:70]
    full = torch.cdist(x[q], x).pow(2)
    full[torch.arange(q.numel()), q] = float("inf")
    ref_i = torch.topk(full, kk, dim=1, largest=False).indices
    for chunk, block in ((64, 1 << 16), (16, 100), (7, 5), (70, 899)):
        got = ann._exact_sample(x, q, kk, chunk=chunk, block=block)
        assert got.shape == (q.numel(), kk)
        assert torch.equal(torch.sort(got, 1).values, torch.sort(ref_i, 1).values)
        assert not bool((got == q[:, None]).any())


def test_counting_order_is_a_stable_argsort(seed):
    """``counting_order``: ``torch.argsort(key, stable=True)`` and the offsets of every key;
    keys out of range are refused."""
    g = torch.Generator().manual_seed(seed)
    for m, K in [(0, 3), (1, 1), (50, 4), (5000, 37), (20000, 1)]:
        key = torch.randint(0, K, (m,), generator=g)
        order, ptr = mod.counting_order(key, K)
        assert torch.equal(order, torch.argsort(key, stable=True))
        ref = torch.zeros(K + 1, dtype=torch.long)
        ref[1:] = torch.cumsum(torch.bincount(key, minlength=K), 0)
        assert torch.equal(ptr, ref)
    for bad in ([0, 3], [-1, 0]):
        with pytest.raises(RuntimeError, match="out of range"):
            mod.counting_order(torch.tensor(bad), 3)
