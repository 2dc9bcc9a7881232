"""Benchmark harness: time tgrep against a named peer on the same inputs, in one run.

Each ``benchmarks/bench_<name>.py`` builds its inputs, calls :func:`timeit` for tgrep and
for the peer, collects rows with :class:`Report` and ends with ``report.finish()``, which
prints a table (with the ratio) and writes ``benchmarks/results/<name>-<device>.json``.
CPU timings on shared 2-core machines are noisy: quote ratios measured in the same run.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tgrep.cli import format_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device=None) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timeit(fn, *, repeat: int = 5, warmup: int = 1, min_time: float = 0.0) -> dict:
    """Run ``fn`` ``warmup`` times, then at least ``repeat`` times (and ``min_time`` seconds).

    Returns ``{"median": s, "min": s, "runs": n}``; CUDA is synchronised around each run.
    """
    for _ in range(warmup):
        fn()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "runs": len(times)}


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return "cpu"


class Report:
    """Rows of one benchmark; ``finish()`` prints the table and writes the JSON."""

    def __init__(self, name: str, device: str | torch.device = "cpu", **meta):
        self.name, self.device, self.rows = name, torch.device(device), []
        self.meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "device": device_name(device), **meta}

    def add(self, case: str, tgrep_s: float | None = None, peer_s: float | None = None, *, peer: str = "",
            **extra) -> dict:
        row = {"case": case, "peer": peer}
        if tgrep_s is not None:
            row["tgrep_s"] = tgrep_s
        if peer_s is not None:
            row["peer_s"] = peer_s
        if tgrep_s and peer_s:
            row["speedup"] = peer_s / tgrep_s
        row.update(extra)
        self.rows.append(row)
        return row

    def finish(self, path: Path | None = None) -> Path:
        cols = []
        for r in self.rows:
            cols += [c for c in r if c not in cols]
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
        print(f"\n{self.name} on {self.meta['device']}")
        print(format_table([{c: fmt(r[c]) for c in r} for r in self.rows], cols))
        RESULTS.mkdir(exist_ok=True)
        path = path or RESULTS / f"{self.name}-{self.meta['device']}.json"
        path.write_text(json.dumps({"name": self.name, "meta": self.meta, "rows": self.rows}, indent=2) + "\n")
        print(f"wrote {path.relative_to(RESULTS.parent.parent)}")
        return path


_SERVE = """
import sys as _sys, time as _time
for _fn in cases.values():
    _fn()
print("ready", flush=True)
for _line in _sys.stdin:
    _t0 = _time.perf_counter()
    cases[_line.strip()]()
    print(_time.perf_counter() - _t0, flush=True)
"""


def time_trees(worker: str, trees: list[tuple[str, str]], cases: list[str], rounds: int,
               worker_args: tuple[str, ...] = ()) -> dict:
    """Time ``cases`` in several checkouts of tgrep, one worker process per checkout, 1 thread.

    ``worker`` is Python source run as ``python -c worker TREE *worker_args`` with ``cwd=TREE``:
    it puts ``TREE`` first on ``sys.path`` and defines ``cases``, a dict of zero-argument
    callables; the harness appends the serving loop (warm-up, ``ready``, then one case name per
    line on stdin answered by the seconds it took). Rounds are interleaved
    (each case in every tree back to back), so a change of machine load hits all arms alike.
    ``trees`` is ``[(label, path), ...]``; returns ``{(label, case): [seconds, ...]}``.
    """
    import subprocess

    from tgrep.utils.progress import progress

    env = dict(os.environ, TGREP_QUIET="1", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", worker + _SERVE, path, *worker_args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env, cwd=path) for _, path in trees]
    for p in procs:
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"a tree worker did not start (said {line!r})")
    times: dict = {}
    for _ in progress(range(rounds), desc="tree rounds"):
        for case in cases:
            for (label, _), p in zip(trees, procs):
                p.stdin.write(case + "\n")
                p.stdin.flush()
                times.setdefault((label, case), []).append(float(p.stdout.readline()))
    for p in procs:
        p.stdin.close()
        p.wait()
    return times
