"""Every script in examples/ runs (tiny sizes, a step or an epoch) and reports sane numbers."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(EXAMPLES))


def test_every_example_is_tested():
    scripts = {p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_")}
    tested = {"graph_classification", "node_embeddings_edrep", "recommendation_prodige", "learned_graph_gcn"}
    assert scripts == tested, f"untested examples: {scripts - tested}"


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["both", "ot --cost learned"])
def test_graph_classification(pool, data_root, tmp_path, capsys):
    pytest.importorskip("lightning")
    if not (data_root / "MUTAG").is_dir():
        pytest.skip(f"MUTAG not found under {data_root}")
    mod = _load("graph_classification")
    argv = ["--pool", *pool.split(), "--epochs", "1", "--limit", "40", "--hidden", "8", "--data", str(data_root),
            "--cache", str(tmp_path)]
    results = mod.main(argv)
    assert [r["pool"] for r in results] == (["topk", "ot"] if pool == "both" else ["ot"])
    for r in results:
        assert 0.0 <= r["test_acc"] <= 1.0 and math.isfinite(r["test_loss"])
    assert "test acc" in capsys.readouterr().out


def test_graph_classification_says_when_the_data_is_missing(tmp_path):
    pytest.importorskip("lightning")
    mod = _load("graph_classification")
    with pytest.raises(SystemExit, match="dataset MUTAG not found"):
        mod.main(["--epochs", "1", "--data", str(tmp_path), "--cache", str(tmp_path)])


def test_node_embeddings_edrep(capsys):
    mod = _load("node_embeddings_edrep")
    out = mod.main(["--nodes", "300", "--epochs", "3", "--dim", "8"])
    for mode in ("estimate", "exact"):
        assert 0.0 <= out[mode]["nmi"] <= 1.0 and math.isfinite(out[mode]["loss"])
    assert "faster per epoch" in capsys.readouterr().out


def test_node_embeddings_walk_pairs_are_edges():
    import torch

    mod = _load("node_embeddings_edrep")
    ei = torch.tensor([[0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3]])
    pairs = mod.walk_pairs(ei, 5, 1, 3, torch.Generator().manual_seed(0))
    edges = set(map(tuple, ei.T.tolist()))
    assert pairs.size(1) == 15 and all(tuple(p) in edges for p in pairs.T.tolist())


def test_recommendation_prodige(capsys):
    mod = _load("recommendation_prodige")
    out = mod.main(["--users", "40", "--items", "30", "--steps", "3", "--batch-size", "16", "--dim", "4"])
    r = out["ProdigeEmbedding"]
    assert 0.0 <= r["recall@10"] <= 1.0 and r["numbers_per_item"] > 0
    assert any(k.startswith("nn.Embedding") for k in out)
    assert "recall@10" in capsys.readouterr().out


def test_learned_graph_gcn(tmp_path, capsys):
    mod = _load("learned_graph_gcn")
    out = mod.main(["--num", "200", "--epochs", "2", "--seeds", "1", "--root", str(tmp_path)])
    assert set(out) == {"learned", "knn", "mlp"} and all(0.0 <= v <= 1.0 for v in out.values())
    assert (tmp_path / "processed").is_dir()  # the pre_transform ran once and was cached
    data = mod.Digits(str(tmp_path), num=200)  # reloads the processed graph, no pre_transform
    assert data[0].edge_weight.min() > 0 and data[0].edge_index.size(1) > 0
    assert "learned graph" in capsys.readouterr().out
