"""Baselines for the OT graph compression benchmarks (Garg & Jaakkola, NeurIPS 2019).

* :func:`paper_otc`      -- the paper's algorithm as published, one graph at a time in dense
  NumPy: Mirror Prox with fixed steps 0.1, T = 25, lambda = 1, bisection for the capped
  simplex, projected-gradient dual for T, top-k rounding (the "dense NumPy copy" peer).
* :func:`random_select`  -- k uniformly random nodes (induced subgraph).
* :func:`heavy_edge`     -- multilevel heavy-edge matching (Dhillon et al. 2007, weights
  1 / max(d_u, d_v) as in Loukas' graph-coarsening code), contract until <= k nodes.
* :func:`rec`            -- randomized edge contraction (Loukas & Vandergheynst 2018):
  contract random edges of a random maximal matching, level after level, until <= k nodes.
* :func:`wl_features`    -- Weisfeiler-Lehman subtree features (Shervashidze et al. 2011).

A compressed graph is ``(labels [n'], edges [(u, v), ...] undirected, each once)``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


# ----------------------------------------------------------------------------- paper's algorithm
def _proj_capped_bisection(y, k, iters=60):
    x = np.clip(y, 0, 1)
    if x.sum() <= k:
        return x
    lo, hi = 0.0, float(y.max())
    for _ in range(iters):
        mid = (lo + hi) / 2
        if np.clip(y - mid, 0, 1).sum() > k:
            lo = mid
        else:
            hi = mid
    return np.clip(y - hi, 0, 1)


def _proj_T(y, A, c, L, iters=50):
    mu = np.zeros(A.shape[0])
    for _ in range(iters):
        t = y - A.T @ mu
        mu = np.maximum(0, mu - (c - A @ t) / L)
    return y - A.T @ mu


def paper_otc(n, edges, cost, k, lam=1.0, T=25, step=0.1, rho0=None):
    """The published Algorithm 2 on one graph (dense NumPy). Returns kept node indices."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    cost = np.asarray(cost, dtype=np.float64)
    if k >= n:
        return np.arange(n)
    # both directions: t_u - t_v <= c and t_v - t_u <= c
    E = len(edges)
    A = np.zeros((2 * E, n))
    A[np.arange(E), edges[:, 0]] = 1
    A[np.arange(E), edges[:, 1]] = -1
    A[E + np.arange(E), edges[:, 1]] = 1
    A[E + np.arange(E), edges[:, 0]] = -1
    c = np.concatenate([cost, cost])
    if rho0 is None:
        deg = np.bincount(edges.ravel(), minlength=n).astype(float)
        rho0 = deg / deg.sum() if deg.sum() > 0 else np.full(n, 1.0 / n)
    L = max(1.0, float(np.linalg.norm(A, 2) ** 2)) if E else 1.0
    eps, t, z = np.full(n, k / n), np.zeros(n), 0.0
    acc, wsum = np.zeros(n), 0.0

    def grads(e, t, z):
        r = np.maximum(t + z, 0)
        rho1 = e * r / lam
        return -r * r / (2 * lam), rho0 - rho1, 1 - rho1.sum()

    for _ in range(T + 1):
        ge, gt, gz = grads(eps, t, z)
        eh = _proj_capped_bisection(eps - step * ge, k)
        th = _proj_T(t + step * gt, A, c, L) if E else t + step * gt
        zh = z + step * gz
        ge, gt, gz = grads(eh, th, zh)
        eps = _proj_capped_bisection(eps - step * ge, k)
        t = _proj_T(t + step * gt, A, c, L) if E else t + step * gt
        z = z + step * gz
        acc += step * eh
        wsum += step
    return np.sort(np.argsort(-(acc / wsum), kind="stable")[:k])


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
