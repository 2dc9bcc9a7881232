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

``O(n k d^2)``. **Norm regime.** The estimate replaces the distribution of the scalar
products :math:`x_i^\top y_a` by a Gaussian (paper, eq. 3-4), which the paper justifies for
*bounded norms*: the error grows with :math:`\|x\|\|y\|`. On clustered data (4 Gaussian
clusters, d = 32) it is within 1% of the exact loss at mean row norm 1-2 and off by tens of
percent at mean norm 4 with one cluster; more clusters (``num_clusters`` = the number of
groups in ``y``) or normalized rows bring it back. :class:`tgrep.nn.EDRepLoss` measures the
error on a row sample and warns.

The statistics are sums (count, :math:`\sum w y`, :math:`\sum w (y-\mu)(y-\mu)^\top`): with
``distributed=True`` and ``torch.distributed`` initialized they are all-reduced, so the rows
of ``y`` may be sharded across processes.

Ops (``torch.ops.tgrep.*``, :mod:`tgrep.library.softmax_norm`): :func:`log_normalizer`
(estimate), :func:`exact_log_normalizer` (chunked exact value), and the building blocks
:func:`cluster_statistics` and :func:`cluster_log_normalizer` (the fused kernel: Triton on
CUDA, row-blocked torch on CPU; forward and backward never form ``[n, k, d]`` or ``[n, m]``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import library  # noqa: F401  (registers torch.ops.tgrep.*)
from ..kernels.reference.kmeans import all_reduce_sum, dist_ready
from ..library import softmax_norm as lib
from ..utils import check
from .kmeans import kmeans

__all__ = ["log_normalizer", "exact_log_normalizer", "cluster_statistics", "cluster_log_normalizer"]


def _check_float(name: str, t, device=None, dim: int = 2) -> None:
    """Type, rank, device, layout (no host sync: values are checked inside the ops)."""
    check.tensor(name, t, dtypes=check.FLOAT_DTYPES, dim=dim, device=device)
    check.dense(name, t)


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def _check_weights(weights, y) -> None:
    if weights is None:
        return
    _check_float("weights", weights, device=y.device, dim=1)
    check.same_length("weights", weights, "y", y)
    check.values(check.nonneg_flags("weights", weights, allow_inf=False)
                 + [(~(weights > 0).any(), lambda: "'weights' must not all be zero")])


def _check_labels(labels, y) -> None:
    check.tensor("labels", labels, dtypes=check.INDEX_DTYPES, dim=1, device=y.device)
    check.dense("labels", labels)
    check.same_length("labels", labels, "y", y)


# ----------------------------------------------------------------------------- statistics
def _statistics(y: Tensor, labels: Tensor | None, k: int, weights: Tensor | None, dist: bool,
                scale: Tensor | None = None):
    """:func:`cluster_statistics` of ``y / scale`` without validation (``labels`` in ``[0, k)``)."""
    ct = _compute_dtype(y)
    yc = y.to(ct)
    w = None if weights is None else weights.to(ct)
    count, wsum, s1, s2_fn = lib.statistics_sums(yc, labels, k, w, scale)
    reduce = None
    if dist:
        count, wsum, s1 = all_reduce_sum(count), all_reduce_sum(wsum), all_reduce_sum(s1)
        reduce = all_reduce_sum
    return lib.finish_statistics(count, wsum, s1, s2_fn, ct, reduce)


def cluster_statistics(y: Tensor, labels: Tensor | None = None, num_clusters: int = 1, *,
                       weights: Tensor | None = None, distributed: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per-cluster ``(log_weight [k], mu [k, d], omega [k, d, d])`` of the rows of ``y``.

    ``log_weight_a = log sum_{b in V_a} w_b`` (``log |V_a|`` without weights),
    ``mu_a`` the (weighted) mean and ``omega_a = c_a/(c_a-1) * sum w (y-mu)(y-mu)^T / sum w``
    with ``c_a = |V_a|`` (the paper's ``1/(|V_a|-1)`` covariance when unweighted). A
    one-member cluster has ``omega = 0``; an empty one gets ``log_weight = -1e30`` (it adds
    exactly nothing). Differentiable at every order w.r.t. ``y`` and ``weights``. Two
    all-reduced passes (sums, then centered second moments) when ``distributed`` and
    ``torch.distributed`` is initialized; every process must then call it.

    Args:
        y (Tensor): ``[m, d]``.
        labels (Tensor, optional): ``[m]`` cluster ids in ``[0, num_clusters)`` (default: ``None``: one cluster).
        num_clusters (int): :math:`k`. (default: ``1``)
        weights (Tensor, optional): non-negative ``[m]`` (default: all ones).
        distributed (bool): all-reduce over processes. (default: ``False``)
    """
    _check_float("y", y)
    k = check.positive_int("num_clusters", num_clusters)
    dist = dist_ready(distributed)
    if y.shape[0] == 0 and not dist:
        raise ValueError("'y' must have at least one row")
    if labels is None:
        if k != 1:
            raise ValueError("'labels' are required when 'num_clusters' > 1")
    else:
        _check_labels(labels, y)
        check.values(check.index_flags("labels", labels, k))
    _check_weights(weights, y)
    return _statistics(y, labels, k, weights, dist)


# ----------------------------------------------------------------------------- fused kernel
def cluster_log_normalizer(x: Tensor, log_weight: Tensor, mu: Tensor, omega: Tensor) -> Tensor:
    r"""``[n]``: :math:`\operatorname{logsumexp}_\alpha(\log w_\alpha + x_i^\top\mu_\alpha + \frac12 x_i^\top\Omega_\alpha x_i)`.

    The fused kernel ``tgrep::cluster_log_normalizer`` (Triton on CUDA, row-blocked torch on
    CPU), differentiable at every order w.r.t. all four inputs. ``omega`` is symmetrized
    first. Memory ``O(n d + k d^2)`` plus one row block; no ``[n, k, d]`` tensor is formed.
    Stable: shifted by the row maximum before exponentiation; a value beyond the dtype's range
    is ``+inf`` (as the exact one is), never NaN.
    """
    _check_float("x", x)
    dev = x.device
    _check_float("log_weight", log_weight, device=dev, dim=1)
    _check_float("mu", mu, device=dev)
    _check_float("omega", omega, device=dev, dim=3)
    n, d = x.shape
    k = log_weight.shape[0]
    if k == 0:
        raise ValueError("'log_weight' must hold at least one cluster")
    if mu.shape != (k, d):
        raise ValueError(f"'mu' must have shape ({k}, {d}), got {tuple(mu.shape)}")
    if omega.shape != (k, d, d):
        raise ValueError(f"'omega' must have shape ({k}, {d}, {d}), got {tuple(omega.shape)}")
    return _cluster_lse(x, log_weight, mu, omega)


def _cluster_lse(x: Tensor, log_weight: Tensor, mu: Tensor, omega: Tensor, scale: Tensor | None = None) -> Tensor:
    ct = _compute_dtype(x)
    x_, lw, mu_, om = (t.to(ct) for t in (x, log_weight, mu, omega))
    lw = lw.clamp_min(lib.EMPTY)
    om = 0.5 * (om + om.transpose(1, 2))
    scale = torch.ones((), dtype=ct, device=x.device) if scale is None else scale.to(ct).detach()
    return torch.ops.tgrep.cluster_log_normalizer(x_, lw, mu_, om, scale).to(x.dtype)


# ----------------------------------------------------------------------------- public ops
def _compact(labels: Tensor, y: Tensor, k: int, dist: bool) -> tuple[Tensor, int]:
    """User labels -> ids ``0 .. K-1`` (distinct labels in order), so nothing is sized by
    ``max(label) + 1``. Distributed: the global ``max + 1`` (empty clusters add nothing)."""
    if dist:
        local = labels.max() + 1 if labels.numel() else labels.new_ones(())
        t = local.reshape(1).long()
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return labels.long(), max(k, int(t))
    check.values(check.index_flags("labels", labels, 2**62))
    uniq, inv = torch.unique(labels, return_inverse=True)
    return inv, int(uniq.numel())


def log_normalizer(x: Tensor, y: Tensor, *, num_clusters: int = 1, labels: Tensor | None = None,
                   weights: Tensor | None = None, detach_stats: bool = True, seed: int = 0,
                   kmeans_iters: int = 10, kmeans_sample: int | None = None, distributed: bool = False,
                   return_labels: bool = False):
    r"""EDRep estimate of :math:`\log Z_i = \log\sum_a w_a e^{x_i^\top y_a}` in ``O(n k d^2)``.

    See the module docstring for the formula and the norm regime in which it is accurate.

    Args:
        x (Tensor): queries ``[n, d]``.
        y (Tensor): keys ``[m, d]`` (``y`` may be ``x``).
        num_clusters (int): :math:`\kappa`, clusters of the rows of ``y`` found by
            :func:`tgrep.ops.kmeans` (ignored when ``labels`` is given). (default: ``1``)
        labels (Tensor, optional): ``[m]`` cluster of each row of ``y`` (any non-negative
            ids: the distinct values are the clusters, so ids ``{0, 10**6}`` are two clusters).
            (default: ``None``)
        weights (Tensor, optional): non-negative ``[m]`` weights ``w_a`` (default: all ones).
        detach_stats (bool): treat the cluster statistics as constants (the paper's
            gradient, eq. 8); ``False`` also differentiates through ``mu`` and ``Omega``
            into ``y`` (every order). (default: ``True``)
        seed (int): k-means seed. (default: ``0``)
        kmeans_iters (int): Lloyd iterations (the estimate needs a good partition, not a
            converged one). (default: ``10``)
        kmeans_sample (int, optional): Lloyd runs on at most this many (seeded) rows of
            ``y``, then every row is assigned once. (default: ``None``: ``256 * num_clusters``,
            as faiss)
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
    check.seed("seed", seed)
    m = y.shape[0]
    dist = dist_ready(distributed)
    if m == 0 and not dist:
        raise ValueError("'y' must have at least one row")
    if labels is None:
        if k > m and not dist:
            raise ValueError(f"'num_clusters' ({k}) must not exceed the number of rows of 'y' ({m})")
        if k > 1:
            labels = kmeans(y.detach(), k, iters=kmeans_iters, seed=seed, distributed=dist, sample=kmeans_sample)
    else:
        _check_labels(labels, y)
        labels, k = _compact(labels, y, k, dist)
    _check_weights(weights, y)
    out = _estimate(x, y, labels, k, weights, detach_stats, dist)
    return (out, labels) if return_labels else out


def _estimate(x, y, labels, k, weights, detach_stats, dist):
    """The estimate from trusted ``labels`` in ``[0, k)`` (no validation, no host sync)."""
    ys = y.detach() if detach_stats else y
    ws = weights.detach() if (weights is not None and detach_stats) else weights
    if dist:
        log_w, mu, omega = _statistics(ys, labels, k, ws, dist)
        return _cluster_lse(x, log_w, mu, omega)
    # scale before the moments: y / s with s a power of two >= 1 (exact, detached), x * s;
    # x.mu + x Omega x / 2 is unchanged, and the second moments of rows of norm 1e20 no
    # longer overflow (the result is +inf only when log Z itself passes the dtype's range)
    lo, hi = torch.aminmax(ys.detach())  # one pass, no temporary (abs().amax() is 3x slower)
    amax = torch.maximum(hi, -lo).to(_compute_dtype(y)).clamp_min(1.0)
    s = torch.exp2(torch.floor(torch.log2(amax)))
    log_w, mu, omega = _statistics(ys, labels, k, ws, dist, scale=s)
    return _cluster_lse(x, log_w, mu, omega, s)


def exact_log_normalizer(x: Tensor, y: Tensor, *, chunk: int | None = None,
                         weights: Tensor | None = None) -> Tensor:
    r"""Exact :math:`\log Z_i = \operatorname{logsumexp}_a(x_i^\top y_a + \log w_a)`, chunked.

    Args:
        x (Tensor): ``[n, d]``.  y (Tensor): ``[m, d]`` (may be ``x``).
        chunk (int, optional): rows of ``x`` per block; memory ``O(chunk * m)``.
            (default: so that a block holds about 16M numbers)
        weights (Tensor, optional): non-negative ``[m]`` weights (default: all ones).

    Differentiable w.r.t. ``x`` and ``y`` (chunked backward, same memory bound; every order).
    ``O(n m d)``: for validation and small problems.
    """
    _check_float("x", x)
    _check_float("y", y, device=x.device)
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
        _check_weights(weights, y)
        # fold log w into an extra coordinate: x' = [x, 1], y' = [y, log w]
        lw = torch.log(weights.to(ct)).clamp_min(lib.EMPTY)
        x2 = torch.cat([x.to(ct), x.new_ones(x.shape[0], 1, dtype=ct)], 1)
        y2 = torch.cat([y.to(ct), lw[:, None]], 1)
        return torch.ops.tgrep.exact_log_normalizer(x2, y2, chunk).to(x.dtype)
    return torch.ops.tgrep.exact_log_normalizer(x.to(ct), y.to(ct), chunk).to(x.dtype)
