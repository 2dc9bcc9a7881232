"""Custom ops of the EDRep family (linear-time softmax normalizers, Dall'Amico & Belliardo 2025).

* ``tgrep::cluster_log_normalizer`` -- the fused kernel ``logsumexp_a(log w_a + x mu_a +
  x Omega_a x / 2)`` (Triton on CUDA, row-blocked torch on CPU), its backward
  ``tgrep::cluster_log_normalizer_backward``;
* ``tgrep::cluster_outer`` / ``tgrep::cluster_matvec`` -- per-cluster second moments and
  their transposes (the statistics' ``Omega`` and its gradients);
* ``tgrep::exact_log_normalizer`` (+ ``_backward``) -- the chunked exact value;
* ``tgrep::kmeans`` / ``tgrep::assign_clusters`` -- the clustering of the rows of ``y``;
* ``tgrep::normalize_target`` / ``tgrep::target_matmul`` -- the row-normalized target
  ``P`` of the loss and the product ``P y`` (and ``P^T g``).

Every op runs its value checks inside (so ``torch.compile`` traces no host sync) and has a
fake kernel. Gradients: first derivatives use the kernels; when a graph of the gradient is
requested (``create_graph=True``), the backward of ``cluster_log_normalizer`` and
``exact_log_normalizer`` switches to the same formula in differentiable torch (it then
materializes ``[n, k, d]`` resp. ``[n, m]``), so every order of derivative is exact;
``cluster_outer`` / ``cluster_matvec`` and ``target_matmul`` are linear and each other's
transposes, exact at every order too.

:func:`statistics` composes the cluster statistics from these ops (plain torch otherwise), so
they are differentiable at every order w.r.t. ``y`` and ``weights``.
"""
# no `from __future__ import annotations` here: torch.library infers the schema from real type hints

from typing import Optional

import torch
from torch import Tensor

from ..kernels.reference import kmeans as ref_kmeans
from ..kernels.reference import softmax_norm as ref
from ..utils import check
from ._register import kernel_op, launch_op

EMPTY = -1e30  # log-weight of an empty cluster: exp() underflows to exactly 0
_NONE = (0,)


def _triton():
    from ..kernels.triton import softmax_norm as tri

    return tri


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(_NONE)


def _finite(t: Tensor, message: str) -> None:
    """One pass: a sum is finite iff every entry is (up to overflow of the sum; then the full
    test decides). Runs inside the ops (eager), so the host sync is fine."""
    if t.numel() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(message)


def _scaled(x: Tensor, scale: Tensor) -> Tensor:
    """``x * scale`` clamped to the dtype's range (``scale`` a power of two >= 1)."""
    if float(scale) == 1.0:
        return x
    return _scaled_traced(x, scale)


def _scaled_traced(x: Tensor, scale: Tensor) -> Tensor:
    """:func:`_scaled` without the host sync (the Triton launchers run in traced code)."""
    big = torch.finfo(x.dtype).max
    return (x * scale.to(x.dtype)).clamp(-big, big)


# ------------------------------------------------------------------------------ fused kernel
def _check_cln(x, log_weight, mu, omega, scale):
    n, d = x.shape
    k = log_weight.shape[0]
    if mu.shape != (k, d) or omega.shape != (k, d, d):
        raise ValueError(f"'mu' and 'omega' must have shapes ({k}, {d}) and ({k}, {d}, {d}), "
                         f"got {tuple(mu.shape)} and {tuple(omega.shape)}")
    # omega may hold +-inf: second moments of finite rows of norm ~1e20 overflow float32; the
    # logits are then +inf (the exact value overflows too), never NaN
    _finite(x, "'x' contains NaN or infinite values")
    flags = check.finite_flags("mu", mu)
    if omega.numel():
        flags.append((torch.isnan(omega).any(), lambda: "'omega' contains NaN"))
    if k:
        flags.append(((torch.isnan(log_weight) | (log_weight == float("inf"))).any(),
                      lambda: "'log_weight' contains NaN or +inf"))
    check.values(flags)


def _tri_supports(x, *args) -> bool:
    return _triton().supports(x)


@kernel_op("tgrep::cluster_log_normalizer_reference", check=_check_cln)
def _cln_reference(x: Tensor, log_weight: Tensor, mu: Tensor, omega: Tensor, scale: Tensor) -> Tensor:
    """The reference twin of ``tgrep::cluster_log_normalizer`` (row-blocked torch)."""
    return ref.cluster_lse_forward(_scaled(x.contiguous(), scale), log_weight, mu, omega)


@_cln_reference.register_fake
def _(x, log_weight, mu, omega, scale):
    return x.new_empty(x.shape[0])


def _tri_forward():
    from ..kernels.triton.softmax_norm import cluster_lse_forward

    def launch(token, x, log_weight, mu, omega, scale):
        return cluster_lse_forward(_scaled_traced(x, scale + token.to(scale.dtype)), log_weight, mu, omega)

    return launch


cluster_log_normalizer = launch_op("tgrep::cluster_log_normalizer", reference=_cln_reference, triton=_tri_forward,
                                   check=_check_cln, supports=_tri_supports)
cluster_log_normalizer.__doc__ = """``[n]``: ``logsumexp_a(log_weight_a + x'_i mu_a + x'_i Omega_a x'_i / 2)`` with
``x' = scale * x`` (``scale``: a 0-d power of two >= 1 that the statistics were divided by, so
that moments of huge rows do not overflow; ``x'`` clamped to the dtype's range). A
:func:`~tgrep.library.launch_op`: Triton kernels visible to Inductor on CUDA, the row-blocked
reference twin elsewhere."""


def _ref_cln_backward(grad, x, log_weight, mu, omega, lse, scale, need_x, need_stats):
    x = _scaled(x.contiguous(), scale)
    dx, *stats = ref.cluster_lse_backward(grad.contiguous(), x, log_weight, mu, omega, lse,
                                          need_x=need_x, need_stats=need_stats)
    dx = dx if need_x else _empty(x)
    if not need_stats:
        return dx, _empty(x), _empty(x), _empty(x)
    return (dx, *stats)


@kernel_op("tgrep::cluster_log_normalizer_backward_reference")
def _cln_backward_reference(grad: Tensor, x: Tensor, log_weight: Tensor, mu: Tensor, omega: Tensor,
                            lse: Tensor, scale: Tensor, need_x: bool, need_stats: bool
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The reference twin of ``tgrep::cluster_log_normalizer_backward``."""
    return _ref_cln_backward(grad, x, log_weight, mu, omega, lse, scale, need_x, need_stats)


@_cln_backward_reference.register_fake
def _(grad, x, log_weight, mu, omega, lse, scale, need_x, need_stats):
    n, d = x.shape
    k = mu.shape[0]
    dx = x.new_empty(n, d) if need_x else _empty(x)
    if not need_stats:
        return dx, _empty(x), _empty(x), _empty(x)
    return dx, x.new_empty(k), x.new_empty(k, d), x.new_empty(k, d, d)


def _tri_cln_backward():
    from ..kernels.triton.softmax_norm import cluster_lse_backward

    def launch(token, grad, x, log_weight, mu, omega, lse, scale, need_x, need_stats):
        x = _scaled_traced(x, scale + token.to(scale.dtype))
        dx, gw = cluster_lse_backward(grad, x.contiguous(), log_weight, mu, omega, lse, need_stats=need_stats)
        dx = dx if need_x else _empty(x)
        if not need_stats:
            return dx, _empty(x), _empty(x), _empty(x)
        return (dx, *ref.stats_grads(gw, x))

    return launch


cluster_log_normalizer_backward = launch_op(
    "tgrep::cluster_log_normalizer_backward", reference=_cln_backward_reference, triton=_tri_cln_backward,
    supports=lambda grad, x, *args: _triton().supports(x))
cluster_log_normalizer_backward.__doc__ = """``(dx', dlog_weight, dmu, domega)`` of ``sum_i grad_i lse_i`` w.r.t.
``x' = scale * x`` and the statistics (``[0]`` for what is not needed); ``omega`` symmetric."""


def _cln_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output)


def _cln_backward(ctx, grad):
    x, lw, mu, om, scale, lse = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    need_stats = any(ctx.needs_input_grad[1:4])
    sc = scale.to(x.dtype)
    if torch.is_grad_enabled():  # a graph of the gradient is wanted: differentiable formula
        dx, dlw, dmu, dom = ref.cluster_lse_grads(grad, x * sc, lw, mu, om)
    else:
        om_sym = 0.5 * (om + om.transpose(1, 2))
        dx, dlw, dmu, dom = cluster_log_normalizer_backward(grad, x, lw, mu, om_sym, lse, scale, need_x,
                                                            need_stats)
    if not need_stats:
        dlw = dmu = dom = None
    return (dx * sc if need_x else None), dlw, dmu, dom, None


cluster_log_normalizer.register_autograd(_cln_backward, setup_context=_cln_setup)
_cln_reference.register_autograd(_cln_backward, setup_context=_cln_setup)


# ------------------------------------------------------------------------------ second moments
def _check_labels(name_rows, rows, labels, k, flags=()):
    if labels.shape[0] != rows.shape[0]:
        raise ValueError(f"'labels' must have one entry per row of '{name_rows}' ({rows.shape[0]}), "
                         f"got {labels.shape[0]}")
    check.values(list(flags) + check.index_flags("labels", labels, k))


def _check_outer(a, b, labels, k):
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"'a' and 'b' must have the same number of rows, got {a.shape[0]} and {b.shape[0]}")
    # the statistics call this op on the (centred, weighted) rows of y: the check that names them
    _finite(a, "'y' (the rows summarized) contains NaN or infinite values")
    if b is not a:
        _finite(b, "'y' (the rows summarized) contains NaN or infinite values")
    _check_labels("a", a, labels, k)


@kernel_op("tgrep::cluster_outer", check=_check_outer)
def cluster_outer(a: Tensor, b: Tensor, labels: Tensor, num_clusters: int) -> Tensor:
    """``[k, p, q]``: ``sum_{i in cluster c} a_i b_i^T``."""
    return ref.cluster_outer(a, b, labels.long(), num_clusters)


@cluster_outer.register_fake
def _(a, b, labels, num_clusters):
    return a.new_empty(num_clusters, a.shape[1], b.shape[1])


@kernel_op("tgrep::cluster_matvec",
           check=lambda mats, v, labels: _check_labels("v", v, labels, mats.shape[0]))
def cluster_matvec(mats: Tensor, v: Tensor, labels: Tensor) -> Tensor:
    """``[m, p]``: ``mats[labels_i] @ v_i``."""
    return ref.cluster_matvec(mats, v, labels.long())


@cluster_matvec.register_fake
def _(mats, v, labels):
    return v.new_empty(v.shape[0], mats.shape[1])


def _outer_setup(ctx, inputs, output):
    a, b, labels, k = inputs
    ctx.save_for_backward(a, b, labels)


def _outer_backward(ctx, grad):
    a, b, labels = ctx.saved_tensors
    da = cluster_matvec(grad, b, labels) if ctx.needs_input_grad[0] else None
    db = cluster_matvec(grad.transpose(1, 2), a, labels) if ctx.needs_input_grad[1] else None
    return da, db, None, None


def _matvec_setup(ctx, inputs, output):
    mats, v, labels = inputs
    ctx.save_for_backward(mats, v, labels)
    ctx.num_clusters = mats.shape[0]


def _matvec_backward(ctx, grad):
    mats, v, labels = ctx.saved_tensors
    dm = cluster_outer(grad, v, labels, ctx.num_clusters) if ctx.needs_input_grad[0] else None
    dv = cluster_matvec(mats.transpose(1, 2), grad, labels) if ctx.needs_input_grad[1] else None
    return dm, dv, None


cluster_outer.register_autograd(_outer_backward, setup_context=_outer_setup)
cluster_matvec.register_autograd(_matvec_backward, setup_context=_matvec_setup)


def statistics(y: Tensor, labels: Optional[Tensor], k: int, weights: Optional[Tensor]):
    r"""``(log_weight [k], mu [k, d], omega [k, d, d])`` of the rows of ``y`` per cluster (no checks).

    ``omega_a = c_a/(c_a-1) * S_a / W_a`` with ``S_a = sum w (y - mu_a)(y - mu_a)^T`` computed
    as ``sum w (y - s)(y - s)^T - W_a (mu_a - s)(mu_a - s)^T`` at the *detached* mean ``s``:
    the same value, numerically centred, and an identity in ``y`` (the correction is what
    the derivatives of order >= 2 need; centring at a detached mean alone gets them wrong).
    Plain torch + :func:`cluster_outer`; differentiable at every order. All-reduced over
    processes when a ``torch.distributed`` group is up and ``dist`` sums are wanted: see
    :func:`statistics_sums`.
    """
    count, wsum, s1, s2_fn = statistics_sums(y, labels, k, weights)
    return finish_statistics(count, wsum, s1, s2_fn, y.dtype)


def statistics_sums(y, labels, k, weights, scale: Optional[Tensor] = None):
    """``(count [k], wsum [k], s1 [k, d], s2(mu) -> [k, d, d])``: the sufficient statistics (sums)
    of the rows ``y / scale`` (``scale``: a 0-d power of two, so the division is exact; it is
    fused into the centring pass instead of costing a pass of its own)."""
    m, d = y.shape
    w = weights
    wy = y if w is None else y * w[:, None]
    if labels is None or k == 1:
        count = y.new_full((1,), m) if m else y.new_zeros(1)
        wsum = count if w is None else w.sum(0, keepdim=True)
        s1 = wy.sum(0, keepdim=True)
        lab = None
    else:
        lab = labels.long()
        count = torch.zeros(k, dtype=y.dtype, device=y.device).index_add_(0, lab, torch.ones_like(y[:, 0]))
        wsum = count if w is None else torch.zeros(k, dtype=y.dtype, device=y.device).index_add_(0, lab, w)
        s1 = torch.zeros(k, d, dtype=y.dtype, device=y.device).index_add_(0, lab, wy)
    inv = None if scale is None else (1.0 / scale).to(y.dtype)
    if inv is not None:
        s1 = s1 * inv

    def s2_fn(mu):
        shift = mu.detach()
        if lab is None:
            neg = -shift
            labels_ = torch.zeros(m, dtype=torch.long, device=y.device)
        else:
            neg = -shift[lab]
            labels_ = lab
        c = neg + y if inv is None else torch.addcmul(neg, y, inv)  # y / scale - shift, one pass
        wc = c if w is None else c * w[:, None]
        raw = cluster_outer(wc, c, labels_, mu.shape[0])
        dm = mu - shift
        return raw - wsum[:, None, None] * dm[:, :, None] * dm[:, None, :]

    return count, wsum, s1, s2_fn


def finish_statistics(count, wsum, s1, s2_fn, dtype, reduce=None):
    """Means, covariances and log-weights from the sums (``reduce``: an all-reduce, or ``None``)."""
    tiny = torch.finfo(dtype).tiny
    safe_w = wsum.clamp_min(tiny)
    mu = s1 / safe_w[:, None]
    s2 = s2_fn(mu)
    if reduce is not None:
        s2 = reduce(s2)
    bessel = torch.where(count > 1, count / (count - 1).clamp_min(1), torch.zeros_like(count))
    omega = s2 * (bessel / safe_w)[:, None, None]
    omega = 0.5 * (omega + omega.transpose(1, 2))
    log_w = torch.where(wsum > 0, torch.log(safe_w), torch.full_like(wsum, EMPTY))
    return log_w, mu, omega


# ------------------------------------------------------------------------------ exact value
def _check_exact(x, y, chunk):
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"'x' and 'y' must have the same number of columns, got {x.shape[1]} and {y.shape[1]}")
    check.values(check.finite_flags("x", x) + check.finite_flags("y", y))


@kernel_op("tgrep::exact_log_normalizer", check=_check_exact)
def exact_log_normalizer(x: Tensor, y: Tensor, chunk: int) -> Tensor:
    """``[n]``: ``logsumexp_a(x_i . y_a)``, ``chunk`` rows of ``x`` at a time."""
    return ref.exact_lse_forward(x, y, chunk)


@exact_log_normalizer.register_fake
def _(x, y, chunk):
    return x.new_empty(x.shape[0])


@kernel_op("tgrep::exact_log_normalizer_backward")
def exact_log_normalizer_backward(grad: Tensor, x: Tensor, y: Tensor, lse: Tensor, chunk: int, need_x: bool,
                                  need_y: bool) -> tuple[Tensor, Tensor]:
    """``(dx, dy)`` of ``sum_i grad_i lse_i`` (``[0]`` when not needed)."""
    dx, dy = ref.exact_lse_backward(grad.contiguous(), x, y, lse, chunk, need_x=need_x, need_y=need_y)
    return (dx if dx is not None else _empty(x)), (dy if dy is not None else _empty(y))


@exact_log_normalizer_backward.register_fake
def _(grad, x, y, lse, chunk, need_x, need_y):
    return (x.new_empty(x.shape) if need_x else _empty(x)), (y.new_empty(y.shape) if need_y else _empty(y))


def _exact_setup(ctx, inputs, output):
    x, y, chunk = inputs
    ctx.save_for_backward(x, y, output)
    ctx.chunk = chunk


def _exact_backward(ctx, grad):
    x, y, lse = ctx.saved_tensors
    nx, ny = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if torch.is_grad_enabled():  # differentiable formula (materializes [n, m]): exact higher orders
        p = torch.softmax(x @ y.t(), 1) * grad[:, None]
        return (p @ y if nx else None), (p.t() @ x if ny else None), None
    dx, dy = exact_log_normalizer_backward(grad, x, y, lse, ctx.chunk, nx, ny)
    return (dx if nx else None), (dy if ny else None), None


exact_log_normalizer.register_autograd(_exact_backward, setup_context=_exact_setup)


# ------------------------------------------------------------------------------ k-means
def _check_kmeans(x, num_clusters, iters, seed, tol, sample, init_sample, n_init, distributed):
    if not ref_kmeans.dist_ready(distributed) and num_clusters > x.shape[0]:
        raise ValueError(f"'num_clusters' ({num_clusters}) must not exceed the number of rows of 'x' ({x.shape[0]})")
    _finite(x, "the points to cluster ('x', or 'y' of log_normalizer) contain NaN or infinite values")


@kernel_op("tgrep::kmeans", check=_check_kmeans)
def kmeans(x: Tensor, num_clusters: int, iters: int, seed: Tensor, tol: float, sample: int, init_sample: int,
           n_init: int, distributed: bool) -> tuple[Tensor, Tensor]:
    """``(labels [n] int64, centroids [k, d])``; see :func:`tgrep.ops.kmeans`."""
    return ref_kmeans.kmeans(x, num_clusters, iters, int(seed), tol, sample, init_sample, n_init, distributed)


@kmeans.register_fake
def _(x, num_clusters, iters, seed, tol, sample, init_sample, n_init, distributed):
    return x.new_empty(x.shape[0], dtype=torch.int64), x.new_empty(num_clusters, x.shape[1])


def _check_assign(x, centroids):
    if x.shape[1] != centroids.shape[1]:
        raise ValueError(f"'x' and 'centroids' must have the same number of columns, "
                         f"got {x.shape[1]} and {centroids.shape[1]}")
    if centroids.shape[0] == 0:
        raise ValueError("'centroids' must have at least one row")
    check.values(check.finite_flags("x", x) + check.finite_flags("centroids", centroids))


@kernel_op("tgrep::assign_clusters", check=_check_assign)
def assign_clusters(x: Tensor, centroids: Tensor) -> Tensor:
    """``[n]`` int64: the nearest centroid of every row."""
    return ref_kmeans.assign_clusters(x, centroids)


@assign_clusters.register_fake
def _(x, centroids):
    return x.new_empty(x.shape[0], dtype=torch.int64)


# ------------------------------------------------------------------------------ target
def _check_target(row, col, value, num_rows, num_cols, skip_empty):
    if not (row.shape == col.shape == value.shape):
        raise ValueError(f"the target's rows, columns and weights must have one entry per edge, "
                         f"got {row.shape[0]}, {col.shape[0]} and {value.shape[0]}")
    flags = (check.index_flags("target row index", row, num_rows) + check.index_flags("target column index", col,
                                                                                      num_cols)
             + check.nonneg_flags("target weight", value, allow_inf=False))
    check.values(flags)


@kernel_op("tgrep::normalize_target", check=_check_target)
def normalize_target(row: Tensor, col: Tensor, value: Tensor, num_rows: int, num_cols: int,
                     skip_empty: bool) -> tuple[Tensor, Tensor]:
    """``(value / rowsum[row] [E], has_target [n] bool)``; rows without positive weight raise
    ``ValueError`` unless ``skip_empty``."""
    rowsum = torch.zeros(num_rows, dtype=value.dtype, device=value.device).index_add_(0, row.long(), value)
    has = rowsum > 0
    if not skip_empty and num_rows and not bool(has.all()):
        first = int((~has).nonzero()[0])
        raise ValueError(f"'target' has {int((~has).sum())} row(s) without positive weight (first: row {first}); "
                         "pass empty_rows='skip' to leave them out of the loss")
    safe = torch.where(has, rowsum, torch.ones_like(rowsum))
    return value / safe[row.long()], has


@normalize_target.register_fake
def _(row, col, value, num_rows, num_cols, skip_empty):
    return value.new_empty(value.shape), value.new_empty(num_rows, dtype=torch.bool)


@kernel_op("tgrep::target_matmul")
def target_matmul(row: Tensor, col: Tensor, value: Tensor, y: Tensor, num_rows: int) -> Tensor:
    """``[n, d]``: ``P y`` for ``P = sparse(row, col, value)`` (``[n, m]``); ``value`` is a constant."""
    import warnings

    row, col = row.long(), col.long()
    if row.numel() > 1 and not bool((row[1:] >= row[:-1]).all()):
        order = torch.argsort(row, stable=True)
        row, col, value = row[order], col[order], value[order]
    crow = torch.zeros(num_rows + 1, dtype=torch.long, device=y.device)
    crow[1:] = torch.bincount(row, minlength=num_rows).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        p = torch.sparse_csr_tensor(crow, col, value.to(y.dtype), (num_rows, y.shape[0]), check_invariants=False)
        return p @ y


@target_matmul.register_fake
def _(row, col, value, y, num_rows):
    return y.new_empty(num_rows, y.shape[1])


def _tm_setup(ctx, inputs, output):
    row, col, value, y, num_rows = inputs
    ctx.save_for_backward(row, col, value)
    ctx.num_cols = y.shape[0]


def _tm_backward(ctx, grad):
    row, col, value = ctx.saved_tensors
    if ctx.needs_input_grad[2]:
        raise RuntimeError("tgrep::target_matmul: the target weights are constants (detach them)")
    dy = target_matmul(col, row, value, grad, ctx.num_cols) if ctx.needs_input_grad[3] else None
    return None, None, None, dy, None


target_matmul.register_autograd(_tm_backward, setup_context=_tm_setup)
