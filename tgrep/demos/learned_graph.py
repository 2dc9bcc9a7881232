"""Demo: large-scale graph learning from smooth signals (Kalofolias & Perraudin, ICLR 2019).

Learns graphs on scikit-learn's embedded digits and on generated data (no download): the
requested vs obtained degree, the cost against scikit-learn's brute-force (3k+1)-NN search,
label propagation against a Gaussian kNN graph, and the PyG transform on a ``Batch``.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..utils.label_propagation import harmonic_accuracy

TITLE = "Learned graph from smooth signals (tgrep.learn_graph)"
ORDER = 30


def _harmonic(W, labels, known):
    return float(harmonic_accuracy(W, labels, known).mean())


def _csr(ei, ew, n):
    import scipy.sparse as sp

    return sp.csr_matrix((ew.double().numpy(), (ei[0].numpy(), ei[1].numpy())), shape=(n, n))


def run(quick: bool = False, verbose: bool = True):
    from sklearn.datasets import load_digits
    from sklearn.neighbors import NearestNeighbors

    from .. import learn_graph
    from ..ops.knn import knn

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    labels = d.target
    n = x.shape[0]

    # 1. degree control
    for k in (5, 10) if quick else (5, 10, 20):
        t0 = time.perf_counter()
        ei, ew, theta, info = learn_graph(x, k, return_theta=True, return_info=True)
        dt = time.perf_counter() - t0
        print(f"digits n={n}: requested k={k}, obtained mean degree {info['mean_degree']:.2f}, "
              f"θ={theta:.3g}, {info['iterations']} iterations, {dt:.2f} s")
        yield {"what": f"digits: mean degree for k={k}", "tgrep": f"{info['mean_degree']:.2f}",
               "peer": f"{k} (requested)", "ratio": f"{info['mean_degree'] / k:.2f}"}

    # 2. label propagation (Zhu et al. 2003) with 1% labels: learned vs Gaussian kNN, same degree
    rng = np.random.default_rng(0)
    known = [rng.choice(n, 18, replace=False) for _ in range(10)]
    ei, ew, info = learn_graph(x, 10, return_info=True)
    acc_l = _harmonic(_csr(ei, ew, n), labels, known)
    _, idx = knn(x, 7)
    src = torch.arange(n).repeat_interleave(7)
    dst = idx.reshape(-1)
    keys = torch.unique(torch.minimum(src, dst) * n + torch.maximum(src, dst))
    r, c = keys // n, keys % n
    d2 = ((x[r] - x[c]) ** 2).sum(1).double()
    med = float(d2.median().sqrt())
    acc_k, best_f = max((_harmonic(_csr(torch.stack([torch.cat([r, c]), torch.cat([c, r])]),
                                        torch.cat([w, w]), n), labels, known), f)
                        for f in (0.3, 1.0, 3.0) for w in [torch.exp(-d2 / (f * med) ** 2)])
    print(f"label propagation, 18 labels: learned graph (degree {info['mean_degree']:.1f}) {acc_l:.3f}, "
          f"kNN k=7 (degree {2 * keys.numel() / n:.1f}, best σ={best_f}·median) {acc_k:.3f}")
    yield {"what": "digits: label propagation, 1% labels", "tgrep": f"{acc_l:.3f}",
           "peer": f"{acc_k:.3f} (kNN, best σ)", "ratio": f"{acc_l / acc_k:.2f}"}

    # 3. cost vs an exact (3k+1)-NN search
    nb = 8_000 if quick else 15_000
    g = torch.Generator().manual_seed(0)
    xb = (torch.randn(30, 64, generator=g) * 2)[torch.randint(0, 30, (nb,), generator=g)] \
        + torch.randn(nb, 64, generator=g)
    t0 = time.perf_counter()
    ei, ew, info = learn_graph(xb, 10, return_info=True, verbose=verbose)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    NearestNeighbors(n_neighbors=31, algorithm="brute").fit(xb.numpy()).kneighbors(xb.numpy())
    t_sk = time.perf_counter() - t0
    print(f"n={nb}, d=64, k=10: learn_graph {t_ours:.2f} s (kNN {info['time_knn']:.2f} s, solver "
          f"{info['time_solve']:.2f} s), sklearn brute 31-NN {t_sk:.2f} s")
    yield {"what": f"n={nb} d=64 k=10: learn_graph vs sklearn 31-NN", "tgrep": f"{t_ours:.2f} s",
           "peer": f"{t_sk:.2f} s", "ratio": f"{t_ours / t_sk:.2f}x time"}

    # 4. the transform on a PyG Batch: one graph per example
    from torch_geometric.data import Batch, Data

    from ..transforms import LearnedGraphTransform

    batch = Batch.from_data_list([Data(x=torch.randn(m, 8)) for m in (40, 60, 50)])
    t = LearnedGraphTransform(k=5)
    out = t(batch)
    cross = int((out.batch[out.edge_index[0]] != out.batch[out.edge_index[1]]).sum())
    print(f"{t} on {batch}: {out.edge_index.shape[1]} directed edges, {cross} between examples")
    yield {"what": "LearnedGraphTransform on a Batch of 3", "tgrep": f"{out.edge_index.shape[1] / 150:.2f} mean deg",
           "peer": "5 (requested)", "ratio": f"{out.edge_index.shape[1] / 150 / 5:.2f}"}
