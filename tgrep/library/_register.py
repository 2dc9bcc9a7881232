"""The one way a tgrep kernel family becomes a ``torch.library`` custom op: :func:`kernel_op`.

.. code-block:: python

    @kernel_op("tgrep::knn", cpp=lambda: load_cpp("knn").knn, triton=lambda: tri.knn, check=_check)
    def knn(x: Tensor, y: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return ref.knn(x, y, k)              # the body: the plain-torch reference (the spec)

    @knn.register_fake
    def _(x, y, k): ...                      # shapes only (ctx.new_dynamic_size() if data-dependent)

    knn.register_autograd(_backward, setup_context=_setup)   # where the op is differentiable

:func:`kernel_op` defines the custom op with :func:`torch.library.custom_op` (schema inferred
from the body's type hints) and registers through PyTorch's dispatcher

* a ``"cpu"`` kernel: the C++ one from ``csrc/cpu`` (loaded lazily, at first call),
* a ``"cuda"`` kernel: the Triton one from :mod:`tgrep.kernels.triton`,
* for any other device: the body (the reference),

each preceded by the op's value check (``check``: index ranges, NaN, monotone pointers...),
which therefore runs on every call whatever the caller did, in eager mode and under
``torch.compile`` alike (the check runs inside the opaque op, not in traced code). The C++
kernels rely on it for memory safety.

Device dispatch is PyTorch's. tgrep keeps exactly one override on top of it,
:func:`tgrep.use_backend` / ``TGREP_BACKEND`` (:mod:`tgrep._backend`): it forces the reference
twin (tests, debugging) or, under ``TRITON_INTERPRET=1``, the Triton kernels on CPU tensors
(how the test-suite runs them without a GPU). A C++ kernel that cannot be built (no compiler)
falls back to the reference with one warning.

Ops whose Triton kernels run a fixed sequence of launches (no host loop on data) are defined
with :func:`launch_op` instead: a :func:`torch.library.triton_op` whose CUDA body launches
the kernels through :func:`torch.library.wrap_triton`, so ``torch.compile`` (Inductor) sees
the Triton kernels themselves rather than an opaque call; its CPU body is the op's
:func:`kernel_op` reference twin (opaque, so compiled CPU code does not trace the row-blocked
loops and recompile per size). :func:`kernel_op` stays the template of the families whose host
code loops on data (shortest paths' relaxation rounds, solvers' convergence tests).
"""


import functools
import inspect
from typing import Callable, Optional

import torch
from torch._library.infer_schema import infer_schema
from torch._library.triton import get_inner_triton_kernels

from .. import _backend

Loader = Callable[[], Callable]


def kernel_op(qualname: str, *, cpp: Optional[Loader] = None, triton: Optional[Loader] = None,
              check: Optional[Callable] = None,
              cpp_checks_values: bool = False) -> Callable[[Callable], "torch.library.CustomOpDef"]:
    """Decorator: define custom op ``qualname`` whose body is the reference kernel.

    Args:
        qualname: ``"tgrep::<op>"``.
        cpp: zero-argument loader of the C++ kernel (same signature as the body); ``None``
            when the reference is already the CPU kernel (vectorised torch).
        triton: zero-argument loader of the Triton host function, for CUDA tensors.
        check: value validation with the body's signature, run before every kernel; raises
            ``ValueError`` naming the argument.
        cpp_checks_values: the C++ kernel itself validates every value ``check`` does (each
            index it dereferences, NaN, signs) and raises ``ValueError`` naming the argument, so
            ``check`` is skipped before it (its O(input) passes would run twice per call). The
            reference and Triton kernels are still preceded by ``check``.
    """
    def decorate(reference: Callable):
        loaders: dict[str, Loader] = {"reference": lambda: reference}
        if cpp is not None:
            loaders["cpp"] = cpp
        if triton is not None:
            loaders["triton"] = triton

        def make(device_type: str, default: str):
            @functools.wraps(reference)
            def kernel(*args, **kwargs):
                backend, fn = _backend.resolve_named(qualname, device_type, default, loaders)
                if check is not None and not (cpp_checks_values and backend == "cpp"):
                    check(*args, **kwargs)
                return fn(*args, **kwargs)

            return kernel

        op = torch.library.custom_op(qualname, make("other", "reference"), mutates_args=())
        op.register_kernel("cpu")(make("cpu", "cpp" if cpp is not None else "reference"))
        op.register_kernel("cuda")(make("cuda", "triton" if triton is not None else "reference"))
        op.kernels = tuple(loaders)  # which backends this op has (tests, `tgrep info`)
        op.reference = reference  # the body, undecorated (its signature defines the schema)
        return op

    return decorate


def _triton_branch(op: str, tensor: torch.Tensor) -> bool:
    """Whether a :func:`launch_op` call on ``tensor`` launches Triton kernels (read at trace time
    under ``torch.compile``): CUDA unless the reference is forced; CPU only when ``triton`` is
    forced under the interpreter, and then only eagerly (the interpreter cannot run on the fake
    tensors of tracing, whose shapes the reference twin's fake kernel gives)."""
    forced = _backend.forced_backend()
    if tensor.device.type == "cuda":
        return forced in (None, "triton")
    if forced != "triton":
        return False
    ok, why = _backend.triton_status()
    if not ok or not _backend.triton_interpret():
        raise RuntimeError(f"backend 'triton' was forced for {op} but cannot run: "
                           f"{why if not ok else 'CPU tensors need TRITON_INTERPRET=1'}")
    from torch._guards import detect_fake_mode

    return detect_fake_mode((tensor,)) is None


def launch_op(qualname: str, *, reference: "torch.library.CustomOpDef", triton: Loader,
              check: Optional[Callable] = None,
              supports: Callable[..., bool] = lambda *args: True) -> "torch.library.CustomOpDef":
    """Define ``qualname`` with :func:`torch.library.triton_op` (Triton kernels visible to Inductor).

    Args:
        reference: the op's reference twin, a :func:`kernel_op` (named ``qualname + "_reference"``
            by convention) with the same signature, its check and its fake kernel: what runs on
            CPU and other devices, on CUDA inputs that ``supports`` refuses, and when the
            reference is forced.
        triton: zero-argument loader of the launcher ``launch(token, *args)``, which may only
            call torch ops and kernels wrapped with :func:`torch.library.wrap_triton` (host
            functions called by bare name, so torch's scan finds the kernels); ``token``
            is a 0-d zero tensor returned by the op's check (``tgrep::<op>_check``, opaque, run
            first): the launcher must consume it (add it to an input) so the check is never
            removed as dead code and always runs before the kernels.
        check: value validation with the op's signature (raises ``ValueError`` naming the argument).
        supports: ``supports(*args)`` -> whether the Triton kernels take these inputs (dtypes,
            sizes; decided from metadata only, so it is safe to evaluate while tracing).

    The returned op has the reference's autograd registered on it by the caller
    (``op.register_autograd``); ``op.kernels`` lists its backends like :func:`kernel_op`'s.
    """
    signature = inspect.signature(reference.reference)
    first = next(iter(signature.parameters.values()), None)
    assert first is not None and first.annotation is torch.Tensor, \
        f"{qualname}: the first argument of a launch_op must be a Tensor (the token takes its dtype)"
    schema = infer_schema(reference.reference, mutates_args=())
    check_schema = schema[:schema.rindex(" -> ")] + " -> Tensor"

    def check_body(*args):
        if check is not None:
            check(*args)
        return args[0].new_zeros(())

    check_op = torch.library.custom_op(qualname + "_check", check_body, mutates_args=(), schema=check_schema)
    check_op.register_fake(lambda *args: args[0].new_empty(()))

    @functools.lru_cache(maxsize=None)
    def launcher():
        fn = triton()
        # the kernels the launcher reaches (torch's AST scan, following calls by name): the AOT
        # autograd cache keys compiled graphs on their source, so an upgraded kernel is never
        # served from a stale cache (triton_op's own scan cannot see through the loader)
        torch._library.triton.triton_ops_to_kernels[qualname] = get_inner_triton_kernels(fn)
        return fn

    def body(*args):
        if _triton_branch(qualname, args[0]) and supports(*args):  # (supports may import triton)
            return launcher()(check_op(*args), *args)
        return reference(*args)

    body.__signature__ = signature  # triton_op infers the schema from it
    op = torch.library.triton_op(qualname, body, mutates_args=())
    op.kernels = ("reference", "triton")
    check_op.part_of = reference.part_of = qualname  # listed under the op (`tgrep info`)
    return op
