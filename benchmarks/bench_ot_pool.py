"""OTCoarsening (Garg & Jaakkola, NeurIPS 2019) as a GNN pooling layer on MUTAG.

GCN graph classifier ``GCN(64) -> pool(0.5) -> GCN(64) -> [mean || max] -> MLP`` with
OTCoarsening (degree cost; label cost; learned cost, trained end to end through the unrolled
solver) against PyG's TopKPooling and SAGPooling; stratified k-fold CV (10 folds by
default, ``--folds`` / ``--epochs`` to reduce), Adam lr 0.01, batch 32. Reports test
accuracy (mean +- std over folds, at the last epoch) and seconds per training epoch.

    python benchmarks/bench_ot_pool.py [--quick] [--folds 10] [--epochs 60]
    python benchmarks/bench_ot_pool.py --speed     # s/epoch: TopK vs OTC degree vs OTC learned
    python benchmarks/bench_ot_pool.py --compile   # GIN + OTCoarsening(cost='learned'): compiled vs eager

``--compile``: a GIN (2 GINConv layers, OTCoarsening(0.5, cost='learned') between them) on MUTAG,
batch 32, Adam; ``torch.compile(model, dynamic=True, fullgraph=True)`` (Inductor) against eager in the same run:
time of the first 10 steps (compilation included), median step time after that, and the number
of graphs compiled after the first 10 steps (recompiles; target 0).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import RESULTS, Report  # noqa: E402

from tgrep.nn.pool import OTCoarsening  # noqa: E402
from tgrep.utils.progress import progress  # noqa: E402


def load(name):
    """A TU dataset from ``$TGREP_DATA`` (default: ``../shared/data`` beside the checkout, else
    ``/work/shared/data``), read in place through a temporary copy (no download)."""
    import shutil
    import tempfile
    from torch_geometric.datasets import TUDataset
    roots = [Path(os.environ["TGREP_DATA"])] if os.environ.get("TGREP_DATA") else []
    roots += [Path(__file__).resolve().parents[1].parent / "shared" / "data", Path("/work/shared/data")]
    src = next((r / name for r in roots if (r / name).is_dir()), None)
    if src is None:
        raise SystemExit(f"dataset {name} not found under {roots} (set TGREP_DATA)")
    raw = "raw_cleaned" if (src / "raw_cleaned").is_dir() else "raw"
    root = tempfile.mkdtemp(prefix="otc_")
    shutil.copytree(src / raw, Path(root) / name / raw)
    ds = TUDataset(root, name=name, cleaned=raw == "raw_cleaned")
    shutil.rmtree(root, ignore_errors=True)
    return ds


class Net(torch.nn.Module):
    def __init__(self, in_ch, classes, pool, hidden=64):
        super().__init__()
        from torch_geometric.nn import GCNConv, SAGPooling, TopKPooling
        self.conv1, self.conv2 = GCNConv(in_ch, hidden), GCNConv(hidden, hidden)
        self.kind = pool
        if pool == "topk":
            self.pool = TopKPooling(hidden, 0.5)
        elif pool == "sag":
            self.pool = SAGPooling(hidden, 0.5)
        elif pool == "otc-learned":
            self.pool = OTCoarsening(0.5, cost="learned", in_channels=hidden)
        else:
            self.pool = OTCoarsening(0.5, cost=pool.split("-")[1])
        self.lin1, self.lin2 = torch.nn.Linear(4 * hidden, hidden), torch.nn.Linear(hidden, classes)

    def forward(self, data):
        from torch_geometric.nn import global_max_pool, global_mean_pool
        x, ei, batch = data.x, data.edge_index, data.batch
        x = F.relu(self.conv1(x, ei))
        r1 = torch.cat([global_mean_pool(x, batch), global_max_pool(x, batch)], -1)
        if self.kind.startswith("otc"):
            x, ei, _, batch, _, _ = self.pool(x, ei, batch=batch, node_label=data.x.argmax(-1))
        else:
            x, ei, _, batch, _, _ = self.pool(x, ei, batch=batch)
        x = F.relu(self.conv2(x, ei))
        r2 = torch.cat([global_mean_pool(x, batch), global_max_pool(x, batch)], -1)
        return self.lin2(F.relu(self.lin1(torch.cat([r1, r2], -1))))


def run(ds, kind, folds, epochs, seed=0):
    from sklearn.model_selection import StratifiedKFold
    from torch_geometric.loader import DataLoader
    y = np.array([int(d.y) for d in ds])
    accs, epoch_s = [], []
    for fold, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y)):
        torch.manual_seed(seed + fold)
        model = Net(ds.num_features, ds.num_classes, kind)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        train = DataLoader(ds[torch.as_tensor(tr)], batch_size=32, shuffle=True)
        test = DataLoader(ds[torch.as_tensor(te)], batch_size=64)
        for _ in range(epochs):
            model.train()
            t0 = time.perf_counter()
            for data in train:
                opt.zero_grad()
                F.cross_entropy(model(data), data.y).backward()
                opt.step()
            epoch_s.append(time.perf_counter() - t0)
        model.eval()
        correct = 0
        with torch.no_grad():
            for data in test:
                correct += int((model(data).argmax(-1) == data.y).sum())
        accs.append(correct / len(te))
    return float(np.mean(accs)), float(np.std(accs)), float(np.median(epoch_s))


class GIN(torch.nn.Module):
    def __init__(self, in_ch, classes, hidden=32):
        super().__init__()
        from torch_geometric.nn import GINConv
        mlp = lambda i: torch.nn.Sequential(torch.nn.Linear(i, hidden), torch.nn.ReLU(),  # noqa: E731
                                            torch.nn.Linear(hidden, hidden))
        self.conv1, self.conv2 = GINConv(mlp(in_ch)), GINConv(mlp(hidden))
        self.pool = OTCoarsening(0.5, cost="learned", in_channels=hidden)
        self.lin = torch.nn.Linear(hidden, classes)

    def forward(self, x, edge_index, batch, num_graphs: int):
        from torch_geometric.nn import global_mean_pool
        x = F.relu(self.conv1(x, edge_index))
        x, edge_index, _, batch, _, _ = self.pool(x, edge_index, batch=batch)
        x = F.relu(self.conv2(x, edge_index))
        return self.lin(global_mean_pool(x, batch, size=num_graphs))


def compile_section(ds, steps=40):
    """Compiled vs eager GIN + OTCoarsening(cost='learned'): first-10-steps time, step time, recompiles."""
    from torch._dynamo.utils import counters
    from torch_geometric.loader import DataLoader
    out = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = GIN(ds.num_features, ds.num_classes)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        fwd = model
        if mode == "compiled":
            torch._dynamo.reset()
            counters.clear()
            fwd = torch.compile(model, dynamic=True, fullgraph=True)
        loader = DataLoader(ds, batch_size=32, shuffle=True, drop_last=False)
        times, it, graphs_at_10 = [], iter(()), None
        while len(times) < steps:
            try:
                data = next(it)
            except StopIteration:
                it = iter(loader)
                continue
            t0 = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(fwd(data.x, data.edge_index, data.batch, data.num_graphs), data.y).backward()
            opt.step()
            times.append(time.perf_counter() - t0)
            if len(times) == 10 and mode == "compiled":
                graphs_at_10 = counters["stats"]["unique_graphs"]
        rec = (counters["stats"]["unique_graphs"] - graphs_at_10) if mode == "compiled" else 0
        out[mode] = dict(first10_s=sum(times[:10]), step_s=float(np.median(times[10:])), recompiles_after_10=rec,
                         graphs=counters["stats"]["unique_graphs"] if mode == "compiled" else 0)
        print(f"{mode:<9} first 10 steps {out[mode]['first10_s']:.1f} s, median step {1e3 * out[mode]['step_s']:.1f} ms,"
              f" graphs compiled {out[mode]['graphs']}, after step 10: {rec}", flush=True)
    return out


def layer_times(ds, repeat=20):
    """Forward + backward of the pooling layer alone on one batch of 32 MUTAG graphs (hidden 64)."""
    from torch_geometric.loader import DataLoader
    from torch_geometric.nn import TopKPooling
    data = next(iter(DataLoader(ds, batch_size=32)))
    torch.manual_seed(0)
    h = torch.randn(data.num_nodes, 64, requires_grad=True)
    pools = {"topk": TopKPooling(64, 0.5), "otc-degree": OTCoarsening(0.5),
             "otc-learned": OTCoarsening(0.5, cost="learned", in_channels=64)}
    out = {}
    for name, pool in pools.items():
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            pool(h, data.edge_index, batch=data.batch)[0].sum().backward()
            ts.append(time.perf_counter() - t0)
        out[name] = float(np.median(ts))
        print(f"layer {name:<12} {1e3 * out[name]:.2f} ms / batch (fwd + bwd)", flush=True)
    return out


def speed_section(ds, epochs=3):
    """Seconds per training epoch (GCN net above), same run, 1 thread."""
    res = {f"layer-{k}": v for k, v in layer_times(ds).items()}
    for kind in ("topk", "otc-degree", "otc-learned"):
        res[kind] = run(ds, kind, 2, epochs)[2]
        print(f"{kind:<12} {res[kind]:.3f} s/epoch", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--speed", action="store_true")
    args = ap.parse_args()
    folds, epochs = (3, 10) if args.quick else (args.folds, args.epochs)
    torch.set_num_threads(1)
    ds = load("MUTAG")
    if args.compile or args.speed:
        report = Report("ot_pool_compile" if args.compile else "ot_pool_speed", "cpu", dataset="MUTAG", threads=1)
        if args.compile:
            r = compile_section(ds)
            report.add("GIN + OTCoarsening(learned), step", r["compiled"]["step_s"], r["eager"]["step_s"],
                       peer="eager step", first10_s=r["compiled"]["first10_s"],
                       recompiles_after_10=r["compiled"]["recompiles_after_10"])
        else:
            r = speed_section(ds)
            report.add("OTC degree epoch", r["otc-degree"], r["topk"], peer="TopKPooling epoch")
            report.add("OTC learned epoch", r["otc-learned"], r["otc-degree"], peer="OTC degree epoch")
            report.add("OTC degree layer (fwd+bwd, 32 graphs)", r["layer-otc-degree"], r["layer-topk"],
                       peer="TopKPooling layer")
            report.add("OTC learned layer (fwd+bwd, 32 graphs)", r["layer-otc-learned"], r["layer-otc-degree"],
                       peer="OTC degree layer")
        report.finish()
        return
    report = Report("ot_pool", "cpu", dataset="MUTAG", folds=folds, epochs=epochs)
    res = {}
    for kind in progress(["topk", "sag", "otc-degree", "otc-label", "otc-learned"], desc="pooling"):
        res[kind] = run(ds, kind, folds, epochs)
        print(f"{kind:<12} acc {res[kind][0]:.3f} +- {res[kind][1]:.3f}  {res[kind][2]:.3f} s/epoch", flush=True)
    base = res["topk"][2]
    for kind, (m, s, e) in res.items():
        report.add(f"GCN + {kind}", e, base, peer="TopKPooling epoch time", acc=m, acc_std=s)
    report.finish()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ks = list(res)
    ax[0].bar(ks, [res[k][0] for k in ks], yerr=[res[k][1] for k in ks], capsize=3)
    ax[0].set_ylabel(f"test accuracy ({folds}-fold CV)")
    ax[0].set_ylim(0.5, 1.0)
    ax[1].bar(ks, [res[k][2] for k in ks])
    ax[1].set_ylabel("s / epoch (CPU, 1 thread)")
    for a in ax:
        a.tick_params(axis="x", labelsize=7)
    fig.suptitle("GCN on MUTAG with different pooling layers")
    fig.tight_layout()
    fig.savefig(RESULTS / "ot_pool.png", dpi=110)
    print(f"wrote {RESULTS / 'ot_pool.png'}")


if __name__ == "__main__":
    os.environ.setdefault("TGREP_QUIET", "1")
    main()
