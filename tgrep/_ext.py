"""Build-on-first-use loader for the C++ kernels in ``csrc/cpu``.

Each kernel family is one file, ``csrc/cpu/<name>.cpp``, compiled into its own extension
with :func:`torch.utils.cpp_extension.load` (ninja). The build directory is keyed by a hash
of the source and the torch version, so edits rebuild and several checkouts never share a
stale build. A failed build gives one warning and the callers fall back to the reference.
Set ``TGREP_CACHE`` to move the cache (default ``~/.cache/tgrep``) and ``TGREP_NO_CPP=1``
to skip C++ entirely.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).resolve().parent.parent / "csrc" / "cpu"
_lock = threading.Lock()
_modules: dict[str, ModuleType | None] = {}
_errors: dict[str, str] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("TGREP_CACHE", Path.home() / ".cache" / "tgrep"))


def cpp_error(name: str) -> str | None:
    """Why extension ``name`` is unavailable (``None`` if it loaded or was never tried)."""
    return _errors.get(name)


def _fail(name: str, reason: str, warn: bool) -> None:
    _errors[name] = reason
    _modules[name] = None
    if warn:
        warnings.warn(f"tgrep: C++ kernels '{name}' unavailable, using the torch reference "
                      f"instead ({reason})", RuntimeWarning, stacklevel=3)


def _stage(build: Path, src: Path) -> Path:
    """Copy ``src`` and the shared headers into ``build`` once (atomically; never rewritten, so
    their mtimes stay put and ninja does not rebuild)."""
    for f in [src, *sorted(CSRC.glob("*.h"))]:
        dst = build / f.name
        if not dst.exists():
            tmp = build / f".{f.name}.{os.getpid()}.tmp"
            tmp.write_bytes(f.read_bytes())
            os.replace(tmp, dst)
    return build / src.name


@contextlib.contextmanager
def _build_lock(build: Path):
    """Hold an OS lock on ``build`` while torch builds or loads the extension there.

    torch's own lock is a bare file (``build/lock``) that a process killed mid-build leaves
    behind, after which every later load waits on it forever. The OS releases this lock when
    its holder dies, and every tgrep build takes it first: so a torch ``lock`` found while we
    hold ours belongs to a dead build, and is removed.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: torch's lock alone
        yield
        return
    with open(build / "tgrep.flock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            stale = build / "lock"
            if stale.exists():
                warnings.warn(f"tgrep: removing a stale build lock left by an interrupted build ({stale})",
                              RuntimeWarning, stacklevel=4)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -fno-trapping-math: no kernel reads floating-point exception flags, and without it GCC keeps
# every branch on a float comparison (it might trap), so loops such as the range checks of
# shortest_path.cpp do not vectorise; it changes no result (unlike -ffast-math, no
# reassociation, no NaN or signed-zero assumptions)
_CFLAGS = ["-O3", "-fopenmp", "-fno-trapping-math"]


def load_cpp(name: str) -> ModuleType | None:
    """Compile (once, cached on disk) and import ``csrc/cpu/<name>.cpp``; ``None`` on failure."""
    with _lock:
        if name in _modules:
            return _modules[name]
        if os.environ.get("TGREP_NO_CPP", "0") not in ("", "0"):
            _fail(name, "disabled by TGREP_NO_CPP", warn=False)
            return None
        src = CSRC / f"{name}.cpp"
        if not src.exists():
            _fail(name, f"source {src} not found (installed without csrc/?)", warn=True)
            return None
        # the key covers the source, the shared headers beside it (csrc/cpu/*.h), the flags and torch
        headers = b"".join(h.read_bytes() for h in sorted(CSRC.glob("*.h")))
        flags = _CFLAGS + (["-march=x86-64-v2"] if os.uname().machine == "x86_64" else [])
        digest = hashlib.sha1(src.read_bytes() + headers + " ".join(flags).encode()
                              + torch.__version__.encode()).hexdigest()[:12]
        build = cache_dir() / "ext" / f"{name}-{digest}"
        build.mkdir(parents=True, exist_ok=True)
        # compile a copy kept in the build folder: the build then does not depend on where this
        # checkout lives, so every checkout with the same sources shares one build instead of
        # rebuilding over each other (ninja records absolute source paths)
        copy = _stage(build, src)
        try:
            from torch.utils.cpp_extension import load

            with _build_lock(build):
                mod = load(name=f"tgrep_{name}_{digest}", sources=[str(copy)], build_directory=str(build),
                           extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # compiler missing, ninja missing, compile error ...
            first = str(exc).strip().splitlines()[-1:] or [""]
            _fail(name, f"build failed: {exc.__class__.__name__}: {first[0][:300]}", warn=True)
            return None
        _modules[name] = mod
        return mod


def cpp_kernel(name: str, fn: str):
    """A zero-argument loader of function ``fn`` of extension ``name`` (``None`` if it did not
    build): the ``cpp=`` argument of :func:`tgrep.library.kernel_op`."""
    def load():
        mod = load_cpp(name)
        return None if mod is None else getattr(mod, fn)

    return load


def extension_names() -> list[str]:
    """Names of the C++ kernel families shipped in ``csrc/cpu``."""
    return sorted(src.stem for src in CSRC.glob("*.cpp"))


def build_all(jobs: int | None = None, verbose: bool = True) -> dict[str, str | None]:
    """Compile every C++ extension ahead of use, ``jobs`` at a time (default: CPU count).

    Each build runs in its own process (the cache on disk is what later imports use), so a
    cold set-up takes about the time of the slowest build per core instead of their sum.
    Returns ``{name: None (ok) or the reason it failed}``; a failure is not fatal: that
    op then runs its reference.
    """
    from concurrent.futures import ThreadPoolExecutor

    names = extension_names()
    code = "import sys; from tgrep._ext import load_cpp, cpp_error; sys.exit(0 if load_cpp(sys.argv[1]) else " \
           "(print(cpp_error(sys.argv[1]), file=sys.stderr) or 1))"

    def one(name: str) -> str | None:
        proc = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True)
        return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["failed"])[-1]

    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        results = dict(zip(names, pool.map(one, names)))
    if verbose:
        for name, err in results.items():
            print(f"  C++ kernels {name:<18} {'ok' if err is None else 'FAILED: ' + err}")
    return results
