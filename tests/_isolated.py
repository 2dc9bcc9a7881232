"""Run a snippet in a fresh Python process, so a signal (SIGSEGV, SIGABRT) fails the test
instead of killing pytest. The snippet prints one line per case; the caller parses them."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_isolated(code: str, timeout: float = 240.0) -> list[str]:
    """Run ``code`` with the repository on ``sys.path``; return its stdout lines.

    Fails (AssertionError) when the process dies of a signal, exits non-zero or times out.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TGREP_QUIET="1", OMP_NUM_THREADS="2")
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired as exc:  # a hang is a failure too
        raise AssertionError(f"isolated snippet timed out after {timeout} s") from exc
    if proc.returncode != 0:
        what = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        raise AssertionError(f"isolated snippet died ({what}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout.splitlines()


# prelude for snippets: `outcome(fn)` prints OK, or the exception's class and message on one line
PRELUDE = '''
import torch, tgrep
def outcome(fn):
    try:
        fn()
        return "OK"
    except Exception as exc:
        return type(exc).__name__ + ": " + str(exc).splitlines()[0][:200]
'''
