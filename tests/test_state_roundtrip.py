"""Every public ``nn.Module`` of tgrep: build it, use it, save its ``state_dict``; in another
process build a fresh one under another seed, load the state, and compare the outputs.

A public module without a case below fails ``test_every_public_module_has_a_case``: add one.
One child process handles all the modules (``_child``) to keep the test fast.
"""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _graphs():
    from torch_geometric.data import Batch, Data
    from torch_geometric.utils import to_undirected

    g = torch.Generator().manual_seed(4)
    out = []
    for n in (7, 9, 12):
        ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
        ei = to_undirected(torch.cat([ring, torch.randint(0, n, (2, n), generator=g)], 1), num_nodes=n)
        out.append(Data(x=torch.randn(n, 5, generator=g), edge_index=ei))
    return Batch.from_data_list(out)


def _prodige_edges():
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 30, (2, 120), generator=g), 30


# ----------------------------------------------------------------------------- cases
# name -> (build(), use(module) -> outputs to compare). build() depends on the global seed
# wherever the module does (initial weights, default graphs); use() is deterministic.
def _build_prodige_graph():
    from tgrep.nn import ProdigeGraph

    ei, n = _prodige_edges()
    m = ProdigeGraph(ei, n)
    with torch.no_grad():
        m.presence_logit.normal_()
        m.weight_logit.normal_()
    return m


def _use_prodige_graph(m):
    m.eval()
    src, dst = torch.arange(10), torch.arange(30).view(1, 30).expand(10, 30) % 30
    with torch.no_grad():
        out = [m(src, dst)]
    m.train()
    out.append(m(src, dst, seed=3).detach())
    m.forget_samples()
    return out


def _build_prodige_embedding():
    from tgrep.nn import ProdigeEmbedding

    m = ProdigeEmbedding(25, 4)
    with torch.no_grad():
        m.graph.weight_logit.normal_()
    return m


def _use_prodige_embedding(m):
    m.eval()
    with torch.no_grad():
        return [m(torch.arange(25))]


def _build_edrep_loss():
    from tgrep.nn import EDRepLoss

    m = EDRepLoss(num_clusters=3, refresh_every=4)
    g = torch.Generator().manual_seed(torch.initial_seed() % 1000)  # the module has seen some y
    y = torch.randn(40, 6, generator=g)
    m(y, y, (torch.stack([torch.arange(40), torch.arange(40).roll(1)]), torch.ones(40)))
    return m


def _use_edrep_loss(m):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    target = (torch.stack([torch.arange(40), torch.arange(40).roll(3)]), torch.ones(40))
    return [m(x, x, target).detach()]


def _build_otcoarsening():
    from tgrep.nn.pool import OTCoarsening

    return OTCoarsening(0.5, cost="learned", in_channels=5, num_iters=10)


def _use_otcoarsening(m):
    b = _graphs()
    with torch.no_grad():
        x, ei, _, batch, perm, score = m(b.x, b.edge_index, batch=b.batch)
    return [x, ei, batch, perm, score]


def _build_edge_cost_net():
    from tgrep.nn.pool import EdgeCostNet

    return EdgeCostNet(5)


def _use_edge_cost_net(m):
    b = _graphs()
    with torch.no_grad():
        return [m(b.x, b.edge_index)]


def _build_select_ot():
    from tgrep.nn.pool import SelectOT

    return SelectOT(0.5)


def _use_select_ot(m):
    b = _graphs()
    cost = torch.ones(b.edge_index.size(1))
    out = m(b.edge_index, cost, batch=b.batch)
    return [out.node_index, out.weight]


def _build_prodige_compression():
    from tgrep.models import ProdigeCompression

    x = torch.randn(30, 3)
    return ProdigeCompression(4, epochs=2, finetune_epochs=2, verbose=False).fit(x)  # the fitted graph is the state


def _use_prodige_compression(m):
    return [m.pairwise_distances()]


def _build_edrep_model():
    from tgrep.datasets import dcsbm
    from tgrep.models import EDRep

    data = dcsbm(200, 2, mean_degree=8, seed=int(torch.initial_seed() % 1000))
    m = EDRep(8, epochs=3, walk_length=2, seed=int(torch.initial_seed() % 1000), verbose=False)
    m.fit_transform(data.edge_index, data.num_nodes)  # the fitted embedding is the state
    return m


def _use_edrep_model(m):
    return [m(torch.arange(50))]


CASES = {
    "tgrep.nn.ProdigeGraph": (_build_prodige_graph, _use_prodige_graph),
    "tgrep.nn.ProdigeEmbedding": (_build_prodige_embedding, _use_prodige_embedding),
    "tgrep.nn.EDRepLoss": (_build_edrep_loss, _use_edrep_loss),
    "tgrep.nn.pool.OTCoarsening": (_build_otcoarsening, _use_otcoarsening),
    "tgrep.nn.pool.EdgeCostNet": (_build_edge_cost_net, _use_edge_cost_net),
    "tgrep.models.EDRep": (_build_edrep_model, _use_edrep_model),
    "tgrep.nn.pool.SelectOT": (_build_select_ot, _use_select_ot),
    "tgrep.models.ProdigeCompression": (_build_prodige_compression, _use_prodige_compression),
}

KNOWN = {  # cases that fail today: what breaks, precisely (the module owners fix it)
}


def _public_modules():
    import tgrep

    names = set()
    for ns in (tgrep.nn, tgrep.nn.pool, tgrep.models, tgrep.transforms, tgrep.ops, tgrep.datasets, tgrep.utils):
        for name in getattr(ns, "__all__", []):
            obj = getattr(ns, name)
            if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
                names.add(f"{ns.__name__}.{name}")
    return names


# ----------------------------------------------------------------------------- the two processes
def _child(folder: str) -> None:
    """In a fresh process: build each module under another seed, load the saved state, use it."""
    folder = Path(folder)
    results = {}
    for name, (build, use) in CASES.items():
        try:
            torch.manual_seed(987_654)
            fresh = build()
            fresh.load_state_dict(torch.load(folder / f"{name}.pt", weights_only=True))
            results[name] = ("ok", use(fresh))
        except Exception as exc:  # reported by the parent test
            results[name] = ("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    torch.save(results, folder / "child.pt")


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("state")
    saved = {}
    for name, (build, use) in CASES.items():
        torch.manual_seed(1234)
        module = build()
        saved[name] = use(module)
        torch.save(module.state_dict(), folder / f"{name}.pt")
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_state_roundtrip import _child; " \
           f"_child({str(folder)!r})"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return saved, torch.load(folder / "child.pt", weights_only=False)


def test_every_public_module_has_a_case():
    missing = _public_modules() - set(CASES)
    assert not missing, f"add a state round-trip case for {sorted(missing)}"


@pytest.mark.slow  # one child process for all the modules (~10 s)
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=KNOWN[n])) if n in KNOWN
    else n for n in CASES])
def test_state_dict_roundtrip_in_another_process(roundtrip, name):
    saved, child = roundtrip
    status, value = child[name]
    assert status == "ok", f"{name}: {value}"
    assert len(value) == len(saved[name])
    for a, b in zip(saved[name], value):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(a, b)


def test_a_different_seed_really_builds_a_different_module():
    """The round trip is not vacuous: without load_state_dict the outputs differ."""
    for name in ("tgrep.nn.ProdigeGraph", "tgrep.nn.pool.OTCoarsening", "tgrep.nn.pool.EdgeCostNet"):
        build, use = CASES[name]
        torch.manual_seed(1234)
        a = use(build())
        torch.manual_seed(987_654)
        b = use(build())
        assert any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(a, b)), name
