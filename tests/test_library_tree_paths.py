"""tgrep::tree_order / tree_path_sum / tree_path_gradient: path lengths along given trees
(C++ and reference), against explicit walks and the searches' own distances; opcheck, adjoint,
double backward, errors, compile."""
from __future__ import annotations

import pytest
import torch

import tgrep
from tgrep.ops import tree_order, tree_path_sums
from tgrep.ops.shortest_path import seed_tensor
from tgrep.utils import to_csr
from _compile import count_compiles

BACKENDS = ["reference", "cpp"]


def _forest(B, n, E, gen, unreached=0.2):
    """Random forests: vertex v's parent is an earlier vertex of a random permutation (so no
    cycle), some roots (parent = self) and some vertices outside (-1, with no children)."""
    parent = torch.empty(B, n, dtype=torch.long)
    for b in range(B):
        perm = torch.randperm(n, generator=gen)
        out = torch.rand(n, generator=gen) < unreached
        inside = perm[~out[perm]]
        par = torch.full((n,), -1, dtype=torch.long)
        for i, v in enumerate(inside.tolist()):
            par[v] = v if i == 0 or torch.rand((), generator=gen) < 0.1 else \
                inside[torch.randint(0, i, (), generator=gen)]
        parent[b] = par
    edge = torch.randint(0, E, (B, n), generator=gen)
    return edge.int(), parent.int()


def _walk_sums(w, edge, parent):
    """Independent: every vertex walks its path in plain Python."""
    B, n = parent.shape
    out = torch.zeros(B, n, dtype=w.dtype)
    for b in range(B):
        for v in range(n):
            x, s = v, 0.0
            while parent[b, x] not in (-1, x):
                s += float(w[edge[b, x]])
                x = int(parent[b, x])
            out[b, v] = s
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_path_sums_equal_explicit_walks_and_search_distances(seed, backend):
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(30, dtype=torch.float64, generator=gen) + 0.1
    edge, parent = _forest(4, 25, 30, gen)
    with tgrep.use_backend(backend):
        order = tree_order(parent)
        got = tree_path_sums(w, edge, parent, order)
        torch.testing.assert_close(tree_path_sums(w, edge, parent), got)  # order computed inside
    # order: a parents-first permutation of every row
    assert order.dtype == torch.int32
    order, parent = order.long(), parent.long()
    assert torch.equal(order.sort(1).values, torch.arange(25).expand(4, 25))
    pos = torch.empty_like(order).scatter_(1, order, torch.arange(25).expand(4, 25))
    inner = (parent >= 0) & (parent != torch.arange(25))
    assert bool((pos.gather(1, parent.clamp_min(0)) < pos)[inner].all())
    torch.testing.assert_close(got, _walk_sums(w, edge, parent.int()))
    # on a search's own predecessor trees the path sums are its distances
    n = 40
    ei = torch.randint(0, n, (2, 120), generator=gen)
    indptr, indices, wc = to_csr(ei, n, torch.rand(120, dtype=torch.float64, generator=gen) + 0.1, undirected=True)
    src = torch.tensor([0, 5, 17])
    dist, pred = torch.ops.tgrep.shortest_paths(indptr, indices, wc, src, None, None, seed_tensor(0, "cpu"), True)
    esrc = torch.repeat_interleave(torch.arange(n), indptr.diff())
    v = torch.arange(n)
    par = torch.where(pred >= 0, esrc[pred.clamp_min(0)], torch.where(v == src[:, None], v, -1))
    with tgrep.use_backend(backend):
        d = tree_path_sums(wc, pred.clamp_min(0).int(), par.int())
    torch.testing.assert_close(d, torch.where(torch.isinf(dist), 0.0, dist))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_adjoint_and_double_backward(seed, backend):
    gen = torch.Generator().manual_seed(seed)
    E = 20
    w = (torch.rand(E, dtype=torch.float64, generator=gen) + 0.1).requires_grad_()
    edge, parent = _forest(3, 12, E, gen)
    order = torch.ops.tgrep.tree_order(parent)
    g = torch.randn(3, 12, dtype=torch.float64, generator=gen, requires_grad=True)
    with tgrep.use_backend(backend):
        torch.library.opcheck(torch.ops.tgrep.tree_order.default, (parent,))
        torch.library.opcheck(torch.ops.tgrep.tree_path_sum.default, (w, edge, parent, order))
        torch.library.opcheck(torch.ops.tgrep.tree_path_gradient.default, (g, edge, parent, order, E))
        # <gradient(g), v> == <g, sum(v)>: the two ops are each other's transposes
        v = torch.randn(E, dtype=torch.float64, generator=gen)
        a = (torch.ops.tgrep.tree_path_gradient(g, edge, parent, order, E) * v).sum()
        b = (g * torch.ops.tgrep.tree_path_sum(v, edge, parent, order)).sum()
        torch.testing.assert_close(a, b)
        assert torch.autograd.gradcheck(lambda x: tree_path_sums(x, edge, parent, order), (w,))
        assert torch.autograd.gradgradcheck(lambda x: tree_path_sums(x, edge, parent, order).square(), (w,))
    # cpp == reference in float32 too
    wf = w.detach().float()
    with tgrep.use_backend("reference"):
        ref = tree_path_sums(wf, edge, parent, order)
    with tgrep.use_backend("cpp"):
        torch.testing.assert_close(tree_path_sums(wf, edge, parent, order), ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_trees_raise_value_errors(backend):
    w = torch.ones(4)
    edge = torch.zeros(1, 3, dtype=torch.int32)
    ok = torch.tensor([[0, 0, 1]], dtype=torch.int32)

    def t(x):
        return torch.tensor(x, dtype=torch.int32)

    with tgrep.use_backend(backend):
        order = tree_order(ok)
        with pytest.raises(ValueError, match="cycle"):
            tree_order(t([[1, 2, 0]]))
        with pytest.raises(ValueError, match="parent"):
            tree_order(t([[0, 3, 0]]))
        with pytest.raises(ValueError, match="parent"):
            tree_order(t([[0, -2, 0]]))
        with pytest.raises(ValueError, match="edge"):
            tree_path_sums(w, t([[0, 4, 0]]), ok, order)
        with pytest.raises(ValueError, match="edge"):
            tree_path_sums(w, t([[0, 0, -1]]), ok, order)
        for bad in ([[2, 1, 0]], [[0, 0, 1]], [[0, 1, 3]]):  # child first, a duplicate, out of range
            with pytest.raises(ValueError, match="order"):
                tree_path_sums(w, edge, ok, t(bad))
            with pytest.raises(ValueError, match="order"):
                torch.ops.tgrep.tree_path_gradient(torch.ones(1, 3), edge, ok, t(bad), 4)
        with pytest.raises(ValueError, match="order"):
            tree_path_sums(w, edge, ok, order[:, :2])
    with pytest.raises(TypeError, match="parent"):
        tree_path_sums(w, edge, ok.long())
    with pytest.raises(ValueError, match="same shape"):
        tree_path_sums(w, edge[:, :2], ok)
    # empty rows / vertices
    assert tree_path_sums(w, edge[:0], ok[:0]).shape == (0, 3)


def test_compile_fullgraph_no_recompiles(seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(15, generator=gen) + 0.1
    calls = []
    for B, n in ((2, 6), (3, 9), (5, 7)):
        edge, parent = _forest(B, n, 15, gen)
        calls.append((w, edge, parent, torch.ops.tgrep.tree_order(parent)))
    outs, graphs = count_compiles(tree_path_sums, *calls)
    assert graphs == 1
    for c, o in zip(calls, outs):
        torch.testing.assert_close(o, tree_path_sums(*c))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("map_dtype", [torch.int64, torch.int32])
def test_predecessor_trees_of_searches(seed, backend, map_dtype):
    gen = torch.Generator().manual_seed(seed)
    n = 30
    ei = torch.randint(0, n - 3, (2, 60), generator=gen)  # the last 3 vertices are unreachable
    indptr, indices, wc = to_csr(ei, n, torch.rand(60, dtype=torch.float64, generator=gen) + 0.1, undirected=True)
    E = wc.numel()
    src = torch.tensor([0, 4, 11, 29])
    dist, pred = torch.ops.tgrep.shortest_paths(indptr, indices, wc, src, None, None, seed_tensor(0, "cpu"), True)
    esrc = torch.repeat_interleave(torch.arange(n), indptr.diff())
    emap = torch.randperm(E, generator=gen) // 2  # CSR edge -> weight index (both directions share one)
    M = int(emap.max()) + 1
    esrc, emap = esrc.to(map_dtype), emap.to(map_dtype)
    w = torch.rand(M, dtype=torch.float64, generator=gen) + 0.1
    with tgrep.use_backend(backend):
        trees = torch.ops.tgrep.predecessor_trees(pred, src, esrc, emap, M)
        assert torch.equal(trees, torch.ops.tgrep.predecessor_trees(pred, src, esrc.long(), emap.long(), M))
        with pytest.raises(TypeError, match="edge_src"):  # mixed index dtypes
            torch.ops.tgrep.predecessor_trees(pred, src, esrc.long(), emap.int(), M)
        torch.library.opcheck(torch.ops.tgrep.predecessor_trees.default, (pred, src, esrc, emap, M))
    edge, parent, order = trees
    assert trees.shape == (3, 4, n)
    live = torch.isfinite(dist)
    assert torch.equal(parent[torch.arange(4), src], src)  # the sources are roots
    assert bool((parent[~live] == src.unsqueeze(1).expand(4, n)[~live]).all())  # unreached: from the source
    assert bool((edge[~live] == M).all())
    # the path sums on these trees: explicit walks; the virtual edge's length for unreached vertices
    wext = torch.cat([w, torch.tensor([7.5], dtype=torch.float64)])
    got = tree_path_sums(wext, edge, parent, order)
    expect = _walk_sums(wext, edge, parent)
    torch.testing.assert_close(got, expect)
    assert bool((got[~live] == 7.5).all())
    with tgrep.use_backend(backend):
        with pytest.raises(ValueError, match="sources"):
            torch.ops.tgrep.predecessor_trees(pred, torch.tensor([0, 4, 11, 30]), esrc, emap, M)
        with pytest.raises(ValueError, match="pred"):
            torch.ops.tgrep.predecessor_trees(torch.where(pred == pred.max(), E, pred), src, esrc, emap, M)
        with pytest.raises(ValueError, match="edge_map"):
            torch.ops.tgrep.predecessor_trees(pred, src, esrc, emap + M, M)
        with pytest.raises(ValueError, match="edge_src"):
            torch.ops.tgrep.predecessor_trees(pred, src, esrc + n, emap, M)
        with pytest.raises(ValueError, match="cycle"):  # a 2-cycle: 1 -> 2 -> 1
            torch.ops.tgrep.predecessor_trees(torch.tensor([[-1, 0, 1]]), torch.tensor([0]),
                                              torch.tensor([2, 1], dtype=map_dtype), torch.tensor([0, 0], dtype=map_dtype), 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_predecessor_trees_fallback_keeps_the_previous_tree_where_unreached(seed, backend):
    gen = torch.Generator().manual_seed(seed)
    n = 24
    ei = torch.randint(0, n - 4, (2, 50), generator=gen)  # vertices 20..23 unreachable
    indptr, indices, wc = to_csr(ei, n, torch.rand(50, dtype=torch.float64, generator=gen) + 0.1, undirected=True)
    E = wc.numel()
    src = torch.tensor([0, 3, 7])
    p = torch.full((E,), 0.6, dtype=torch.float64)  # sampled: more vertices unreached
    dist, pred = torch.ops.tgrep.shortest_paths(indptr, indices, wc, src, None, p, seed_tensor(seed, "cpu"), True)
    esrc = torch.repeat_interleave(torch.arange(n), indptr.diff())
    emap = torch.arange(E)
    fb_edge, fb_parent = _forest(3, n, E + 1, gen, unreached=0.0)
    fallback = torch.stack([fb_edge, fb_parent])
    with tgrep.use_backend(backend):
        trees = torch.ops.tgrep.predecessor_trees(pred, src, esrc, emap, E, fallback)
        torch.library.opcheck(torch.ops.tgrep.predecessor_trees.default, (pred, src, esrc, emap, E, fallback))
        plain = torch.ops.tgrep.predecessor_trees(pred, src, esrc, emap, E)
    edge, parent, order = trees
    unreached = (pred < 0) & (torch.arange(n) != src.unsqueeze(1))
    assert bool(unreached.any()) and bool((~unreached).any())
    assert torch.equal(edge[unreached], fb_edge[unreached]) and torch.equal(parent[unreached], fb_parent[unreached])
    assert torch.equal(edge[~unreached], plain[0][~unreached]) and torch.equal(parent[~unreached], plain[1][~unreached])
    w = torch.rand(E + 1, dtype=torch.float64, generator=gen) + 0.1
    torch.testing.assert_close(tree_path_sums(w, edge, parent, order), _walk_sums(w, edge, parent))
    with pytest.raises(ValueError, match="fallback"):
        torch.ops.tgrep.predecessor_trees(pred, src, esrc, emap, E, fallback.long())
    with tgrep.use_backend(backend), pytest.raises(ValueError, match="cycle"):  # two unreached vertices point at each other
        bad = fallback.clone()
        bad[1, 0, 20], bad[1, 0, 21] = 21, 20
        torch.ops.tgrep.predecessor_trees(pred, src, esrc, emap, E, bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_trees_equals_gather_trees_and_copy(seed, backend):
    """update_trees(cache, rows, ...) == cache.index_copy(1, rows, predecessor_trees(..., fallback =
    the rows' own cached edge and parent)), on sampled searches (unreached vertices keep their
    cached paths); the cache itself is never written."""
    gen = torch.Generator().manual_seed(seed)
    n, K = 24, 6
    ei = torch.randint(0, n - 4, (2, 50), generator=gen)  # vertices 20..23 unreachable
    indptr, indices, wc = to_csr(ei, n, torch.rand(50, dtype=torch.float64, generator=gen) + 0.1, undirected=True)
    E = wc.numel()
    rows = torch.randperm(K, generator=gen)[:3]
    src = torch.randint(0, n, (3,), generator=gen)
    p = torch.full((E,), 0.6, dtype=torch.float64)
    dist, pred = torch.ops.tgrep.shortest_paths(indptr, indices, wc, src, None, p, seed_tensor(seed, "cpu"), True)
    esrc = torch.repeat_interleave(torch.arange(n), indptr.diff()).int()
    emap = torch.randperm(E, generator=gen).int()
    fb_edge, fb_parent = _forest(K, n, E + 1, gen, unreached=0.0)
    cache = torch.stack([fb_edge, fb_parent, torch.ops.tgrep.tree_order(fb_parent)])
    before = cache.clone()
    with tgrep.use_backend(backend):
        got = torch.ops.tgrep.update_trees(cache, rows, pred, src, esrc, emap, E)
        torch.library.opcheck(torch.ops.tgrep.update_trees.default, (cache, rows, pred, src, esrc, emap, E))
        new = torch.ops.tgrep.predecessor_trees(pred, src, esrc, emap, E, cache[:2].index_select(1, rows))
    assert torch.equal(cache, before)
    assert torch.equal(got, cache.index_copy(1, rows, new))
    keep = torch.ones(K, dtype=torch.bool)
    keep[rows] = False
    assert torch.equal(got[:, keep], cache[:, keep]) and not torch.equal(got, cache)
    with tgrep.use_backend(backend):
        with pytest.raises(ValueError, match="rows"):  # a row twice
            torch.ops.tgrep.update_trees(cache, rows[[0, 0, 1]], pred, src, esrc, emap, E)
        with pytest.raises(ValueError, match="rows"):
            torch.ops.tgrep.update_trees(cache, torch.tensor([0, 1, K]), pred, src, esrc, emap, E)
        with pytest.raises(ValueError, match="pred"):
            torch.ops.tgrep.update_trees(cache, rows, torch.where(pred == pred.max(), E, pred), src, esrc, emap, E)
        with pytest.raises(ValueError, match="trees"):
            torch.ops.tgrep.update_trees(cache[:, :, :-1], rows, pred, src, esrc, emap, E)


@pytest.mark.parametrize("backend", BACKENDS)
def test_path_table_is_the_transposed_sums_over_weight_then_extra(seed, backend):
    """tree_path_table(w, x, ..., R) == tree_path_sum(cat([w, x]))[:, :R].T, its gradient the
    transpose (explicit walks as the spec), opcheck of both ops, gradcheck and double backward."""
    gen = torch.Generator().manual_seed(seed)
    E, X, B, n = 20, 2, 3, 14
    w = (torch.rand(E, dtype=torch.float64, generator=gen) + 0.1).requires_grad_()
    x = (torch.rand(X, dtype=torch.float64, generator=gen) + 0.1).requires_grad_()
    edge, parent = _forest(B, n, E + X, gen)
    order = torch.ops.tgrep.tree_order(parent)
    R = int(torch.randint(1, n + 1, (), generator=gen))
    want = _walk_sums(torch.cat([w, x]).detach(), edge, parent)[:, :R].T
    g = torch.randn(R, B, dtype=torch.float64, generator=gen, requires_grad=True)
    with tgrep.use_backend(backend):
        got = torch.ops.tgrep.tree_path_table(w, x, edge, parent, order, R)
        torch.testing.assert_close(got, want)
        assert got.shape == (R, B) and got.is_contiguous()
        torch.library.opcheck(torch.ops.tgrep.tree_path_table.default, (w, x, edge, parent, order, R))
        torch.library.opcheck(torch.ops.tgrep.tree_path_table_gradient.default, (g, edge, parent, order, E + X))
        gw, gx = torch.autograd.grad((got * g).sum(), (w, x))
        full = torch.zeros(B, n, dtype=torch.float64)
        full[:, :R] = g.detach().T
        ref = torch.ops.tgrep.tree_path_gradient(full, edge, parent, order, E + X)
        torch.testing.assert_close(torch.cat([gw, gx]), ref)
        f = lambda a, b: torch.ops.tgrep.tree_path_table(a, b, edge, parent, order, R)  # noqa: E731
        assert torch.autograd.gradcheck(f, (w, x))
        assert torch.autograd.gradgradcheck(lambda a, b: f(a, b).square(), (w, x))
        # no row at all, and every row
        assert torch.ops.tgrep.tree_path_table(w, x, edge, parent, order, 0).shape == (0, B)
        torch.testing.assert_close(torch.ops.tgrep.tree_path_table(w, x, edge, parent, order, n),
                                   _walk_sums(torch.cat([w, x]).detach(), edge, parent).T)
    # float32: cpp == reference
    wf, xf = w.detach().float(), x.detach().float()
    with tgrep.use_backend("reference"):
        ref32 = torch.ops.tgrep.tree_path_table(wf, xf, edge, parent, order, R)
    with tgrep.use_backend("cpp"):
        torch.testing.assert_close(torch.ops.tgrep.tree_path_table(wf, xf, edge, parent, order, R), ref32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_path_table_bad_inputs_raise(backend):
    w, x = torch.rand(3), torch.rand(1)
    t = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    parent = t([[0, 0, 1]])
    order = t([[0, 1, 2]])
    table = torch.ops.tgrep.tree_path_table
    with tgrep.use_backend(backend):
        torch.testing.assert_close(table(w, x, t([[0, 3, 2]]), parent, order, 3),  # edge 3 = extra[0]
                                   torch.stack([torch.zeros(()), x[0], x[0] + w[2]])[:, None])
        with pytest.raises(ValueError, match="edge"):
            table(w, x, t([[0, 4, 0]]), parent, order, 3)  # past weight and extra
        with pytest.raises(ValueError, match="num_rows"):
            table(w, x, t([[0, 1, 2]]), parent, order, 4)
        with pytest.raises(ValueError, match="num_rows"):
            table(w, x, t([[0, 1, 2]]), parent, order, -1)
        with pytest.raises((ValueError, TypeError), match="extra"):
            table(w, x.double(), t([[0, 1, 2]]), parent, order, 3)
        with pytest.raises(ValueError, match="order"):
            table(w, x, t([[0, 1, 2]]), parent, t([[1, 0, 2]]), 3)  # a child before its parent
        with pytest.raises(ValueError, match="grad"):
            torch.ops.tgrep.tree_path_table_gradient(torch.rand(4, 1), t([[0, 1, 2]]), parent, order, 4)
