"""Every op under ``torch.ops.tgrep`` is opchecked somewhere in the suite.

The family test files opcheck the public ops; this file opchecks the backward ops and the parts
of the :func:`tgrep.library.launch_op` ops (their check and reference twins), and asserts by a
scan of ``tests/`` that no registered op is left without an ``opcheck`` call.
"""
import re
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch, Data

import tgrep  # noqa: F401  (registers the ops)
from tgrep.datasets import weighted_erdos_renyi
from tgrep.kernels.reference import ot_costs

D = torch.float64


def test_every_op_has_an_opcheck():
    from torch._library.custom_ops import OPDEFS

    from tgrep.library._register import OPS

    # kernel_op's ops (tgrep's registry) and launch_op's (torch.library.triton_op: torch's)
    ops = {name.split("::", 1)[1] for name in [*OPS, *OPDEFS] if name.startswith("tgrep::")}
    assert len(ops) >= 26
    source = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    checked = set(re.findall(r"opcheck\(\s*torch\.ops\.tgrep\.(\w+)", source))
    assert ops <= checked, f"ops without an opcheck call in tests/: {sorted(ops - checked)}"


def test_opcheck_launch_op_parts(seed):
    g = torch.Generator().manual_seed(seed)
    n, d, k = 7, 4, 2
    x = torch.randn(n, d, generator=g)
    lw = torch.log_softmax(torch.randn(k, generator=g), 0)
    mu = torch.randn(k, d, generator=g) / d
    a = torch.randn(k, d, d, generator=g) / d
    om = 0.5 * (a + a.transpose(1, 2))
    scale = torch.tensor(2.0)
    args = (x, lw, mu, om, scale)
    torch.library.opcheck(torch.ops.tgrep.cluster_log_normalizer_check.default, args)
    torch.library.opcheck(torch.ops.tgrep.cluster_log_normalizer_reference.default, args)
    lse = torch.ops.tgrep.cluster_log_normalizer(*args)
    grad = torch.rand(n, generator=g)
    bargs = (grad, x, lw, mu, om, lse, scale, True, True)
    torch.library.opcheck(torch.ops.tgrep.cluster_log_normalizer_backward_check.default, bargs)
    torch.library.opcheck(torch.ops.tgrep.cluster_log_normalizer_backward_reference.default, bargs)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="'x' contains NaN"):
        torch.ops.tgrep.cluster_log_normalizer_check(bad, lw, mu, om, scale)


def test_opcheck_exact_log_normalizer_backward(seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(6, 3, generator=g, dtype=D), torch.randn(5, 3, generator=g, dtype=D)
    lse = torch.ops.tgrep.exact_log_normalizer(x, y, 2)
    grad = torch.rand(6, generator=g, dtype=D)
    torch.library.opcheck(torch.ops.tgrep.exact_log_normalizer_backward.default, (grad, x, y, lse, 2, True, True))
    # an independent value: d/dx sum_i g_i logsumexp_a x_i.y_a = g_i softmax(x_i y^T) y
    gx, gy = torch.ops.tgrep.exact_log_normalizer_backward(grad, x, y, lse, 2, True, True)
    w = torch.softmax(x @ y.t(), 1) * grad[:, None]
    torch.testing.assert_close(gx, w @ y)
    torch.testing.assert_close(gy, w.t() @ x)


def _ot_batch():
    graphs = []
    for n in (5, 6):
        ei, _ = weighted_erdos_renyi(n, 0.5)
        graphs.append(Data(x=torch.zeros(n, 1), edge_index=torch.cat([ei, ei.flip(0)], 1)))
    b = Batch.from_data_list(graphs)
    counts = torch.bincount(b.batch)
    return b.edge_index, b.batch, counts


def test_opcheck_mirror_prox_backward(seed):
    ei, batch, counts = _ot_batch()
    kk = ot_costs.budgets(counts, ratio=0.5)
    c = torch.rand(ei.size(1), dtype=D) * 0.05 + 0.01
    r0 = ot_costs.degree_prior(ei, batch, counts.numel())
    out = torch.ops.tgrep.mirror_prox(ei, c, r0, batch, kk, 1.0, 10, 1e-3, 5, 1.0, 2)
    g_eps, g_rho1 = torch.rand_like(out[0]), torch.rand_like(out[1])
    args = (g_eps, g_rho1, ei, c, r0, batch, kk, out[2], out[3], out[4], out[5], 1.0, 5, 1.0, 2)
    torch.library.opcheck(torch.ops.tgrep.mirror_prox_backward.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    gc, gr = torch.ops.tgrep.mirror_prox_backward(*args)
    assert gc.shape == c.shape and gr.shape == r0.shape
    assert torch.isfinite(gc).all() and torch.isfinite(gr).all()


def test_opcheck_project_lipschitz_backward(seed):
    ei = torch.tensor([[0, 1, 1, 2, 3], [1, 0, 2, 1, 4]])
    batch = torch.tensor([0, 0, 0, 1, 1])
    cost = torch.rand(5, dtype=D) * 0.3 + 0.05
    y = torch.randn(5, dtype=D) * 2
    t, _ = torch.ops.tgrep.project_lipschitz(y, ei, cost, batch, 2, 2000, 1e-11, None)
    g_t = torch.randn(5, dtype=D)
    torch.library.opcheck(torch.ops.tgrep.project_lipschitz_backward.default, (g_t, ei, t, cost))
    # against autograd through the projection (gradcheck-verified in test_library_ot.py)
    yy, cc = y.clone().requires_grad_(), cost.clone().requires_grad_()
    tt, _ = torch.ops.tgrep.project_lipschitz(yy, ei, cc, batch, 2, 2000, 1e-11, None)
    ey, ec = torch.autograd.grad(tt, (yy, cc), g_t)
    gy, gc = torch.ops.tgrep.project_lipschitz_backward(g_t, ei, t, cost)
    torch.testing.assert_close(gy, ey)
    torch.testing.assert_close(gc, ec)
