"""OT graph compression (Garg & Jaakkola, NeurIPS 2019): speed and support quality.

* speed: every graph of MUTAG (188) in one batched ``tgrep.ot_compress`` call; Tox21_AR-LBD
  (4134 graphs) to 10% and to 90% in one call each; peer: the paper's algorithm as published,
  one graph at a time in dense NumPy (``otc_baselines.paper_otc``; on Tox21 timed on a
  subset and reported per graph). The paper reports ~8,600 Tox21 graphs in ~40 s (~4.7 ms
  per graph).
* quality: random connected graphs small enough to enumerate every k-subset; the exact
  objective (``ot_compression_cost``) of the returned support against the best subset.
* the 21-node tree of the paper's Fig. 2: which nodes survive at k = 20, 15, 5.

    python benchmarks/bench_ot_compress.py [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import otc_baselines as bl  # noqa: E402
from bench_ot_classification import load  # noqa: E402
from harness import RESULTS, Report, timeit  # noqa: E402

from tgrep.datasets import otc_tree, weighted_erdos_renyi  # noqa: E402
from tgrep.ops.ot_compress import label_cost, ot_compress, ot_compression_cost  # noqa: E402
from tgrep.utils.progress import progress  # noqa: E402

PAPER_MS_PER_GRAPH = 40.0 / 8600 * 1e3


def dataset_batch(name):
    from torch_geometric.data import Batch
    ds = load(name)
    b = Batch.from_data_list(list(ds))
    return ds, b, label_cost(b.edge_index, b.x.argmax(-1))


def paper_peer(ds, ratio, limit=None):
    graphs = []
    for d in list(ds)[:limit]:
        lab = d.x.argmax(-1).numpy()
        edges = sorted({(int(min(u, v)), int(max(u, v))) for u, v in d.edge_index.numpy().T if u != v})
        cost = [0.01 if lab[u] == lab[v] else 0.02 for u, v in edges]
        k = int(np.ceil(ratio * d.num_nodes - 1e-9))
        graphs.append((d.num_nodes, edges, cost, k))
    return lambda: [bl.paper_otc(*g) for g in graphs], len(graphs)


def speed(report, quick):
    ds, b, c = dataset_batch("MUTAG")
    B = len(ds)
    for refine, tag in ((0, "top-k"), (2, "top-k + swaps")):
        fn = lambda: ot_compress(b.edge_index, b.num_nodes, 0.5, cost=c, batch=b.batch, refine=refine)  # noqa: E731
        t = timeit(fn, repeat=3 if not quick else 1)["median"]
        peer, n = paper_peer(ds, 0.5, 60 if quick else None)
        tp = timeit(peer, repeat=1, warmup=0)["median"] / n * B
        report.add(f"MUTAG 188 graphs, 50% ({tag})", t, tp, peer="paper alg. (NumPy, per graph)",
                   ms_per_graph=t / B * 1e3, paper_ms_per_graph=PAPER_MS_PER_GRAPH,
                   vs_paper_figure=PAPER_MS_PER_GRAPH / (t / B * 1e3))
    ds, b, c = dataset_batch("Tox21_AR-LBD")
    B = len(ds)
    for ratio in (0.1, 0.9):
        for refine, tag in ((0, "top-k"), (2, "top-k + swaps")):
            if quick and refine:
                continue
            fn = lambda: ot_compress(b.edge_index, b.num_nodes, ratio, cost=c, batch=b.batch, refine=refine)  # noqa
            t = timeit(fn, repeat=1, warmup=0)["median"]
            peer, n = paper_peer(ds, ratio, 100 if quick else 400)
            tp = timeit(peer, repeat=1, warmup=0)["median"] / n * B
            report.add(f"Tox21_AR-LBD {B} graphs, {int(ratio * 100)}% ({tag})", t, tp,
                       peer=f"paper alg. (NumPy, per graph, timed on {n})", ms_per_graph=t / B * 1e3,
                       paper_ms_per_graph=PAPER_MS_PER_GRAPH, vs_paper_figure=PAPER_MS_PER_GRAPH / (t / B * 1e3))


def rand_connected(n, p, gen):
    ei, _ = weighted_erdos_renyi(n, p, generator=gen)
    return torch.cat([ei, ei.flip(0)], 1)


def quality(report, quick):
    from torch_geometric.data import Batch, Data
    gen = torch.Generator().manual_seed(0)
    graphs, best = [], []
    num = 20 if quick else 60
    for _ in progress(range(num), desc="brute force"):
        n = int(torch.randint(6, 11, (1,), generator=gen))
        k = int(torch.randint(2, n - 1, (1,), generator=gen))
        ei = rand_connected(n, 0.35, gen)
        lab = torch.randint(0, 3, (n,), generator=gen)
        c = label_cost(ei, lab)
        subs = list(itertools.combinations(range(n), k))
        P = len(subs)
        mask = torch.zeros(P * n, dtype=torch.bool)
        for i, s in enumerate(subs):
            mask[[i * n + v for v in s]] = True
        costs = ot_compression_cost(torch.cat([ei + i * n for i in range(P)], 1), P * n, mask, cost=c.repeat(P),
                                    batch=torch.arange(P).repeat_interleave(n), tol=1e-8)
        best.append(float(costs.min()))
        graphs.append(Data(edge_index=ei, num_nodes=n, c=c, k=k, lab=lab))
    b = Batch.from_data_list(graphs)
    ks = torch.tensor([g.k for g in graphs])
    best = torch.tensor(best, dtype=torch.float64)
    out = {}
    for name, fn in (("tgrep (top-k + swaps)", lambda: ot_compress(b.edge_index, b.num_nodes, ks, cost=b.c,
                                                                  batch=b.batch)),
                     ("tgrep (top-k only)", lambda: ot_compress(b.edge_index, b.num_nodes, ks, cost=b.c,
                                                               batch=b.batch, refine=0))):
        perm = fn()
        cst = ot_compression_cost(b.edge_index, b.num_nodes, perm, cost=b.c, batch=b.batch)
        out[name] = (cst / best - 1).numpy()
    # the paper's algorithm, one graph at a time
    pc = []
    for g in graphs:
        e = g.edge_index[:, g.edge_index[0] < g.edge_index[1]]
        keep = bl.paper_otc(g.num_nodes, e.t().tolist(), g.c[g.edge_index[0] < g.edge_index[1]].tolist(), g.k)
        pc.append(float(ot_compression_cost(g.edge_index, g.num_nodes, torch.as_tensor(keep), cost=g.c)))
    out["paper alg. (steps 0.1, T=25, top-k)"] = np.asarray(pc) / best.numpy() - 1
    for name, r in out.items():
        report.add(f"quality: {name}", None, None, peer="brute force (all k-subsets)",
                   mean_excess_pct=100 * float(np.mean(r)), max_excess_pct=100 * float(np.max(r)),
                   optimal_frac=float(np.mean(r < 1e-6)), graphs=len(r))
    return out


def tree(report):
    ei, c = otc_tree()
    rows = {}
    for k in (20, 15, 5):
        kept = ot_compress(ei, 21, k, cost=c).tolist()
        rows[k] = sorted(set(range(21)) - set(kept))
        expect = {15: [5, 6, 7, 9, 10, 13], 5: list(range(5, 21))}.get(k)
        report.add(f"Fig. 2 tree, k={k}", None, None, peer="paper Fig. 2", dropped=str(rows[k]),
                   matches_paper=("n/a (paper drops 13)" if expect is None else str(rows[k] == expect)))
    return rows


def plot(q, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    ax = axes[0]
    bins = np.linspace(0, max(0.01, max(float(np.max(v)) for v in q.values())) * 100, 25)
    for name, v in q.items():
        ax.hist(100 * v, bins=bins, alpha=0.5, label=f"{name} (mean {100 * np.mean(v):.2f}%)")
    ax.set_xlabel("excess over the best k-subset (%)")
    ax.set_ylabel("graphs")
    ax.legend(fontsize=7)
    ax.set_title("support quality vs brute force")
    ax = axes[1]
    speed_rows = [r for r in rows if "tgrep_s" in r and "peer_s" in r]
    names = [r["case"].replace(" 188 graphs,", "").replace(" 4134 graphs,", "").replace("Tox21_AR-LBD", "Tox21")
             .replace(" (", "\n(") for r in speed_rows]
    x = np.arange(len(speed_rows))
    ax.bar(x - 0.2, [r["ms_per_graph"] for r in speed_rows], 0.4, label="tgrep (batched)")
    ax.bar(x + 0.2, [r["peer_s"] / (r["tgrep_s"] / r["ms_per_graph"]) for r in speed_rows], 0.4,
           label="paper alg. (NumPy, per graph)")
    ax.axhline(PAPER_MS_PER_GRAPH, color="k", ls="--", label="paper's figure (4.7 ms)")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=6)
    ax.set_ylabel("ms per graph (CPU)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / "ot_compress.png", dpi=110)
    print(f"wrote {RESULTS / 'ot_compress.png'}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    report = Report("ot_compress", "cpu", threads_note="1 thread (2 cores shared by 5 jobs)")
    speed(report, args.quick)
    q = quality(report, args.quick)
    tree(report)
    plot(q, report.rows)
    report.finish()


if __name__ == "__main__":
    os.environ.setdefault("TGREP_QUIET", "1")
    main()
