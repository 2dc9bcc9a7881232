"""Every notebook re-executes top to bottom in reduced mode (``TGREP_NOTEBOOK_SMALL=1``), so
they cannot rot; the committed copies carry their outputs and plots (``make notebooks``)."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _runner():
    spec = importlib.util.spec_from_file_location("nb_execute", ROOT / "notebooks" / "execute.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _outputs(nb: dict):
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_reduced_mode(path, tmp_path, monkeypatch):
    pytest.importorskip("nbclient", reason="nbclient/ipykernel are the notebooks/test extra")
    pytest.importorskip("ipykernel")
    data_root = Path(os.environ.get("TGREP_DATA", ROOT.parent / "shared" / "data"))
    if "TUDataset" in path.read_text() and not (data_root / "MUTAG").is_dir():
        pytest.skip(f"the notebook reads MUTAG from the shared data (not found at {data_root})")
    monkeypatch.setenv("TGREP_DATA", str(data_root))
    seconds = _runner().execute(path, tmp_path / path.name, small=True, timeout=300)
    nb = json.loads((tmp_path / path.name).read_text())
    outs = _outputs(nb)
    errors = [o for o in outs if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue")
    if "plt." in path.read_text():
        assert any("image/png" in o.get("data", {}) for o in outs), "no plot was produced"
    assert seconds < 300


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_executed_with_plots(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code), "run `make notebooks` and commit the outputs"
    outs = _outputs(nb)
    assert not [o for o in outs if o.get("output_type") == "error"]
    if "plt." in path.read_text():
        assert any("image/png" in o.get("data", {}) for o in outs)
