"""Command line: ``tgrep info`` (what runs here), ``tgrep build`` (compile the C++ kernels now)
and ``tgrep demo`` (every paper on embedded data, timed against its peer)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import platform
import sys
import time

from . import __version__

TABLE_WIDTH = 100
OPTIONAL = {  # optional package -> what tgrep uses it for (never required)
    "torch_scatter": "PyG's scatter, when installed",
    "torch_sparse": "PyG's sparse ops, when installed",
    "pyg_lib": "PyG's fused kernels, when installed",
    "faiss": "tgrep.ops.knn(method='faiss'), picked by 'auto'",
    "pynndescent": "tgrep.ops.knn(method='nndescent')",
    "lightning": "examples/ and tests (pip install tgrep[lightning])",
}


def clip(text: str, width: int = TABLE_WIDTH) -> str:
    """``text`` cut to ``width`` characters (with an ellipsis) when longer."""
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(rows: list[dict], cols: list[str], width: int = TABLE_WIDTH, indent: str = "") -> str:
    """Plain-text table of ``rows`` (missing cells blank) at most ``width`` columns wide.

    Columns keep their natural width while the table fits; otherwise the widest columns are
    narrowed and their cells wrapped onto continuation lines.
    """
    import textwrap

    gap = 2
    cells = [[str(r.get(c, "") if r.get(c) is not None else "") for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    budget = width - len(indent) - gap * (len(cols) - 1)
    floor = [max(len(c), 6) for c in cols]
    while sum(widths) > budget:
        i = max(range(len(cols)), key=lambda j: widths[j] - floor[j])
        if widths[i] <= floor[i]:
            break  # cannot narrow further (absurdly many columns)
        widths[i] -= 1

    def lines(vals: list[str]) -> list[str]:
        wrapped = [textwrap.wrap(v, w, break_on_hyphens=False) or [""] for v, w in zip(vals, widths)]
        out = []
        for k in range(max(len(w) for w in wrapped)):
            parts = [(w[k] if k < len(w) else "").ljust(wd) for w, wd in zip(wrapped, widths)]
            out.append((indent + (" " * gap).join(parts)).rstrip())
        return out

    text = lines(cols) + [indent + (" " * gap).join("-" * w for w in widths)]
    for row in cells:
        text += lines(row)
    return "\n".join(text)


# ----------------------------------------------------------------------------- info
def _custom_ops() -> list[tuple[str, tuple[str, ...] | None]]:
    """``(name, kernels)`` for every op under ``torch.ops.tgrep``; ``kernels`` is ``None``
    for an op not defined with :func:`tgrep.library.kernel_op` (no ``.kernels`` tuple)."""
    import torch

    from . import library  # noqa: F401  (registers the ops)

    try:
        from torch._library.custom_ops import OPDEFS
    except Exception:  # pragma: no cover - private registry moved
        OPDEFS = {}
    # ops are also found through the library modules, whose attributes are the op objects
    found: dict[str, object] = {}
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("tgrep.library"):
            for obj in list(vars(mod).values()):
                name = getattr(obj, "_qualname", None)
                if isinstance(name, str) and name.startswith("tgrep::"):
                    found[name] = obj
    names = set(found)
    names.update(n for n in OPDEFS if n.startswith("tgrep::"))
    try:
        names.update(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("tgrep::"))
    except Exception:  # pragma: no cover
        pass
    out = []
    for qualname in sorted(names):
        opdef = found.get(qualname) or OPDEFS.get(qualname)
        if getattr(opdef, "part_of", None):  # a launch_op's check / reference twin: in its row
            continue
        kernels = getattr(opdef, "kernels", None)
        out.append((qualname.split("::", 1)[1], tuple(kernels) if kernels is not None else None))
    return out


def _dispatch_keys(qualname: str) -> str:
    """What an op not defined with ``kernel_op`` has registered, from the dispatcher."""
    import torch

    keys = []
    for key in ("CPU", "CUDA", "CompositeExplicitAutograd", "CompositeImplicitAutograd"):
        try:
            if torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key):
                keys.append(key)
        except Exception:  # pragma: no cover
            pass
    return ", ".join(keys) or "?"


def op_rows(ops) -> list[dict]:
    """Rows of ``tgrep info``'s op table from ``(name, kernels)`` pairs (:func:`_custom_ops`)."""
    from . import _backend

    rows = []
    for name, kernels in ops:
        if kernels is None:  # not defined with kernel_op: say what the dispatcher holds
            rows.append({"torch.ops.tgrep": name, "kernels": f"({_dispatch_keys('tgrep::' + name)})",
                         "cpu tensors": "dispatcher", "cuda tensors": "dispatcher"})
        else:
            rows.append({"torch.ops.tgrep": name, "kernels": ", ".join(kernels),
                         "cpu tensors": _backend.default_backend("cpu", kernels),
                         "cuda tensors": _backend.default_backend("cuda", kernels)})
    return rows


def info() -> int:
    """Print versions, optional packages, kernel families and every op's default backend."""
    import torch

    from . import _backend
    from ._ext import CSRC

    try:
        import torch_geometric
        pyg = torch_geometric.__version__
    except Exception as exc:  # pragma: no cover
        pyg = f"not importable ({exc})"
    cuda = torch.cuda.is_available()
    print("versions:\n" + format_table([
        {"component": "tgrep", "version": __version__},
        {"component": "python", "version": platform.python_version()},
        {"component": "torch", "version": torch.__version__},
        {"component": "torch_geometric", "version": pyg},
        {"component": "CUDA", "version": torch.cuda.get_device_name() if cuda else "no GPU visible"},
    ], ["component", "version"]))

    rows = []
    for opt, use in OPTIONAL.items():
        found = importlib.util.find_spec(opt) is not None
        rows.append({"package": opt, "status": "found" if found else "not installed (fine)",
                     "used for": use})
    print("\noptional packages:\n" + format_table(rows, ["package", "status", "used for"]))

    rows = [{"family": "reference", "status": "available",
             "why": "plain torch, any device (the executable spec)"}]
    for src in sorted(CSRC.glob("*.cpp")):
        ok, why = _backend.cpp_status(src.stem)
        rows.append({"family": f"cpp:{src.stem}", "status": "available" if ok else "NOT available",
                     "why": why})
    ok, why = _backend.triton_status()
    rows.append({"family": "triton", "status": "available" if ok else "NOT available", "why": why})
    print("\nbackends: (kernel families)\n" + format_table(rows, ["family", "status", "why"]))

    rows = op_rows(_custom_ops())
    if rows:
        print("\nops: (the backend a call runs when none is forced)\n" + format_table(rows, list(rows[0])))
    forced = _backend.forced_backend()
    print(f"\nforced backend: {forced or 'none (TGREP_BACKEND unset)'}")
    print("(an op whose C++ extension is not available runs its reference instead)")
    return 0


# ----------------------------------------------------------------------------- demo
def demo_sections() -> dict:
    """``{name: module}`` of the demo sections, in run order."""
    from .demos import sections

    return sections()


def demo(quick: bool = False, only: list[str] | None = None, verbose: bool = True) -> int:
    """Run the sections of :mod:`tgrep.demos` (all, or ``only``), then print a summary table."""
    from .demos import summary

    mods = demo_sections()
    if only:
        unknown = [name for name in only if name not in mods]
        if unknown:
            raise ValueError(f"unknown demo section(s) {', '.join(map(repr, unknown))}; "
                             f"valid: {', '.join(mods)}")
        mods = {name: mod for name, mod in mods.items() if name in only}
    results = []
    for name, mod in mods.items():
        print("\n" + clip(f"=== {mod.TITLE} ===", TABLE_WIDTH), flush=True)
        t0 = time.perf_counter()
        rows = list(mod.run(quick=quick, verbose=verbose))
        elapsed = time.perf_counter() - t0
        print(f"({elapsed:.1f} s)", flush=True)
        results.append((mod, rows, elapsed))
    print("\n" + summary(results, width=TABLE_WIDTH))
    return 0


def list_sections() -> int:
    mods = demo_sections()
    rows = [{"section": name, "title": mod.TITLE} for name, mod in mods.items()]
    print(format_table(rows, ["section", "title"]))
    print("\nrun some with: tgrep demo --only " + " ".join(list(mods)[:2]))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `tgrep info | head`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="tgrep", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tgrep {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="print versions, the kernels available here, each op's backend")
    sub.add_parser("build", help="compile the C++ kernels now (otherwise done on first use)")
    p = sub.add_parser("demo", help="run the demo (embedded data, no download)")
    p.add_argument("--quick", action="store_true", help="smaller problems")
    p.add_argument("--only", nargs="+", metavar="SECTION",
                   help="run only these sections (see --list)")
    p.add_argument("--list", action="store_true", help="list the sections and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    if args.cmd == "info":
        return info()
    if args.cmd == "build":
        from ._ext import build_all, cache_dir

        print(f"compiling the C++ kernels (cached in {cache_dir()}; a failure falls back to torch)")
        build_all()
        return 0
    if args.list:
        return list_sections()
    if args.only:
        valid = demo_sections()
        unknown = [name for name in args.only if name not in valid]
        if unknown:
            p.error(f"unknown section(s): {', '.join(unknown)} (valid: {', '.join(valid)})")
    return demo(quick=args.quick, only=args.only, verbose=not args.quiet)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
