"""OT graph compression (Garg & Jaakkola, NeurIPS 2019): speed and support quality.

* speed (issue 13, item 8): all of Tox21_AR-LBD (4134 graphs) in one ``tgrep.ot_compress``
  call, to 50%, 10% and 90%, with ``refine=0`` and ``refine=2``, and all of MUTAG to 50%;
  peer: the paper's Algorithm 2 at its settings (``otc_alg2_peer.alg2``: T = 25, steps 0.1,
  lambda = 1, NumPy, one graph at a time) in the same process, timed on every 8th graph
  (every 20th with ``--quick``) and reported per graph; both on 1 thread, label costs
  0.01 / 0.02 and the degree prior (the paper's Sec. 4.1). Objectives: the exact cost
  (``ot_compression_cost``) of each returned support on the peer's graphs. The paper
  reports ~8,600 Tox21 graphs in ~40 s (~4.7 ms per graph) on its machine (not a same-run
  figure).
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
import otc_alg2_peer as peer  # noqa: E402
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


def peer_graphs(ds, ratio, idx):
    """The peer's inputs for graphs ``idx``: each undirected edge once, label costs (Sec. 4.1)."""
    out = []
    for i in idx:
        d = ds[int(i)]
        u, v, _ = peer.undirected_edges(d.edge_index.numpy(), d.num_nodes)
        lab = d.x.argmax(-1).numpy()
        k = int(np.ceil(ratio * d.num_nodes - 1e-9))
        out.append((d.num_nodes, u, v, np.where(lab[u] == lab[v], 0.01, 0.02), k))
    return out


def _objective(ds, b, keep_mask, idx):
    """Exact objective (``ot_compression_cost``) per graph of ``idx``, for the kept nodes."""
    from torch_geometric.data import Batch
    sb = Batch.from_data_list([ds[int(i)] for i in idx])
    m = torch.cat([keep_mask[int(b.ptr[i]):int(b.ptr[i + 1])] for i in idx])
    return ot_compression_cost(sb.edge_index, sb.num_nodes, m, cost=label_cost(sb.edge_index, sb.x.argmax(-1)),
                               batch=sb.batch).numpy()


def speed(report, quick):
    """Item 8 of issue 13: the whole dataset in one ``ot_compress`` call against the paper's
    Algorithm 2 (``otc_alg2_peer.alg2``, T = 25, steps 0.1, lambda = 1), graph by graph, in this
    process, both on 1 thread; the peer is timed on every ``stride``-th graph and the objectives
    (exact cost of the returned support) are compared on those graphs."""
    for name, ratios, stride in (("Tox21_AR-LBD", (0.5, 0.1, 0.9), 20 if quick else 8), ("MUTAG", (0.5,), 1)):
        if quick and name == "MUTAG":
            continue
        ds, b, c = dataset_batch(name)
        B = len(ds)
        idx = np.arange(0, B, stride)
        for ratio in ratios:
            graphs = peer_graphs(ds, ratio, idx)
            t0 = time.perf_counter()
            kept = [peer.alg2(*g) for g in graphs]
            tp = (time.perf_counter() - t0) / len(idx)
            pmask = torch.zeros(b.num_nodes, dtype=torch.bool)
            for i, kp in zip(idx, kept):
                pmask[int(b.ptr[i]) + torch.as_tensor(kp, dtype=torch.long)] = True
            obj_p = _objective(ds, b, pmask, idx)
            for refine in (0, 2):
                fn = lambda: ot_compress(b.edge_index, b.num_nodes, ratio, cost=c, batch=b.batch,  # noqa: E731
                                         refine=refine)
                tm = timeit(fn, repeat=1 if (quick or refine) else 3, warmup=1 if refine == 0 else 0)["median"]
                mask = torch.zeros(b.num_nodes, dtype=torch.bool)
                mask[fn()] = True
                obj_t = _objective(ds, b, mask, idx)
                fin = np.isfinite(obj_t) & np.isfinite(obj_p)
                report.add(f"{name} {B} graphs, k={int(ratio * 100)}%, refine={refine}", tm / B, tp,
                           peer=f"paper Alg. 2 (NumPy, per graph, on {len(idx)} graphs)",
                           ms_per_graph=tm / B * 1e3, peer_ms_per_graph=tp * 1e3,
                           objective=float(np.mean(obj_t[fin])), peer_objective=float(np.mean(obj_p[fin])),
                           objective_ratio=float(np.mean(obj_t[fin]) / np.mean(obj_p[fin])),
                           frac_graphs_no_worse=float(np.mean(obj_t[fin] <= obj_p[fin] * (1 + 1e-9))),
                           inf_tgrep=int((~np.isfinite(obj_t)).sum()), inf_peer=int((~np.isfinite(obj_p)).sum()),
                           same_support_frac=float(np.mean([bool(torch.equal(mask[int(b.ptr[i]):int(b.ptr[i + 1])],
                                                                             pmask[int(b.ptr[i]):int(b.ptr[i + 1])]))
                                                            for i in idx])),
                           paper_ms_per_graph=PAPER_MS_PER_GRAPH)


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
        u, v, sel = peer.undirected_edges(g.edge_index.numpy(), g.num_nodes)
        keep = peer.alg2(g.num_nodes, u, v, g.c.numpy()[sel], g.k)
        pc.append(float(ot_compression_cost(g.edge_index, g.num_nodes, torch.as_tensor(keep), cost=g.c)))
    out["paper Alg. 2 (steps 0.1, T=25, top-k)"] = np.asarray(pc) / best.numpy() - 1
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
             .replace(", refine", "\nrefine") for r in speed_rows]
    x = np.arange(len(speed_rows))
    ax.bar(x - 0.2, [r["ms_per_graph"] for r in speed_rows], 0.4, label="tgrep (whole set, one call)")
    ax.bar(x + 0.2, [r["peer_ms_per_graph"] for r in speed_rows], 0.4, label="paper Alg. 2 (NumPy, per graph)")
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
