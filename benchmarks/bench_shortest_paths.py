"""Benchmark ``tgrep.ops.shortest_paths`` against ``scipy.sparse.csgraph.dijkstra``.

CPU (C++ backend): N = 10,000 vertices with 64 random out-edges each (E = 640k), B = 256
sources, float32 weights in (0, 1]:

* full single-source searches vs scipy's dijkstra on the same sources (goal >= 3x);
* 16 random targets per row (early exit) vs scipy's full search (goal >= 10x);
* stochastic mode (every edge kept with p = 0.9) vs deterministic (goal <= 1.5x the cost).

GPU (Triton, only when CUDA is available): N = 1,000,000, 32 out-edges (E = 32M),
B = 1024: edges scanned per second, the implied memory traffic against the H200's
~4.8 TB/s, and the ratio to the C++ path on all of the machine's CPU cores.

Run: ``python benchmarks/bench_shortest_paths.py [--quick] [--threads T] [--no-gpu]``.
All ratios are measured in the same run (the CPU is shared: absolute times are noisy).

Other checkouts, same run (``--trees OLD,OTHER``): the CPU cases above (and the bare C++
kernel, called without the op) timed in one worker process per checkout, rounds interleaved,
1 thread each; written to ``results/shortest_paths_trees-cpu.json``. How the figures of the
custom-op template (issue 9: within 5% of the pre-template code) and of the C++ bounds checks
(issue 12) were measured::

    git -C /work/main worktree add --detach /work/wt/old 9f5603a    # before the op template
    git -C /work/main worktree add --detach /work/wt/tmpl 6ba786d   # template, no C++ checks
    python benchmarks/bench_shortest_paths.py --trees /work/wt/old,/work/wt/tmpl
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import Report, time_trees, timeit  # noqa: E402
from tgrep import use_backend  # noqa: E402
from tgrep.ops import shortest_paths  # noqa: E402
from tgrep.utils.progress import progress  # noqa: E402


def random_csr(n: int, deg: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, n, (n * deg,), generator=g)
    indptr = torch.arange(0, n * deg + 1, deg)
    weight = (torch.rand(n * deg, generator=g, dtype=torch.float64) + 1e-3).to(dtype)  # > 0: scipy keeps them
    return indptr, indices, weight


def cpu_section(args, report: Report) -> None:
    n, deg, B, T = 10_000, 64, (64 if args.quick else 256), 16
    indptr, indices, weight = random_csr(n, deg)
    g = torch.Generator().manual_seed(1)
    sources = torch.randint(0, n, (B,), generator=g)
    targets = torch.randint(0, n, (B, T), generator=g)
    prob = torch.full((weight.numel(),), 0.9)
    A = csr_matrix((weight.double().numpy(), indices.numpy(), indptr.numpy()), shape=(n, n))
    src_np = sources.numpy()
    rep = 2 if args.quick else 3

    with use_backend("cpp"):
        shortest_paths(indptr, indices, weight, sources[:2])  # build + load the extension
        cases = [
            ("scipy", lambda: dijkstra(A, directed=True, indices=src_np)),
            ("full", lambda: shortest_paths(indptr, indices, weight, sources)),
            ("targets", lambda: shortest_paths(indptr, indices, weight, sources, targets)),
            ("stoch_full", lambda: shortest_paths(indptr, indices, weight, sources, edge_prob=prob, seed=7)),
            ("stoch_targets", lambda: shortest_paths(indptr, indices, weight, sources, targets, edge_prob=prob,
                                                     seed=7)),
            ("full_pred", lambda: shortest_paths(indptr, indices, weight, sources, return_predecessors=True)),
        ]
        t = {}
        # interleave the repeats so that load changes on the shared machine hit every case alike
        for _ in progress(range(rep), desc="cpu rounds"):
            for name, fn in cases:
                t.setdefault(name, []).append(timeit(fn, repeat=1, warmup=0)["median"])
        t = {k: min(v) for k, v in t.items()}

        full = shortest_paths(indptr, indices, weight, sources)
        ref = dijkstra(A, directed=True, indices=src_np)
        err = float(np.abs(full.double().numpy() - ref).max())
        bound = full.gather(1, targets).max(1).values
        settled = float((full <= bound[:, None]).float().mean())
    size = f"N={n} E={indices.numel()} B={B}"
    report.add(f"full search, {size}", t["full"], t["scipy"], peer="scipy dijkstra", goal=">=3x",
               max_abs_err=err)
    report.add(f"16 targets/row (early exit; {settled:.0%} of vertices settled)", t["targets"], t["scipy"],
               peer="scipy dijkstra (full)", goal=">=10x")
    report.add("stochastic p=0.9, full", t["stoch_full"], t["full"], peer="tgrep deterministic",
               cost=t["stoch_full"] / t["full"], goal="cost<=1.5x")
    report.add("stochastic p=0.9, 16 targets", t["stoch_targets"], t["targets"], peer="tgrep deterministic",
               cost=t["stoch_targets"] / t["targets"], goal="cost<=1.5x")
    report.add("full search + predecessors", t["full_pred"], t["scipy"], peer="scipy dijkstra")
    mb = 2**20
    report.meta["memory"] = (
        f"dist {B * n * 4 / mb:.1f} MiB (B*N float32; with targets only B*T), pred {B * n * 8 / mb:.1f} MiB "
        f"(B*N int64, only when asked or for autograd), per call a packed copy of the edges "
        f"({indices.numel() * 8 / mb:.1f} MiB; the edge probabilities are read in place when stochastic) and per "
        f"thread O(N) buffers ({n * 24 / 1024:.0f} KiB) plus radix-heap buckets (8 B per queued entry, at most "
        f"one per improving relaxation); nothing O(N^2)")
    report.meta["settled_fraction_with_16_targets"] = settled


def gpu_section(args, report: Report, device: str = "cuda", sizes: tuple | None = None) -> None:
    from tgrep.kernels.triton import shortest_path as tri

    n, deg, B = sizes or ((200_000, 32, 256) if args.quick else (1_000_000, 32, 1024))
    indptr, indices, weight = random_csr(n, deg)
    g = torch.Generator().manual_seed(1)
    sources = torch.randint(0, n, (B,), generator=g)
    targets = torch.randint(0, n, (B, 16), generator=g)
    dev = torch.device(device)
    ip_c, ix_c, w_c, s_c, t_c = (x.to(dev) for x in (indptr, indices.int(), weight, sources, targets))
    prob_c = torch.full((weight.numel(),), 0.9, device=dev)
    st: dict = {}
    for name, tg, pr in progress([("full", None, None), ("16 targets", t_c, None), ("stochastic p=0.9", None, prob_c)],
                                 desc="gpu cases"):
        fn = lambda: tri.shortest_paths(ip_c, ix_c, w_c, s_c, tg, pr, 7, False, st)  # noqa: E731
        r = timeit(fn, repeat=3, warmup=1)
        fn()
        sec = r["median"]
        # per scanned edge: its index (4 B), weight (4 B) and the target's distance (4 B, random)
        bytes_moved = st["edges_scanned"] * 12
        report.add(f"GPU triton {name}, N={n} E={indices.numel()} B={B}", sec, None, peer="",
                   edges_scanned_per_s=st["edges_scanned"] / sec, launches=st["launches"],
                   rescan_factor=st["edges_scanned"] / (B * indices.numel()),
                   bandwidth_fraction=bytes_moved / sec / 4.8e12)
        if name == "full":
            # C++ on every CPU core of this machine, timed on a slice of the rows and scaled to B
            k = min(B, max((os.cpu_count() or 1) * 2, 32))
            old = torch.get_num_threads()
            torch.set_num_threads(os.cpu_count() or 1)
            with use_backend("cpp"):
                t0 = time.perf_counter()
                shortest_paths(indptr, indices, weight, sources[:k])
                cpu = (time.perf_counter() - t0) * B / k
            torch.set_num_threads(old)
            report.add(f"GPU triton full vs C++ on {os.cpu_count()} cores (C++ timed on {k} rows, scaled)", sec, cpu,
                       peer="tgrep C++", goal=">=20x")


_WORKER = r"""
import sys, time
tree = sys.argv[1]
sys.path.insert(0, tree)
import torch
torch.set_num_threads(1)
import tgrep
from tgrep import use_backend
from tgrep.ops import shortest_paths
from tgrep._ext import load_cpp
assert tgrep.__file__.startswith(tree), tgrep.__file__
n, deg, B, T = 10_000, 64, int(sys.argv[2]), 16
g = torch.Generator().manual_seed(0)
indices = torch.randint(0, n, (n * deg,), generator=g)
indptr = torch.arange(0, n * deg + 1, deg)
weight = (torch.rand(n * deg, generator=g, dtype=torch.float64) + 1e-3).float()
g = torch.Generator().manual_seed(1)
sources = torch.randint(0, n, (B,), generator=g)
targets = torch.randint(0, n, (B, T), generator=g)
prob = torch.full((weight.numel(),), 0.9)
kern = load_cpp("shortest_path").shortest_paths
cases = {
    "full": lambda: shortest_paths(indptr, indices, weight, sources),
    "targets": lambda: shortest_paths(indptr, indices, weight, sources, targets),
    "stoch_full": lambda: shortest_paths(indptr, indices, weight, sources, edge_prob=prob, seed=7),
    "full_pred": lambda: shortest_paths(indptr, indices, weight, sources, return_predecessors=True),
    "small_B4": lambda: shortest_paths(indptr, indices, weight, sources[:4]),
    "kernel_full": lambda: kern(indptr, indices, weight, sources, None, None, 0, False),
    "kernel_stoch_targets": lambda: kern(indptr, indices, weight, sources, targets, prob, 7, False),
    # one row whose only target is its source: the search stops at once, so this is the per-call
    # O(N + E) work (packing the edges, and in checked trees the bounds checks fused into it)
    "kernel_per_call": lambda: kern(indptr, indices, weight, sources[:1], sources[:1, None], None, 0, False),
    "kernel_per_call_stoch": lambda: kern(indptr, indices, weight, sources[:1], sources[:1, None], prob, 0, False),
}
use_backend("cpp").__enter__()  # for the rest of this worker
"""

TREE_CASES = ["full", "targets", "stoch_full", "full_pred", "small_B4", "kernel_full", "kernel_stoch_targets",
              "kernel_per_call", "kernel_per_call_stoch"]


def trees_section(args, trees: list[str]) -> None:
    """Time the CPU cases in several checkouts (one worker process each, interleaved rounds)."""
    here = str(Path(__file__).resolve().parents[1])
    arms = [("this tree", here)] + [(t, t) for t in trees]
    B = 64 if args.quick else 256
    rounds = args.rounds or (3 if args.quick else 7)
    cases = args.cases.split(",") if args.cases else TREE_CASES
    t = time_trees(_WORKER, arms, cases, rounds, (str(B),))
    report = Report("shortest_paths_trees" + (f"_{args.tag}" if args.tag else ""), "cpu", threads=1, quick=args.quick, B=B, rounds=rounds,
                    trees=[f"{label}: {path}" for label, path in arms],
                    note="min over interleaved rounds; tgrep_s = this tree, peer_s = the other tree")
    for label, _ in arms[1:]:
        for case in cases:
            a, b = min(t[("this tree", case)]), min(t[(label, case)])
            rows = 4 if case == "small_B4" else 1 if "per_call" in case else B
            report.add(f"{case} (B={rows})", a, b, peer=label, ratio=a / b,
                       median_ratio=float(np.median(t[("this tree", case)]) / np.median(t[(label, case)])))
    report.finish()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rows and repeats")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the C++ path (default: torch's)")
    p.add_argument("--no-gpu", action="store_true")
    p.add_argument("--trees", default=None, help="comma-separated other checkouts to time against (1 thread each)")
    p.add_argument("--cases", default=None, help="with --trees: comma-separated subset of " + ",".join(TREE_CASES))
    p.add_argument("--tag", default="", help="with --trees: suffix of the results file name")
    p.add_argument("--rounds", type=int, default=None, help="with --trees: interleaved rounds (default 7, quick 3)")
    args = p.parse_args(argv)
    if args.trees:
        trees_section(args, [t for t in args.trees.split(",") if t])
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available() and not args.no_gpu
    report = Report("shortest_paths", "cuda" if gpu else "cpu", threads=torch.get_num_threads(), quick=args.quick)
    cpu_section(args, report)
    if gpu:
        gpu_section(args, report)
    report.finish()


if __name__ == "__main__":
    main()
