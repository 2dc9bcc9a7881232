"""Execute notebooks top to bottom with nbclient (``make notebooks``; tests/test_notebooks.py).

    python notebooks/execute.py notebooks/*.ipynb            # full size, outputs written in place
    python notebooks/execute.py --small --out DIR nb.ipynb   # reduced sizes, written to DIR

``--small`` sets ``TGREP_NOTEBOOK_SMALL=1``, which the notebooks read to shrink their problems.
Each notebook runs in its own folder (relative paths as in Jupyter) with the kernel of the
current Python (``ipykernel``); plots are inline PNGs (matplotlib's ``inline`` backend).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def execute(path: Path, out: Path | None = None, small: bool = False, timeout: int = 600) -> float:
    """Run ``path``; write the executed notebook to ``out`` (default: in place). Returns seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_before = {k: os.environ.get(k) for k in ("TGREP_NOTEBOOK_SMALL", "TGREP_QUIET", "MPLBACKEND",
                                                 "PYTHONWARNINGS", "PYTHONPATH")}
    os.environ["TGREP_NOTEBOOK_SMALL"] = "1" if small else "0"
    os.environ["TGREP_QUIET"] = "1"  # no progress lines in committed outputs
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    # PyG imports tqdm.auto, which warns without ipywidgets: not worth a line in every notebook
    os.environ["PYTHONWARNINGS"] = "ignore:IProgress not found"
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")  # this checkout's tgrep
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        t0 = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - t0
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, out or path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--small", action="store_true", help="reduced sizes (TGREP_NOTEBOOK_SMALL=1)")
    ap.add_argument("--out", type=Path, default=None, help="write executed copies here (default: in place)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell (default: 600)")
    args = ap.parse_args(argv)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for nb in args.notebooks:
        dest = args.out / nb.name if args.out else None
        seconds = execute(nb, dest, small=args.small, timeout=args.timeout)
        print(f"{nb}: executed in {seconds:.1f} s" + (f" -> {dest}" if dest else " (in place)"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
