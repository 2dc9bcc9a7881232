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
    fwd, bwd, power, _ = model._operator(data.edge_index, n)
    t = random_walk_operator(data.edge_index, n, dtype=torch.float64).to_dense()
    p = (t + t @ t + t @ t @ t) / 3
    x = torch.randn(n, 8, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    labels = torch.arange(n) % 2
    g = model.gradient([f.to(torch.float64) for f in fwd], [b.to(torch.float64) for b in bwd], power, x, labels)
    xg = x.clone().requires_grad_()
    loss = edrep_loss(xg, xg, p, labels=labels, reduction="sum")
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
