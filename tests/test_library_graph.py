"""Learned-graph family as custom ops (tgrep::knn, tgrep::graph_learning_fbf): opcheck,
fullgraph compile, the GSPBox options against a dense reference solve, the transform's
contract, ties, batches, and the bad inputs of issue 12."""
import inspect
import math
import warnings

import pytest
import torch

import tgrep
from tgrep.kernels.reference import graph_learning as ref
from tgrep.kernels.reference.knn import knn_dense
from tgrep.ops.graph_learning import graph_learning_theta, learn_graph, solve_log_model
from tgrep.ops.knn import knn, knn_graph
from tgrep.transforms import LearnedGraphTransform
from _compile import count_compiles


def _support(n, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    _, idx = knn(x, k)
    src = torch.arange(n).repeat_interleave(k)
    key = torch.unique(torch.minimum(src, idx.reshape(-1)) * n + torch.maximum(src, idx.reshape(-1)))
    row, col = key // n, key % n
    z = ((x[row] - x[col]) ** 2).sum(1)
    return x, row, col, z


# ------------------------------------------------------------------ custom ops
def test_ops_are_registered():
    assert hasattr(torch.ops.tgrep, "knn") and hasattr(torch.ops.tgrep, "graph_learning_fbf")


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("use_batch", [False, True])
def test_opcheck_knn(seed, backend, use_batch):
    x = torch.randn(40, 3)
    batch = torch.sort(torch.randint(0, 3, (40,)))[0] if use_batch else None
    if batch is not None:
        batch = torch.unique(batch, return_inverse=True)[1]
    with tgrep.use_backend(backend):
        torch.library.opcheck(torch.ops.tgrep.knn.default, (x, 4, batch, False, "exact", 0, 1, False))


@pytest.mark.parametrize("method, n", [("hnsw", 60), ("ivf", 1500)])
def test_opcheck_knn_approximate(seed, method, n):
    pytest.importorskip("faiss")
    x = torch.randn(n, 4)
    torch.library.opcheck(torch.ops.tgrep.knn.default, (x, 5, None, False, method, 0, 1, False))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_opcheck_fbf(seed, backend):
    x, row, col, z = _support(30)
    w0 = torch.rand(z.shape, dtype=torch.float64)
    with tgrep.use_backend(backend):
        batch = (torch.arange(30) >= 15).long()
        inside = batch[row] == batch[col]
        for args in ((row, col, z, None, None, 1, 30, 0.0, math.inf, 50, 1e-6, 0.9, 1, False),
                     (row, col, z, w0, None, 1, 30, 0.5, 0.3, 50, 1e-6, 0.9, 1, False),
                     (row[inside], col[inside], z[inside], None, batch, 2, 30, 0.0, math.inf, 50, 1e-6, 0.9, 1,
                      False)):
            torch.library.opcheck(torch.ops.tgrep.graph_learning_fbf.default, args)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_fbf_batch_equals_graphs_one_by_one(seed, backend):
    """Each graph of a batch is its own problem (own step, own stopping test): the batched solve
    gives, bit for bit, what every graph gives alone, iterations included."""
    parts, offs = [], 0
    for n in (12, 25, 18):
        _, r, c, zz = _support(n)
        parts.append((r + offs, c + offs, zz, n))
        offs += n
    row = torch.cat([p[0] for p in parts])
    col = torch.cat([p[1] for p in parts])
    z = torch.cat([p[2] for p in parts])
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([p[3] for p in parts]))
    with tgrep.use_backend(backend):
        w, st = torch.ops.tgrep.graph_learning_fbf(row, col, z, None, batch, 3, offs, 0.0, math.inf, 5000, 1e-7, 0.9,
                                                   1, False)
        its, start, off = [], 0, 0
        for r, c, zz, n in parts:
            w1, st1 = torch.ops.tgrep.graph_learning_fbf(r - off, c - off, zz, None, None, 1, n, 0.0, math.inf, 5000,
                                                         1e-7, 0.9, 1, False)
            assert torch.equal(w[start:start + zz.numel()], w1)
            its.append(int(st1[0]))
            start += zz.numel()
            off += n
    assert int(st[0]) == max(its) and len(set(its)) > 1   # graphs stopped at different iterations


def test_fbf_rejects_edges_between_graphs(seed):
    x, row, col, z = _support(20)
    batch = (torch.arange(20) >= 10).long()
    with pytest.raises(ValueError, match="between different graphs"):
        torch.ops.tgrep.graph_learning_fbf(row, col, z, None, batch, 2, 20, 0.0, math.inf, 10, 1e-6, 0.9, 1, False)


def test_knn_and_fbf_compile_fullgraph_without_recompiles(seed):
    def f(x, row, col, z):
        d, i = torch.ops.tgrep.knn(x, 3, None, False, "exact", 0, 1, False)
        w, st = torch.ops.tgrep.graph_learning_fbf(row, col, z, None, None, 1, x.shape[0], 0.0, math.inf, 30, 1e-6,
                                                   0.9, 1, False)
        return d.sum() + w.sum(), i

    calls = []
    for n in (20, 30, 45):
        x, row, col, z = _support(n)
        calls.append((x, row, col, z))
    outs, graphs = count_compiles(f, *calls)
    for (s, i), (x, row, col, z) in zip(outs, calls):
        d2, i2 = knn_dense(x, x, 3, loop=False, self_query=True)
        w, _ = ref.log_model(row, col, z, x.shape[0], max_iter=30, tol=1e-6)
        assert torch.allclose(s, d2.sum() + w.sum(), rtol=1e-6)
    assert graphs == 1, f"{graphs} graphs for 3 sizes (expected 1 with dynamic=True)"


def test_ops_knn_compiles_fullgraph(seed):
    f = torch.compile(lambda x: tgrep.ops.knn(x, 4, method="exact")[0].sum(), fullgraph=True, backend="aot_eager")
    x = torch.randn(30, 3)
    assert torch.allclose(f(x), knn_dense(x, x, 4, loop=False, self_query=True)[0].sum(), rtol=1e-5)


# ------------------------------------------------------------------ knn_graph (PyG-shaped)
@pytest.mark.parametrize("flow", ["source_to_target", "target_to_source"])
@pytest.mark.parametrize("cosine", [False, True])
def test_knn_graph_matches_dense(seed, flow, cosine):
    x = torch.randn(50, 4)
    batch = torch.cat([torch.zeros(20, dtype=torch.long), torch.full((30,), 7)])
    ei = knn_graph(x, 3, batch, flow=flow, cosine=cosine)
    xr = torch.nn.functional.normalize(x, dim=1) if cosine else x
    bc = torch.unique(batch, return_inverse=True)[1]
    _, i2 = knn_dense(xr, xr, 3, loop=False, self_query=True, batch_x=bc, batch_y=bc)
    center = torch.arange(50).repeat_interleave(3)
    want = torch.stack([i2.reshape(-1), center]) if flow == "source_to_target" else torch.stack([center, i2.reshape(-1)])
    as_set = lambda e: set(map(tuple, e.t().tolist()))  # noqa: E731
    assert as_set(ei) == as_set(want)
    assert (batch[ei[0]] == batch[ei[1]]).all()
    assert ei.shape == (2, 150)
    ei_loop = knn_graph(x, 3, loop=True)
    assert (ei_loop[0] == ei_loop[1]).sum() == 50       # each point is its own nearest


# ------------------------------------------------------------------ GSPBox options vs a dense solve
def _dense_from(ei, ew, n):
    W = torch.zeros(n, n, dtype=torch.float64)
    W[ei[0], ei[1]] = ew.double()
    return W


def test_prior_and_max_w_match_dense_reference(seed):
    n = 14
    x = torch.randn(n, 3, dtype=torch.float64)
    Z = torch.cdist(x, x).pow(2)
    theta = 1.5
    W0 = torch.rand(n, n, dtype=torch.float64) * 0.5
    W0 = torch.triu(W0, 1) + torch.triu(W0, 1).t()
    for c, max_w in ((0.7, math.inf), (0.0, 0.25), (2.0, 0.3)):
        Wd = ref.dense_log_model(Z, theta, W0=W0, c=c, max_w=max_w, tol=1e-10, max_iter=40000)
        prior = (W0.nonzero().t(), W0[W0 != 0]) if c > 0 else None
        ei, ew = learn_graph(x, 5, theta=theta, w0=prior, c=c if c > 0 else None, max_w=max_w, tol=1e-10,
                             max_iter=40000, r=20)
        W = _dense_from(ei, ew, n)
        assert torch.allclose(W, Wd, atol=2e-6), (c, max_w, float((W - Wd).abs().max()))
        if max_w < math.inf:
            assert float(W.max()) <= max_w + 1e-12
    # c = 0 with the prior reproduces the plain model; the prior pulls weights toward W0
    Wp = ref.dense_log_model(Z, theta, tol=1e-10, max_iter=40000)
    assert float(Wp.max()) > 0.25                                  # so the cap 0.25 above binds
    Wc = ref.dense_log_model(Z, theta, W0=W0, c=5.0, tol=1e-10, max_iter=40000)
    assert (Wc - W0).abs().sum() < (Wp - W0).abs().sum()


def test_edge_mask_matches_dense_reference(seed):
    n = 16
    x = torch.randn(n, 2, dtype=torch.float64)
    Z = torch.cdist(x, x).pow(2)
    mask = torch.rand(n, n) < 0.5
    mask = torch.triu(mask, 1)
    mask = mask | mask.t()
    ei_mask = mask.nonzero().t()
    Wd = ref.dense_log_model(Z, 2.0, mask=mask, tol=1e-10, max_iter=40000)
    ei, ew, info = learn_graph(x, 3, theta=2.0, edge_index=ei_mask, tol=1e-10, max_iter=40000, return_info=True)
    W = _dense_from(ei, ew, n)
    assert torch.allclose(W, Wd, atol=2e-6)
    assert not W[~mask].any()                                     # nothing outside the mask
    assert info["knn_method"] == "edge_index"
    # automatic θ on a mask: the learned degree still follows k
    ei, ew = learn_graph(torch.randn(300, 3), 5, edge_index=knn_graph(torch.randn(300, 3), 25))
    assert ei.shape[1] > 0
    with pytest.raises(ValueError, match="different examples"):
        learn_graph(x, 3, batch=torch.tensor([0] * 8 + [1] * 8), edge_index=torch.tensor([[0], [15]]))
    with pytest.raises(ValueError, match="'c'"):
        learn_graph(x, 3, w0=(ei_mask, torch.ones(ei_mask.shape[1])))


# ------------------------------------------------------------------ transform contract
def test_transform_repr_lists_every_output_argument():
    sig = inspect.signature(LearnedGraphTransform.__init__)
    names = [p for p in sig.parameters if p not in ("self", "verbose")]
    t = LearnedGraphTransform(4, r=2.5, theta=0.3, knn="exact", max_iter=77, tol=1e-4, scale=10.0, max_w=0.5,
                              ties="keep", attr="pos", model="log")
    text = repr(t)
    for name in names:
        assert f"{name}=" in text, name
        assert repr(getattr(t, name)) in text, name
    # every argument changes the repr (PyG compares pre_transform reprs)
    base = repr(LearnedGraphTransform())
    changed = dict(k=4, r=2.5, model="l2", theta=0.3, knn="exact", max_iter=77, tol=1e-4, scale=10.0, max_w=0.5,
                   ties="keep", attr="pos")
    assert set(changed) == set(names)
    for name, value in changed.items():
        kw = {name: value}
        t2 = LearnedGraphTransform(**kw) if name != "k" else LearnedGraphTransform(value)
        assert repr(t2) != base, name


def test_transform_attr_none_takes_x_else_pos(seed):
    from torch_geometric.data import Data

    pos = torch.randn(40, 3)
    d = LearnedGraphTransform(3)(Data(pos=pos))
    ei, ew = learn_graph(pos, 3)
    assert torch.equal(d.edge_index, ei) and torch.allclose(d.edge_weight, ew)
    x = torch.randn(40, 5)
    d = LearnedGraphTransform(3)(Data(x=x, pos=pos))
    ei, _ = learn_graph(x, 3)
    assert torch.equal(d.edge_index, ei)
    with pytest.raises(ValueError, match="data.x or data.pos"):
        LearnedGraphTransform(3)(Data(num_nodes=4))


def test_transform_passes_its_arguments(seed):
    from torch_geometric.data import Data

    x = torch.randn(60, 3)
    for kw in (dict(r=2), dict(theta=0.7), dict(scale="max"), dict(max_w=0.05), dict(tol=1e-3)):
        d = LearnedGraphTransform(4, **kw)(Data(x=x))
        ei, ew = learn_graph(x, 4, **kw)
        assert torch.equal(d.edge_index, ei) and torch.allclose(d.edge_weight, ew), kw


# ------------------------------------------------------------------ degree warning and ties
def _one_hot_graphs(num, seed=0):
    """Molecule-like batches: one-hot atom types (7 kinds, mostly 'carbon'), 12-28 nodes each."""
    g = torch.Generator().manual_seed(seed)
    xs, bs = [], []
    for i in range(num):
        m = int(torch.randint(12, 29, (1,), generator=g))
        t = torch.multinomial(torch.tensor([0.7, 0.1, 0.1, 0.04, 0.03, 0.02, 0.01]), m, True, generator=g)
        xs.append(torch.nn.functional.one_hot(t, 7).float())
        bs.append(torch.full((m,), i))
    return torch.cat(xs), torch.cat(bs)


def test_ties_keep_degree_control_on_one_hot_features():
    x, b = _one_hot_graphs(40)
    for k in (2, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("error")                   # no degree warning with the default
            ei, ew, info = learn_graph(x, k, batch=b, return_info=True)
        assert info["tie_fraction"] > 0.5 and info.get("jittered")
        assert abs(info["mean_degree"] - k) <= 0.2 * k, info["mean_degree"]
        assert (b[ei[0]] == b[ei[1]]).all()
        with pytest.warns(UserWarning, match="ties/duplicates"):
            _, _, kept = learn_graph(x, k, batch=b, ties="keep", return_info=True)
        assert kept["mean_degree"] > 1.5 * k                  # the exact model links all duplicates


def test_degree_warning_names_fixed_theta():
    x = torch.randn(200, 3)
    with pytest.warns(UserWarning, match="fixed 'theta'"):
        learn_graph(x, 5, theta=1e-4)


# ------------------------------------------------------------------ many small graphs in one call
def test_batch_of_many_small_graphs_equals_one_by_one(seed):
    sizes = torch.randint(8, 20, (60,))
    x = torch.randn(int(sizes.sum()), 4)
    b = torch.repeat_interleave(torch.arange(60) * 3, sizes)      # non-compact ids
    ei, ew, th = learn_graph(x, 3, batch=b, return_theta=True, tol=1e-9, max_iter=5000)
    assert th.shape == (60,)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    for g in (0, 17, 59):
        a, z = int(ptr[g]), int(ptr[g + 1])
        ei1, ew1, th1 = learn_graph(x[a:z], 3, return_theta=True, tol=1e-9, max_iter=5000)
        sel = (ei[0] >= a) & (ei[0] < z)
        assert torch.equal(ei[:, sel] - a, ei1)
        assert torch.allclose(ew[sel], ew1, rtol=1e-4, atol=1e-6)
        assert th[g] == pytest.approx(th1, rel=1e-6)


# ------------------------------------------------------------------ issue 12 regressions
def test_bad_arguments_get_named_errors():
    x = torch.randn(30, 3)
    with pytest.raises(ValueError, match="'k'"):
        LearnedGraphTransform(k=0)
    with pytest.raises(ValueError, match="'r'"):
        learn_graph(x, 3, r=math.inf)
    with pytest.raises(ValueError, match="'r'"):
        LearnedGraphTransform(3, r=float("nan"))
    with pytest.raises(ValueError, match="'batch'"):
        graph_learning_theta(torch.rand(4, 3), 2, batch=torch.tensor([-1, 0, 0, 1]))
    with pytest.raises(TypeError, match="'num_threads'"):
        learn_graph(x, 3, num_threads=2.5)
    with pytest.raises(TypeError, match="'num_threads'"):
        knn(x, 3, num_threads=2.5)
    with pytest.raises(TypeError, match="'x'"):
        knn(x.to_sparse(), 3)
    with pytest.raises(TypeError, match="'x'"):
        learn_graph(x.to_sparse(), 3)
    with pytest.raises(TypeError, match="'row'"):
        solve_log_model(torch.tensor([0]).to_sparse(), torch.tensor([1]), torch.ones(1), 2)
    with pytest.raises(ValueError, match="'row'"):
        solve_log_model(torch.tensor([0, 5]), torch.tensor([1, 1]), torch.ones(2), 3)   # out of range: no crash
    with pytest.raises(ValueError, match="self-loops"):
        solve_log_model(torch.tensor([1]), torch.tensor([1]), torch.ones(1), 3)
    with pytest.raises(ValueError, match="'w0'"):
        solve_log_model(torch.tensor([0]), torch.tensor([1]), torch.ones(1), 3, w0=torch.ones(2), c=1.0)


def test_huge_batch_ids_are_compacted(seed):
    import resource

    x = torch.randn(40, 3)
    b = torch.tensor([0] * 20 + [10 ** 7] * 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ei, ew, th = learn_graph(x, 3, batch=b, return_theta=True)
    d, i = knn(x, 3, batch=b)
    t = graph_learning_theta(d, 3, batch=b)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50, grown_mb
    assert th.shape == (2,) and t.shape == (2,)
    assert ((i < 20) == (torch.arange(40) < 20)[:, None]).all()
    ei2, _ = learn_graph(x, 3, batch=torch.tensor([0] * 20 + [1] * 20))
    assert torch.equal(ei, ei2)


def test_knn_at_extreme_scales(seed):
    x = torch.randn(50, 4)
    _, want = knn(x, 5)
    for s in (1e20, 1e-20, 1e30):
        d, i = knn(x * s, 5)
        assert (i >= 0).all(), s
        assert (i == want).float().mean() > 0.98, s
    d, _ = knn(x.double() * 1e20, 5)
    d0, _ = knn(x.double(), 5)
    assert torch.allclose(d, d0 * 1e40, rtol=1e-6)
    ei, ew = learn_graph(x, 4)
    ei2, ew2 = learn_graph(x * 1e20, 4)                 # θ absorbs the scale: the same graph
    assert torch.equal(ei, ei2) and torch.allclose(ew, ew2, rtol=1e-3, atol=1e-6)


def test_hnsw_stuck_rows_are_requeried_exactly(seed):
    import numpy as np

    from tgrep.kernels.reference import ann

    x = torch.randn(300, 4)
    kk = 6
    d_ex, i_ex = knn_dense(x, x, kk, loop=True)
    D, I = d_ex.numpy().copy(), i_ex.numpy().copy()
    # the most central row (an outlier may be listed by no other row, so nothing would show it
    # stuck), its list replaced by the farthest points
    r = int(((x - x.mean(0)) ** 2).sum(1).argmin())
    far = torch.argsort(((x - x[r]) ** 2).sum(1), descending=True)[:kk]
    I[r] = far.numpy()
    D[r] = ((x[far] - x[r]) ** 2).sum(1).numpy()
    fixed = ann._repair(x, D, I, kk)
    assert fixed >= 1
    assert set(I[r].tolist()) == set(i_ex[r].tolist())
    assert np.allclose(D[r], d_ex[r].numpy(), atol=1e-4)
    rest = torch.arange(300) != r
    assert (I[rest.numpy()] == i_ex[rest].numpy()).all()        # exact rows are left alone


def test_undirected_pairs_equal_reference(seed):
    """``tgrep::undirected_pairs`` (C++ counting sort) is ``torch.unique`` of the pair keys,
    inverse included: duplicates both ways, self pairs, empty input, isolated nodes."""
    from tgrep.kernels.reference.graph_learning import undirected_pairs as ref_pairs

    g = torch.Generator().manual_seed(seed)
    for n, E in [(1, 0), (5, 30), (50, 400), (300, 2000)]:
        src = torch.randint(0, n, (E,), generator=g)
        dst = torch.randint(0, n, (E,), generator=g)
        if E:
            dst[: E // 4] = src[E // 4: 2 * (E // 4)]          # reversed copies of other entries
            src[: E // 4] = dst[E // 4: 2 * (E // 4)]
        key, inv = torch.ops.tgrep.undirected_pairs(src, dst, n, 2)
        rk, ri = ref_pairs(src, dst, n)
        assert torch.equal(key, rk) and torch.equal(inv, ri)
        torch.library.opcheck(torch.ops.tgrep.undirected_pairs.default, (src, dst, n, 1))
    with pytest.raises(ValueError, match="'dst'"):
        torch.ops.tgrep.undirected_pairs(torch.tensor([0, 1]), torch.tensor([1, 5]), 5, 1)
    with pytest.raises(ValueError, match="'src'"):
        torch.ops.tgrep.undirected_pairs(torch.tensor([-1, 1]), torch.tensor([1, 2]), 5, 1)
    with pytest.raises(ValueError):
        torch.ops.tgrep.undirected_pairs(torch.tensor([0, 1]), torch.tensor([1]), 5, 1)


def test_both_directions_equal_reference(seed):
    """``tgrep::both_directions`` (C++ counting sort by source) is the plain-torch sort of both
    directions by (source, target), ties by edge: repeated edges both ways, empty input,
    isolated nodes; out-of-range ids are refused by the op and by the kernel itself."""
    from tgrep._ext import load_cpp
    from tgrep.kernels.reference.graph_learning import both_directions as ref_both

    g = torch.Generator().manual_seed(seed)
    for n, E in [(1, 0), (5, 30), (50, 400), (3000, 20000)]:
        row = torch.randint(0, n, (E,), generator=g)
        col = torch.randint(0, n, (E,), generator=g)
        if E:
            row[: E // 5], col[: E // 5] = col[E // 5: 2 * (E // 5)], row[E // 5: 2 * (E // 5)]   # reversed repeats
        ei, which = torch.ops.tgrep.both_directions(row, col, n, 2)
        rei, rwhich = ref_both(row, col, n)
        assert torch.equal(ei, rei) and torch.equal(which, rwhich)
        if E:
            assert torch.equal(torch.sort(ei[0] * n + ei[1]).values, ei[0] * n + ei[1])    # sorted
            e = which
            fwd = (ei[0] == row[e]) & (ei[1] == col[e])
            bwd = (ei[0] == col[e]) & (ei[1] == row[e])
            assert bool((fwd | bwd).all())                                               # which is right
        torch.library.opcheck(torch.ops.tgrep.both_directions.default, (row, col, n, 1))
    with pytest.raises(ValueError, match="'col'"):
        torch.ops.tgrep.both_directions(torch.tensor([0, 1]), torch.tensor([1, 5]), 5, 1)
    with pytest.raises(ValueError, match="'row'"):
        torch.ops.tgrep.both_directions(torch.tensor([-1, 1]), torch.tensor([1, 2]), 5, 1)
    mod = load_cpp("graph_learning")
    if mod is not None:
        for r, c in (([0, 5], [1, 2]), ([0, 1], [-1, 2])):
            with pytest.raises(RuntimeError, match="out of range"):
                mod.both_directions(torch.tensor(r), torch.tensor(c), 5, 1)
