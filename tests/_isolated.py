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


_CASE_RUNNER = r'''
import json, resource, sys, time, traceback
{prelude}
CASES = json.loads(sys.argv[1])
import tgrep._ext
for _name in tgrep._ext.extension_names():  # build (or load) every C++ kernel before the first case
    tgrep._ext.load_cpp(_name)
def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
for _cid, _code in CASES:
    print("BEGIN", _cid, flush=True)
    _m0, _t0 = _peak_mb(), time.perf_counter()
    try:
        _env = dict(globals())
        exec(_code, _env)
        _res = "OK"
    except Exception as _exc:
        _res = type(_exc).__name__ + ": " + (str(_exc).strip().splitlines() or [""])[0][:300]
    _dt, _dm = time.perf_counter() - _t0, _peak_mb() - _m0
    if _dm > {mem_mb}:
        _res = "MEMORY +%d MB | " % _dm + _res
    if _dt > {slow_s}:
        _res = "SLOW %.1f s | " % _dt + _res
    print("END", _cid, _res, flush=True)
'''


def run_cases(prelude: str, cases: dict, *, per_case_s: float = 30.0, mem_mb: int = 60,
              slow_s: float = 10.0) -> dict:
    """Run ``cases`` (``{id: code}``) in fresh Python processes, in order, one process for as many
    cases as survive: a case that kills its process (signal) or runs over ``per_case_s`` (killed:
    a hang) is recorded and the next process starts after it. Returns ``{id: outcome}``:
    ``"OK"``, the exception's ``"Class: message"`` (prefixed ``"MEMORY +x MB | "`` / ``"SLOW t s | "``
    when the case raised the peak RSS by more than ``mem_mb`` or took over ``slow_s``),
    ``"SIGNAL n"``, ``"EXIT n"`` or ``"HANG"``.
    """
    import json
    import selectors
    import time

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TGREP_QUIET="1", OMP_NUM_THREADS="2")
    script = _CASE_RUNNER.replace("{prelude}", textwrap.dedent(prelude)).replace(
        "{mem_mb}", str(mem_mb)).replace("{slow_s}", str(slow_s))
    todo = list(cases.items())
    out: dict = {}
    while todo:
        proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(todo)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        begun, since, hung = None, time.monotonic(), False
        started = time.monotonic()
        while True:
            limit = per_case_s if begun is not None else 900.0  # imports and C++ builds before the first case
            if not sel.select(timeout=max(0.0, since + limit - time.monotonic())):
                hung = True
                proc.kill()
                break
            line = proc.stdout.readline()
            if not line:
                break
            tag, _, rest = line.rstrip("\n").partition(" ")
            if tag == "BEGIN":
                begun, since = rest, time.monotonic()
            elif tag == "END":
                cid, _, res = rest.partition(" ")
                out[cid] = res
                begun = None
        rc = proc.wait()
        err = proc.stderr.read()
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
        if begun is None:
            left = [c for c, _ in todo if c not in out]
            if left:
                raise AssertionError(f"case runner stopped outside a case (rc={rc}, "
                                     f"{time.monotonic() - started:.0f} s) with {left[:3]} left:\n{err[-3000:]}")
        else:
            out[begun] = "HANG" if hung else (f"SIGNAL {-rc}" if rc < 0 else f"EXIT {rc}")
        todo = [(c, code) for c, code in todo if c not in out]
    return out
