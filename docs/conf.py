"""Sphinx configuration of the tgrep API reference (``make docs``; warnings are errors).

Nothing is executed and nothing is fetched at build time: the API pages are autodoc over the
public names (``__all__``) of each namespace, math is MathJax (rendered by the reader's
browser), and each paper's page shows the figures found in ``benchmarks/results``
(``generated/figures_<paper>.rst`` is written here, from what is there).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TGREP_QUIET", "1")

import tgrep  # noqa: E402

project = "tgrep"
author = "the tgrep authors"
copyright = "the tgrep authors, MIT license"
release = version = tgrep.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False,
                           "exclude-members": "extra_repr"}
autodoc_member_order = "bysource"
autodoc_typehints = "none"          # the signatures show them; docstrings say (default: ...)
autoclass_content = "class"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True      # "Attributes:" as fields (no duplicate object entries beside autodoc's)
exclude_patterns = ["_build", "generated"]  # generated/ is only .. include::d
templates_path: list[str] = []
html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {"description": "learned graph representations for PyTorch Geometric",
                      "fixed_sidebar": True}
# the lead's architecture notes (markdown) are shipped beside the pages and linked from the index
html_extra_path = [str(p) for p in [DOCS / "architecture.md"] if p.exists()]
suppress_warnings = ["config.cache"]

# ----------------------------------------------------------------------------- paper figures
PAPERS = {  # page -> benchmark figure prefixes in benchmarks/results
    "prodige": ("prodige", "shortest_paths"),
    "edrep": ("edrep",),
    "learned_graph": ("learn_graph",),
    "ot": ("ot_",),
}


def _write_figures() -> None:
    out = DOCS / "generated"
    out.mkdir(exist_ok=True)
    results = ROOT / "benchmarks" / "results"
    for page, prefixes in PAPERS.items():
        pngs = sorted(p for p in results.glob("*.png") if p.name.startswith(prefixes))
        lines = []
        for png in pngs:
            rel = os.path.relpath(png, out)
            lines += [f".. figure:: {rel}", "   :width: 95%", "",
                      f"   ``benchmarks/results/{png.name}``", ""]
        if not lines:
            lines = ["(no figure yet: run the paper's benchmark, see ``benchmarks/README.md``)", ""]
        text = "\n".join(lines)
        target = out / f"figures_{page}.rst"
        if not target.exists() or target.read_text() != text:  # unchanged files keep the build incremental
            target.write_text(text)


_write_figures()
