r"""Linear-time softmax normalizers (EDRep; Dall'Amico & Belliardo, 2025, Sec. 2).

For embeddings :math:`X \in \mathbb{R}^{n\times d}`, :math:`Y \in \mathbb{R}^{m\times d}` the
softmax normalizers are :math:`Z_i = \sum_a e^{x_i^\top y_a}`: ``O(n m d)`` exactly. Split the
rows of :math:`Y` into clusters :math:`V_\alpha` (k-means) with sizes :math:`|V_\alpha|`, means
:math:`\mu_\alpha` and covariances :math:`\Omega_\alpha` (normalized by :math:`|V_\alpha|-1`);
the paper's eq. (4)-(5) give, in log space,

.. math::
    \log \hat Z_i = \operatorname{logsumexp}_\alpha\big(\log|V_\alpha| + x_i^\top\mu_\alpha
    + \tfrac12 x_i^\top \Omega_\alpha x_i\big)
    \qquad (\log|V_\alpha| = \log m + \log\pi_\alpha),

``O(n k d^2)``. The statistics are sums (count, :math:`\sum w y`, :math:`\sum w (y-\mu)(y-\mu)^\top`):
with ``distributed=True`` and ``torch.distributed`` initialized they are all-reduced, so the
rows of ``y`` may be sharded across processes.

Ops: :func:`log_normalizer` (estimate), :func:`exact_log_normalizer` (chunked exact value),
and their building blocks :func:`cluster_statistics` and :func:`cluster_log_normalizer`
(the fused kernel: Triton on CUDA, row-blocked torch on CPU; forward and backward never
form ``[n, k, d]`` or ``[n, m]``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _backend
from ..kernels.reference import softmax_norm as ref
from ..utils import check
from .kmeans import kmeans

__all__ = ["log_normalizer", "exact_log_normalizer", "cluster_statistics", "cluster_log_normalizer"]

_EMPTY = -1e30  # log-weight of an empty cluster: exp() underflows to exactly 0


def _dist_ready(distributed: bool) -> bool:
    return bool(distributed) and torch.distributed.is_available() and torch.distributed.is_initialized()


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; backward sums the incoming gradients over processes too
    (each process's loss depends on the global sum)."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def all_reduce_sum(t: Tensor) -> Tensor:
    """Differentiable sum of ``t`` over the processes of the default group."""
    if t.requires_grad:
        return _AllReduceSum.apply(t)
    t = t.clone()
    torch.distributed.all_reduce(t)
    return t


_all_reduce = all_reduce_sum


def _check_float(name: str, t, device=None) -> None:
    """``check.tensor(..., finite=True)`` with a cheap path: one sum is finite iff every entry
    is (up to overflow of the sum, in which case the full check decides)."""
    check.tensor(name, t, dtypes=check.FLOAT_DTYPES, dim=2, device=device)
    if t.numel() and not bool(torch.isfinite(t.sum())):
        check.tensor(name, t, finite=True)


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


# ----------------------------------------------------------------------------- statistics
def cluster_statistics(y: Tensor, labels: Tensor | None = None, num_clusters: int = 1, *,
                       weights: Tensor | None = None, distributed: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per-cluster ``(log_weight [k], mu [k, d], omega [k, d, d])`` of the rows of ``y``.

    ``log_weight_a = log sum_{b in V_a} w_b`` (``log |V_a|`` without weights),
    ``mu_a`` the (weighted) mean and ``omega_a = c_a/(c_a-1) * sum w (y-mu)(y-mu)^T / sum w``
    with ``c_a = |V_a|`` (the paper's ``1/(|V_a|-1)`` covariance when unweighted). A
    one-member cluster has ``omega = 0``; an empty one gets ``log_weight = -1e30`` (it adds
    exactly nothing). Differentiable w.r.t. ``y`` (and ``weights``). Two all-reduced passes
    (sums, then centered second moments) when ``distributed`` and ``torch.distributed`` is
    initialized; every process must then call it.
    """
    check.tensor("y", y, dtypes=check.FLOAT_DTYPES, dim=2, finite=True)
    k = check.positive_int("num_clusters", num_clusters)
    m = y.shape[0]
    dist = _dist_ready(distributed)
    if m == 0 and not dist:
        raise ValueError("'y' must have at least one row")
    if labels is None:
        if k != 1:
            raise ValueError("'labels' are required when 'num_clusters' > 1")
    else:
        check.tensor("labels", labels, dtypes=check.INDEX_DTYPES, dim=1, device=y.device)
        check.same_length("labels", labels, "y", y)
        check.index_range("labels", labels, k)
    if weights is not None:
        check.tensor("weights", weights, dtypes=check.FLOAT_DTYPES, dim=1, device=y.device, finite=True)
        check.same_length("weights", weights, "y", y)
        if m and bool((weights < 0).any()):
            raise ValueError("'weights' must be non-negative")
    return _statistics(y, labels, k, weights, dist)


def _statistics(y: Tensor, labels: Tensor | None, k: int, weights: Tensor | None, dist: bool):
    """:func:`cluster_statistics` without validation."""
    ct = _compute_dtype(y)
    yc = y.to(ct)
    m, d = y.shape
    w = None if weights is None else weights.to(ct)
    wy = yc if w is None else yc * w[:, None]
    if labels is None or k == 1:
        count = torch.full((1,), float(m), dtype=ct, device=y.device)
        wsum = count if w is None else w.sum(0, keepdim=True)
        s1 = wy.sum(0, keepdim=True)
    else:
        labels = labels.long()
        if k <= 256:  # one GEMM beats index_add on CPU
            onehot = torch.nn.functional.one_hot(labels, k).to(ct)
            count = onehot.sum(0)
            wsum = count if w is None else w @ onehot
            s1 = onehot.t() @ wy
        else:
            count = torch.bincount(labels, minlength=k).to(ct)
            wsum = count if w is None else torch.zeros(k, dtype=ct, device=y.device).index_add(0, labels, w)
            s1 = torch.zeros(k, d, dtype=ct, device=y.device).index_add(0, labels, wy)
    if dist:
        count, wsum, s1 = _all_reduce(count), _all_reduce(wsum), _all_reduce(s1)
    if not bool((wsum > 0).any()):
        raise ValueError("'weights' must not all be zero")
    mu = s1 / wsum.clamp_min(torch.finfo(ct).tiny)[:, None]
    # centering at the detached mean is exact for values and gradients: the derivative of
    # sum w (y - mu)(y - mu)^T w.r.t. mu vanishes at the (global) weighted mean
    sw = None if w is None else w.clamp_min(0).sqrt()[:, None]
    if labels is None or k == 1:
        cs = yc - mu.detach()
        cs = cs if sw is None else cs * sw
        s2 = (cs.t() @ cs)[None]
    else:
        s2 = []
        for a in range(k):
            idx = (labels == a).nonzero().flatten()
            block = yc[idx] - mu[a].detach()
            if sw is not None:
                block = block * sw[idx]
            s2.append(block.t() @ block)
        s2 = torch.stack(s2)
    if dist:
        s2 = _all_reduce(s2)
    safe_w = wsum.clamp_min(torch.finfo(ct).tiny)
    bessel = torch.where(count > 1, count / (count - 1).clamp_min(1), torch.zeros_like(count))
    omega = s2 * (bessel / safe_w)[:, None, None]
    omega = 0.5 * (omega + omega.transpose(1, 2))
    log_w = torch.where(wsum > 0, torch.log(safe_w), torch.full_like(wsum, _EMPTY))
    return log_w, mu, omega


# ----------------------------------------------------------------------------- fused kernel
class _ClusterLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, log_w, mu, omega, backend):
        if backend == "triton":
            from ..kernels.triton import softmax_norm as tri

            lse = tri.cluster_lse_forward(x, log_w, mu, omega)
        else:
            lse = ref.cluster_lse_forward(x, log_w, mu, omega)
        ctx.save_for_backward(x, log_w, mu, omega, lse)
        ctx.backend = backend
        return lse

    @staticmethod
    def backward(ctx, grad):
        x, log_w, mu, omega, lse = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        need_stats = any(ctx.needs_input_grad[1:4])
        grad = grad.contiguous()
        if ctx.backend == "triton":
            from ..kernels.triton import softmax_norm as tri

            dx, gw = tri.cluster_lse_backward(grad, x, log_w, mu, omega, lse, need_stats=need_stats)
            stats = ref.stats_grads(gw, x) if need_stats else (None, None, None)
        else:
            dx, *stats = ref.cluster_lse_backward(grad, x, log_w, mu, omega, lse, need_x=need_x,
                                                  need_stats=need_stats)
        return (dx if need_x else None, *stats, None)


def cluster_log_normalizer(x: Tensor, log_weight: Tensor, mu: Tensor, omega: Tensor) -> Tensor:
    r"""``[n]``: :math:`\operatorname{logsumexp}_\alpha(\log w_\alpha + x_i^\top\mu_\alpha + \frac12 x_i^\top\Omega_\alpha x_i)`.

    The fused kernel (Triton on CUDA, row-blocked torch on CPU), differentiable w.r.t. all
    four inputs. ``omega`` is symmetrized first. Memory ``O(n d + k d^2)`` plus one row
    block; no ``[n, k, d]`` tensor is formed.
    """
    check.tensor("x", x, dtypes=check.FLOAT_DTYPES, dim=2, finite=True)
    dev = x.device
    check.tensor("log_weight", log_weight, dtypes=check.FLOAT_DTYPES, dim=1, device=dev)
    check.tensor("mu", mu, dtypes=check.FLOAT_DTYPES, dim=2, device=dev, finite=True)
    check.tensor("omega", omega, dtypes=check.FLOAT_DTYPES, dim=3, device=dev, finite=True)
    n, d = x.shape
    k = log_weight.shape[0]
    if k == 0:
        raise ValueError("'log_weight' must hold at least one cluster")
    if mu.shape != (k, d):
        raise ValueError(f"'mu' must have shape ({k}, {d}), got {tuple(mu.shape)}")
    if omega.shape != (k, d, d):
        raise ValueError(f"'omega' must have shape ({k}, {d}, {d}), got {tuple(omega.shape)}")
    if bool(torch.isnan(log_weight).any()) or bool((log_weight == float("inf")).any()):
        raise ValueError("'log_weight' contains NaN or +inf")
    return _cluster_lse(x, log_weight, mu, omega)


def _cluster_lse(x: Tensor, log_weight: Tensor, mu: Tensor, omega: Tensor) -> Tensor:
    """:func:`cluster_log_normalizer` without validation."""
    n, d = x.shape
    dev = x.device
    ct = _compute_dtype(x)
    out_dtype = x.dtype
    x_, lw, mu_, om = (t.to(ct) for t in (x, log_weight, mu, omega))
    lw = lw.clamp_min(_EMPTY)
    om = 0.5 * (om + om.transpose(1, 2))
    backend = _backend.choose(dev, implemented=("reference", "triton"), op="cluster_log_normalizer")
    if backend == "triton" and (ct == torch.float64 or d > 128):
        backend = "reference"  # the Triton kernel is float32 and holds d <= 128 in registers
    if n == 0:
        return x.new_zeros(0)
    out = _ClusterLSE.apply(x_.contiguous(), lw.contiguous(), mu_.contiguous(), om.contiguous(), backend)
    return out.to(out_dtype)


# ----------------------------------------------------------------------------- public ops
def log_normalizer(x: Tensor, y: Tensor, *, num_clusters: int = 1, labels: Tensor | None = None,
                   weights: Tensor | None = None, detach_stats: bool = True, seed: int = 0,
                   kmeans_iters: int = 10, kmeans_sample: int | None = 8192, distributed: bool = False,
                   return_labels: bool = False):
    r"""EDRep estimate of :math:`\log Z_i = \log\sum_a w_a e^{x_i^\top y_a}` in ``O(n k d^2)``.

    Args:
        x (Tensor): queries ``[n, d]``.
        y (Tensor): keys ``[m, d]`` (``y`` may be ``x``).
        num_clusters (int): :math:`\kappa`, clusters of the rows of ``y`` found by
            :func:`tgrep.ops.kmeans` (ignored when ``labels`` is given). (default: ``1``)
        labels (Tensor, optional): ``[m]`` cluster of each row of ``y``; the number of
            clusters is then ``max(num_clusters, labels.max() + 1)``. (default: ``None``)
        weights (Tensor, optional): non-negative ``[m]`` weights ``w_a`` (default: all ones).
        detach_stats (bool): treat the cluster statistics as constants (the paper's
            gradient, eq. 8); ``False`` also differentiates through ``mu`` and ``Omega``
            into ``y``. (default: ``True``)
        seed (int): k-means seed. (default: ``0``)
        kmeans_iters (int): Lloyd iterations (the estimate needs a good partition, not a
            converged one). (default: ``10``)
        kmeans_sample (int, optional): Lloyd runs on at most this many (seeded) rows of
            ``y``, then every row is assigned once; ``None`` uses all rows. (default: ``8192``)
        distributed (bool): all-reduce the statistics (and k-means) over processes when
            ``torch.distributed`` is initialized: ``y`` is then this process's shard of the
            rows and every process must call the op. (default: ``False``)
        return_labels (bool): also return the cluster labels. (default: ``False``)

    Returns:
        ``[n]`` tensor (dtype of ``x``), or ``(log_z, labels)``.
    """
    _check_float("x", x)
    _check_float("y", y, device=x.device)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"'x' and 'y' must have the same number of columns, got {x.shape[1]} and {y.shape[1]}")
    k = check.positive_int("num_clusters", num_clusters)
    m = y.shape[0]
    dist = _dist_ready(distributed)
    if m == 0 and not dist:
        raise ValueError("'y' must have at least one row")
    if labels is None:
        if k > m and not dist:
            raise ValueError(f"'num_clusters' ({k}) must not exceed the number of rows of 'y' ({m})")
        labels = kmeans(y.detach(), k, iters=kmeans_iters, seed=seed, distributed=dist,
                        sample=kmeans_sample, _trusted=True) if k > 1 else None
    else:
        check.tensor("labels", labels, dtypes=check.INDEX_DTYPES, dim=1, device=y.device)
        check.same_length("labels", labels, "y", y)
        check.index_range("labels", labels, 2**62)
        local_max = int(labels.max()) + 1 if labels.numel() else 1
        if dist:
            t = torch.tensor([local_max], device=y.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            local_max = int(t)
        k = max(k, local_max)
    if weights is not None:
        check.tensor("weights", weights, dtypes=check.FLOAT_DTYPES, dim=1, device=y.device, finite=True)
        check.same_length("weights", weights, "y", y)
        if m and bool((weights < 0).any()):
            raise ValueError("'weights' must be non-negative")
    ys = y.detach() if detach_stats else y
    ws = weights.detach() if (weights is not None and detach_stats) else weights
    log_w, mu, omega = _statistics(ys, labels, k, ws, dist)
    out = _cluster_lse(x, log_w, mu, omega)
    return (out, labels) if return_labels else out


class _ExactLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, chunk):
        lse = ref.exact_lse_forward(x, y, chunk)
        ctx.save_for_backward(x, y, lse)
        ctx.chunk = chunk
        return lse

    @staticmethod
    def backward(ctx, grad):
        x, y, lse = ctx.saved_tensors
        dx, dy = ref.exact_lse_backward(grad.contiguous(), x, y, lse, ctx.chunk,
                                        need_x=ctx.needs_input_grad[0], need_y=ctx.needs_input_grad[1])
        return dx, dy, None


def exact_log_normalizer(x: Tensor, y: Tensor, *, chunk: int | None = None,
                         weights: Tensor | None = None) -> Tensor:
    r"""Exact :math:`\log Z_i = \operatorname{logsumexp}_a(x_i^\top y_a + \log w_a)`, chunked.

    Args:
        x (Tensor): ``[n, d]``.  y (Tensor): ``[m, d]`` (may be ``x``).
        chunk (int, optional): rows of ``x`` per block; memory ``O(chunk * m)``.
            (default: so that a block holds about 16M numbers)
        weights (Tensor, optional): non-negative ``[m]`` weights (default: all ones).

    Differentiable w.r.t. ``x`` and ``y`` (chunked backward, same memory bound).
    ``O(n m d)``: for validation and small problems.
    """
    check.tensor("x", x, dtypes=check.FLOAT_DTYPES, dim=2, finite=True)
    check.tensor("y", y, dtypes=check.FLOAT_DTYPES, dim=2, device=x.device, finite=True)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"'x' and 'y' must have the same number of columns, got {x.shape[1]} and {y.shape[1]}")
    if y.shape[0] == 0:
        raise ValueError("'y' must have at least one row")
    m = y.shape[0]
    if chunk is None:
        chunk = max(1, (1 << 24) // m)
    chunk = check.positive_int("chunk", chunk)
    ct = _compute_dtype(x)
    if weights is not None:
        check.tensor("weights", weights, dtypes=check.FLOAT_DTYPES, dim=1, device=x.device, finite=True)
        check.same_length("weights", weights, "y", y)
        if bool((weights < 0).any()) or not bool((weights > 0).any()):
            raise ValueError("'weights' must be non-negative and not all zero")
        # fold log w into an extra coordinate: x' = [x, 1], y' = [y, log w]
        lw = torch.log(weights.to(ct)).clamp_min(_EMPTY)
        x2 = torch.cat([x.to(ct), x.new_ones(x.shape[0], 1, dtype=ct)], 1)
        y2 = torch.cat([y.to(ct), lw[:, None]], 1)
        return _ExactLSE.apply(x2, y2, chunk).to(x.dtype)
    return _ExactLSE.apply(x.to(ct), y.to(ct), chunk).to(x.dtype)
