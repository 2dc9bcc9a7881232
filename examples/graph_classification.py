"""Graph classification on MUTAG with ``OTCoarsening`` against PyG's ``TopKPooling``, in Lightning.

The model is ``GCN -> pool(0.5) -> GCN -> [mean || max] readout of both levels -> MLP``; the
pooling layer is the only difference between the two runs (same split, same seed, same
epochs). ``OTCoarsening`` keeps, per graph, the support of the distribution cheapest to reach
from the degree prior by optimal transport (Garg & Jaakkola, NeurIPS 2019); ``--cost learned``
trains the edge cost end to end through the unrolled solver.

    python examples/graph_classification.py                  # both pools, ~30 s on 2 CPU cores
    python examples/graph_classification.py --pool ot --cost label --epochs 100 --dataset Mutagenicity

The datasets are read in place from ``../shared/data`` (or ``--data`` / ``$TGREP_DATA``):
TU-format folders, nothing is downloaded. Needs ``pip install tgrep[lightning]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import tu_dataset  # noqa: E402

try:
    import lightning as L
except ImportError:  # pragma: no cover
    sys.exit("this example needs Lightning: pip install 'tgrep[lightning]' (keeps your torch: see README)")

import logging  # noqa: E402
import warnings  # noqa: E402

logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no GPU/TPU/tips banners
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # lightning 2.6 on torch 2.13
warnings.filterwarnings("ignore", message=r".*does not have many workers")


class TUDataModule(L.LightningDataModule):
    """A stratified train/val/test split of a TU dataset, as PyG ``DataLoader`` s."""

    def __init__(self, name: str = "MUTAG", data: str | None = None, batch_size: int = 32,
                 limit: int | None = None, seed: int = 0, val: float = 0.1, test: float = 0.2,
                 cache: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.dataset = None

    def setup(self, stage: str | None = None):
        if self.dataset is not None:
            return
        from sklearn.model_selection import train_test_split

        ds = tu_dataset(self.hparams.name, self.hparams.data, cache=self.hparams.cache)
        if self.hparams.limit:
            ds = ds[torch.randperm(len(ds), generator=torch.Generator().manual_seed(self.hparams.seed))
                    [: self.hparams.limit]]
        y = [int(d.y) for d in ds]
        idx = list(range(len(ds)))
        strat = y if min(y.count(c) for c in set(y)) >= 3 else None
        rest, te = train_test_split(idx, test_size=self.hparams.test, random_state=self.hparams.seed, stratify=strat)
        strat = [y[i] for i in rest] if strat is not None else None
        tr, va = train_test_split(rest, test_size=self.hparams.val / (1 - self.hparams.test),
                                  random_state=self.hparams.seed, stratify=strat)
        self.dataset = ds
        self.splits = {k: ds[torch.tensor(v)] for k, v in (("train", tr), ("val", va), ("test", te))}

    @property
    def num_features(self) -> int:
        self.setup()
        return self.dataset.num_features

    @property
    def num_classes(self) -> int:
        self.setup()
        return self.dataset.num_classes

    def _loader(self, split, shuffle=False):
        from torch_geometric.loader import DataLoader

        return DataLoader(self.splits[split], batch_size=self.hparams.batch_size, shuffle=shuffle)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")


class GraphClassifier(L.LightningModule):
    """GCN + pooling + GCN graph classifier; ``pool`` is ``'ot'`` (OTCoarsening) or ``'topk'``."""

    def __init__(self, in_channels: int, num_classes: int, pool: str = "ot", cost: str = "degree",
                 hidden: int = 64, ratio: float = 0.5, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        from torch_geometric.nn import GCNConv, TopKPooling

        from tgrep.nn.pool import OTCoarsening

        self.conv1, self.conv2 = GCNConv(in_channels, hidden), GCNConv(hidden, hidden)
        if pool == "ot":
            kw = {"in_channels": hidden} if cost == "learned" else {}
            self.pool = OTCoarsening(ratio, cost=cost, **kw)
        elif pool == "topk":
            self.pool = TopKPooling(hidden, ratio)
        else:
            raise ValueError(f"'pool' must be 'ot' or 'topk', got {pool!r}")
        self.lin1, self.lin2 = torch.nn.Linear(4 * hidden, hidden), torch.nn.Linear(hidden, num_classes)

    def forward(self, data):
        from torch_geometric.nn import global_max_pool, global_mean_pool

        x, edge_index, batch = data.x, data.edge_index, data.batch
        x = F.relu(self.conv1(x, edge_index))
        r1 = torch.cat([global_mean_pool(x, batch), global_max_pool(x, batch)], -1)
        if self.hparams.pool == "ot":
            label = data.x.argmax(-1) if self.hparams.cost == "label" else None
            x, edge_index, _, batch, _, _ = self.pool(x, edge_index, batch=batch, node_label=label)
        else:
            x, edge_index, _, batch, _, _ = self.pool(x, edge_index, batch=batch)
        x = F.relu(self.conv2(x, edge_index))
        r2 = torch.cat([global_mean_pool(x, batch), global_max_pool(x, batch)], -1)
        return self.lin2(F.relu(self.lin1(torch.cat([r1, r2], -1))))

    def _step(self, data, stage):
        logits = self(data)
        loss = F.cross_entropy(logits, data.y)
        acc = (logits.argmax(-1) == data.y).float().mean()
        self.log(f"{stage}_loss", loss, batch_size=data.num_graphs, prog_bar=stage == "train")
        self.log(f"{stage}_acc", acc, batch_size=data.num_graphs, prog_bar=stage != "train")
        return loss

    def training_step(self, data, _):
        return self._step(data, "train")

    def validation_step(self, data, _):
        self._step(data, "val")

    def test_step(self, data, _):
        self._step(data, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def run(pool: str, args) -> dict:
    L.seed_everything(args.seed, verbose=False)
    dm = TUDataModule(args.dataset, args.data, batch_size=args.batch_size, limit=args.limit, seed=args.seed,
                      cache=args.cache)
    model = GraphClassifier(dm.num_features, dm.num_classes, pool=pool, cost=args.cost, hidden=args.hidden)
    quiet = os.environ.get("TGREP_QUIET", "0") not in ("", "0")
    trainer = L.Trainer(max_epochs=args.epochs, accelerator=args.device, devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=sys.stderr.isatty() and not quiet,
                        limit_train_batches=args.limit_batches, limit_val_batches=args.limit_batches,
                        limit_test_batches=args.limit_batches, num_sanity_val_steps=0)
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - t0
    test = trainer.test(model, datamodule=dm, verbose=False)[0]
    return {"pool": pool, "test_acc": float(test["test_acc"]), "test_loss": float(test["test_loss"]),
            "fit_s": seconds, "epochs": args.epochs}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", choices=["ot", "topk", "both"], default="both")
    ap.add_argument("--cost", choices=["degree", "label", "uniform", "learned"], default="degree",
                    help="OTCoarsening edge cost (default: degree)")
    ap.add_argument("--dataset", default="MUTAG", help="a TU dataset under --data (default: MUTAG)")
    ap.add_argument("--data", default=None, help="folder of TU datasets (default: $TGREP_DATA or ../shared/data)")
    ap.add_argument("--cache", default=None, help="where PyG's processed copy goes (default: ~/.cache/tgrep/datasets)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None, help="use only this many graphs (smoke tests)")
    ap.add_argument("--limit-batches", type=float, default=1.0, help="fraction (or number) of batches per epoch")
    ap.add_argument("--device", default="cpu", help="Lightning accelerator: cpu, gpu, auto (default: cpu)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.limit_batches > 1:
        args.limit_batches = int(args.limit_batches)
    pools = ["topk", "ot"] if args.pool == "both" else [args.pool]
    results = [run(pool, args) for pool in pools]
    print(f"\n{args.dataset}, {args.epochs} epochs, hidden {args.hidden}, OT cost {args.cost!r}")
    print(f"{'pool':<6} {'test acc':>9} {'test loss':>10} {'fit (s)':>8}")
    for r in results:
        name = "OTC" if r["pool"] == "ot" else "TopK"
        print(f"{name:<6} {r['test_acc']:>9.3f} {r['test_loss']:>10.3f} {r['fit_s']:>8.1f}")
    return results


if __name__ == "__main__":
    main()
