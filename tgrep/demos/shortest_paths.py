"""Demo section: the batched stochastic shortest-path engine against scipy."""
from __future__ import annotations

import time

import numpy as np
import torch

TITLE = "Batched stochastic shortest paths (tgrep.ops.shortest_paths)"
ORDER = 10


def _timed(fn, repeat=2):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(quick: bool = False, verbose: bool = True):
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    from .. import _backend
    from ..ops import edge_presence, shortest_paths
    from ..utils.progress import log, progress

    n, deg = 10_000, 64
    B, T, S = (32, 16, 4) if quick else (64, 16, 8)
    g = torch.Generator().manual_seed(0)
    indices = torch.randint(0, n, (n * deg,), generator=g)
    indptr = torch.arange(0, n * deg + 1, deg)
    weight = torch.rand(n * deg, generator=g) + 1e-3
    prob = 0.5 + 0.5 * torch.rand(n * deg, generator=g)  # each edge present with p in [0.5, 1]
    sources = torch.randint(0, n, (B,), generator=g)
    targets = torch.randint(0, n, (B, T), generator=g)
    from ..library.shortest_paths import shortest_paths as search_op

    backend = _backend.default_backend("cpu", search_op.kernels)
    log(f"random graph: N={n}, E={indices.numel()} ({deg} out-edges each), float32 weights, "
        f"edge probabilities in [0.5, 1]; {B} sources, {T} targets each; backend {backend!r} "
        f"with {torch.get_num_threads()} threads (first use builds the C++ kernels)", verbose)
    shortest_paths(indptr, indices, weight, sources[:1])  # build/load outside the timings
    A = csr_matrix((weight.double().numpy(), indices.numpy(), indptr.numpy()), shape=(n, n))

    bar = progress(total=5, verbose=verbose, desc="shortest paths")
    t_scipy, ref = _timed(lambda: dijkstra(A, directed=True, indices=sources.numpy()))
    t_full, full = _timed(lambda: shortest_paths(indptr, indices, weight, sources))
    err = float(np.abs(full.double().numpy() - ref).max())
    yield {"what": f"full SSSP, B={B} rows (max |err| {err:.1e})", "tgrep": f"{t_full:.3f} s",
           "peer": f"scipy {t_scipy:.3f} s", "ratio": f"{t_scipy / t_full:.1f}x faster"}

    bar.update(1)
    t_tg, dt = _timed(lambda: shortest_paths(indptr, indices, weight, sources, targets))
    assert torch.equal(dt, full.gather(1, targets))
    yield {"what": f"{T} targets/row, early exit", "tgrep": f"{t_tg:.3f} s", "peer": f"scipy full {t_scipy:.3f} s",
           "ratio": f"{t_scipy / t_tg:.1f}x faster"}

    bar.update(1)
    rows = sources.repeat_interleave(S)  # S independent samples per source
    t_st, ds = _timed(lambda: shortest_paths(indptr, indices, weight, rows, targets.repeat_interleave(S, 0),
                                             edge_prob=prob, seed=1), repeat=1)
    t_det, _ = _timed(lambda: shortest_paths(indptr, indices, weight, rows, targets.repeat_interleave(S, 0)),
                      repeat=1)
    yield {"what": f"stochastic mode, {B * S} sampled rows", "tgrep": f"{t_st:.3f} s",
           "peer": f"deterministic {t_det:.3f} s", "ratio": f"{t_st / t_det:.2f}x the cost"}

    bar.update(1)
    ds = ds.view(B, S, T)
    reach = torch.isfinite(ds).all(1)
    mean = torch.where(reach, ds.mean(1), torch.nan)
    rel = (mean / dt)[reach & (dt > 0)]
    yield {"what": f"E[d] over {S} samples / deterministic d", "tgrep": f"mean {float(rel.mean()):.3f}",
           "peer": "1.000 (all edges present)", "ratio": f"{float(rel.mean()):.3f}x (missing edges lengthen paths)"}

    bar.update(1)
    # exactness in stochastic mode: row 0's own sample, searched by scipy
    keep = edge_presence(1, torch.tensor(0), torch.arange(indices.numel()), prob)
    As = csr_matrix(((weight.double() * keep).numpy(), indices.numpy(), indptr.numpy()), shape=(n, n))
    As.eliminate_zeros()
    exact = dijkstra(As, directed=True, indices=[int(sources[0])])[0, targets[0].numpy()]
    err = float(np.abs(ds[0, 0].double().numpy() - exact).max())
    yield {"what": "sampled row 0 vs scipy on the same sample", "tgrep": "edge_presence(seed, row, edge)",
           "peer": "scipy dijkstra", "ratio": f"max |err| {err:.1e}"}
    bar.update(1)
    bar.close()
