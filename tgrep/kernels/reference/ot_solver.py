"""Plain-torch reference of the Mirror Prox solver of OT graph compression (Garg & Jaakkola,
NeurIPS 2019, Algorithm 2), batched over graphs: the executable spec of
``csrc/cpu/ot_compress.cpp::mirror_prox``.

Sign convention (``docs/architecture.md``, Method notes): for a directed edge ``u -> v`` of cost ``c`` (mass may move
from ``u`` to ``v`` at cost ``c`` per unit) the dual potentials satisfy ``t_u - t_v <= c``; an
undirected edge is listed in both directions (PyG style), which gives ``|t_u - t_v| <= c``.
The saddle function is

    psi(eps, t, zeta) = t . rho0 + zeta - 1/(2 lam) sum_v eps_v (t_v + zeta)_+^2,

and ``rho1_v = eps_v (t_v + zeta)_+ / lam``. ``batch`` holds compact graph ids, any order.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .ot_projections import (lipschitz_operator_norm, project_capped_simplex, project_lipschitz, seg_cumsum, seg_max,
                             seg_ptr, seg_rank, seg_sort, seg_sum)


# ----------------------------------------------------------------------------- psi
def psi(eps, t, zeta, rho0, batch, num_graphs: int, lam: float) -> torch.Tensor:
    """Per-graph ``psi(eps, t, zeta)`` (``zeta [num_graphs]``)."""
    r = (t + zeta[batch]).clamp(min=0)
    return seg_sum(t * rho0 - eps * r * r / (2 * lam), batch, num_graphs) + zeta


def psi_grad(eps, t, zeta, rho0, batch, num_graphs: int, lam: float):
    """``(d psi/d eps, d psi/d t, d psi/d zeta)``; ``d psi/d t = rho0 - rho1``."""
    r = (t + zeta[batch]).clamp(min=0)
    rho1 = eps * r / lam
    return -r * r / (2 * lam), rho0 - rho1, 1 - seg_sum(rho1, batch, num_graphs)


def best_zeta(eps, t, batch, num_graphs: int, lam: float) -> torch.Tensor:
    """Exact ``argmax_zeta psi(eps, t, zeta)``: the root of ``sum_v eps_v (t_v + zeta)_+ = lam``.

    Piecewise linear and non-decreasing in ``zeta``: with ``t`` sorted (descending) over the
    nodes with ``eps > 0``, on the segment where the top ``j`` are active ``zeta = (lam -
    sum eps t) / sum eps``; take the largest valid ``j``. ``+inf`` where ``sum eps = 0``.
    """
    w = torch.where(eps > 0, eps, torch.zeros_like(eps))
    order = seg_sort(t, batch, descending=True)
    ts, ws, bs = t[order], w[order], batch[order]
    se = seg_cumsum(ws, bs, num_graphs)
    st = seg_cumsum(ws * ts, bs, num_graphs)
    cand = (lam - st) / se.clamp(min=1e-300)
    valid = (ts + cand >= -1e-15 * (1 + ts.abs())) & (se > 0)
    rank, ptr = seg_rank(bs, num_graphs)
    jbest = seg_max(torch.where(valid, rank, torch.full_like(rank, -1)).to(t.dtype), bs, num_graphs, -1.0).long()
    out = torch.full((num_graphs,), float("inf"), dtype=t.dtype, device=t.device)
    if bs.numel():
        gi = (ptr[:-1] + jbest.clamp(min=0)).clamp(max=bs.numel() - 1)
        out = torch.where(jbest >= 0, cand[gi], out)
    return out


def topk_mask(score: torch.Tensor, batch: torch.Tensor, num_graphs: int, k: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: the ``k_g`` largest scores of every graph (ties to the lower index)."""
    order = seg_sort(score, batch, descending=True)
    rank = torch.empty_like(batch)
    rank[order] = seg_rank(batch[order], num_graphs)[0]
    return rank < k[batch]


# ----------------------------------------------------------------------------- Mirror Prox
class MirrorProxResult(NamedTuple):
    """What ``tgrep::mirror_prox`` returns: the averaged iterates ``eps`` (weights ``alpha_l``)
    and ``rho1 = eps (t_bar + zeta_bar)_+ / lam``; the last iterate ``(eps_last, t_last,
    zeta_last, mu_last)`` (warm start of the backward replay); per-graph ``gap`` and ``iters``."""
    eps: torch.Tensor
    rho1: torch.Tensor
    eps_last: torch.Tensor
    t_last: torch.Tensor
    zeta_last: torch.Tensor
    mu_last: torch.Tensor
    gap: torch.Tensor
    iters: torch.Tensor


class _Problem:
    """The fixed data of one batched problem and the step sizes (see :func:`mirror_prox`)."""

    def __init__(self, edge_index, cost, rho0, batch, k, lam, lip_iters, step_scale):
        self.edge_index, self.cost, self.rho0, self.batch = edge_index, cost, rho0, batch
        self.B = k.numel()
        self.N = rho0.numel()
        self.lam, self.lip_iters, self.s = lam, lip_iters, step_scale
        dtype = rho0.dtype
        self.kf = k.to(dtype)
        self.counts = torch.bincount(batch, minlength=self.B)
        self.lip_step = (1.0 / lipschitz_operator_norm(edge_index, self.N, batch, self.B, dtype)
                         if edge_index.numel() else None)
        self.beta = 0.5 * lam * step_scale
        self.gamma = 0.5 * lam * step_scale / self.kf.clamp(min=1)

    def proj_t(self, y, mu):
        if self.lip_step is None:
            return y, mu
        return project_lipschitz(y, self.edge_index, self.cost, self.batch, self.B, num_iters=self.lip_iters, tol=0.0,
                                 mu0=mu, step=self.lip_step, check_every=0)

    def step(self, eps, t, zeta, mu):
        """One extragradient step: ``(eps, t, zeta, mu)`` and the half-step ``(e_h, t_h, z_h)``
        with its weight ``alpha``."""
        B, b, lam, s = self.B, self.batch, self.lam, self.s
        g_e, g_t, g_z = psi_grad(eps, t, zeta, self.rho0, b, B, lam)
        r = (t + zeta[b]).clamp(min=0)
        rmax2 = seg_max(r * r, b, B, 0.0)
        r2sum = seg_sum(r * r, b, B)
        alpha = (0.5 * s * lam * lam / torch.maximum(self.beta * rmax2, self.gamma * r2sum).clamp(min=1e-300)).detach()
        e_h = project_capped_simplex(eps - alpha[b] * g_e, self.kf, b, B)
        t_h, mu = self.proj_t(t + self.beta * g_t, mu)
        z_h = zeta + self.gamma * g_z
        g_e, g_t, g_z = psi_grad(e_h, t_h, z_h, self.rho0, b, B, lam)
        eps = project_capped_simplex(eps - alpha[b] * g_e, self.kf, b, B)
        t, mu = self.proj_t(t + self.beta * g_t, mu)
        zeta = zeta + self.gamma * g_z
        return eps, t, zeta, mu, e_h, t_h, z_h, alpha


def mirror_prox(edge_index, cost, rho0, batch, k, lam: float, num_iters: int, tol: float, lip_iters: int,
                step_scale: float) -> MirrorProxResult:
    """Mirror Prox (extragradient) on ``min_{eps in E_k} max_{t in T, zeta} psi``, all graphs at once.

    Steps per graph: ``beta = lam s / 2`` for ``t``, ``gamma = lam s / 2k`` for ``zeta`` and
    ``alpha_l = lam^2 s / 2 max(beta max_v r_v^2, gamma sum_v r_v^2)`` for ``eps`` (``r = (t +
    zeta)_+``, ``s = step_scale``); the projection onto ``T`` is ``lip_iters`` dual FISTA
    steps warm-started across iterations. Every 10 iterations the duality-gap estimate
    ``max_{t in {t_bar, t_l}} psi(eps_hat, t, zeta*(t)) - min_{eps in E_k} psi(eps, t_bar,
    zeta_bar)`` is computed per graph; the loop stops when it is ``<= tol`` relative on every
    graph (graphs with ``k = 0`` or ``k >= n`` count as done), or after ``num_iters``.
    """
    P = _Problem(edge_index, cost, rho0, batch, k, lam, lip_iters, step_scale)
    B, N, b = P.B, P.N, batch
    dtype, device = rho0.dtype, rho0.device
    eps = (P.kf / P.counts.clamp(min=1).to(dtype))[b]
    t = torch.zeros(N, dtype=dtype, device=device)
    zeta = best_zeta(eps, t, b, B, lam)
    zeta = torch.where(torch.isfinite(zeta), zeta, torch.zeros_like(zeta))
    mu = torch.zeros(edge_index.size(1), dtype=dtype, device=device)
    eps_sum = torch.zeros(N, dtype=dtype, device=device)
    a_sum = torch.zeros(B, dtype=dtype, device=device)
    t_sum, z_sum = torch.zeros_like(t), torch.zeros_like(zeta)
    gap = torch.full((B,), float("inf"), dtype=dtype, device=device)
    it = 0
    for it in range(1, num_iters + 1):
        eps, t, zeta, mu, e_h, t_h, z_h, alpha = P.step(eps, t, zeta, mu)
        eps_sum = eps_sum + alpha[b] * e_h
        a_sum = a_sum + alpha
        t_sum, z_sum = t_sum + t_h, z_sum + z_h
        if it % 10 == 0 or it == num_iters:
            e_bar = eps_sum / a_sum.clamp(min=1e-300)[b]
            t_bar, z_bar = t_sum / it, z_sum / it
            up = torch.maximum(psi(e_bar, t_bar, best_zeta(e_bar, t_bar, b, B, lam).nan_to_num(0, 0, 0), rho0, b, B, lam),
                               psi(e_bar, t, best_zeta(e_bar, t, b, B, lam).nan_to_num(0, 0, 0), rho0, b, B, lam))
            rb = (t_bar + z_bar[b]).clamp(min=0)
            lo = psi(topk_mask(rb, b, B, k).to(dtype), t_bar, z_bar, rho0, b, B, lam)
            gap = up - lo
            done = (gap <= tol * up.abs().clamp(min=1e-12)) | (k <= 0) | (k >= P.counts)
            if bool(done.all()):
                break
    e_bar = eps_sum / a_sum.clamp(min=1e-300)[b]
    t_bar, z_bar = t_sum / max(it, 1), z_sum / max(it, 1)
    rho1 = e_bar * (t_bar + z_bar[b]).clamp(min=0) / lam
    iters = torch.full((B,), it, dtype=torch.long, device=device)
    return MirrorProxResult(e_bar, rho1, eps, t, zeta, mu, gap, iters)


def mirror_prox_replay(edge_index, cost, rho0, batch, k, eps_last, t_last, zeta_last, mu_last, lam: float,
                       lip_iters: int, step_scale: float, diff_iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The differentiable map behind the gradients of ``tgrep::mirror_prox``.

    ``diff_iters`` Mirror Prox iterations started at the (detached) last iterate of the
    forward solve, recorded by autograd in ``cost`` and ``rho0``; returns the ``alpha``-weighted
    average of their half-steps as ``(eps, rho1)``. At a fixed point of the iteration these
    equal the forward outputs, so this is truncated backpropagation at the solution
    (Jacobian-free backpropagation, Fung et al., AAAI 2022, with ``diff_iters`` steps) instead
    of through the whole unrolled solve.
    """
    P = _Problem(edge_index, cost, rho0, batch, k, lam, lip_iters, step_scale)
    b = batch
    eps, t, zeta, mu = eps_last, t_last, zeta_last, mu_last
    e_sum = torch.zeros_like(eps_last, dtype=rho0.dtype)
    a_sum = torch.zeros(P.B, dtype=rho0.dtype, device=rho0.device)
    t_sum, z_sum = torch.zeros_like(e_sum), torch.zeros_like(a_sum)
    for _ in range(diff_iters):
        eps, t, zeta, mu, e_h, t_h, z_h, alpha = P.step(eps, t, zeta, mu)
        e_sum, a_sum = e_sum + alpha[b] * e_h, a_sum + alpha
        t_sum, z_sum = t_sum + t_h, z_sum + z_h
    e_bar = e_sum / a_sum.clamp(min=1e-300)[b]
    rho1 = e_bar * (t_sum / diff_iters + (z_sum / diff_iters)[b]).clamp(min=0) / lam
    return e_bar, rho1


__all__ = ["psi", "psi_grad", "best_zeta", "topk_mask", "mirror_prox", "mirror_prox_replay", "MirrorProxResult",
           "seg_ptr"]
