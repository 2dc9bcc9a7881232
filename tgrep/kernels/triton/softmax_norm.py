r"""Triton kernels for the EDRep cluster log-sum-exp (forward and backward).

One program handles ``BLOCK_N`` rows of ``x``; it keeps the row block in registers and
loops over the ``k`` clusters: ``x_B @ Omega_a`` (``tl.dot``), the logits
``log w_a + x mu_a + 1/2 x Omega_a x`` and an online log-sum-exp. Nothing of size
``[n, k, d]`` exists at any time. The backward recomputes the logits, forms the
responsibilities ``g_i softmax_a`` from the saved ``lse`` and accumulates
``dx_i = sum_a g_i w_ia (mu_a + Omega_a x_i)``; it also writes the ``[n, k]``
responsibilities when the statistics need gradients (their reductions are GEMMs done by
the host). ``d`` up to 128 (padded to a power of two >= 16); the ops layer falls back to
the row-blocked torch kernel above that.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_D = 128


@triton.jit
def _cluster_lse_fwd(X, LW, MU, OM, OUT, n, d, k, stride_x,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < n
    cmask = cols < d
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
    x = x.to(tl.float32)
    m_run = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s_run = tl.zeros([BLOCK_N], tl.float32)
    for a in range(k):
        lw = tl.load(LW + a).to(tl.float32)
        mu = tl.load(MU + a * d + cols, mask=cmask, other=0.0).to(tl.float32)
        om = tl.load(OM + a * d * d + cols[:, None] * d + cols[None, :],
                     mask=cmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        xo = tl.dot(x, om, input_precision="ieee")
        logit = lw + tl.sum(x * mu[None, :], 1) + 0.5 * tl.sum(xo * x, 1)
        m_new = tl.maximum(m_run, logit)
        s_run = s_run * tl.exp(m_run - m_new) + tl.exp(logit - m_new)
        m_run = m_new
    tl.store(OUT + rows, m_run + tl.log(s_run), mask=rmask)


@triton.jit
def _cluster_lse_bwd(X, LW, MU, OM, LSE, G, DX, GW, n, d, k, stride_x,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, STORE_GW: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < n
    cmask = cols < d
    xmask = rmask[:, None] & cmask[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=xmask, other=0.0).to(tl.float32)
    lse = tl.load(LSE + rows, mask=rmask, other=0.0).to(tl.float32)
    g = tl.load(G + rows, mask=rmask, other=0.0).to(tl.float32)
    dx = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for a in range(k):
        lw = tl.load(LW + a).to(tl.float32)
        mu = tl.load(MU + a * d + cols, mask=cmask, other=0.0).to(tl.float32)
        om = tl.load(OM + a * d * d + cols[:, None] * d + cols[None, :],
                     mask=cmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        xo = tl.dot(x, om, input_precision="ieee")
        logit = lw + tl.sum(x * mu[None, :], 1) + 0.5 * tl.sum(xo * x, 1)
        gw = tl.exp(logit - lse) * g
        dx += gw[:, None] * (mu[None, :] + xo)
        if STORE_GW:
            tl.store(GW + rows * k + a, gw, mask=rmask)
    tl.store(DX + rows[:, None] * stride_x + cols[None, :], dx, mask=xmask)


def _blocks(d: int) -> tuple[int, int]:
    block_d = max(16, triton.next_power_of_2(d))
    block_n = 64 if block_d <= 64 else 32
    return block_n, block_d


def cluster_lse_forward(x: torch.Tensor, log_w: torch.Tensor, mu: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    n, d = x.shape
    k = mu.shape[0]
    block_n, block_d = _blocks(d)
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    _cluster_lse_fwd[(triton.cdiv(n, block_n),)](x, log_w, mu, omega, out, n, d, k, x.stride(0),
                                                 BLOCK_N=block_n, BLOCK_D=block_d)
    return out.to(x.dtype)


def cluster_lse_backward(grad, x, log_w, mu, omega, lse, need_stats: bool = False):
    n, d = x.shape
    k = mu.shape[0]
    block_n, block_d = _blocks(d)
    dx = torch.empty((n, d), dtype=torch.float32, device=x.device)
    gw = torch.empty((n, k), dtype=torch.float32, device=x.device) if need_stats else dx
    _cluster_lse_bwd[(triton.cdiv(n, block_n),)](x, log_w, mu, omega, lse, grad, dx, gw, n, d, k, x.stride(0),
                                                 BLOCK_N=block_n, BLOCK_D=block_d, STORE_GW=need_stats)
    return dx.to(x.dtype), (gw.to(x.dtype) if need_stats else None)
