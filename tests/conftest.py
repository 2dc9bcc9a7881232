"""Test harness: markers, Triton interpreter on CPU, fresh seeds, real-data fixture."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

# The Triton interpreter must be switched on before any kernel is defined.
try:
    import torch

    _CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _CUDA = False
if not _CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TGREP_QUIET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

DATA_ENV = "TGREP_DATA"
DATA_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if _CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seed(request):
    """A fresh seed per test (``TGREP_TEST_SEED`` pins it); printed when the test fails."""
    value = int(os.environ.get("TGREP_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(value)
    random.seed(value)
    request.node.user_properties.append(("seed", value))
    return value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for key, value in item.user_properties:
            if key == "seed":
                rep.sections.append(("seed", f"reproduce with TGREP_TEST_SEED={value}"))


@pytest.fixture
def device():
    """The device tests run on: CUDA when present, else CPU."""
    return torch.device("cuda" if _CUDA else "cpu")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Folder of the real datasets (``$TGREP_DATA`` or ``../shared/data``); skips if absent."""
    root = Path(os.environ.get(DATA_ENV, DATA_DEFAULT))
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root} (set {DATA_ENV} to their folder)")
    return root


@pytest.fixture(scope="session")
def tu_dataset(data_root, tmp_path_factory):
    """``tu_dataset(name)`` -> a PyG ``TUDataset`` read from the shared data, no download."""
    from torch_geometric.datasets import TUDataset

    cache = {}

    def load(name: str):
        if name in cache:
            return cache[name]
        src = data_root / name
        if not src.is_dir():
            pytest.skip(f"dataset {name} not found under {data_root}")
        cleaned = (src / "raw_cleaned").is_dir()
        root = tmp_path_factory.mktemp(f"tu_{name}")
        raw = "raw_cleaned" if cleaned else "raw"
        shutil.copytree(src / raw, root / name / raw)
        cache[name] = TUDataset(str(root), name=name, cleaned=cleaned)
        return cache[name]

    return load
