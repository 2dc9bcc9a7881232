r"""Plain-torch kernels for the EDRep softmax normalizer (Dall'Amico & Belliardo, 2025).

The estimate of :math:`\log Z_i = \log \sum_a e^{x_i^\top y_a}` from per-cluster statistics
of the rows of :math:`Y` is (paper, eq. 4-5)

.. math::
    \log \hat Z_i = \log m + \operatorname{logsumexp}_\alpha \big(\log \pi_\alpha
    + x_i^\top \mu_\alpha + \tfrac12 x_i^\top \Omega_\alpha x_i\big).

Here ``log_pi`` already holds :math:`\log m + \log \pi_\alpha = \log |V_\alpha|`.

* :func:`cluster_lse_formula` -- the executable spec: the formula written for clarity
  (materializes ``[n, k, d]``; small inputs only).
* :func:`cluster_lse_forward` / :func:`cluster_lse_backward` -- the CPU (and fallback) kernel:
  row blocks, one GEMM ``X_B @ [Omega_1 ... Omega_k]`` per block, so the memory is
  ``O(block * k * d)``; never ``[n, k, d]``.
* :func:`cluster_lse_grads` -- the backward written in differentiable torch (materializes
  ``[n, k, d]``): used when a graph of the gradient is needed (double backward).
* :func:`cluster_outer` / :func:`cluster_matvec` -- per-cluster sums of outer products and
  per-row products with the row's cluster matrix (each the other's transpose): the second
  moments of the statistics and their gradients.
* :func:`exact_lse_forward` / :func:`exact_lse_backward` -- the exact value, chunked over
  rows (memory ``O(chunk * m)``).

Values beyond the dtype's range: a logit that overflows (``x`` of norm ``1e20``) makes
:math:`\log Z_i = +\infty`, as the exact value is then; never NaN (a NaN logit can only
come from ``inf - inf`` in such an overflow and is read as ``+inf``).
"""
from __future__ import annotations

import torch
from torch import Tensor


def cluster_lse_formula(x: Tensor, log_pi: Tensor, mu: Tensor, omega: Tensor) -> Tensor:
    """``logsumexp_a(log_pi_a + x mu_a + x Omega_a x / 2)`` -- the spec (differentiable)."""
    quad = torch.einsum("nd,kde,ne->nk", x, omega, x)
    return torch.logsumexp(log_pi[None, :] + x @ mu.t() + 0.5 * quad, dim=1)


def _block_rows(n: int, k: int, d: int, budget: int = 1 << 20) -> int:
    """Rows per block so that a ``[block, k*d]`` temporary holds ~``budget`` elements."""
    return max(1, min(n, budget // max(1, k * d)))


def _logits_block(xb: Tensor, log_pi: Tensor, mu: Tensor, omega_cat: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Logits ``[B, k]`` and ``X_B Omega`` as ``[B, k, d]`` for one row block."""
    b, d = xb.shape
    xo = (xb @ omega_cat).view(b, k, d)  # [B, k, d], only for this block
    quad = (xo * xb[:, None, :]).sum(-1)
    logits = log_pi[None, :] + xb @ mu.t() + 0.5 * quad
    return torch.nan_to_num(logits, nan=float("inf"), posinf=float("inf"), neginf=float("-inf")), xo


def _lse_rows(logits: Tensor) -> Tensor:
    """Row log-sum-exp shifted by the row max; ``+inf`` when a logit is ``+inf``."""
    top = logits.max(1, keepdim=True).values
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    out = safe.squeeze(1) + torch.log(torch.exp(logits - safe).sum(1))
    return torch.where(torch.isinf(top.squeeze(1)), top.squeeze(1), out)


def cluster_lse_forward(x: Tensor, log_pi: Tensor, mu: Tensor, omega: Tensor, block: int | None = None) -> Tensor:
    """Row-blocked ``[n]`` log-sum-exp over clusters (no autograd)."""
    n, d = x.shape
    k = mu.shape[0]
    omega_cat = omega.permute(1, 0, 2).reshape(d, k * d)  # [d, k*d]: column block a is Omega_a
    block = block or _block_rows(n, k, d)
    out = x.new_empty(n)
    for s in range(0, n, block):
        logits, _ = _logits_block(x[s:s + block], log_pi, mu, omega_cat, k)
        out[s:s + block] = _lse_rows(logits)
    return out


def cluster_lse_backward(grad: Tensor, x: Tensor, log_pi: Tensor, mu: Tensor, omega: Tensor, lse: Tensor,
                         need_x: bool = True, need_stats: bool = False, block: int | None = None):
    """Gradients of ``sum_i grad_i * lse_i`` w.r.t. ``x``, ``log_pi``, ``mu``, ``omega``.

    With ``w_ia = softmax_a(logits_i)``: ``dx_i = g_i sum_a w_ia (mu_a + Omega_a x_i)``
    (``Omega`` symmetric), ``dlog_pi_a = sum_i g_i w_ia``, ``dmu_a = sum_i g_i w_ia x_i``,
    ``dOmega_a = 1/2 sum_i g_i w_ia x_i x_i^T``.
    """
    n, d = x.shape
    k = mu.shape[0]
    omega_cat = omega.permute(1, 0, 2).reshape(d, k * d)
    block = block or _block_rows(n, k, d)
    dx = torch.empty_like(x) if need_x else None
    gw_all = x.new_empty(n, k) if need_stats else None
    for s in range(0, n, block):
        xb = x[s:s + block]
        logits, xo = _logits_block(xb, log_pi, mu, omega_cat, k)
        gw = torch.softmax(logits, 1) * grad[s:s + block, None]  # [B, k] (stable when lse overflows)
        gw = torch.nan_to_num(gw)
        if need_x:
            dx[s:s + block] = gw @ mu + torch.bmm(gw[:, None, :], xo).squeeze(1)
        if need_stats:
            gw_all[s:s + block] = gw
    if not need_stats:
        return dx, None, None, None
    return (dx,) + stats_grads(gw_all, x)


def stats_grads(gw: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(dlog_pi, dmu, dOmega)`` from the weighted responsibilities ``gw = g * w`` ``[n, k]``."""
    dlog_pi = gw.sum(0)
    dmu = gw.t() @ x
    domega = torch.stack([0.5 * (x * gw[:, a:a + 1]).t() @ x for a in range(gw.shape[1])])
    return dlog_pi, dmu, domega


def cluster_lse_grads(grad: Tensor, x: Tensor, log_pi: Tensor, mu: Tensor, omega: Tensor):
    """The backward of :func:`cluster_lse_formula` in differentiable torch ops (any order of
    derivative is then exact): ``(dx, dlog_pi, dmu, dOmega)``; ``Omega`` need not be symmetric."""
    om_sym = 0.5 * (omega + omega.transpose(1, 2))
    quad = torch.einsum("nd,kde,ne->nk", x, omega, x)
    gw = torch.softmax(log_pi[None, :] + x @ mu.t() + 0.5 * quad, 1) * grad[:, None]
    dx = gw @ mu + torch.einsum("nk,kde,ne->nd", gw, om_sym, x)
    return dx, gw.sum(0), gw.t() @ x, 0.5 * torch.einsum("nk,nd,ne->kde", gw, x, x)


def _segments(labels: Tensor, k: int):
    """``(order, [(cluster, start, stop), ...])`` of the non-empty clusters, rows sorted by cluster."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=k).tolist()
    segs, start = [], 0
    for a, c in enumerate(counts):
        if c:
            segs.append((a, start, start + c))
        start += c
    return order, segs


def cluster_outer(a: Tensor, b: Tensor, labels: Tensor, num_clusters: int) -> Tensor:
    """``[k, p, q]``: ``out_c = sum_{i: labels_i = c} a_i b_i^T`` (``a [m, p]``, ``b [m, q]``)."""
    k = num_clusters
    if k == 1:
        return (a.t() @ b)[None]
    out = a.new_zeros(k, a.shape[1], b.shape[1])
    order, segs = _segments(labels, k)
    a_s = a[order]
    b_s = a_s if b is a else b[order]
    for c, s, e in segs:
        out[c] = a_s[s:e].t() @ b_s[s:e]
    return out


def cluster_matvec(mats: Tensor, v: Tensor, labels: Tensor) -> Tensor:
    """``[m, p]``: ``out_i = mats[labels_i] @ v_i`` (``mats [k, p, q]``, ``v [m, q]``)."""
    k = mats.shape[0]
    if k == 1:
        return v @ mats[0].t()
    out = v.new_zeros(v.shape[0], mats.shape[1])
    order, segs = _segments(labels, k)
    for c, s, e in segs:
        idx = order[s:e]
        out[idx] = v[idx] @ mats[c].t()
    return out


def exact_lse_forward(x: Tensor, y: Tensor, chunk: int) -> Tensor:
    """``logsumexp_a(x_i . y_a)`` for all i, ``chunk`` rows of ``x`` at a time."""
    out = x.new_empty(x.shape[0])
    for s in range(0, x.shape[0], chunk):
        out[s:s + chunk] = torch.logsumexp(x[s:s + chunk] @ y.t(), dim=1)
    return out


def exact_lse_backward(grad: Tensor, x: Tensor, y: Tensor, lse: Tensor, chunk: int,
                       need_x: bool = True, need_y: bool = True) -> tuple[Tensor | None, Tensor | None]:
    """``dx = g * softmax(x y^T) y`` and ``dy = softmax^T (g x)``, chunk by chunk."""
    dx = torch.empty_like(x) if need_x else None
    dy = torch.zeros_like(y) if need_y else None
    for s in range(0, x.shape[0], chunk):
        p = torch.exp(x[s:s + chunk] @ y.t() - lse[s:s + chunk, None]) * grad[s:s + chunk, None]
        if need_x:
            dx[s:s + chunk] = p @ y
        if need_y:
            dy += p.t() @ x[s:s + chunk]
    return dx, dy
