"""EDRepLoss, the EDRep model (Algorithm 1), the DCSBM generator, and DDP."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from tgrep.datasets import dcsbm
from tgrep.models import EDRep
from tgrep.models.edrep import random_walk_operator
from tgrep.nn import EDRepLoss, edrep_loss
from tgrep.ops import kmeans


def _target(n, m, density=0.3, dtype=torch.float64):
    p = torch.rand(n, m, dtype=dtype) * (torch.rand(n, m) < density)
    p[torch.arange(n), torch.randint(0, m, (n,))] += 0.5  # no empty row
    return p


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_exact_mode_equals_cross_entropy(seed, reduction):
    n, m, d = 13, 9, 5
    x = 0.7 * torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    y = 0.7 * torch.randn(m, d, dtype=torch.float64, requires_grad=True)
    p = _target(n, m)
    want = F.cross_entropy(x @ y.t(), p / p.sum(1, keepdim=True), reduction=reduction)
    loss_fn = EDRepLoss(mode="exact", centering=False, reduction=reduction)
    idx = p.nonzero().t()
    for target in (p, p.to_sparse(), p.to_sparse_csr(), (idx, p[idx[0], idx[1]])):
        got = loss_fn(x, y, target)
        torch.testing.assert_close(got, want)
    g_got = torch.autograd.grad(loss_fn(x, y, p.to_sparse()), (x, y))
    g_want = torch.autograd.grad(want, (x, y))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)
    # rows are normalized internally: scaling a row changes nothing
    p2 = p.clone()
    p2[0] *= 7
    torch.testing.assert_close(loss_fn(x, y, p2), want)


def test_estimate_close_to_exact_and_centering(seed):
    n, d = 300, 8
    x = torch.randn(n, d, dtype=torch.float64)
    x = 0.6 * x / x.norm(dim=1, keepdim=True)
    p = _target(n, n, 0.02)
    est = edrep_loss(x, x, p, num_clusters=1)
    exact = edrep_loss(x, x, p, mode="exact")
    assert abs(float(est - exact)) < 1e-2
    # centering term (paper eq. 6): ||sum_i x_i||^2 / n, averaged over rows with 'mean'
    c = (x.sum(0) ** 2).sum() / n / n
    torch.testing.assert_close(exact - edrep_loss(x, x, p, mode="exact", centering=False), c)


def test_loss_module_state_refresh(seed):
    x = torch.randn(50, 4)
    p = _target(50, 50, 0.1, torch.float32)
    loss_fn = EDRepLoss(num_clusters=3, refresh_every=2)
    loss_fn(x, x, p)
    first = loss_fn.labels
    assert first is not None and first.shape == (50,) and loss_fn.calls == 1
    loss_fn(x, x, p)  # call 2: reuses the labels
    assert loss_fn.labels is first
    loss_fn(x, x, p)  # call 3: 2 % 2 == 0 -> recomputed (same data + seed: same labels)
    assert loss_fn.labels is not first and torch.equal(loss_fn.labels, first)
    loss_fn.reset_parameters()
    assert loss_fn.labels is None
    assert "num_clusters=3" in repr(loss_fn)


def test_bad_targets():
    x, y = torch.randn(4, 3), torch.randn(5, 3)
    loss_fn = EDRepLoss()
    p = torch.rand(4, 5)
    with pytest.raises(ValueError, match="'target weight' must be >= 0"):
        loss_fn(x, y, p - 2.0)
    p_empty = p.clone()
    p_empty[2] = 0
    with pytest.raises(ValueError, match="1 row.*without positive weight.*row 2"):
        EDRepLoss(empty_rows="error")(x, y, p_empty.to_sparse())
    with pytest.raises(ValueError, match="shape"):
        loss_fn(x, y, torch.rand(5, 4))
    with pytest.raises(ValueError, match="'target weight' contains NaN"):
        loss_fn(x, y, p.masked_fill(p > 0.5, float("nan")).to_sparse())
    with pytest.raises(ValueError, match="'target weight' contains NaN"):
        loss_fn(x, y, p.masked_fill(p > 0.5, float("nan")))
    with pytest.raises(ValueError, match="'x' contains NaN"):
        loss_fn(torch.full((4, 3), float("nan")), y, p)
    with pytest.raises(ValueError, match="column index"):
        loss_fn(x, y, (torch.tensor([[0, 1], [2, 9]]), torch.ones(2)))
    with pytest.raises(ValueError, match="num_clusters"):
        EDRepLoss(num_clusters=6)(x, y, p)
    with pytest.raises(ValueError, match="reduction"):
        EDRepLoss(reduction="max")


def test_dcsbm_generator(seed):
    data = dcsbm(3000, 3, mean_degree=8, c_out=1.0, theta=torch.ones(3000), seed=seed)
    ei = data.edge_index
    assert data.y.min() >= 0 and data.y.max() < 3
    assert (ei[0] != ei[1]).all()
    assert torch.equal(torch.sort(ei[0] * 3000 + ei[1])[0], torch.sort(ei[1] * 3000 + ei[0])[0])  # symmetric
    mean_deg = ei.shape[1] / 3000
    assert 7.0 < mean_deg < 8.5
    same = (data.y[ei[0]] == data.y[ei[1]]).float().mean()
    assert abs(float(same) - (3 * 8 - 2 * 1.0) / 3 / 8) < 0.03  # c_in / (q c)
    with pytest.raises(ValueError, match="c_out"):
        dcsbm(100, 2, mean_degree=5, c_out=6)


def test_model_gradient_is_loss_gradient(seed):
    """Algorithm 1's gradient (eq. 8) equals autograd of the summed loss with P = mean_t T^t."""
    data = dcsbm(80, 2, mean_degree=6, c_out=1.0, theta=torch.ones(80), seed=seed)
    n = 80
    model = EDRep(8, walk_length=3, verbose=False)
    fs, fs_t, sums, _, _ = model._operator(data.edge_index, n)
    op = ([f.to(torch.float64) for f in fs], [f.to(torch.float64) for f in fs_t], sums, n, n)
    t = random_walk_operator(data.edge_index, n, dtype=torch.float64).to_dense()
    p = (t + t @ t + t @ t @ t) / 3
    x = torch.randn(n, 8, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    labels = torch.arange(n) % 2
    g, _ = model.gradient(op, x, None, labels)
    xg = x.clone().requires_grad_()
    loss = edrep_loss(xg, xg, p, labels=labels, reduction="sum")
    (want,) = torch.autograd.grad(loss, xg)
    torch.testing.assert_close(g, want)


def _sparse_factor(r, c, density, dtype=torch.float64):
    a = torch.rand(r, c, dtype=dtype) * (torch.rand(r, c) < density)
    a[torch.arange(r), torch.randint(0, c, (r,))] += 0.3
    return a


def _loss_nonsym(x, y, p, p0, labels):
    """The loss whose gradients the original package's sym=False update uses (Z's statistics
    of Y held fixed), written with a dense P."""
    from tgrep.ops import log_normalizer

    n = x.shape[0]
    e = p0.sum()
    lz = log_normalizer(x, y.detach(), labels=labels)
    sx, sp = x.sum(0), (p0[:, None] * y).sum(0)
    return (-(p * (x @ y.t())).sum() + lz.sum() + sx @ sp / e + (sx @ sx) / (2 * n) + (sp @ sp) / (2 * e))


@pytest.mark.parametrize("sum_partials", [False, True])
def test_model_factors_p0_and_nonsym_match_dense_reference(seed, sum_partials):
    """P as a list of sparse factors (product, or mean of partial products), p0 and sym=False,
    against a dense P and autograd."""
    n, m, d = 12, 9, 4
    if sum_partials:
        dense = [_sparse_factor(n, n, 0.3) for _ in range(3)]
    else:
        dense = [_sparse_factor(7, m, 0.3), _sparse_factor(5, 7, 0.4), _sparse_factor(n, 5, 0.3)]
    normed = [a / a.sum(1, keepdim=True) for a in dense]
    if sum_partials:
        prods, acc = [], torch.eye(n, dtype=torch.float64)
        for f in normed:
            acc = f @ acc
            prods.append(acc)
        p = sum(prods) / len(prods)
        m = n
    else:
        p = normed[2] @ normed[1] @ normed[0]
    model = EDRep(d, sym=False, sum_partials=sum_partials, verbose=False)
    fs, fs_t, sums, nn_, mm_ = model._operator([a.to_sparse() for a in dense], None)
    assert (nn_, mm_) == (n, m)
    op = ([f.to(torch.float64) for f in fs], [f.to(torch.float64) for f in fs_t], sums, n, m)
    x = F.normalize(torch.randn(n, d, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(m, d, dtype=torch.float64), dim=1)
    p0 = torch.rand(m, dtype=torch.float64) + 0.1
    labels = torch.arange(m) % 2
    gx, gy = model.gradient(op, x, y, labels, p0)
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    wx, wy = torch.autograd.grad(_loss_nonsym(xg, yg, p, p0, labels), (xg, yg))
    torch.testing.assert_close(gx, wx)
    torch.testing.assert_close(gy, wy)
    # the whole fit runs, returns X [n, d] and keeps Y [m, d]
    emb = EDRep(d, sym=False, sum_partials=sum_partials, epochs=3, num_clusters=2, verbose=False).fit_transform(
        [a.to_sparse() for a in dense], p0=p0.float())
    assert emb.shape == (n, d)
    with pytest.raises(ValueError, match="sym=False"):
        EDRep(d, verbose=False).fit_transform([_sparse_factor(n, m + 1, 0.5).to_sparse()])
    with pytest.raises(ValueError, match="'p0'"):
        EDRep(d, sym=False, verbose=False).fit_transform([a.to_sparse() for a in dense], p0=-torch.ones(m))


def test_model_sym_p0_matches_dense_reference(seed):
    """sym=True with p0: the gradient of the summed loss with centering (1/E)(sum x).(sum p0 x)."""
    n, d = 10, 4
    a = _sparse_factor(n, n, 0.3)
    p = a / a.sum(1, keepdim=True)
    model = EDRep(d, verbose=False)
    fs, fs_t, sums, _, _ = model._operator(a.to_sparse(), None)
    op = ([f.to(torch.float64) for f in fs], [f.to(torch.float64) for f in fs_t], sums, n, n)
    x = F.normalize(torch.randn(n, d, dtype=torch.float64), dim=1)
    p0 = torch.rand(n, dtype=torch.float64) + 0.1
    g, _ = model.gradient(op, x, None, None, p0)
    xg = x.clone().requires_grad_()
    from tgrep.ops import log_normalizer

    loss = (-(p * (xg @ xg.t())).sum() + log_normalizer(xg, xg.detach()).sum()
            + xg.sum(0) @ (p0[:, None] * xg).sum(0) / p0.sum())
    (want,) = torch.autograd.grad(loss, xg)
    torch.testing.assert_close(g, want)


@pytest.fixture
def one_thread():
    """Many small ops per epoch: OpenMP barriers dominate on a loaded 2-core machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def test_model_recovers_communities(seed, one_thread):
    from sklearn.metrics import normalized_mutual_info_score as nmi

    data = dcsbm(900, 3, mean_degree=12, c_out=1.0, theta=torch.ones(900), seed=seed)
    model = EDRep(16, epochs=20, walk_length=3, seed=seed, verbose=False)
    emb = model.fit_transform(data.edge_index, data.num_nodes)
    assert emb.shape == (900, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(900))
    score = nmi(data.y.numpy(), kmeans(emb, 3, seed=seed, n_init=3).numpy())
    assert score > 0.8, score
    # k > 1 path and a sparse P input
    a = torch.sparse_coo_tensor(data.edge_index, torch.ones(data.edge_index.shape[1]), (900, 900))
    model2 = EDRep(16, num_clusters=2, epochs=5, seed=seed, verbose=False)
    emb2 = model2.fit_transform(a)
    assert torch.isfinite(emb2).all() and model2.labels.shape == (900,)
    assert torch.equal(EDRep(16, epochs=2, seed=1, verbose=False).fit_transform(a),
                       EDRep(16, epochs=2, seed=1, verbose=False).fit_transform(a))
    with pytest.raises(TypeError, match="edge_index"):
        model.fit_transform(torch.randn(3, 3))


# ----------------------------------------------------------------------------- DDP (2 gloo processes)
def _ddp_worker(rank, world, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    case = torch.load(os.path.join(out_dir, "case.pt"))
    for detach in (True, False):
        xq = case["x"].clone().requires_grad_()
        y = case["y"].clone().requires_grad_()
        rows = torch.arange(rank, xq.shape[0], world)
        p = case["p"][rows]
        loss_fn = EDRepLoss(num_clusters=2, reduction="sum", detach_stats=detach, distributed=True, seed=3)
        loss = loss_fn(xq[rows], y, p.to_sparse())
        gx, gy = torch.autograd.grad(loss, (xq, y))
        for t in (gx, gy):
            torch.distributed.all_reduce(t)
        total = loss.detach().clone()
        torch.distributed.all_reduce(total)
        if rank == 0:
            torch.save({"loss": total, "gx": gx, "gy": gy}, os.path.join(out_dir, f"ddp{int(detach)}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path, seed):
    """2 gloo processes (rows of x split, statistics and k-means all-reduced) == 1 process."""
    import torch.multiprocessing as mp

    n, m, d = 24, 30, 4
    centers = torch.tensor([[2.0, 0, 0, 0], [-2.0, 0, 0, 0]], dtype=torch.float64)
    y = centers[torch.arange(m) % 2] + 0.2 * torch.randn(m, d, dtype=torch.float64)  # 2 clear clusters
    x = 0.3 * torch.randn(n, d, dtype=torch.float64)
    p = _target(n, m, 0.2)
    torch.save({"x": x, "y": y, "p": p}, tmp_path / "case.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for detach in (True, False):
        ddp = torch.load(tmp_path / f"ddp{int(detach)}.pt")
        xq, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
        loss = EDRepLoss(num_clusters=2, reduction="sum", detach_stats=detach, seed=3)(xq, yy, p.to_sparse())
        gx, gy = torch.autograd.grad(loss, (xq, yy))
        torch.testing.assert_close(ddp["loss"], loss.detach())
        torch.testing.assert_close(ddp["gx"], gx)
        torch.testing.assert_close(ddp["gy"], gy)


def test_demo_section_contract():
    import inspect

    from tgrep.demos import edrep as demo

    assert isinstance(demo.TITLE, str) and isinstance(demo.ORDER, int)
    assert inspect.isgeneratorfunction(demo.run)
