"""The README's code blocks run as written and do what their comments say (the quickstart is a
promise): each block's namespace is checked against the claims next to it (``CLAIMS``, keyed by
a line of the block; every key must still be found, so a check never goes stale silently)."""
import math
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _undirected_no_loops(ei, w=None):
    assert ei.dim() == 2 and ei.size(0) == 2 and ei.size(1) > 0
    assert not bool((ei[0] == ei[1]).any())
    fwd = set(map(tuple, ei.t().tolist()))
    assert fwd == {(b, a) for a, b in fwd}
    if w is not None:
        assert w.shape == (ei.size(1),) and bool((w > 0).all())


def _quickstart(ns):
    data = ns["data"]
    _undirected_no_loops(data.edge_index, data.edge_weight)
    assert ns["perm"].numel() == 150 and ns["x"].shape == (150, 16)           # "OT pooling: keep 150"
    torch.testing.assert_close(ns["x"], data.x[ns["perm"]] * ns["score"].unsqueeze(-1))
    assert ns["dist"].shape == (8, 4) and bool((ns["dist"] >= 0).all())       # "[8, 4] distances"
    assert ns["z"].grad is not None and bool(torch.isfinite(ns["z"].grad).all())
    g = ns["graph"]
    assert g.weight_logit.grad is not None and float(g.weight_logit.grad.abs().sum()) > 0   # path gradients
    assert g.presence_logit.grad is not None and float(g.presence_logit.grad.abs().sum()) > 0  # REINFORCE


def _shortest_paths(ns):
    dist, dist_s, w = ns["dist"], ns["dist_s"], ns["weight"]
    assert dist.shape == (16, 1000) and dist_s.shape == (16, 1000)
    assert torch.equal(dist.detach()[torch.arange(16), torch.arange(16)], torch.zeros(16))
    # a sampled graph is a subgraph: its distances can only be longer
    assert bool((dist_s.detach() >= dist.detach() - 1e-5).all())
    assert bool((dist_s.detach() > dist.detach() + 1e-6).any())
    # weight.grad counts how often each edge lies on a returned path: non-negative integers
    gr = w.grad
    assert gr is not None and bool((gr >= 0).all()) and torch.equal(gr, gr.round()) and float(gr.sum()) > 0


def _compression(ns):
    model, x, P = ns["model"], ns["x"], ns["P"]
    assert model.parameters_per_instance() <= 4 + 1e-9                          # "<= 4 numbers/point"
    mse = float(((P - torch.cdist(x, x)) ** 2).mean())
    assert mse < 0.026, f"MSE {mse:.4f}: the README's 0.015 (sklearn MDS(4): 0.026)"


def _embedding(ns):
    assert ns["out"].shape == (64, 50, 16)
    assert ns["d"].shape == (64, 16) and bool(torch.isfinite(ns["loss"]))
    g, (ei, ew) = ns["graph"], (ns["edge_index"], ns["edge_weight"])
    keep = torch.sigmoid(g.presence_logit.detach()) >= 0.5
    assert ei.size(1) == int(keep.sum()) and bool((ew > 0).all())             # "p >= 0.5"


def _edrep(ns):
    log_z, exact = ns["log_z"], ns["exact"]
    assert log_z.shape == exact.shape == (20_000,)
    rel = float(((log_z - exact).abs() / exact.abs()).mean())
    assert rel < 0.015, f"log-normalizer relative error {rel:.4f} (README: within 1.5% at norm 1-2)"
    assert ns["loss_fn"].sampled_error < 0.05                                  # warns above tol=0.05
    assert ns["x"].grad is not None and bool(torch.isfinite(ns["x"].grad).all())
    assert ns["emb"].shape == (20_000, 32) and bool(torch.isfinite(ns["emb"]).all())
    assert bool(torch.isfinite(ns["loss"]))


def _learned(ns):
    _undirected_no_loops(ns["edge_index"], ns["edge_weight"])
    info = ns["info"]
    assert abs(info["mean_degree"] - 10) <= 2, info["mean_degree"]           # "mean degree ≈ 10" (20%)
    deg = ns["edge_index"].size(1) / 5000
    assert deg == pytest.approx(info["mean_degree"], rel=1e-9)
    assert float(ns["theta"]) > 0
    b = ns["batch"]
    _undirected_no_loops(b.edge_index, b.edge_weight)
    assert bool((b.batch[b.edge_index[0]] == b.batch[b.edge_index[1]]).all())  # one graph per example
    ei = ns["ei"]
    assert ei.shape == (2, 5000 * 8)                                           # kNN graph: 8 per node


def _ot(ns):
    data, perm, bt = ns["data"], ns["perm"], ns["batch"]
    assert torch.bincount(bt).tolist() == [math.ceil(0.5 * n) for n in (12, 20, 31)]
    lab = data.y
    c = ns["cost"]
    same = lab[data.edge_index[0]] == lab[data.edge_index[1]]
    want = torch.where(same, torch.tensor(0.01, dtype=torch.float64), torch.tensor(0.02, dtype=torch.float64))
    assert torch.equal(c.double(), want)                                       # "0.01 same, 0.02 different"
    assert ns["x"].shape == (perm.numel(), 8)


CLAIMS = {
    "OTCoarsening(0.5)(data.x, data.edge_index)": _quickstart,
    "edge_prob=torch.full_like(weight, 0.9), seed=0)": _shortest_paths,
    "ProdigeCompression(target_params_per_instance=4).fit(x)": _compression,
    "emb = ProdigeEmbedding(2000, 16, padding_idx=0)": _embedding,
    "log_z = tgrep.ops.log_normalizer(x, y, num_clusters=4)": _edrep,
    "edge_index, edge_weight, theta, info = tgrep.learn_graph(": _learned,
    "pool = OTCoarsening(0.5, cost=\"label\")": _ot,
}


def test_every_claim_finds_its_block():
    for key in CLAIMS:
        assert sum(key in b for b in BLOCKS) == 1, f"README block with {key!r} not found (update CLAIMS)"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    ns = {"__name__": "__readme__"}
    torch.manual_seed(0)
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), ns)
    for key, check in CLAIMS.items():
        if key in BLOCKS[index]:
            check(ns)


def test_readme_lists_every_example_and_extra():
    """The README's tables stay in step with examples/ and pyproject's extras."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    text = README.read_text()
    root = README.parent
    for script in sorted((root / "examples").glob("[!_]*.py")):
        assert f"`{script.name}`" in text, f"README does not list examples/{script.name}"
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in extras:
        assert f"| `{extra}` |" in text, f"README's extras table misses [{extra}]"
    assert "make docs" in text and "docs/_build/html" in text
