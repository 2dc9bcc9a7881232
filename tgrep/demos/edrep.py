"""Demo section: EDRep linear-time softmax normalizers, the loss, and community detection."""
from __future__ import annotations

import os
import time

import torch

TITLE = "EDRep: linear-time softmax normalization (Dall'Amico & Belliardo 2025)"
ORDER = 20


def _clustered(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(8, d, generator=g)
    v = centers[torch.randint(0, 8, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    return v / v.norm(dim=1, keepdim=True).mean()


def _timed(fn):
    fn()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _communities(emb: torch.Tensor, active: torch.Tensor, q: int) -> torch.Tensor:
    """k-means on the nodes with an edge; isolated nodes (no information) -> community 0."""
    from tgrep.ops import kmeans

    labels = torch.zeros(emb.shape[0], dtype=torch.long)
    labels[active] = kmeans(emb[active].float(), q, seed=0, n_init=5)
    return labels


def _spectral_embedding(edge_index: torch.Tensor, n: int, q: int) -> torch.Tensor:
    """Regularized spectral embedding (Qin & Rohe 2013): top-q eigenvectors of
    (D + tau I)^-1/2 A (D + tau I)^-1/2, tau = mean degree, rows normalized."""
    import numpy as np
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    ei = edge_index.numpy()
    a = sp.csr_matrix((np.ones(ei.shape[1]), (ei[0], ei[1])), shape=(n, n))
    deg = np.asarray(a.sum(1)).ravel()
    s = 1.0 / np.sqrt(deg + deg.mean())
    _, vecs = eigsh(sp.diags(s) @ a @ sp.diags(s), k=q, which="LA", v0=np.ones(n))
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return torch.tensor(vecs, dtype=torch.float32)


def run(quick: bool = False, verbose: bool = True):
    # On an oversubscribed machine (load > cores) OpenMP barriers make multi-threaded small
    # ops many times slower: run single-threaded there, both tgrep and its peers.
    prev = torch.get_num_threads()
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"  (load {os.getloadavg()[0]:.1f} > {os.cpu_count()} cores: timing with 1 thread)")
        torch.set_num_threads(1)
    try:
        yield from _run(quick, verbose)
    finally:
        torch.set_num_threads(prev)


def _run(quick: bool, verbose: bool):
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from tgrep.datasets import dcsbm
    from tgrep.models import EDRep
    from tgrep.nn import EDRepLoss
    from tgrep.ops import exact_log_normalizer, log_normalizer

    n, d = (4000, 64) if quick else (20000, 64)
    x, y = _clustered(n, d, 0), _clustered(n, d, 1)
    print(f"log Z_i = log sum_a exp(x_i . y_a) for n = m = {n}, d = {d} (clustered rows, mean norm 1)")
    exact, t_exact = _timed(lambda: exact_log_normalizer(x, y))
    est, t_est = _timed(lambda: log_normalizer(x, y, num_clusters=4))
    err = (est - exact).abs()
    print(f"  exact {t_exact:.3f} s, EDRep k=4 (k-means included) {t_est:.4f} s, "
          f"median |error| {float(err.median()):.2e}, max {float(err.max()):.2e}")
    yield {"what": f"log Z, n=m={n}, d={d}, k=4", "tgrep": f"{t_est * 1e3:.1f} ms",
           "peer": f"exact {t_exact:.2f} s", "ratio": f"{t_exact / t_est:.0f}x faster"}
    yield {"what": "log Z median |error|", "tgrep": f"{float(err.median()):.1e}", "peer": "0 (exact)",
           "ratio": "target <= 1e-2"}

    idx = torch.stack([torch.arange(n).repeat_interleave(5), torch.randint(0, n, (5 * n,))])
    target = (idx, torch.rand(5 * n))
    xp, yp = x.clone().requires_grad_(), y.clone().requires_grad_()

    def step(loss_fn):
        def go():
            loss = loss_fn(xp, yp, target)
            loss.backward()
            xp.grad = yp.grad = None
            return float(loss.detach())
        return go

    l_exact, t_ce = _timed(step(EDRepLoss(mode="exact")))
    l_est, t_loss = _timed(step(EDRepLoss(num_clusters=4)))
    print(f"  EDRepLoss fwd+bwd {t_loss:.3f} s (loss {l_est:.4f}) vs exact softmax CE {t_ce:.2f} s "
          f"(loss {l_exact:.4f})")
    yield {"what": "EDRepLoss fwd+bwd vs exact softmax CE", "tgrep": f"{t_loss:.3f} s",
           "peer": f"{t_ce:.2f} s", "ratio": f"{t_ce / t_loss:.0f}x faster"}

    nn_ = 3000 if quick else 20000
    data = dcsbm(nn_, 4, mean_degree=10, c_out=2.0, seed=0)
    print(f"community detection on a DCSBM graph (n = {nn_}, 4 communities, c = 10, alpha = {data.alpha:.2f})")
    active = torch.bincount(data.edge_index[0], minlength=nn_) > 0
    print(f"  ({1 - float(active.float().mean()):.0%} of the nodes are isolated: every method puts them in "
          "community 0 and clusters the rest)")
    t0 = time.perf_counter()
    emb = EDRep(32, epochs=30, walk_length=3, seed=0, verbose=verbose).fit_transform(data.edge_index, nn_)
    s_edrep = nmi(data.y.numpy(), _communities(emb, active, 4).numpy())
    t_edrep = time.perf_counter() - t0
    t0 = time.perf_counter()
    s_spec = nmi(data.y.numpy(), _communities(_spectral_embedding(data.edge_index, nn_, 4), active, 4).numpy())
    t_spec = time.perf_counter() - t0
    print(f"  NMI EDRep {s_edrep:.3f} ({t_edrep:.1f} s) vs regularized spectral {s_spec:.3f} ({t_spec:.1f} s)")
    yield {"what": f"DCSBM n={nn_} NMI (EDRep vs spectral)", "tgrep": f"{s_edrep:.3f}", "peer": f"{s_spec:.3f}",
           "ratio": f"gap {s_spec - s_edrep:+.3f}"}
