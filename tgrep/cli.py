"""Command line: ``tgrep info`` (backends available here) and ``tgrep demo`` (the main job)."""
from __future__ import annotations

import argparse
import importlib
import platform
import pkgutil
import sys
import time


def info() -> int:
    import torch

    from . import __version__, _backend

    print(f"tgrep {__version__}  |  python {platform.python_version()}  |  torch {torch.__version__}")
    try:
        import torch_geometric
        print(f"torch_geometric {torch_geometric.__version__}")
    except Exception as exc:  # pragma: no cover
        print(f"torch_geometric: not importable ({exc})")
    for opt in ("torch_scatter", "torch_sparse", "pyg_lib", "faiss", "pynndescent"):
        found = importlib.util.find_spec(opt) is not None
        print(f"  optional {opt:<12} {'found, used' if found else 'not installed (fine)'}")
    cuda = torch.cuda.is_available()
    print(f"CUDA: {torch.cuda.get_device_name() if cuda else 'no GPU visible'}")
    print("\nbackends:")
    print(f"  {'reference':<10} available   plain torch, any device (the executable spec)")
    from ._ext import CSRC
    for src in sorted(CSRC.glob("*.cpp")):
        ok, why = _backend.cpp_status(src.stem)
        print(f"  {'cpp:' + src.stem:<10} {'available' if ok else 'NOT available':<11} {why}")
    ok, why = _backend.triton_status()
    print(f"  {'triton':<10} {'available' if ok else 'NOT available':<11} {why}")
    forced = _backend.forced_backend()
    print(f"\nforced backend: {forced or 'none (TGREP_BACKEND unset)'}")
    print(f"default for cpu tensors: {_backend.choose('cpu', cpp_name='shortest_path')}"
          + (f", cuda tensors: {_backend.choose('cuda', cpp_name='shortest_path')}" if cuda else ""))
    return 0


def demo(quick: bool = False, only: list[str] | None = None, verbose: bool = True) -> int:
    """Run every section in :mod:`tgrep.demos` (ordered by its ``ORDER``), then a table."""
    from . import demos

    mods = []
    for m in pkgutil.iter_modules(demos.__path__):
        if m.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{demos.__name__}.{m.name}")
        if only and m.name not in only:
            continue
        mods.append(mod)
    mods.sort(key=lambda mod: getattr(mod, "ORDER", 100))
    rows = []
    for mod in mods:
        print(f"\n=== {mod.TITLE} ===", flush=True)
        t0 = time.perf_counter()
        for row in mod.run(quick=quick, verbose=verbose):
            rows.append({"section": mod.TITLE, **row})
        print(f"({time.perf_counter() - t0:.1f} s)", flush=True)
    print("\n" + format_table(rows, ["section", "what", "tgrep", "peer", "ratio"]))
    return 0


def format_table(rows: list[dict], cols: list[str]) -> str:
    """Plain-text table of ``rows`` (missing cells left blank)."""
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tgrep", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="print the backends available here and why others are not")
    sub.add_parser("build", help="compile the C++ kernels now (otherwise done on first use)")
    p = sub.add_parser("demo", help="run the demo (embedded data, no download)")
    p.add_argument("--quick", action="store_true", help="smaller problems")
    p.add_argument("--only", nargs="*", help="run only these sections (module names in tgrep.demos)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.cmd == "info":
        return info()
    if args.cmd == "build":
        from ._ext import build_all, cache_dir

        print(f"compiling the C++ kernels (cached in {cache_dir()}; a failure falls back to torch)")
        build_all()
        return 0
    return demo(quick=args.quick, only=args.only, verbose=not args.quiet)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
