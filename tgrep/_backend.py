"""The backend override: the one knob on top of PyTorch's dispatcher.

Three kernel families exist:

* ``"triton"``    -- Triton kernels, for CUDA tensors (or CPU tensors when the Triton
  interpreter is on, ``TRITON_INTERPRET=1``, which is how the test-suite runs them).
* ``"cpp"``       -- C++ kernels from ``csrc/cpu``, compiled on first use and cached.
* ``"reference"`` -- plain-torch implementations in :mod:`tgrep.kernels.reference`; the
  executable specification, valid on every device.

Every op is a ``torch.library`` custom op (:func:`tgrep.library.kernel_op`): the dispatcher
sends CPU tensors to the C++ kernel and CUDA tensors to the Triton one. This module only
decides what a per-device kernel runs when something is *forced*:
``TGREP_BACKEND=reference|cpp|triton`` (environment) or ``with tgrep.use_backend(...)``
(code); forcing a backend that cannot run the input raises a :class:`RuntimeError` that says
why. It also reports what is available (``tgrep info``).
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterable, Iterator

import torch

BACKENDS = ("reference", "cpp", "triton")
_forced: list[str] = []


def triton_interpret() -> bool:
    """Whether the Triton interpreter is on (kernels then run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def triton_status() -> tuple[bool, str]:
    """``(available, reason)`` for the Triton backend."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the machine
        return False, f"triton is not importable ({exc.__class__.__name__}: {exc})"
    version = getattr(__import__("triton"), "__version__", "?")
    if torch.cuda.is_available():
        return True, f"triton {version} on {torch.cuda.get_device_name()}"
    if triton_interpret():
        return True, f"triton {version} in interpreter mode (TRITON_INTERPRET=1, CPU tensors)"
    return False, (f"triton {version} is installed but no CUDA GPU is visible "
                   "(set TRITON_INTERPRET=1 to run its kernels slowly on CPU)")


def cpp_status(name: str = "shortest_path") -> tuple[bool, str]:
    """``(available, reason)`` for the C++ backend, building extension ``name`` if needed."""
    from ._ext import load_cpp, cpp_error

    mod = load_cpp(name)
    if mod is not None:
        return True, f"C++ extension '{name}' built and loaded"
    return False, cpp_error(name) or f"C++ extension '{name}' unavailable"


def _normalize(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")
    return name


def forced_backend() -> str | None:
    """The backend forced by :func:`use_backend` or ``TGREP_BACKEND``, or ``None``."""
    if _forced:
        return _forced[-1]
    env = os.environ.get("TGREP_BACKEND", "").strip()
    return _normalize(env, "TGREP_BACKEND") if env else None


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force backend ``name`` inside a ``with`` block (takes precedence over the env var)."""
    _forced.append(_normalize(name, "backend"))
    try:
        yield
    finally:
        _forced.pop()


def _usable(backend: str, device_type: str, loader) -> tuple[bool, str]:
    if backend == "reference":
        return True, ""
    if backend == "triton":
        ok, why = triton_status()
        if not ok:
            return False, why
        if device_type == "cuda" or (device_type == "cpu" and triton_interpret()):
            return True, ""
        return False, f"triton kernels need CUDA tensors (got {device_type})"
    if backend == "cpp":
        if device_type != "cpu":
            return False, f"the C++ kernels need CPU tensors (got {device_type})"
        return (True, "") if loader() is not None else (False, "its C++ extension did not build (see the warning)")
    raise AssertionError(backend)


def resolve(op: str, device_type: str, default: str, loaders: dict) -> Callable:
    """The kernel that runs one call of custom op ``op`` on ``device_type`` tensors.

    Called by the per-device kernels that :func:`tgrep.library.kernel_op` registers: the
    dispatcher has already picked the device; this applies the forced backend, if any, and
    falls back to the reference when a C++ extension cannot be built. ``loaders`` maps the
    op's backends to zero-argument loaders of their kernels.
    """
    return resolve_named(op, device_type, default, loaders)[1]


def resolve_named(op: str, device_type: str, default: str, loaders: dict) -> tuple[str, Callable]:
    """``(backend name, kernel)`` of :func:`resolve`: the name says whether the C++ kernel runs
    (a C++ kernel that cannot be built falls back to ``"reference"``)."""
    forced = forced_backend()
    if forced is not None and forced != default:
        if forced not in loaders:
            # an op without that kernel family runs its reference: forcing 'cpp' on an op
            # that is vectorised torch on CPU is not an error
            return "reference", loaders["reference"]()
        ok, why = _usable(forced, device_type, loaders[forced])
        if not ok:
            raise RuntimeError(f"backend {forced!r} was forced for {op} but cannot run: {why}")
        return forced, loaders[forced]()
    if default == "cpp":
        fn = loaders["cpp"]()
        return ("cpp", fn) if fn is not None else ("reference", loaders["reference"]())
    return default, loaders[default]()


def default_backend(device_type: str, kernels: Iterable[str]) -> str:
    """The backend a call on ``device_type`` tensors runs when nothing is forced (``tgrep info``)."""
    kernels = tuple(kernels)
    forced = forced_backend()
    if forced is not None:
        return forced if forced in kernels else "reference"
    if device_type == "cpu" and "cpp" in kernels:
        return "cpp"
    if device_type == "cuda" and "triton" in kernels:
        return "triton"
    return "reference"
