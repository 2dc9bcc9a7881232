"""Helpers shared by the examples: where the real datasets are, and reading one in place."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "TGREP_DATA"
DATA_DEFAULT = REPO.parent / "shared" / "data"


def data_root(path: str | None = None) -> Path:
    """The folder of the TU datasets: ``path``, else ``$TGREP_DATA``, else ``../shared/data``
    beside the checkout (else ``shared/data`` inside it)."""
    if path or os.environ.get(DATA_ENV):
        return Path(path or os.environ[DATA_ENV])
    inside = REPO / "shared" / "data"
    return DATA_DEFAULT if DATA_DEFAULT.is_dir() or not inside.is_dir() else inside


def tu_dataset(name: str, root: str | None = None, cache: str | None = None, **kwargs):
    """A PyG ``TUDataset`` read from ``<root>/<name>/raw`` (or ``raw_cleaned``) without download.

    The raw files are read where they are; PyG's processed copy goes to ``cache`` (default
    ``~/.cache/tgrep/datasets``), never beside the shared data. Exits with a clear message
    when the dataset is not there.
    """
    from torch_geometric.datasets import TUDataset

    src = data_root(root) / name
    cleaned = (src / "raw_cleaned").is_dir()
    raw = src / ("raw_cleaned" if cleaned else "raw")
    if not raw.is_dir():
        sys.exit(f"dataset {name} not found: expected its TU files in {src}/raw (or raw_cleaned).\n"
                 f"Point --data (or ${DATA_ENV}) at the folder that holds {name}/ "
                 f"(TU format: {name}_A.txt, {name}_graph_indicator.txt, ...).")
    cache_root = Path(cache or Path.home() / ".cache" / "tgrep" / "datasets")
    dst = cache_root / name / raw.name
    if not dst.exists():  # PyG wants <root>/<name>/raw*: link the raw folder, do not copy it
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            dst.symlink_to(raw, target_is_directory=True)
        except OSError:
            shutil.copytree(raw, dst)
    return TUDataset(str(cache_root), name=name, cleaned=cleaned, **kwargs)


def accelerator_args(device: str) -> dict:
    """Lightning Trainer arguments for ``--device cpu|cuda|auto``."""
    return {"accelerator": device, "devices": 1}
