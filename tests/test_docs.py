"""The API reference builds with Sphinx, warnings as errors, and documents every public name."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMESPACES = {"nn": "tgrep.nn", "pool": "tgrep.nn.pool", "models": "tgrep.models",
              "transforms": "tgrep.transforms", "ops": "tgrep.ops", "datasets": "tgrep.datasets",
              "utils": "tgrep.utils"}


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    pytest.importorskip("sphinx", reason="Sphinx is the docs/test extra: pip install -e '.[test]'")
    out = tmp_path_factory.mktemp("docs")
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html",
                           "-d", str(out / "doctrees"), str(ROOT / "docs"), str(out / "html")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "TGREP_QUIET": "1"})
    assert proc.returncode == 0, f"sphinx -W failed:\n{proc.stderr[-4000:]}"
    return out / "html"


@pytest.mark.slow
def test_docs_build_without_warnings(html):
    assert (html / "index.html").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("page,module", NAMESPACES.items())
def test_every_public_name_is_documented(html, page, module):
    import importlib
    import inspect

    mod = importlib.import_module(module)
    text = (html / "api" / f"{page}.html").read_text()
    documented = set(re.findall(r'id="([\w.]+)"', text))
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.ismodule(obj):
            continue
        assert f"{module}.{name}" in documented, f"{module}.{name} is missing from api/{page}.html"


@pytest.mark.slow
def test_math_and_paper_figures(html):
    assert "math notranslate" in (html / "api" / "nn.html").read_text()  # rendered by MathJax
    pngs = sorted(p.name for p in (ROOT / "benchmarks" / "results").glob("*.png"))
    shown = {p.name for p in (html / "_images").glob("*.png")}
    assert set(pngs) <= shown, f"benchmark figures not on a paper page: {set(pngs) - shown}"
    for page in ("prodige", "edrep", "learned_graph", "ot"):
        assert (html / "papers" / f"{page}.html").is_file()
