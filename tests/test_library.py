"""Every tgrep op is a torch.library custom op: opcheck, fullgraph compile, no recompiles."""
from __future__ import annotations

import pytest
import torch

import tgrep
from tgrep.ops.shortest_path import seed_tensor
from tgrep.utils import to_csr
from _compile import count_compiles


def _graph(n=12, e=40, dtype=torch.float64):
    ei = torch.randint(0, n, (2, e))
    return to_csr(ei, n, torch.rand(e, dtype=dtype) + 0.1, undirected=True)


def _ops():
    return [name for name in dir(torch.ops.tgrep) if not name.startswith("_") and name not in ("name",)]


def test_every_op_is_registered():
    for name in ("shortest_paths", "path_gradient", "path_sum", "reinforce_coefficients"):
        assert hasattr(torch.ops.tgrep, name), name


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_opcheck_shortest_paths(seed, backend):
    indptr, indices, w = _graph()
    w.requires_grad_()
    n = indptr.numel() - 1
    src = torch.arange(4)
    tg = torch.randint(0, n, (4, 3))
    with tgrep.use_backend(backend):
        for targets, prob in ((None, None), (tg, torch.rand_like(w).detach())):
            args = (indptr, indices, w, src, targets, prob, seed_tensor(seed, "cpu"), True)
            torch.library.opcheck(torch.ops.tgrep.shortest_paths.default, args)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_opcheck_path_ops(seed, backend):
    indptr, indices, w = _graph()
    n = indptr.numel() - 1
    src = torch.arange(3)
    dist, pred = torch.ops.tgrep.shortest_paths(indptr, indices, w, src, None, None, seed_tensor(0, "cpu"), True)
    g = torch.randn(dist.shape, dtype=w.dtype, requires_grad=True)
    v = torch.randn(w.shape, dtype=w.dtype, requires_grad=True)
    tg = torch.randint(0, n, (3, 4))
    dist_t = dist.gather(1, tg)
    g_t = torch.randn(dist_t.shape, dtype=w.dtype, requires_grad=True)
    with tgrep.use_backend(backend):
        torch.library.opcheck(torch.ops.tgrep.path_gradient.default, (g, dist, pred, src, None, indptr, w.numel()))
        torch.library.opcheck(torch.ops.tgrep.path_gradient.default, (g_t, dist_t, pred, src, tg, indptr, w.numel()))
        if backend != "triton":  # path_sum has no Triton kernel (CUDA runs the reference)
            torch.library.opcheck(torch.ops.tgrep.path_sum.default, (v, dist, pred, src, None, indptr))
            torch.library.opcheck(torch.ops.tgrep.path_sum.default, (v, dist_t, pred, src, tg, indptr))


def test_opcheck_reinforce(seed):
    indptr, indices, w = _graph()
    p = torch.rand_like(w)
    src = torch.arange(3)
    s = seed_tensor(seed, "cpu")
    _, pred = torch.ops.tgrep.shortest_paths(indptr, indices, w, src, None, p, s, True)
    for backend in ("reference", "cpp"):
        with tgrep.use_backend(backend):
            torch.library.opcheck(torch.ops.tgrep.reinforce_coefficients.default,
                                  (indptr, pred, src, s, p, torch.randn(3, dtype=torch.float64)))


def test_double_backward_is_exact(seed):
    """A gradient penalty through the path gradient: second-order terms via path_sum."""
    indptr, indices, w = _graph(8, 20)
    w.requires_grad_()
    src = torch.arange(3)
    results = {}
    for backend in ("reference", "cpp", "triton"):
        with tgrep.use_backend(backend):
            d = tgrep.ops.shortest_paths(indptr, indices, w, src)
            scale = torch.linspace(1, 2, d.numel(), dtype=w.dtype).view_as(d)
            (g,) = torch.autograd.grad((torch.where(torch.isfinite(d), d, 0) * scale).sum(), w, create_graph=True)
            # d/dscale of ||g||^2 must flow: differentiate w.r.t. a leaf scaling the outer gradient
            s = torch.ones_like(d, requires_grad=True)
            (g2,) = torch.autograd.grad((torch.where(torch.isfinite(d), d, 0) * s).sum(), w, create_graph=True)
            (gs,) = torch.autograd.grad((g2 ** 2).sum(), s)
            results[backend] = (g.detach(), gs)
    ref_g, ref_gs = results["reference"]
    # independent computation: gs[b, t] = 2 * sum_{e on path(b,t)} g2[e], with g2 the usage counts
    for backend, (g, gs) in results.items():
        torch.testing.assert_close(g, ref_g)
        torch.testing.assert_close(gs, ref_gs)
    assert ref_gs.abs().sum() > 0


def test_shortest_paths_compiles_fullgraph_without_recompiles(seed):
    def f(indptr, indices, w, src, tg, p):
        d = tgrep.ops.shortest_paths(indptr, indices, w, src, tg, edge_prob=p)
        return torch.where(torch.isfinite(d), d, 0).sum()

    calls = []
    for n, e, b in ((12, 40, 4), (20, 70, 6), (30, 90, 8)):
        indptr, indices, w = _graph(n, e)
        calls.append((indptr, indices, w.requires_grad_(), torch.arange(b), torch.randint(0, n, (b, 3)),
                      torch.full_like(w, 0.9).detach()))
    outs, graphs = count_compiles(f, *calls)
    for out, c in zip(outs, calls):
        out.backward()
        assert torch.isfinite(out)
    assert graphs == 1, f"{graphs} graphs compiled for 3 batch sizes (expected 1 with dynamic=True)"
