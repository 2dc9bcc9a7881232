"""Mutation testing for tgrep: inject one plausible bug at a time, run the tests that should
catch it, report the score and the survivors (``docs/mutation.md``).

Mutants:

* generated (Python, via ``ast``) in ``tgrep/ops``, ``tgrep/kernels/reference``, ``tgrep/nn``,
  ``tgrep/models``, ``tgrep/transforms``: flipped comparisons (``<`` <-> ``<=``, ``>`` <-> ``>=``,
  ``==`` <-> ``!=``), off-by-ones on small integer constants, swapped ``+``/``-`` and ``*``/``/``,
  dropped terms (``a + b`` -> ``a``), ``and`` <-> ``or``, and ignored keyword arguments (a
  keyword dropped from a call, so its default is used instead);
* hand-made (``HAND_MADE`` below) in the C++ and Triton kernels of the shortest-path/REINFORCE
  family: each is an exact text substitution that must match once.

Each mutant runs in a private copy of the tree (``--workdir``; never the checkout itself), with
only the test files mapped to the mutated file (``TESTS``), ``-x`` and a time limit: caught =
some test failed or the run timed out; survived = all passed. Mutants are sampled (``--sample``,
stratified per file, deterministic ``--seed``) to keep the run within a budget.

Run: ``python tools/mutate.py [--sample 40] [--budget-min 20] [--list] [--only ID ...]``.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PACKAGES = ["tgrep/ops", "tgrep/kernels/reference", "tgrep/nn", "tgrep/models", "tgrep/transforms"]

# test files that should catch a bug in each source file (first match on the file's stem wins)
TESTS = [
    (("shortest_path", "rng"), ["tests/test_shortest_paths.py", "tests/test_fuzz_properties.py::test_shortest_paths_all_backends",
                                "tests/test_fuzz_properties.py::test_edge_presence_is_the_documented_hash"]),
    (("reinforce",), ["tests/test_fuzz_properties.py::test_reinforce_equals_brute_force", "tests/test_prodige.py",
                      "tests/test_library.py::test_opcheck_reinforce"]),
    (("prodige",), ["tests/test_prodige.py"]),
    (("knn",), ["tests/test_knn.py", "tests/test_fuzz_properties.py::test_knn_equals_brute_force"]),
    (("graph_learning", "learned_graph"), ["tests/test_graph_learning.py",
                                           "tests/test_fuzz_properties.py::test_graph_learning_batch_equals_one_by_one"]),
    (("kmeans",), ["tests/test_softmax_norm.py", "tests/test_fuzz_properties.py::test_kmeans_labels_are_nearest_centroids"]),
    (("softmax_norm",), ["tests/test_softmax_norm.py", "tests/test_fuzz_properties.py::test_normalizers_match_logsumexp",
                         "tests/test_fuzz_properties.py::test_cluster_statistics_match_formula"]),
    (("edrep",), ["tests/test_edrep.py"]),
    (("projections",), ["tests/test_projections.py", "tests/test_fuzz_properties.py::test_projections_match_bisection",
                        "tests/test_fuzz_properties.py::test_project_lipschitz_is_feasible_and_idempotent"]),
    (("ot_coarsening",), ["tests/test_ot_pool.py"]),
    (("ot_compress", "ot"), ["tests/test_ot_compress.py",
                             "tests/test_fuzz_properties.py::test_ot_compress_batch_equals_one_by_one"]),
]

# hand-made kernel mutants: (id, file, old text, new text, tests)
_SP = ["tests/test_shortest_paths.py"]
_RF = ["tests/test_fuzz_properties.py::test_reinforce_equals_brute_force", "tests/test_prodige.py"]
HAND_MADE = [
    ("cpp-sp-relax-le", "csrc/cpu/shortest_path.cpp", "if (!(nd < sv.d)) continue;", "if (!(nd <= sv.d)) continue;", _SP),
    ("cpp-sp-early-exit", "csrc/cpu/shortest_path.cpp", "if (heap.h[0].key() > bound) break;",
     "if (heap.h[0].key() >= bound) break;", _SP),
    ("cpp-sp-sample-ge", "csrc/cpu/shortest_path.cpp",
     "if ((mix32(static_cast<uint32_t>(e) ^ rh) >> 8) >= static_cast<uint32_t>(thr[e])) continue;",
     "if ((mix32(static_cast<uint32_t>(e) ^ rh) >> 8) > static_cast<uint32_t>(thr[e])) continue;", _SP),
    ("cpp-rf-drop-source", "csrc/cpu/prodige_reinforce.cpp", "settled[static_cast<size_t>(src[b]) * B + b] = 1;",
     "(void)0;", _RF),
    ("tri-pred-ready-le", "tgrep/kernels/triton/shortest_path.py", "ready = (u == src) | ((pu >> 32) < level)",
     "ready = (u == src) | ((pu >> 32) <= level)", _SP),
    ("tri-pred-strict-le", "tgrep/kernels/triton/shortest_path.py", "((du[:, None] < dv) | ready[:, None])",
     "((du[:, None] <= dv) | ready[:, None])", _SP),
    ("tri-pred-no-src-guard", "tgrep/kernels/triton/shortest_path.py", "& (v != src[:, None]) ", "", _SP),
    ("tri-pred-inf-tight", "tgrep/kernels/triton/shortest_path.py", "& (dv < float(\"inf\")) ", "", _SP),
    ("tri-relax-sample-le", "tgrep/kernels/triton/shortest_path.py",
     "em = em & ((h >> 8).to(tl.int32) < thr)\n        old = tl.atomic_min",
     "em = em & ((h >> 8).to(tl.int32) <= thr)\n        old = tl.atomic_min", _SP),
    ("tri-bound-lt", "tgrep/kernels/triton/shortest_path.py", "act = act & (du <= bnd)", "act = act & (du < bnd)", _SP),
    ("tri-grad-skip-first", "tgrep/kernels/triton/shortest_path.py", "tl.atomic_add(out_ptr + e, g, mask=live)",
     "tl.atomic_add(out_ptr + e, g, mask=live & (hops > 0))", _SP),
]


@dataclass
class Mutant:
    id: str
    file: str
    line: int
    kind: str
    old: str
    new: str
    tests: list
    status: str = "pending"  # caught / survived / timeout / skipped
    seconds: float = 0.0
    detail: str = ""


def tests_for(path: str) -> list[str]:
    stem = Path(path).stem
    for keys, tests in TESTS:
        if any(k in stem for k in keys):
            return tests
    return []


_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}


def _skip_node(node, parents) -> bool:
    # no mutants in error messages, docstrings, type hints, or argument checks' messages
    for p in parents:
        if isinstance(p, (ast.JoinedStr, ast.Raise, ast.Assert)):
            return True
        if isinstance(p, ast.Call) and isinstance(p.func, ast.Attribute) and p.func.attr in ("warn", "log"):
            return True
    return False


def generate(path: str) -> list[Mutant]:
    src = (ROOT / path).read_text()
    tree = ast.parse(src)
    lines = src.splitlines(keepends=True)
    offsets = [0]
    for ln in lines:
        offsets.append(offsets[-1] + len(ln))
    out: list[Mutant] = []
    tests = tests_for(path)

    def seg(node):
        a = offsets[node.lineno - 1] + node.col_offset
        b = offsets[node.end_lineno - 1] + node.end_col_offset
        return a, b

    def add(kind, node, new_node):
        a, b = seg(node)
        old = src[a:b]
        try:
            new = ast.unparse(new_node)
        except Exception:
            return
        if "\n" in old:  # keep multi-line expressions inside brackets valid
            new = "(" + new + ")"
        mutated = src[:a] + new + src[b:]
        try:
            compile(mutated, path, "exec")
        except SyntaxError:
            return
        out.append(Mutant(id="", file=path, line=node.lineno, kind=kind, old=old, new=new, tests=tests))

    stack = [(tree, [])]
    while stack:
        node, parents = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # skip docstrings and annotations
            body = node.body[1:] if node.body and isinstance(node.body[0], ast.Expr) and \
                isinstance(getattr(node.body[0], "value", None), ast.Constant) else node.body
            for child in body + node.args.defaults + node.args.kw_defaults:
                if child is not None:
                    stack.append((child, parents + [node]))
            continue
        if isinstance(node, ast.AnnAssign):
            if node.value is not None:
                stack.append((node.value, parents + [node]))
            continue
        if not _skip_node(node, parents):
            import copy

            if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMP:
                m = copy.deepcopy(node)
                m.ops = [_CMP[type(node.ops[0])]()]
                add("flip comparison", node, m)
            elif isinstance(node, ast.BinOp) and type(node.op) in _BIN:
                m = copy.deepcopy(node)
                m.op = _BIN[type(node.op)]()
                add("swap operator", node, m)
                if isinstance(node.op, (ast.Add, ast.Sub)):
                    add("drop term", node, copy.deepcopy(node.left))
            elif isinstance(node, ast.BoolOp):
                m = copy.deepcopy(node)
                m.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
                add("and/or", node, m)
            elif isinstance(node, ast.Constant) and type(node.value) is int and 0 <= node.value <= 2 and parents \
                    and not isinstance(parents[-1], (ast.Subscript, ast.keyword)):
                add("off by one", node, ast.Constant(node.value + 1))
            elif isinstance(node, ast.Call) and node.keywords and not isinstance(node.func, ast.Name) or \
                    isinstance(node, ast.Call) and node.keywords and isinstance(node.func, ast.Name) and \
                    node.func.id not in ("dict", "print", "Mutant", "setattr", "getattr"):
                for i, kw in enumerate(node.keywords):
                    if kw.arg is None or kw.arg in ("dtype", "device", "dim", "out", "desc", "verbose", "stacklevel"):
                        continue
                    m = copy.deepcopy(node)
                    del m.keywords[i]
                    add(f"ignore argument {kw.arg}=", node, m)
        for child in ast.iter_child_nodes(node):
            stack.append((child, parents + [node]))
    out.sort(key=lambda m: (m.line, m.kind))
    return out


def all_mutants() -> list[Mutant]:
    muts = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(f.relative_to(ROOT))
            if f.name == "__init__.py" or not tests_for(rel):
                continue
            muts += generate(rel)
    for i, m in enumerate(muts):
        m.id = f"{Path(m.file).stem}:{m.line}:{i}"
    for hid, f, old, new, tests in HAND_MADE:
        text = (ROOT / f).read_text()
        assert text.count(old) == 1, (hid, text.count(old))
        line = text[:text.index(old)].count("\n") + 1
        muts.append(Mutant(id=hid, file=f, line=line, kind="hand-made", old=old, new=new, tests=tests))
    return muts


def sample(muts: list[Mutant], k: int, seed: int) -> list[Mutant]:
    hand = [m for m in muts if m.kind == "hand-made"]
    gen = [m for m in muts if m.kind != "hand-made"]
    rng = random.Random(seed)
    by_file: dict = {}
    for m in gen:
        by_file.setdefault(m.file, []).append(m)
    for v in by_file.values():
        rng.shuffle(v)
    picked, files = [], sorted(by_file)
    while len(picked) < k and any(by_file.values()):  # round robin over files: stratified
        for f in files:
            if by_file[f] and len(picked) < k:
                picked.append(by_file[f].pop())
    return hand + sorted(picked, key=lambda m: (m.file, m.line))


def apply(work: Path, m: Mutant) -> str:
    path = work / m.file
    text = path.read_text()
    if m.kind == "hand-made":
        new_text = text.replace(m.old, m.new, 1)
    else:
        # re-locate by regenerating on the pristine file (ids are positions)
        src = text
        tree = ast.parse(src)
        lines = src.splitlines(keepends=True)
        offsets = [0]
        for ln in lines:
            offsets.append(offsets[-1] + len(ln))
        line_start = offsets[m.line - 1]
        idx = src.find(m.old, line_start)
        assert idx >= 0, m
        new_text = src[:idx] + m.new + src[idx + len(m.old):]
        del tree
    path.write_text(new_text)
    return text


def run_one(work: Path, m: Mutant, timeout: float) -> None:
    original = apply(work, m)
    env = dict(os.environ, TGREP_QUIET="1", PYTHONDONTWRITEBYTECODE="1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([PY, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow and not cuda",
                               *m.tests], cwd=work, capture_output=True, text=True, timeout=timeout, env=env)
        tail = (proc.stdout.strip().splitlines() or [""])[-1]
        if proc.returncode == 0:
            m.status = "survived"
        elif proc.returncode == 1:
            m.status = "caught"
            failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
            m.detail = (failed[0] if failed else tail)[:200]
        else:
            m.status = "error"
            m.detail = f"pytest rc {proc.returncode}: {tail[:200]}"
    except subprocess.TimeoutExpired:
        m.status = "timeout"
        m.detail = f"over {timeout:.0f} s (not counted: a slow build is no evidence either way)"
    m.seconds = time.perf_counter() - t0
    (work / m.file).write_text(original)


def make_workdir(work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    ignore = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.egg-info", "build", ".hypothesis",
                                    "results", "notebooks", "*.png")
    shutil.copytree(ROOT, work, ignore=ignore)


def report(muts: list[Mutant], total: int, args, seconds: float, path: Path) -> None:
    done = [m for m in muts if m.status in ("caught", "survived")]
    caught = [m for m in done if m.status == "caught"]
    surv = [m for m in done if m.status == "survived"]
    timeouts = [m for m in muts if m.status == "timeout"]
    score = len(caught) / max(1, len(done))
    hand = [m for m in done if m.kind == "hand-made"]
    lines = [
        "# Mutation testing",
        "",
        f"`python tools/mutate.py --sample {args.sample} --seed {args.seed} --timeout {args.timeout:.0f}` "
        f"(tools/mutate.py): {len(done)} mutants run ({len(hand)} hand-made C++/Triton + "
        f"{len(done) - len(hand)} sampled, stratified per file, from {total} generated in "
        f"{', '.join('`' + p + '`' for p in PACKAGES)}), {seconds / 60:.1f} min on 2 cores.",
        "",
        f"**Score: {len(caught)}/{len(done)} caught = {score:.0%}** "
        f"(goal >= 90%; issue 12 measured 21/32 = 66% before). "
        f"{len(timeouts)} more ran out of time (C++ rebuild + tests over the limit on the loaded machine) "
        f"and are counted neither way.",
        "",
        "A mutant is caught when a test of its mapped files fails; each runs in a private copy of the",
        "tree with only the mapped test files (`TESTS` in the tool), `-x`, `-m 'not slow'`.",
        "",
        "| mutant | file:line | kind | change | result | s |",
        "|---|---|---|---|---|---|",
    ]
    esc = lambda s: s.replace("|", "\\|").replace("\n", " ")[:90]  # noqa: E731
    for m in muts:
        if m.status == "pending":
            continue
        lines.append(f"| {m.id} | {m.file}:{m.line} | {m.kind} | `{esc(m.old)}` -> `{esc(m.new)}` | {m.status} | "
                     f"{m.seconds:.0f} |")
    lines += ["", "## Survivors", ""]
    if not surv:
        lines.append("None.")
    for m in surv:
        lines.append(f"* `{m.id}` {m.file}:{m.line} ({m.kind}): `{esc(m.old)}` -> `{esc(m.new)}`")
    err = [m for m in muts if m.status == "error"]
    if err:
        lines += ["", "## Not run (tool errors)", ""] + [f"* `{m.id}`: {m.detail}" for m in err]
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    (path.with_suffix(".json")).write_text(json.dumps([asdict(m) for m in muts], indent=1) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sample", type=int, default=40, help="generated mutants to run (plus every hand-made one)")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--timeout", type=float, default=240, help="seconds per mutant")
    p.add_argument("--budget-min", type=float, default=20, help="stop starting mutants after this many minutes")
    p.add_argument("--workdir", default="/tmp/tgrep-mutate")
    p.add_argument("--out", default=str(ROOT / "docs" / "mutation.md"))
    p.add_argument("--list", action="store_true", help="list the sampled mutants and exit")
    p.add_argument("--only", nargs="*", help="run only these mutant ids")
    p.add_argument("--no-hand-made", action="store_true")
    p.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json of a run")
    p.add_argument("--minutes", type=float, default=None, help="(with --report-only) the run's duration")
    args = p.parse_args(argv)
    if args.report_only:
        out = Path(args.out)
        muts = [Mutant(**d) for d in json.loads(out.with_suffix(".json").read_text())]
        total = sum(m.kind != "hand-made" for m in all_mutants())
        report(muts, total, args, 60 * (args.minutes or sum(m.seconds for m in muts) / 60), out)
        return
    muts = all_mutants()
    total = sum(m.kind != "hand-made" for m in muts)
    chosen = [m for m in muts if m.id in set(args.only)] if args.only else sample(muts, args.sample, args.seed)
    if args.no_hand_made:
        chosen = [m for m in chosen if m.kind != "hand-made"]
    if args.list:
        for m in chosen:
            print(f"{m.id:28s} {m.kind:22s} {m.old[:50]!r} -> {m.new[:50]!r}  [{' '.join(m.tests)}]")
        print(f"{len(chosen)} of {total} generated + hand-made")
        return
    work = Path(args.workdir)
    make_workdir(work)
    t0 = time.perf_counter()
    try:
        for i, m in enumerate(chosen):
            if time.perf_counter() - t0 > args.budget_min * 60:
                print("budget spent: stopping", flush=True)
                break
            run_one(work, m, args.timeout)
            print(f"[{i + 1}/{len(chosen)}] {m.status:8s} {m.seconds:5.0f}s {m.id} {m.kind}: {m.old[:40]!r} -> "
                  f"{m.new[:40]!r}", flush=True)
            report(chosen, total, args, time.perf_counter() - t0, Path(args.out))
    finally:
        report(chosen, total, args, time.perf_counter() - t0, Path(args.out))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
