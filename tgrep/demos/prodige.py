"""PRODIGE demo: learn sparse graphs whose shortest paths reproduce distances (embedded data)."""
from __future__ import annotations

import time

import torch

TITLE = "PRODIGE: learnable graph metrics (ProdigeGraph / ProdigeCompression)"
ORDER = 20


def _mse(P, D):
    return float(((P.double() - D.double()) ** 2).mean())


def run(quick: bool = False, verbose: bool = True):
    from sklearn.datasets import load_digits
    from sklearn.manifold import MDS

    from ..datasets import weighted_erdos_renyi
    from ..models import ProdigeCompression
    from ..ops import shortest_paths
    from ..utils import to_csr

    # 1) sanity check: recover the distances of a random weighted graph from its distance matrix
    gen = torch.Generator().manual_seed(0)
    n = 14
    ei, w = weighted_erdos_renyi(n, 0.25, generator=gen)
    D = shortest_paths(*to_csr(ei, n, w.double(), undirected=True), torch.arange(n))
    print(f"Weighted Erdős–Rényi graph: {n} vertices, {ei.size(1)} edges; fitting all-pairs candidates "
          f"({n * (n - 1) // 2}) from random initial lengths")
    t0 = time.perf_counter()
    m = ProdigeCompression(epochs=150 if quick else 300, lr=0.05, sparsity=0.1, init_weight="random",
                           finetune_epochs=50, batch_size=4, verbose=verbose, seed=0).fit(distances=D.float())
    err = _mse(m.pairwise_distances(), D)
    print(f"  distance MSE {err:.2e}, kept {m.graph.prune()[0].size(1)} edges ({time.perf_counter() - t0:.1f} s)")
    yield {"what": f"ER graph n={n}: distance MSE", "tgrep": f"{err:.1e}", "peer": "paper: < 1e-3", "ratio": ""}

    # 2) distance-preserving compression of a digits subset at <= 4 numbers per item vs MDS-4
    x = torch.tensor(load_digits().data[: (200 if quick else 400)], dtype=torch.float32)
    Dx = torch.cdist(x, x)
    scale = Dx.sum() / (x.size(0) * (x.size(0) - 1))
    x, Dx = x / scale, Dx / scale
    print(f"Compressing {x.size(0)} digits (64-d) to <= 4 numbers per item")
    t0 = time.perf_counter()
    m = ProdigeCompression(knn=16, random_edges=16, target_params_per_instance=4.0, epochs=15 if quick else 30,
                           batch_size=64, targets_per_row=64, finetune_epochs=5, verbose=verbose, seed=0).fit(x)
    t_p = time.perf_counter() - t0
    mse = _mse(m.pairwise_distances(), Dx)
    t0 = time.perf_counter()
    z = MDS(4, dissimilarity="precomputed", metric=True, n_init=1, random_state=0, max_iter=200,
            normalized_stress=False).fit_transform(Dx.double().numpy())
    mds = _mse(torch.cdist(torch.tensor(z), torch.tensor(z)), Dx)
    t_m = time.perf_counter() - t0
    print(f"  PRODIGE MSE {mse:.4f} at {m.parameters_per_instance():.2f} numbers/item ({t_p:.1f} s); "
          f"metric MDS-4 MSE {mds:.4f} ({t_m:.1f} s)")
    yield {"what": f"digits[:{x.size(0)}] distance MSE, <= 4 numbers/item", "tgrep": f"{mse:.4f}",
           "peer": f"MDS-4 {mds:.4f}", "ratio": f"{mds / mse:.1f}x lower"}
