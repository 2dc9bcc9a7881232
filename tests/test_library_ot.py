"""OT compression on torch.library: opcheck, fullgraph compile of OTCoarsening (every cost),
no recompiles across batch sizes, named errors for bad input (issue 12 items 2, 7, 10)."""
import inspect
import subprocess
import sys

import pytest
import torch
from torch_geometric.data import Batch, Data

import tgrep
from tgrep.datasets import weighted_erdos_renyi
from tgrep.kernels.reference import ot_costs
from tgrep.nn.pool import OTCoarsening

D = torch.float64


def _graphs(sizes, feat=4, gen=None):
    out = []
    for n in sizes:
        ei, _ = weighted_erdos_renyi(n, 0.4)
        ei = torch.cat([ei, ei.flip(0)], 1)
        out.append(Data(x=torch.randn(n, feat, generator=gen), edge_index=ei, edge_attr=torch.randn(ei.size(1), 2),
                        lab=torch.randint(0, 3, (n,), generator=gen)))
    return Batch.from_data_list(out)


def _mp_args(b, k=0.5):
    ei = b.edge_index
    counts = torch.bincount(b.batch)
    kk = ot_costs.budgets(counts, ratio=k)
    c = torch.rand(ei.size(1), dtype=D) * 0.05 + 0.01
    r0 = ot_costs.degree_prior(ei, b.batch, counts.numel())
    return ei, c, r0, b.batch, kk


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_opcheck_mirror_prox_and_round(seed, backend):
    b = _graphs([5, 7, 6])
    ei, c, r0, batch, kk = _mp_args(b)
    with tgrep.use_backend(backend):
        torch.library.opcheck(torch.ops.tgrep.mirror_prox.default,
                              (ei, c.requires_grad_(), r0, batch, kk, 1.0, 10, 1e-3, 5, 1.0, 2),
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
        out = torch.ops.tgrep.mirror_prox(ei, c.detach(), r0, batch, kk, 1.0, 10, 1e-3, 5, 1.0, 2)
        torch.library.opcheck(torch.ops.tgrep.ot_round.default,
                              (ei, c.detach(), r0, batch, kk, out[0], out[1], 1.0, 2, 2, 64))
        torch.library.opcheck(torch.ops.tgrep.ot_graphs.default, (ei, batch, batch.numel()))
        torch.library.opcheck(torch.ops.tgrep.nearest_kept.default, (ei, c.detach(), out[0] > 0.5))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_opcheck_support_cost(seed, backend):
    P, n = 3, 5
    Dm = torch.rand(P, n, n, dtype=D) + 0.1
    Dm[:, range(n), range(n)] = 0
    r0 = torch.softmax(torch.randn(P, n, dtype=D), -1)
    S = torch.rand(P, n).argsort(1) < 2
    with tgrep.use_backend(backend):
        for pi0, plan in ((None, False), (torch.rand(P, n, n, dtype=D), True)):
            torch.library.opcheck(torch.ops.tgrep.support_cost.default, (Dm, r0, S, 0.7, 200, 1e-8, 20, pi0, plan))


def test_opcheck_and_gradcheck_projections(seed):
    y = torch.randn(9, dtype=D, requires_grad=True)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])
    k = torch.tensor([1.5, 2.0, 0.5], dtype=D)
    torch.library.opcheck(torch.ops.tgrep.project_capped_simplex.default, (y, k, batch))
    assert torch.autograd.gradcheck(lambda a: torch.ops.tgrep.project_capped_simplex(a, k, batch), (y,))
    eps = (torch.rand(9, dtype=D) * 0.8 + 0.1).requires_grad_()
    torch.library.opcheck(torch.ops.tgrep.project_diag_simplex.default, (y, eps, batch, 3))
    assert torch.autograd.gradcheck(lambda a, e: torch.ops.tgrep.project_diag_simplex(a, e, batch, 3), (y, eps))
    ei = torch.tensor([[0, 1, 1, 2, 3, 4, 5, 7], [1, 0, 2, 1, 4, 5, 6, 8]])
    cost = (torch.rand(8, dtype=D) * 0.3 + 0.05).requires_grad_()
    yy = (torch.randn(9, dtype=D) * 2).requires_grad_()
    torch.library.opcheck(torch.ops.tgrep.project_lipschitz.default, (yy, ei, cost, batch, 3, 2000, 1e-11, None),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    f = lambda a, c: torch.ops.tgrep.project_lipschitz(a, ei, c, batch, 3, 2000, 1e-11, None)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (yy, cost), atol=1e-4)


def test_double_backward_is_refused_clearly(seed):
    b = _graphs([6])
    ei, c, r0, batch, kk = _mp_args(b)
    c.requires_grad_()
    rho1 = torch.ops.tgrep.mirror_prox(ei, c, r0, batch, kk, 1.0, 10, 1e-3, 5, 1.0, 2)[1]
    (g,) = torch.autograd.grad(rho1.sum(), c, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def _count_compiles(fn, calls):
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    outs = [compiled(*c) for c in calls]
    return outs, counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("cost", ["uniform", "degree", "label", "learned"])
def test_ot_coarsening_compiles_fullgraph_without_recompiles(seed, cost):
    pool = OTCoarsening(0.5, cost=cost, in_channels=4, num_iters=10)

    def f(x, ei, ea, batch, lab):
        out = pool(x, ei, ea, batch, node_label=lab)
        return out[0].sum() + out[2].sum() + out[3].sum() + out[4].sum(), out

    calls = []
    for sizes in ([5, 7], [6, 8, 9], [4, 6, 7, 9]):
        b = _graphs(sizes)
        calls.append((b.x.requires_grad_(), b.edge_index, b.edge_attr, b.batch, b.lab))
    outs, graphs = _count_compiles(f, calls)
    for (loss, out), c in zip(outs, calls):
        ref = pool(*c[:4], node_label=c[4])
        for a, r in zip(out, ref):
            torch.testing.assert_close(a, r)
        loss.backward()
    assert graphs == 1, f"{graphs} graphs compiled for 3 batch sizes (expected 1 with dynamic=True)"


# ------------------------------------------------------------------------------ bad input (issue 12)
_CROSS = """
import torch, tgrep
ei = torch.tensor([[0, 3, 0, 1, 2, 3], [3, 0, 1, 0, 3, 2]])   # edge 0-3 joins graphs 0 and 1
with tgrep.use_backend('cpp'):
    try:
        tgrep.ot_compress(ei, 4, 1, batch=torch.tensor([0, 0, 1, 1]))
    except ValueError as e:
        print('ValueError', e)
"""


def test_edge_joining_two_graphs_is_a_value_error_in_a_subprocess():
    """Issue 12 item 2: malloc(): corrupted top size (SIGABRT) on the C++ path before."""
    import os
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", _CROSS], capture_output=True, text=True, timeout=600, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ValueError" in proc.stdout and "joining two graphs" in proc.stdout


def test_cpp_kernel_checks_indices_itself():
    """The C++ kernel is memory safe without the Python checks (called raw)."""
    from tgrep._ext import load_cpp
    mod = load_cpp("ot_compress")
    if mod is None:
        pytest.skip("C++ kernel unavailable")
    c, r0, k = torch.ones(2, dtype=D), torch.full((4,), 0.25, dtype=D), torch.tensor([1, 1])
    args = (1.0, 5, 1e-3, 5, 1.0)
    with pytest.raises(ValueError, match="joining two graphs"):
        mod.mirror_prox(torch.tensor([[0, 3], [3, 0]]), c, r0, torch.tensor([0, 0, 1, 1]), k, *args)
    with pytest.raises(ValueError, match="outside"):
        mod.mirror_prox(torch.tensor([[0, 9], [9, 0]]), c, r0, torch.tensor([0, 0, 1, 1]), k, *args)
    with pytest.raises(ValueError, match="sorted"):
        mod.mirror_prox(torch.tensor([[0, 1], [1, 0]]), c, r0, torch.tensor([0, 1, 0, 1]), k, *args)
    with pytest.raises(ValueError, match="outside"):
        mod.mirror_prox(torch.tensor([[0, 1], [1, 0]]), c, r0, torch.tensor([0, 0, 5, 5]), k, *args)
    with pytest.raises(ValueError, match="'rho0'"):
        mod.support_cost(torch.zeros(2, 3, 3, dtype=D), torch.zeros(2, 2, dtype=D), torch.zeros(2, 3, dtype=torch.bool),
                         1.0, 10, 1e-6, 5, torch.zeros(0, dtype=D), False)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_bad_input_gets_named_errors(backend):
    tri = torch.tensor([[0, 1, 1, 2, 2, 0], [1, 0, 2, 1, 0, 2]])
    with tgrep.use_backend(backend):
        with pytest.raises(ValueError, match="'batch' must be sorted"):
            tgrep.ot_compress(torch.cat([tri, tri + 3], 1), 6, 1, batch=torch.tensor([0, 1, 0, 1, 0, 1]))
        with pytest.raises(ValueError, match="'edge_index'"):
            tgrep.ot_compress(tri + 5, 3, 1)
        for name, kw in (("lam", dict(lam=float("inf"))), ("lam", dict(lam=0.0)), ("tol", dict(tol=-1.0)),
                         ("tol", dict(tol=float("nan"))), ("step_scale", dict(step_scale=float("inf"))),
                         ("num_iters", dict(num_iters=0)), ("'cost'", dict(cost=torch.full((6,), float("nan")))),
                         ("'cost'", dict(cost=torch.ones(6) * -1)), ("'rho0'", dict(rho0=torch.tensor([-1.0, 1, 1])))):
            with pytest.raises(ValueError, match=name):
                tgrep.ot_compress(tri, 3, 1, **kw)
        with pytest.raises(ValueError, match="'mu0'"):
            tgrep.ops.project_lipschitz(torch.zeros(3, dtype=D), tri, torch.ones(6, dtype=D), mu0=-torch.ones(6, dtype=D))
        with pytest.raises(ValueError, match="'tol'"):
            tgrep.ops.project_lipschitz(torch.zeros(3, dtype=D), tri, torch.ones(6, dtype=D), tol=-1.0)


def test_wrong_length_edge_attr_is_a_value_error():
    b = _graphs([5, 6])
    with pytest.raises(ValueError, match="'edge_attr'"):
        OTCoarsening(0.5)(b.x, b.edge_index, b.edge_attr[:-1], b.batch)


def test_huge_graph_ids_are_compacted():
    """Issue 12 item 11: ids {0, 10**7} are two graphs (no 10**7-sized buffers)."""
    ei = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    batch = torch.tensor([0, 0, 10**7, 10**7])
    info = tgrep.ot_compress(ei, 4, 1, batch=batch, return_info=True)
    assert info.k.tolist() == [1, 1] and info.perm.numel() == 2
    y = torch.randn(4, dtype=D)
    assert torch.allclose(tgrep.ops.project_capped_simplex(y, 1.0, batch),
                          tgrep.ops.project_capped_simplex(y, 1.0, torch.tensor([0, 0, 1, 1])))


def test_directed_sinks_keep_their_mass():
    """Issue 12 item 7: two directed paths into two sinks; k = 2 must keep both sinks (any
    support missing one has infinite cost). Before, top-k kept one and a swap could not fix it."""
    # hub 0 feeds both chains: 0 -> 1 -> 2 -> 3 (sink) and 0 -> 4 -> 5 (sink), plus 6 -> 0
    ei = torch.tensor([[0, 1, 2, 0, 4, 6], [1, 2, 3, 4, 5, 0]])
    for refine in (0, 2):
        perm = tgrep.ot_compress(ei, 7, 2, refine=refine)
        assert sorted(perm.tolist()) == [3, 5], perm
        cost = tgrep.ops.ot_compression_cost(ei, 7, perm)
        assert torch.isfinite(cost).all()
    # random directed graphs: whenever a finite support exists, the returned one is finite
    gen = torch.Generator().manual_seed(0)
    import itertools
    for _ in range(15):
        n = 7
        ei = torch.randint(0, n, (2, 9), generator=gen)
        ei = ei[:, ei[0] != ei[1]]
        k = 3
        subs = list(itertools.combinations(range(n), k))
        P = len(subs)
        mask = torch.zeros(P * n, dtype=torch.bool)
        for i, s in enumerate(subs):
            mask[[i * n + v for v in s]] = True
        best = tgrep.ops.ot_compression_cost(torch.cat([ei + i * n for i in range(P)], 1), P * n, mask,
                                             batch=torch.arange(P).repeat_interleave(n), tol=1e-6)
        ours = tgrep.ops.ot_compression_cost(ei, n, tgrep.ot_compress(ei, n, k, refine=0))
        if torch.isfinite(best).any():
            assert torch.isfinite(ours).all(), ei


def test_repr_lists_every_argument():
    """Issue 14: the repr names every constructor argument (PyG compares reprs)."""
    pool = OTCoarsening(3, cost="learned", in_channels=4, lam=0.5, num_iters=7, multiplier=2.0, reduce="transport",
                        refine=1, hidden_channels=8, diff_iters=3)
    r = repr(pool)
    for name in inspect.signature(OTCoarsening.__init__).parameters:
        if name != "self":
            assert f"{name}=" in r, (name, r)
    assert "num_iters=7" in r and "hidden_channels=8" in r and "refine=1" in r and "diff_iters=3" in r
    assert repr(OTCoarsening(0.5)) != repr(OTCoarsening(0.5, num_iters=5))


def test_transport_reduce_and_projections_compile_fullgraph(seed):
    pool = OTCoarsening(0.5, cost="degree", reduce="transport", num_iters=10)
    y = torch.randn(9, dtype=D)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])
    ei = torch.tensor([[0, 1, 1, 2, 3, 4, 5, 7], [1, 0, 2, 1, 4, 5, 6, 8]])
    cost = torch.rand(8, dtype=D) + 0.1

    def f(x, edge_index, b):
        out = pool(x, edge_index, batch=b)
        p1 = torch.ops.tgrep.project_capped_simplex(y, torch.tensor([1.0, 2.0, 0.5], dtype=D), batch)
        p2 = torch.ops.tgrep.project_diag_simplex(y, torch.full_like(y, 0.5), batch, 3)
        p3 = torch.ops.tgrep.project_lipschitz(y, ei, cost, batch, 3, 50, 0.0, None)[0]
        return out[0].sum() + p1.sum() + p2.sum() + p3.sum()

    calls = []
    for sizes in ([5, 7], [6, 8, 9], [4, 6, 7, 9]):
        b = _graphs(sizes)
        calls.append((b.x, b.edge_index, b.batch))
    outs, graphs = _count_compiles(f, calls)
    for o, c in zip(outs, calls):
        torch.testing.assert_close(o, f(*c))
    assert graphs == 1
