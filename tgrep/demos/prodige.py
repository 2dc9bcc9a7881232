"""PRODIGE demo: learn sparse graphs whose shortest paths reproduce distances (embedded data)."""
from __future__ import annotations

import time

import torch

TITLE = "PRODIGE: learnable graph metrics (ProdigeGraph / ProdigeCompression)"
ORDER = 20


def _mse(P, D):  # noqa: D103
    return float(((P.double() - D.double()) ** 2).mean())


def run(quick: bool = False, verbose: bool = True):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small problems: one thread avoids pool overhead on shared cores
    try:
        yield from _run(quick, verbose)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool, verbose: bool):
    from sklearn.datasets import load_digits

    from ..datasets import weighted_erdos_renyi
    from ..models import ProdigeCompression
    from ..ops import shortest_paths
    from ..utils import to_csr

    # 1) sanity check: recover the distances of a random weighted graph from its distance matrix
    gen = torch.Generator().manual_seed(0)
    n = 14
    ei, w = weighted_erdos_renyi(n, 0.25, generator=gen)
    D = shortest_paths(*to_csr(ei, n, w.double(), undirected=True), torch.arange(n))
    print(f"Weighted Erdős–Rényi graph: {n} vertices, {ei.size(1)} edges; fitting its distance matrix "
          f"({n * (n - 1) // 2} pairs) with the defaults")
    t0 = time.perf_counter()
    m = ProdigeCompression(verbose=verbose, seed=0).fit(distances=D.float())  # the defaults
    err = _mse(m.pairwise_distances(), D)
    print(f"  distance MSE {err:.2e}, kept {m.graph.prune()[0].size(1)} edges ({time.perf_counter() - t0:.1f} s)")
    yield {"what": f"ER graph n={n}: distance MSE", "tgrep": f"{err:.1e}", "peer": "paper: < 1e-3", "ratio": ""}

    # 2) training speed: one epoch, tgrep (C++ search + REINFORCE kernels) vs scipy Dijkstra per row
    from ._prodige_peer import ScipyProdige
    from ..nn import ProdigeGraph

    npts = 300 if quick else 600
    x = torch.tensor(load_digits().data[:npts], dtype=torch.float32)
    Dx = torch.cdist(x, x)
    scale = Dx.sum() / (npts * (npts - 1))
    x, Dx = x / scale, Dx / scale
    gen = torch.Generator().manual_seed(0)
    batches = [(s, torch.randint(0, npts, (s.numel(), 32), generator=gen))
               for s in torch.randperm(npts, generator=gen).split(64)]

    def setup():
        torch.manual_seed(0)
        g = ProdigeGraph.from_vectors(x, 16, 16, default_distance=5.0)
        return g, torch.optim.Adam(g.parameters(), lr=0.05)

    g, opt = setup()
    print(f"One training epoch on digits[:{npts}] ({g.num_edges} candidate edges, {len(batches)} batches "
          "of 64 sources x 32 targets): sampled-graph distances, path gradients, REINFORCE, Adam")
    t0 = time.perf_counter()
    for src, dst in batches:
        per = ((g(src, dst) - Dx[src[:, None], dst]) ** 2).mean(1)
        loss = per.mean() + 1.0 * g.sparsity() + g.reinforce(per)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t_tgrep = time.perf_counter() - t0
    g2, opt2 = setup()
    peer = ScipyProdige(g2)
    t0 = time.perf_counter()
    for src, dst in batches:
        peer.step(src.numpy(), dst.numpy(), Dx[src[:, None], dst].double().numpy(), 1.0, opt2)
    t_scipy = time.perf_counter() - t0
    print(f"  tgrep {t_tgrep:.2f} s, scipy per row {t_scipy:.2f} s")
    yield {"what": f"training epoch, digits[:{npts}]", "tgrep": f"{t_tgrep:.2f} s", "peer": f"scipy {t_scipy:.2f} s",
           "ratio": f"{t_scipy / t_tgrep:.1f}x faster"}

    # 3) distance-preserving compression at 4 numbers per item vs metric MDS with 4 dimensions
    import warnings

    from sklearn.manifold import MDS

    npts = 600 if quick else 1000
    x = torch.tensor(load_digits().data[:npts], dtype=torch.float32)
    Dx = torch.cdist(x, x)
    scale = Dx.sum() / (npts * (npts - 1))
    x, Dx = x / scale, Dx / scale
    print(f"Compressing digits[:{npts}] to <= 4 numbers per item (defaults) vs MDS-4")
    t0 = time.perf_counter()
    m = ProdigeCompression(target_params_per_instance=4.0, verbose=verbose, seed=0).fit(x)
    err = _mse(m.pairwise_distances(), Dx)
    t_fit = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z = MDS(4, dissimilarity="precomputed", metric=True, n_init=1, max_iter=300, random_state=0,
                normalized_stress=False).fit_transform(Dx.double().numpy())
    z = torch.tensor(z)
    err_mds = _mse(torch.cdist(z, z), Dx)
    print(f"  PRODIGE MSE {err:.4f} at {m.parameters_per_instance():.2f} numbers/item ({t_fit:.1f} s), "
          f"MDS-4 {err_mds:.4f}")
    yield {"what": f"digits[:{npts}] MSE, 4 numbers/item", "tgrep": f"{err:.4f}", "peer": f"MDS-4 {err_mds:.4f}",
           "ratio": f"{err_mds / err:.1f}x lower"}
