import os
import subprocess
import sys

import pytest
import torch

import tgrep
from tgrep import _backend
from tgrep.utils import check, csr_to_edge_index, to_csr


def _loaders(calls):
    def loader(name):
        def load():
            calls.append(name)
            return name
        return load
    return {b: loader(b) for b in ("reference", "cpp", "triton")}


def test_backend_env_var_forces(monkeypatch):
    calls = []
    monkeypatch.setenv("TGREP_BACKEND", "reference")
    assert _backend.resolve("tgrep::x", "cpu", "cpp", _loaders(calls)) == "reference"
    assert _backend.default_backend("cpu", ("reference", "cpp")) == "reference"
    monkeypatch.setenv("TGREP_BACKEND", "bogus")
    with pytest.raises(ValueError, match="TGREP_BACKEND"):
        _backend.resolve("tgrep::x", "cpu", "cpp", _loaders(calls))


def test_use_backend_context_and_unusable(monkeypatch):
    monkeypatch.delenv("TGREP_BACKEND", raising=False)
    calls = []
    assert _backend.resolve("tgrep::x", "cpu", "cpp", _loaders(calls)) == "cpp"
    with tgrep.use_backend("reference"):
        assert _backend.resolve("tgrep::x", "cpu", "cpp", _loaders(calls)) == "reference"
    with tgrep.use_backend("cpp"):
        with pytest.raises(RuntimeError, match="CPU tensors"):
            _backend.resolve("tgrep::x", "meta", "reference", _loaders(calls))
        # an op without a C++ kernel runs its reference when 'cpp' is forced
        only = {k: v for k, v in _loaders(calls).items() if k != "cpp"}
        assert _backend.resolve("tgrep::x", "cpu", "reference", only) == "reference"
    # a C++ kernel that did not build falls back to the reference
    broken = {**_loaders(calls), "cpp": lambda: None}
    assert _backend.resolve("tgrep::x", "cpu", "cpp", broken) == "reference"


def test_forcing_reaches_the_real_ops(seed):
    """use_backend switches the kernel a real custom op runs (same answer on every backend)."""
    ei = torch.randint(0, 9, (2, 30))
    indptr, indices, w = to_csr(ei, 9, torch.rand(30, dtype=torch.float64))
    outs = {}
    for b in ("reference", "cpp", "triton"):
        with tgrep.use_backend(b):
            outs[b] = tgrep.ops.shortest_paths(indptr, indices, w, torch.arange(4))
    torch.testing.assert_close(outs["cpp"], outs["reference"], rtol=0, atol=0)
    torch.testing.assert_close(outs["triton"], outs["reference"], rtol=0, atol=0)


def test_triton_interpreter_status():
    ok, why = _backend.triton_status()
    assert ok, why  # the test-suite switches the interpreter on without a GPU


def test_to_csr_roundtrip(seed):
    n, e = 7, 20
    ei = torch.randint(0, n, (2, e))
    w = torch.rand(e)
    indptr, indices, weight, perm = to_csr(ei, n, w, return_perm=True)
    assert indptr[-1] == e and indptr.numel() == n + 1
    back = csr_to_edge_index(indptr, indices)
    assert torch.equal(back, ei[:, perm]) and torch.equal(weight, w[perm])
    indptr2, _, _ = to_csr(ei, n, w, undirected=True)
    assert indptr2[-1] == 2 * e


def test_to_csr_rejects_bad_input():
    with pytest.raises(ValueError, match="edge_index"):
        to_csr(torch.tensor([[0, 5]]).t(), 3)
    with pytest.raises(TypeError, match="edge_index"):
        to_csr(torch.zeros(2, 3), 3)
    with pytest.raises(ValueError, match="edge_weight"):
        to_csr(torch.tensor([[0], [1]]), 2, torch.ones(3))


def test_check_messages():
    with pytest.raises(TypeError, match="'x' must be a torch.Tensor"):
        check.tensor("x", [1, 2])
    with pytest.raises(ValueError, match="'x' contains NaN"):
        check.tensor("x", torch.tensor([1.0, float("nan")]), finite=True)
    with pytest.raises(ValueError, match="'k'"):
        check.positive_int("k", 0)


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "tgrep.cli", "info"], capture_output=True, text=True,
                         env={**os.environ, "TGREP_BACKEND": ""}, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "backends:" in out.stdout and "reference" in out.stdout and "triton" in out.stdout


@pytest.mark.skipif(os.environ.get("TGREP_NO_CPP", "0") not in ("", "0"), reason="C++ disabled by TGREP_NO_CPP")
def test_every_cpp_extension_builds():
    # a broken build would silently fall back to the reference for users: fail loudly here
    from tgrep._ext import build_all

    failures = {name: err for name, err in build_all(jobs=2, verbose=False).items() if err is not None}
    assert not failures, failures


def test_cli_demo_lists_sections():
    from tgrep import demos
    import pkgutil

    names = {m.name for m in pkgutil.iter_modules(demos.__path__)}
    assert {"shortest_paths", "edrep", "learned_graph", "ot_coarsening"} <= names


def test_cpp_checks_values_skips_the_python_check_only_before_the_cpp_kernel():
    from tgrep.library._register import kernel_op

    calls = []

    def check(x):
        calls.append("check")

    def cpp(x):
        calls.append("cpp")
        return x.clone()

    @kernel_op("tgrep_test::cpp_checks_values", cpp=lambda: cpp, check=check, cpp_checks_values=True)
    def op(x: torch.Tensor) -> torch.Tensor:
        calls.append("reference")
        return x.clone()

    x = torch.ones(3)
    op(x)
    assert calls == ["cpp"]  # the C++ kernel validates itself: no second O(input) pass
    calls.clear()
    with tgrep.use_backend("reference"):
        op(x)
    assert calls == ["check", "reference"]


def test_kernel_op_autograd_contract(seed):
    """kernel_op's own Autograd kernel keeps custom_op's contract: setup_context sees every input
    (a trailing default the dispatcher dropped included), needs_input_grad, one gradient per
    input; an op without a formula is not differentiable (backward raises); no-grad and
    inference-mode calls run the kernel alone; the op is listed in the registry and opchecks."""
    from tgrep.library._register import OPS, kernel_op

    seen = {}

    @kernel_op("tgrep_test::scaled_square")
    def scaled_square(x: torch.Tensor, y: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
        return scale * x * x + y

    scaled_square.register_fake(lambda x, y, scale=2.0: torch.empty_like(x))

    def setup(ctx, inputs, output):
        seen["inputs"] = len(inputs)
        ctx.save_for_backward(inputs[0])
        ctx.scale = inputs[2]

    def backward(ctx, g):
        seen["needs"] = tuple(ctx.needs_input_grad)
        (x,) = ctx.saved_tensors
        return 2 * ctx.scale * x * g, g if ctx.needs_input_grad[1] else None, None

    scaled_square.register_autograd(backward, setup_context=setup)

    @kernel_op("tgrep_test::no_formula")
    def no_formula(x: torch.Tensor) -> torch.Tensor:
        return x * 3

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randn(5, dtype=torch.float64, generator=gen)
    out = torch.ops.tgrep_test.scaled_square(x, y)  # scale left at its default
    out.sum().backward()
    assert seen == {"inputs": 3, "needs": (True, False, False)}
    torch.testing.assert_close(x.grad, 4 * x.detach())
    assert torch.autograd.gradcheck(lambda a, b: scaled_square(a, b, 0.5), (x, y.clone().requires_grad_()))
    torch.library.opcheck(torch.ops.tgrep_test.scaled_square.default, (x, y, 3.0))
    with torch.no_grad():
        assert not scaled_square(x, y).requires_grad
    with torch.inference_mode():
        torch.testing.assert_close(scaled_square(x, y, 1.0), x.detach() ** 2 + y)
    z = no_formula(x)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        z.sum().backward()
    assert OPS["tgrep_test::scaled_square"] is scaled_square and "reference" in scaled_square.kernels
