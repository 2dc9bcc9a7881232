r"""Triton kernels for the EDRep cluster log-sum-exp (forward and backward).

One program handles ``BLOCK_N`` rows of ``x``; it keeps the row block in registers and
loops over the ``k`` clusters: ``x_B @ Omega_a`` (``tl.dot``), the logits
``log w_a + x mu_a + 1/2 x Omega_a x`` and an online log-sum-exp. Nothing of size
``[n, k, d]`` exists at any time. The backward recomputes the logits, forms the
responsibilities ``g_i softmax_a`` from the saved ``lse`` and accumulates
``dx_i = sum_a g_i w_ia (mu_a + Omega_a x_i)``; it also writes the ``[n, k]``
responsibilities when the statistics need gradients (their reductions are GEMMs done by
the host). ``d`` up to 128 (padded to a power of two >= 16); the library falls back to
the row-blocked torch kernel above that and for float64.

Offsets are int64 (``n * d`` and ``k * d * d`` may pass ``2**31``); the prologue (row block
load) and the per-cluster logit are shared ``@triton.jit`` helpers; block sizes and the grid
come from :func:`tgrep.kernels.triton.launch.row_tiles`. The launches go through
:func:`torch.library.wrap_triton` (the op is a :func:`torch.library.triton_op`), so
``torch.compile`` sees these kernels instead of an opaque call. Overflowing logits give ``+inf``
(never NaN), as in the reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .launch import row_tiles

MAX_D = 128


@triton.jit
def _row_block(X, n, d, stride_x, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows of this program (int64), column offsets, masks and the float32 block of ``x``."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    cols = tl.arange(0, BLOCK_D).to(tl.int64)
    rmask = rows < n
    cmask = cols < d
    xmask = rmask[:, None] & cmask[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=xmask, other=0.0).to(tl.float32)
    return x, rows, cols, rmask, cmask, xmask


@triton.jit
def _cluster_logit(x, LW, MU, OM, a, d, cols, cmask):
    """``(logit [BLOCK_N], mu_a, x Omega_a)`` of cluster ``a``; a NaN logit (inf - inf) reads +inf."""
    a64 = tl.cast(a, tl.int64)
    lw = tl.load(LW + a64).to(tl.float32)
    mu = tl.load(MU + a64 * d + cols, mask=cmask, other=0.0).to(tl.float32)
    om = tl.load(OM + a64 * d * d + cols[:, None] * d + cols[None, :],
                 mask=cmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    xo = tl.dot(x, om, input_precision="ieee")
    logit = lw + tl.sum(x * mu[None, :], 1) + 0.5 * tl.sum(xo * x, 1)
    logit = tl.where(logit != logit, float("inf"), logit)
    return logit, mu, xo


@triton.jit
def _cluster_lse_fwd(X, LW, MU, OM, OUT, n, d, k, stride_x,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    x, rows, cols, rmask, cmask, xmask = _row_block(X, n, d, stride_x, BLOCK_N, BLOCK_D)
    m_run = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s_run = tl.zeros([BLOCK_N], tl.float32)
    for a in range(k):
        logit, mu, xo = _cluster_logit(x, LW, MU, OM, a, d, cols, cmask)
        m_new = tl.maximum(m_run, logit)
        finite = m_new < float("inf")
        shift = tl.where(finite, m_new, 0.0)
        s_run = s_run * tl.exp(m_run - shift) + tl.exp(logit - shift)
        m_run = m_new
    out = tl.where(m_run < float("inf"), m_run + tl.log(s_run), float("inf"))
    tl.store(OUT + rows, out, mask=rmask)


@triton.jit
def _cluster_lse_bwd(X, LW, MU, OM, LSE, G, DX, GW, n, d, k, stride_x,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, STORE_GW: tl.constexpr):
    x, rows, cols, rmask, cmask, xmask = _row_block(X, n, d, stride_x, BLOCK_N, BLOCK_D)
    lse = tl.load(LSE + rows, mask=rmask, other=0.0).to(tl.float32)
    g = tl.load(G + rows, mask=rmask, other=0.0).to(tl.float32)
    dx = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for a in range(k):
        logit, mu, xo = _cluster_logit(x, LW, MU, OM, a, d, cols, cmask)
        gw = tl.exp(logit - lse) * g
        gw = tl.where(gw == gw, gw, 0.0)  # an overflowed row (lse = inf) has no finite gradient
        dx += gw[:, None] * (mu[None, :] + xo)
        if STORE_GW:
            tl.store(GW + rows * k + a, gw, mask=rmask)
    tl.store(DX + rows[:, None] * d + cols[None, :], dx, mask=xmask)


def supports(x: torch.Tensor) -> bool:
    """Whether these kernels take ``x`` (float32 / half, ``d <= MAX_D``)."""
    return x.dtype != torch.float64 and x.shape[1] <= MAX_D


def cluster_lse_forward(x: torch.Tensor, log_w: torch.Tensor, mu: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    n, d = x.shape
    k = mu.shape[0]
    grid, block_n, block_d = row_tiles(n, d)
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    if n:
        wrap_triton(_cluster_lse_fwd)[grid](x, log_w.contiguous(), mu.contiguous(), omega.contiguous(), out, n, d, k, x.stride(0),
                               BLOCK_N=block_n, BLOCK_D=block_d)
    return out.to(x.dtype)


def cluster_lse_backward(grad, x, log_w, mu, omega, lse, need_stats: bool = False):
    """``(dx [n, d], gw [n, k] or None)``; ``omega`` must be symmetric."""
    n, d = x.shape
    k = mu.shape[0]
    grid, block_n, block_d = row_tiles(n, d)
    dx = torch.empty((n, d), dtype=torch.float32, device=x.device)
    gw = torch.empty((n, k), dtype=torch.float32, device=x.device) if need_stats else dx
    if n:
        wrap_triton(_cluster_lse_bwd)[grid](x, log_w.contiguous(), mu.contiguous(), omega.contiguous(), lse.contiguous(),
                               grad.contiguous(), dx, gw, n, d, k, x.stride(0),
                               BLOCK_N=block_n, BLOCK_D=block_d, STORE_GW=need_stats)
    return dx.to(x.dtype), (gw.to(x.dtype) if need_stats else None)
