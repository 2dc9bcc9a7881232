r"""A same-run peer for ``tgrep.ot_compress``: the paper's Algorithm 2, written from the paper.

Garg & Jaakkola, *Solving graph compression via optimal transport*, NeurIPS 2019 --
Algorithm 2 (Mirror Prox on the Boolean relaxation of Theorem 5), at the settings of Sec. 4:
``T = 25`` (iterations ``l = 0 .. T``), every step ``alpha_l = beta_l = gamma_l = 0.1``,
``lambda = 1``, ``rho0 = deg / sum(deg)``, ``eps(0) = k 1 / |V|``, ``t(0) = 0``, ``zeta(0) = 0``,
``eps_hat = sum_{l=1..T} alpha_l eps_hat(l) / sum_{l=1..T} alpha_l``, rounded to the top-k.
One graph at a time, NumPy/SciPy only, no tgrep import (an independent implementation).

Choices the paper leaves open, made here and said:

* ``psi`` of Eq. (9). The text dump garbles its signs (as printed it is unbounded in
  ``zeta``); we use the form that the Lagrangian of Eq. (6) gives,
  ``psi(eps, t, zeta) = t.rho0 + zeta - 1/(2 lambda) sum_v eps_v (t_v + zeta)_+^2``
  (t -> -t, zeta -> -zeta of the printed form up to the sign slip; T is symmetric), with
  gradients ``-(t + zeta)_+^2 / 2 lambda``, ``rho0 - rho1`` and ``1 - sum rho1``,
  ``rho1 = eps (t + zeta)_+ / lambda``.
* ``F``: the oriented incidence (``(Ft)_e = t_u - t_v``), so ``T = {|Ft| <= c}`` is the
  1-Lipschitz set of the transport dual; the paper's text says "incident" (unsigned), which
  would not conserve mass.
* ``Proj_T``: the paper cites [45] (Beck & Teboulle's fast dual proximal gradient). We run
  FISTA on the dual ``min_z 1/2 |y - F^T z|^2 + sum_e c_e |z_e|`` (``t = y - F^T z``),
  warm-started from the previous call of the same stream, until the duality gap certifies
  that the returned feasible point is within ``proj_tol * max(c)`` of the exact projection
  (at most ``proj_max_iters`` steps).
* ``Proj_Ek`` (capped simplex ``{0 <= eps <= 1, sum eps <= k}``): exact, by sorting the
  breakpoints of the piecewise-linear ``sum clip(y - tau, 0, 1)``.

Vectorised with ``np.bincount`` / fancy indexing (cheaper than ``scipy.sparse`` at molecule
sizes), so the peer is as fast as plain NumPy gets graph by graph.
"""
from __future__ import annotations

import numpy as np

__all__ = ["alg2", "psi", "psi_grads", "proj_capped_simplex", "proj_T", "support_value", "undirected_edges"]


def undirected_edges(edge_index, num_nodes=None):
    """``[2, E]`` (both directions or not, self-loops and duplicates allowed) -> ``(u, v)``
    arrays of each undirected edge once, ``u < v``, keeping the first cost seen."""
    ei = np.asarray(edge_index).reshape(2, -1)
    a, b = np.minimum(ei[0], ei[1]), np.maximum(ei[0], ei[1])
    keep = a != b
    a, b = a[keep], b[keep]
    key = a.astype(np.int64) * (int(max(ei.max(initial=0), num_nodes or 0)) + 1) + b
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)
    return a[first], b[first], np.flatnonzero(keep)[first]


def psi(eps, t, zeta, rho0, lam=1.0):
    r = np.maximum(t + zeta, 0.0)
    return float(t @ rho0 + zeta - (eps * r * r).sum() / (2 * lam))


def psi_grads(eps, t, zeta, rho0, lam=1.0):
    """``(d psi / d eps, d psi / d t, d psi / d zeta)``."""
    r = np.maximum(t + zeta, 0.0)
    rho1 = eps * r / lam
    return -r * r / (2 * lam), rho0 - rho1, 1.0 - rho1.sum()


def proj_capped_simplex(y, k):
    """Euclidean projection onto ``{x : 0 <= x <= 1, sum x <= k}`` (exact)."""
    x = np.clip(y, 0.0, 1.0)
    if x.sum() <= k:
        return x
    # s(tau) = sum clip(y - tau, 0, 1) is non-increasing and piecewise linear with breakpoints
    # at y - 1 and y; find tau with s(tau) = k
    bp = np.unique(np.concatenate([y - 1.0, y]))
    s = np.clip(y[None, :] - bp[:, None], 0.0, 1.0).sum(1)  # decreasing in bp
    j = np.searchsorted(-s, -k, side="left")  # first breakpoint with s <= k
    if j == 0:
        tau = bp[0]
    else:
        lo, hi = bp[j - 1], bp[j]
        slo, shi = s[j - 1], s[j]
        tau = lo + (slo - k) * (hi - lo) / (slo - shi) if slo > shi else hi
    return np.clip(y - tau, 0.0, 1.0)


class _ProjT:
    """Projection onto ``T = {t : |t_u - t_v| <= c_uv}`` by FISTA on the dual (warm starts)."""

    def __init__(self, n, u, v, c, tol=1e-6, max_iters=2000):
        self.n, self.u, self.v, self.c = n, u, v, c
        deg = np.bincount(u, minlength=n) + np.bincount(v, minlength=n)
        # ||F||^2 = lambda_max(Laplacian) <= 2 max degree
        self.L = max(2.0 * float(deg.max(initial=1)), 1e-12)
        self.tol = tol * float(c.max(initial=1.0))
        self.max_iters = max_iters
        self.iters = 0

    def FT(self, z):
        return np.bincount(self.u, z, self.n) - np.bincount(self.v, z, self.n)

    def _fista_step(self, y, z, w, s):
        """One accelerated proximal-gradient step on the dual: ``(z, w, s)`` -> the next ones."""
        u, v, c, L = self.u, self.v, self.c, self.L
        tw = y - self.FT(w)
        g = w + (tw[u] - tw[v]) / L
        zn = np.sign(g) * np.maximum(np.abs(g) - c / L, 0.0)
        sn = (1 + np.sqrt(1 + 4 * s * s)) / 2
        self.iters += 1
        return zn, zn + ((s - 1) / sn) * (zn - z), sn

    def __call__(self, y, z0):
        """``(t, z)``: ``t`` feasible with ``|t - Proj_T(y)| <= tol`` (certified by the duality
        gap), ``z`` the dual iterate (next warm start)."""
        u, v, c = self.u, self.v, self.c
        if u.size == 0:
            return y.copy(), z0
        z = w = z0
        s = 1.0
        for it in range(self.max_iters + 1):
            t = y - self.FT(z)
            if it % 5 and it < self.max_iters:  # the certificate costs as much as a step: every 5th
                z, w, s = self._fista_step(y, z, w, s)
                continue
            d = t[u] - t[v]
            # a feasible point: shrink t around its mean (F ignores constant shifts)
            a = np.abs(d)
            theta = min(1.0, float(np.min(np.where(a > c, c / np.maximum(a, 1e-300), 1.0))))
            m = t.mean()
            tf = m + theta * (t - m)
            primal = 0.5 * float(((tf - y) ** 2).sum())
            dual = float(z @ (y[u] - y[v])) - 0.5 * float(((y - t) ** 2).sum()) - float(c @ np.abs(z))
            if 2.0 * max(primal - dual, 0.0) <= self.tol ** 2 or it == self.max_iters:
                return tf, z
            z, w, s = self._fista_step(y, z, w, s)


def proj_T(y, u, v, c, tol=1e-9, max_iters=20000):
    """Euclidean projection of ``y`` onto ``T`` (cold start)."""
    p = _ProjT(len(y), np.asarray(u), np.asarray(v), np.asarray(c, dtype=np.float64), tol, max_iters)
    return p(np.asarray(y, dtype=np.float64), np.zeros(len(u)))[0]


def _degree_prior(n, u, v):
    deg = np.bincount(u, minlength=n) + np.bincount(v, minlength=n)
    return deg / deg.sum() if deg.sum() > 0 else np.full(n, 1.0 / n)


def alg2(n, u, v, cost, k, *, rho0=None, lam=1.0, T=25, step=0.1, proj_tol=1e-3, proj_max_iters=2000,
         return_info=False):
    """Algorithm 2 on one undirected graph (edges ``u[e] -- v[e]`` once each, costs ``cost[e] > 0``).

    Returns the kept nodes (sorted; the top-``k`` of the averaged ``eps_hat``, ties to the lower
    index), or ``(kept, info)`` with ``eps_hat``, the final ``(eps, t, zeta)`` and the FISTA
    steps spent in ``Proj_T``.
    """
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    c = np.asarray(cost, dtype=np.float64)
    rho0 = _degree_prior(n, u, v) if rho0 is None else np.asarray(rho0, dtype=np.float64) / np.sum(rho0)
    k = int(min(k, n))
    proj = _ProjT(n, u, v, c, proj_tol, proj_max_iters)
    eps, t, zeta = np.full(n, k / n), np.zeros(n), 0.0
    z_hat, z_new = np.zeros(u.size), np.zeros(u.size)  # dual warm starts of the two Proj_T streams
    alpha = beta = gamma = step
    acc, wsum = np.zeros(n), 0.0
    for ell in range(T + 1):
        ge, gt, gz = psi_grads(eps, t, zeta, rho0, lam)
        e_h = proj_capped_simplex(eps - alpha * ge, k)
        t_h, z_hat = proj(t + beta * gt, z_hat)
        zeta_h = zeta + gamma * gz
        ge, gt, gz = psi_grads(e_h, t_h, zeta_h, rho0, lam)
        eps = proj_capped_simplex(eps - alpha * ge, k)
        t, z_new = proj(t + beta * gt, z_new)
        zeta = zeta + gamma * gz
        if ell >= 1:
            acc += alpha * e_h
            wsum += alpha
    eps_hat = acc / wsum
    kept = np.sort(np.argsort(-eps_hat, kind="stable")[:k])
    if not return_info:
        return kept
    return kept, {"eps_hat": eps_hat, "eps": eps, "t": t, "zeta": zeta, "proj_iters": proj.iters,
                  "psi": psi(eps_hat, t, zeta, rho0, lam)}


def support_value(n, u, v, cost, support, *, rho0=None, lam=1.0, iters=20000, tol=1e-10):
    r"""``max_{t in T, zeta} psi(1_S, t, zeta)`` by projected gradient ascent (the paper's
    Theorem 5 says this equals the compression objective of ``S``). For tests on tiny graphs."""
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    c = np.asarray(cost, dtype=np.float64)
    rho0 = _degree_prior(n, u, v) if rho0 is None else np.asarray(rho0, dtype=np.float64) / np.sum(rho0)
    eps = np.zeros(n)
    eps[np.asarray(support, dtype=np.int64)] = 1.0
    proj = _ProjT(n, u, v, c, 1e-12, 5000)
    t, zeta, z = np.zeros(n), 0.0, np.zeros(u.size)
    h = lam / (1.0 + eps.sum())  # 1 / Lipschitz constant of the (t, zeta) gradient
    best = -np.inf
    for _ in range(iters):
        _, gt, gz = psi_grads(eps, t, zeta, rho0, lam)
        t, z = proj(t + h * gt, z)
        zeta = zeta + h * gz
        val = psi(eps, t, zeta, rho0, lam)
        if val - best <= tol * max(1.0, abs(val)):
            best = max(best, val)
            break
        best = max(best, val)
    return best
