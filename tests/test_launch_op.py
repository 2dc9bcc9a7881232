"""Ops defined with :func:`tgrep.library.launch_op` (``torch.library.triton_op``): the EDRep
fused normalizer and its backward.

What is checked here: the kernels are found by torch's scan (the AOT-autograd cache keys on
their source), the Triton branch under the interpreter equals the reference twin forward and
backward, the check runs first in every branch (eager and compiled), and compiled CPU code
keeps the reference twin opaque (one graph across sizes). On a CUDA machine (``-m cuda``):
Inductor's generated code launches the Triton kernels itself, and compiled = eager.
"""
import os
import subprocess
import sys

import pytest
import torch

import tgrep
from tgrep.ops import cluster_log_normalizer

from _compile import count_compiles
from _isolated import ROOT

OPS = ("tgrep::cluster_log_normalizer", "tgrep::cluster_log_normalizer_backward")


def _inputs(n, d=8, k=3, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) / d ** 0.5
    lw = torch.log_softmax(torch.randn(k, generator=g), 0)
    mu = torch.randn(k, d, generator=g) / d
    a = torch.randn(k, d, d, generator=g) / d
    om = 0.5 * (a + a.transpose(1, 2))
    return [t.to(device) for t in (x, lw, mu, om)]


def _dense(x, lw, mu, om):
    """An independent computation: the logits written out and torch.logsumexp."""
    logits = lw[None, :] + x @ mu.t() + 0.5 * torch.einsum("nd,kde,ne->nk", x, om, x)
    return torch.logsumexp(logits, 1)


def _run_without_interpreter(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh process without ``TRITON_INTERPRET`` (real JIT kernels, no GPU needed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT),
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_kernels_are_visible_to_the_compile_cache():
    """Without the interpreter the Triton kernels are JITFunctions; the scan must reach them
    through the op's loader (else a changed kernel could be served from a stale AOT cache)."""
    code = (
        "import torch, tgrep\n"
        "from tgrep.library import softmax_norm as sn\n"
        "from torch._library.triton import get_triton_kernels_for_op\n"
        "x = torch.randn(2, 4)\n"
        "for op, load in (('tgrep::cluster_log_normalizer', sn._tri_forward),\n"
        "                 ('tgrep::cluster_log_normalizer_backward', sn._tri_cln_backward)):\n"
        "    getattr(torch.ops.tgrep, op.split('::')[1])  # defined\n"
        "    from torch._library.triton import get_inner_triton_kernels\n"
        "    print(op, sorted(k.fn.__name__ for k in get_inner_triton_kernels(load())))\n"
    )
    out = _run_without_interpreter(code)
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines[OPS[0]] == "['_cluster_lse_fwd']"
    assert lines[OPS[1]] == "['_cluster_lse_bwd']"


def test_runs_without_triton_installed():
    """A CPU-only install without the triton package: the op runs its reference, and says so
    when triton is forced."""
    code = (
        "import sys; sys.modules['triton'] = None  # import triton -> ImportError\n"
        "import torch, tgrep\n"
        "from tgrep.ops import cluster_log_normalizer\n"
        "x = torch.randn(5, 3); k = 2\n"
        "out = cluster_log_normalizer(x, torch.zeros(k), torch.zeros(k, 3), torch.zeros(k, 3, 3))\n"
        "assert torch.allclose(out, torch.full((5,), float(torch.log(torch.tensor(2.0)))))\n"
        "try:\n"
        "    with tgrep.use_backend('triton'):\n"
        "        cluster_log_normalizer(x, torch.zeros(k), torch.zeros(k, 3), torch.zeros(k, 3, 3))\n"
        "except RuntimeError as e:\n"
        "    print('refused:', e)\n"
    )
    out = _run_without_interpreter(code)
    assert "refused:" in out.stdout and "triton" in out.stdout


@pytest.mark.parametrize("seed", [0, 1])
def test_triton_branch_equals_reference_forward_and_backward(seed):
    if not tgrep._backend.triton_interpret():
        pytest.skip("needs TRITON_INTERPRET=1 (set by conftest) to run Triton kernels on CPU")
    x, lw, mu, om = _inputs(37, seed=seed)
    outs, grads = {}, {}
    for backend in ("reference", "triton"):
        leaves = [t.clone().requires_grad_() for t in (x, lw, mu, om)]
        with tgrep.use_backend(backend):
            out = cluster_log_normalizer(*leaves)
            out.backward(torch.linspace(0.5, 1.5, out.numel()))
        outs[backend], grads[backend] = out.detach(), [t.grad for t in leaves]
    expect = _dense(x.double(), lw.double(), mu.double(), om.double()).float()
    torch.testing.assert_close(outs["triton"], expect, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs["reference"], expect, rtol=1e-4, atol=1e-5)
    for gt, gr in zip(grads["triton"], grads["reference"]):
        torch.testing.assert_close(gt, gr, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_check_runs_in_every_branch(backend):
    if backend == "triton" and not tgrep._backend.triton_interpret():
        pytest.skip("needs TRITON_INTERPRET=1")
    x, lw, mu, om = _inputs(5)
    x[2, 1] = float("nan")
    with tgrep.use_backend(backend), pytest.raises(ValueError, match="'x' contains NaN"):
        cluster_log_normalizer(x, lw, mu, om)


def test_compiled_cpu_keeps_the_reference_opaque_one_graph():
    """AOT autograd decomposes the triton_op (its body is traced): on CPU the body is the opaque
    reference twin, so sizes stay symbolic (one graph) and the check still runs."""
    fn = lambda x, lw, mu, om: cluster_log_normalizer(x, lw, mu, om).sum()  # noqa: E731
    calls = [_inputs(n, seed=n) for n in (9, 17, 40)]
    outs, graphs = count_compiles(fn, *calls)
    assert graphs == 1
    for args, out in zip(calls, outs):
        torch.testing.assert_close(out, _dense(*args).sum(), rtol=1e-4, atol=1e-4)
    bad = _inputs(6)
    bad[0][0, 0] = float("inf")
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    with pytest.raises(ValueError, match="'x' contains NaN or infinite"):
        compiled(*bad)


@pytest.mark.cuda
def test_inductor_launches_the_triton_kernels():
    from torch._inductor.utils import run_and_get_code

    args = [t.requires_grad_() for t in _inputs(300, d=32, k=4, device="cuda")]
    fn = lambda x, lw, mu, om: cluster_log_normalizer(x, lw, mu, om).square().sum()  # noqa: E731
    eager = fn(*args)
    eager_grads = torch.autograd.grad(eager, args)
    compiled = torch.compile(fn, fullgraph=True)
    (out, ), codes = run_and_get_code(lambda: (compiled(*args),))
    grads = torch.autograd.grad(compiled(*args), args)
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    source = "\n".join(codes)
    assert "_cluster_lse_fwd" in source  # the user kernel is in Inductor's code, not an opaque op call
    assert "tgrep.cluster_log_normalizer.default" not in source
