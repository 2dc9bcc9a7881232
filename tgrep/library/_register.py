"""The one way a tgrep kernel family becomes a ``torch.library`` custom op: :func:`kernel_op`.

.. code-block:: python

    @kernel_op("tgrep::knn", cpp=lambda: load_cpp("knn").knn, triton=lambda: tri.knn, check=_check)
    def knn(x: Tensor, y: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return ref.knn(x, y, k)              # the body: the plain-torch reference (the spec)

    @knn.register_fake
    def _(x, y, k): ...                      # shapes only (ctx.new_dynamic_size() if data-dependent)

    knn.register_autograd(_backward, setup_context=_setup)   # where the op is differentiable

:func:`kernel_op` defines the op in a :class:`torch.library.Library` fragment (schema inferred
from the body's type hints, as :func:`torch.library.custom_op` infers it; a :class:`KernelOp`
keeps ``custom_op``'s ``register_fake`` / ``register_autograd`` interface for about 30% less
per eager call) and registers through PyTorch's dispatcher

* a ``"cpu"`` kernel: the C++ one from ``csrc/cpu`` (loaded lazily, at first call),
* a ``"cuda"`` kernel: the Triton one from :mod:`tgrep.kernels.triton`,
* for any other device: the body (the reference),
* ``Autograd``: one :class:`torch.autograd.Function` running ``register_autograd``'s formula
  (an op without one is not differentiable: backward through it raises),

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


_LIBS: dict = {}  # namespace -> its torch.library.Library fragment (kernel_op's schemas, kernels)
OPS: dict = {}  # qualname -> KernelOp, every op kernel_op defined


def _library(namespace: str) -> "torch.library.Library":
    if namespace not in _LIBS:
        _LIBS[namespace] = torch.library.Library(namespace, "FRAGMENT")
    return _LIBS[namespace]


class KernelOp:
    """A ``torch.library`` op defined by :func:`kernel_op`: called like the op
    (``torch.ops.tgrep.<name>``), with ``register_fake`` / ``register_autograd`` as on the
    object ``torch.library.custom_op`` returns, ``kernels`` (the backends it has) and
    ``reference`` (the body, its signature the schema).

    It is defined with :class:`torch.library.Library` rather than
    :func:`torch.library.custom_op`: same schema, dispatch keys, fake kernel and autograd
    contract, but its ``Autograd`` kernel is one plain :class:`torch.autograd.Function` (no
    per-call argument normalisation or wrapper layers): an eager call of a tiny op costs 9 us
    instead of 13 without grad, 50 instead of 69 forward and backward (the C++ kernel itself:
    1 us). In the ``ProdigeEmbedding`` training step, whose ops are small, ``custom_op``'s
    dispatch was ~10% of the step.
    """

    def __init__(self, qualname: str, reference: Callable, loaders: dict, make: Callable):
        namespace, name = qualname.split("::")
        self._lib = lib = _library(namespace)
        lib.define(name + infer_schema(reference, mutates_args=()))
        self._qualname, self._name = qualname, name
        self._opoverload = getattr(getattr(torch.ops, namespace), name).default
        params = list(inspect.signature(reference).parameters.values())
        self._num_args = len(params)
        # the dispatcher drops trailing arguments equal to their defaults: put them back
        self._defaults = tuple(p.default for p in params)
        lib.impl(name, make("other", "reference"), "CompositeExplicitAutograd")
        lib.impl(name, make("cpu", "cpp" if "cpp" in loaders else "reference"), "CPU")
        lib.impl(name, make("cuda", "triton" if "triton" in loaders else "reference"), "CUDA")
        self._setup_context: Optional[Callable] = None
        self._backward: Optional[Callable] = None
        self._function = self._make_function()
        lib.impl(name, self._autograd_kernel, "Autograd")
        self.kernels = tuple(loaders)  # which backends this op has (tests, `tgrep info`)
        self.reference = reference
        functools.update_wrapper(self, reference)
        OPS[qualname] = self

    def __call__(self, *args, **kwargs):
        return self._opoverload(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<tgrep op {self._qualname} ({', '.join(self.kernels)})>"

    def register_fake(self, fn: Callable) -> Callable:
        """The op's fake (meta) kernel: output shapes and dtypes only (as ``custom_op``'s)."""
        torch.library.register_fake(self._qualname, fn, lib=self._lib)
        return fn

    def register_autograd(self, backward: Callable, *, setup_context: Optional[Callable] = None) -> None:
        """The op's backward, with ``custom_op``'s contract: ``setup_context(ctx, inputs, output)``
        saves what ``backward(ctx, *grads)`` needs; ``backward`` returns one gradient (or ``None``)
        per input; ``ctx.needs_input_grad`` says which are needed."""
        self._setup_context, self._backward = setup_context, backward

    def _make_function(self) -> type:
        op, this = self._opoverload, self

        def forward(ctx, *args):
            with torch._C._AutoDispatchBelowAutograd():
                out = op(*args)
            if this._setup_context is not None:
                this._setup_context(ctx, args, out)
            return out

        def backward(ctx, *grads):
            if this._backward is None:
                raise RuntimeError(f"Trying to backward through {this._qualname} but no autograd formula was "
                                   "registered (it is not differentiable)")
            return this._backward(ctx, *grads)

        return type(f"Autograd_{self._name}", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward)})

    def _autograd_kernel(self, *args):
        if len(args) < self._num_args:
            args = args + self._defaults[len(args):]
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            return self._function.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return self._opoverload(*args)


def kernel_op(qualname: str, *, cpp: Optional[Loader] = None, triton: Optional[Loader] = None,
              check: Optional[Callable] = None,
              cpp_checks_values: bool = False) -> Callable[[Callable], KernelOp]:
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
    def decorate(reference: Callable) -> KernelOp:
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

        return KernelOp(qualname, reference, loaders, make)

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


def launch_op(qualname: str, *, reference: KernelOp, triton: Loader,
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
