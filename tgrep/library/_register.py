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

Ops whose Triton kernels run a fixed number of launches are better defined with
:func:`torch.library.triton_op` (Inductor then sees the kernels); :func:`kernel_op` is for the
families whose host code loops on data (convergence checks), which are opaque to Inductor.
"""


import functools
from typing import Callable, Optional

import torch

from .. import _backend

Loader = Callable[[], Callable]


def kernel_op(qualname: str, *, cpp: Optional[Loader] = None, triton: Optional[Loader] = None,
              check: Optional[Callable] = None) -> Callable[[Callable], "torch.library.CustomOpDef"]:
    """Decorator: define custom op ``qualname`` whose body is the reference kernel.

    Args:
        qualname: ``"tgrep::<op>"``.
        cpp: zero-argument loader of the C++ kernel (same signature as the body); ``None``
            when the reference is already the CPU kernel (vectorised torch).
        triton: zero-argument loader of the Triton host function, for CUDA tensors.
        check: value validation with the body's signature, run before every kernel; raises
            ``ValueError`` naming the argument.
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
                if check is not None:
                    check(*args, **kwargs)
                return _backend.resolve(qualname, device_type, default, loaders)(*args, **kwargs)

            return kernel

        op = torch.library.custom_op(qualname, make("other", "reference"), mutates_args=())
        op.register_kernel("cpu")(make("cpu", "cpp" if cpp is not None else "reference"))
        op.register_kernel("cuda")(make("cuda", "triton" if triton is not None else "reference"))
        op.kernels = tuple(loaders)  # which backends this op has (tests, `tgrep info`)
        return op

    return decorate
