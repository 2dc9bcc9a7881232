"""Baselines for the OT graph compression benchmarks (Garg & Jaakkola, NeurIPS 2019).

* :func:`random_select`  -- k uniformly random nodes (induced subgraph).
* :func:`heavy_edge`     -- multilevel heavy-edge matching (Dhillon et al. 2007, weights
  1 / max(d_u, d_v) as in Loukas' graph-coarsening code), contract until <= k nodes.
* :func:`rec`            -- randomized edge contraction (Loukas & Vandergheynst 2018):
  contract random edges of a random maximal matching, level after level, until <= k nodes.
* :func:`algebraic`      -- algebraic-distance coarsening (Ron, Safro & Brandt 2011; Chen &
  Safro 2011): matching on the smallest algebraic distance of relaxed test vectors.
* :func:`affinity`       -- affinity coarsening (Livne & Brandt's LAMG 2012): matching on the
  largest affinity of relaxed test vectors.
* :func:`wl_features`    -- Weisfeiler-Lehman subtree features (Shervashidze et al. 2011).

(The paper's own Algorithm 2 is in ``otc_alg2_peer.py``.)

A compressed graph is ``(labels [n'], edges [(u, v), ...] undirected, each once)``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


# ----------------------------------------------------------------------------- selection / contraction
def induced(labels, edges, keep):
    keep = np.sort(np.asarray(keep))
    new = -np.ones(len(labels), dtype=np.int64)
    new[keep] = np.arange(len(keep))
    e = [(new[u], new[v]) for u, v in edges if new[u] >= 0 and new[v] >= 0]
    return np.asarray(labels)[keep], e


def random_select(n, k, rng):
    return np.sort(rng.choice(n, size=min(k, n), replace=False))


def _contract(labels, edges, match, n):
    """Merge matched pairs; a merged node keeps the label of its higher-degree end."""
    deg = np.zeros(n, dtype=np.int64)
    for u, v in edges:
        deg[u] += 1
        deg[v] += 1
    rep = np.arange(n)
    for u, v in match:
        a, b = (u, v) if deg[u] >= deg[v] else (v, u)
        rep[b] = a
    uniq, new = np.unique(rep, return_inverse=True)
    lab = np.asarray(labels)[uniq]
    e = {(min(new[u], new[v]), max(new[u], new[v])) for u, v in edges if new[u] != new[v]}
    return lab, sorted(e)


def _coarsen(labels, edges, k, rng, weight_fn):
    labels, edges = np.asarray(labels), list(edges)
    n = len(labels)
    while n > k and edges:
        w = weight_fn(edges, n)
        order = np.argsort(-w, kind="stable") if w is not None else rng.permutation(len(edges))
        used = np.zeros(n, dtype=bool)
        match = []
        for i in order:
            u, v = edges[i]
            if u == v or used[u] or used[v]:
                continue
            used[u] = used[v] = True
            match.append((u, v))
            if n - len(match) <= k:
                break
        if not match:
            break
        labels, edges = _contract(labels, edges, match, n)
        n = len(labels)
    return labels, edges


def heavy_edge(labels, edges, k, rng):
    """Heavy-edge matching: edges by decreasing 1 / max(d_u, d_v) (ties random)."""
    def w(edges, n):
        deg = np.zeros(n)
        for u, v in edges:
            deg[u] += 1
            deg[v] += 1
        e = np.asarray(edges)
        return 1.0 / np.maximum(deg[e[:, 0]], deg[e[:, 1]]) + 1e-9 * rng.random(len(edges))
    return _coarsen(labels, edges, k, rng, w)


def rec(labels, edges, k, rng):
    """Randomized edge contraction: random maximal matchings, contracted until <= k nodes."""
    return _coarsen(labels, edges, k, rng, lambda edges, n: None)


def _test_vectors(edges, n, rng, R=10, iters=20, omega=0.5):
    """``R`` random vectors after ``iters`` Jacobi over-relaxation sweeps of ``L x = 0``
    (``x <- (1 - omega) x + omega D^-1 A x``), each rescaled to ``[-1/2, 1/2]``."""
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    A = sp.csr_matrix((np.ones(2 * len(e)), (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])), shape=(n, n))
    d = np.asarray(A.sum(1)).ravel()
    d[d == 0] = 1
    X = rng.uniform(-0.5, 0.5, size=(n, R))
    for _ in range(iters):
        X = (1 - omega) * X + omega * (A @ X) / d[:, None]
    lo, hi = X.min(0), X.max(0)
    return (X - lo) / np.where(hi > lo, hi - lo, 1) - 0.5


def algebraic(labels, edges, k, rng):
    """Algebraic-distance matching: contract edges by increasing ``max_r |x_u^r - x_v^r|``,
    test vectors recomputed at every level (Chen & Safro 2011)."""
    def w(edges, n):
        X = _test_vectors(edges, n, rng)
        e = np.asarray(edges)
        return -np.abs(X[e[:, 0]] - X[e[:, 1]]).max(1) + 1e-12 * rng.random(len(edges))
    return _coarsen(labels, edges, k, rng, w)


def affinity(labels, edges, k, rng):
    """Affinity matching: contract edges by decreasing ``(X_u . X_v)^2 / (|X_u|^2 |X_v|^2)``
    (Livne & Brandt 2012), test vectors recomputed at every level."""
    def w(edges, n):
        X = _test_vectors(edges, n, rng)
        e = np.asarray(edges)
        num = (X[e[:, 0]] * X[e[:, 1]]).sum(1) ** 2
        den = (X[e[:, 0]] ** 2).sum(1) * (X[e[:, 1]] ** 2).sum(1)
        return num / np.maximum(den, 1e-300) + 1e-12 * rng.random(len(edges))
    return _coarsen(labels, edges, k, rng, w)


# ----------------------------------------------------------------------------- WL kernel
def wl_features(graphs, iterations=5):
    """WL subtree features: sparse ``[num_graphs, num_labels]`` counts over ``iterations + 1``
    rounds of relabelling (a label dictionary shared by all graphs)."""
    table = {}
    rows, cols = [], []
    cur = []
    for labels, _ in graphs:
        cur.append([table.setdefault(("0", int(lab)), len(table)) for lab in labels])
    nbrs = []
    for labels, edges in graphs:
        adj = [[] for _ in range(len(labels))]
        for u, v in edges:
            adj[u].append(v)
            adj[v].append(u)
        nbrs.append(adj)
    for it in range(iterations + 1):
        for g, lab in enumerate(cur):
            rows.extend([g] * len(lab))
            cols.extend(lab)
        if it == iterations:
            break
        nxt = []
        for lab, adj in zip(cur, nbrs):
            nxt.append([table.setdefault((lab[v], tuple(sorted(lab[u] for u in adj[v]))), len(table))
                        for v in range(len(lab))])
        cur = nxt
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(graphs), len(table)))
    return m
