"""Demo: graph compression by optimal transport (Garg & Jaakkola, NeurIPS 2019).

Three checks on generated data: the paper's Fig. 2 tree, support quality against brute force
on tiny graphs, and one batched call over many molecule-sized graphs against the same op
called graph by graph.
"""
from __future__ import annotations

import itertools
import time

import torch

TITLE = "OT graph compression (Garg & Jaakkola, NeurIPS 2019): tgrep.ot_compress / OTCoarsening"
ORDER = 40


def _random_molecule(n, gen):
    """A random tree plus a few ring-closing edges (molecule-like), both directions."""
    par = [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
    e = list(zip(par, range(1, n)))
    for _ in range(max(1, n // 8)):
        a, b = (int(v) for v in torch.randint(0, n, (2,), generator=gen))
        if a != b:
            e.append((a, b))
    ei = torch.tensor(e).t()
    return torch.cat([ei, ei.flip(0)], 1)


def run(quick: bool = False, verbose: bool = True):
    from ..datasets.otc_tree import OTC_TREE_LIGHT_LEAVES, otc_tree
    from ..ops.ot_compress import label_cost, ot_compress, ot_compression_cost
    from ..utils.progress import log

    gen = torch.Generator().manual_seed(0)
    # 1. Fig. 2 tree
    ei, c = otc_tree()
    drop15 = sorted(set(range(21)) - set(ot_compress(ei, 21, 15, cost=c).tolist()))
    keep5 = ot_compress(ei, 21, 5, cost=c).tolist()
    log(f"Fig. 2 tree: k=15 drops {drop15} (paper: the light leaves {list(OTC_TREE_LIGHT_LEAVES)}); "
        f"k=5 keeps {keep5} (paper: root + children)", verbose)
    yield {"what": "Fig. 2 tree, k=15: drops the six light leaves", "tgrep": str(drop15),
           "peer": "paper Fig. 2", "ratio": "match" if drop15 == list(OTC_TREE_LIGHT_LEAVES) else "MISMATCH"}
    yield {"what": "Fig. 2 tree, k=5: root and its 4 children", "tgrep": str(keep5), "peer": "paper Fig. 2",
           "ratio": "match" if keep5 == [0, 1, 2, 3, 4] else "MISMATCH"}

    # 2. support quality vs brute force
    excess = []
    for _ in range(6 if quick else 15):
        n = int(torch.randint(6, 10, (1,), generator=gen))
        k = n // 2
        g = _random_molecule(n, gen)
        cc = label_cost(g, torch.randint(0, 3, (n,), generator=gen))
        subs = list(itertools.combinations(range(n), k))
        P = len(subs)
        mask = torch.zeros(P * n, dtype=torch.bool)
        for i, s in enumerate(subs):
            mask[[i * n + v for v in s]] = True
        best = float(ot_compression_cost(torch.cat([g + i * n for i in range(P)], 1), P * n, mask,
                                         cost=cc.repeat(P), batch=torch.arange(P).repeat_interleave(n),
                                         tol=1e-8).min())
        ours = float(ot_compression_cost(g, n, ot_compress(g, n, k, cost=cc), cost=cc))
        excess.append(ours / best - 1)
    ex = torch.tensor(excess)
    log(f"support quality: mean excess {100 * ex.mean():.2f}%, worst {100 * ex.max():.2f}% over the best k-subset",
        verbose)
    yield {"what": f"support cost vs best k-subset ({len(excess)} tiny graphs)",
           "tgrep": f"+{100 * ex.mean():.2f}% mean, +{100 * ex.max():.2f}% worst", "peer": "brute force",
           "ratio": f"{1 + float(ex.mean()):.4f}"}

    # 3. one batched call vs graph by graph
    num = 200 if quick else 1000
    graphs, sizes = [], []
    for _ in range(num):
        n = int(torch.randint(10, 30, (1,), generator=gen))
        graphs.append(_random_molecule(n, gen))
        sizes.append(n)
    off = torch.tensor([0] + sizes).cumsum(0)
    ei = torch.cat([g + int(o) for g, o in zip(graphs, off)], 1)
    N = int(off[-1])
    batch = torch.arange(num).repeat_interleave(torch.tensor(sizes))
    lab = torch.randint(0, 4, (N,), generator=gen)
    cc = label_cost(ei, lab)
    ot_compress(ei[:, :50], int(ei[:, :50].max()) + 1, 0.5, refine=0)  # warm-up (C++ build)
    t0 = time.perf_counter()
    perm = ot_compress(ei, N, 0.5, cost=cc, batch=batch, refine=0)
    t_batch = time.perf_counter() - t0
    few = 50 if quick else 100
    t0 = time.perf_counter()
    for i in range(few):
        lo, hi = int(off[i]), int(off[i + 1])
        m = (ei[0] >= lo) & (ei[0] < hi)
        ot_compress(ei[:, m] - lo, hi - lo, 0.5, cost=cc[m], refine=0)
    t_loop = (time.perf_counter() - t0) / few * num
    assert perm.numel() == sum((n + 1) // 2 for n in sizes)
    log(f"{num} graphs in one call: {t_batch:.2f} s ({1e3 * t_batch / num:.2f} ms/graph); "
        f"graph by graph: {1e3 * t_loop / num:.2f} ms/graph", verbose)
    yield {"what": f"{num} molecule-sized graphs to 50%, one batched call",
           "tgrep": f"{1e3 * t_batch / num:.2f} ms/graph", "peer": f"{1e3 * t_loop / num:.2f} ms/graph (one by one)",
           "ratio": f"{t_loop / t_batch:.1f}x"}
