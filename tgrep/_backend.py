"""Backend selection: the one place that decides which kernel family runs an op.

Three backends exist:

* ``"triton"``    -- Triton kernels, for CUDA tensors (or CPU tensors when the Triton
  interpreter is on, ``TRITON_INTERPRET=1``, which is how the test-suite runs them).
* ``"cpp"``       -- C++ kernels from ``csrc/cpu``, compiled on first use and cached.
* ``"reference"`` -- plain-torch implementations in :mod:`tgrep.kernels.reference`; the
  executable specification, valid on every device.

:func:`choose` picks, per call, the fastest backend that the op implements and that works
for the input's device. ``TGREP_BACKEND=reference|cpp|triton`` (environment) or
``with tgrep.use_backend(...)`` (code) forces one; forcing a backend that cannot run the
input raises a :class:`RuntimeError` that says why.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterable, Iterator

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


def _usable(backend: str, device: torch.device, cpp_name: str | None) -> tuple[bool, str]:
    if backend == "reference":
        return True, ""
    if backend == "triton":
        ok, why = triton_status()
        if not ok:
            return False, why
        if device.type == "cuda" or (device.type == "cpu" and triton_interpret()):
            return True, ""
        return False, f"triton kernels need CUDA tensors (got {device.type})"
    if backend == "cpp":
        if device.type != "cpu":
            return False, f"the C++ kernels need CPU tensors (got {device.type})"
        if cpp_name is None:
            return False, "this op has no C++ kernel"
        return cpp_status(cpp_name)
    raise AssertionError(backend)


def choose(device: torch.device | str, implemented: Iterable[str] = BACKENDS, *,
           cpp_name: str | None = None, op: str = "op") -> str:
    """Return the backend that runs ``op`` on tensors of ``device``.

    Args:
        device: the device of the op's inputs.
        implemented: the backends this op has kernels for.
        cpp_name: the C++ extension (``csrc/cpu/<cpp_name>.cpp``) holding its CPU kernel.
        op: the op's name, for error messages.

    Without a forced backend: CUDA tensors take ``triton``, CPU tensors take ``cpp``
    (unless the interpreter is on: then the C++ kernel still wins on CPU), and anything
    else falls back to ``reference``.
    """
    device = torch.device(device)
    implemented = tuple(implemented)
    forced = forced_backend()
    if forced is not None:
        if forced not in implemented:
            if forced == "reference":
                raise AssertionError(f"{op} has no reference implementation")
            # An op without that kernel family runs its reference: forcing 'cpp' on an op
            # that is vectorised torch on CPU is not an error.
            return "reference"
        ok, why = _usable(forced, device, cpp_name)
        if not ok:
            raise RuntimeError(f"backend {forced!r} was forced for {op} but cannot run: {why}")
        return forced
    order = ("triton", "reference") if device.type == "cuda" else ("cpp", "reference")
    for backend in order:
        if backend in implemented and _usable(backend, device, cpp_name)[0]:
            return backend
    return "reference"
