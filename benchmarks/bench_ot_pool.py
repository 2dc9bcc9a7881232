"""OTCoarsening (Garg & Jaakkola, NeurIPS 2019) as a GNN pooling layer on MUTAG.

GCN graph classifier ``GCN(64) -> pool(0.5) -> GCN(64) -> [mean || max] -> MLP`` with
OTCoarsening (degree cost; label cost; learned cost, trained end to end through the unrolled
solver) against PyG's TopKPooling and SAGPooling; stratified k-fold CV (10 folds by
default, ``--folds`` / ``--epochs`` to reduce), Adam lr 0.01, batch 32. Reports test
accuracy (mean +- std over folds, at the last epoch) and seconds per training epoch.

    python benchmarks/bench_ot_pool.py [--quick] [--folds 10] [--epochs 60]
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
from bench_ot_classification import load  # noqa: E402
from harness import RESULTS, Report  # noqa: E402

from tgrep.nn.pool import OTCoarsening  # noqa: E402
from tgrep.utils.progress import progress  # noqa: E402


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
            self.pool = OTCoarsening(0.5, cost="learned", in_channels=hidden, num_iters=20)
        else:
            self.pool = OTCoarsening(0.5, cost=pool.split("-")[1], num_iters=20)
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=60)
    args = ap.parse_args()
    folds, epochs = (3, 10) if args.quick else (args.folds, args.epochs)
    torch.set_num_threads(1)
    ds = load("MUTAG")
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
