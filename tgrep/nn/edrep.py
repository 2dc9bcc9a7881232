r"""EDRep cross-entropy loss with linear-time softmax normalizers.

Implements the loss of Dall'Amico & Belliardo (2025), "Learning distributed representations
with efficient SoftMax normalization" (TMLR), eq. (6)-(7), for any PyTorch model.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .. import ops
from ..kernels.reference.kmeans import all_reduce_sum, dist_ready
from ..ops.softmax_norm import _check_float, _estimate
from ..utils import check

__all__ = ["EDRepLoss", "edrep_loss", "normalize_target"]

EMPTY_ROWS = ("skip", "error")


def normalize_target(target, n: int, m: int, device: torch.device, *, empty_rows: str = "skip"
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``(row, col, value, has_target)`` of the row-normalized target :math:`P_{ij}/\sum_j P_{ij}`.

    ``target`` is a torch sparse COO or CSR ``[n, m]`` tensor, a dense ``[n, m]`` tensor, or a
    pair ``(index [2, E], weight [E])``. Weights must be finite and non-negative. A row
    without positive weight has no target distribution: ``has_target`` is ``False`` there
    (``empty_rows='skip'``), or it is a ``ValueError`` (``empty_rows='error'``). The value
    checks run inside ``tgrep::normalize_target`` (no host sync in traced code).
    """
    check.one_of("empty_rows", empty_rows, EMPTY_ROWS)
    if isinstance(target, (tuple, list)):
        if len(target) != 2:
            raise ValueError("'target' given as a tuple must be (index [2, E], weight [E])")
        index, value = target
        check.edge_index("target index", index, device=device)
        check.tensor("target weight", value, dtypes=check.FLOAT_DTYPES, dim=1, device=device)
        check.dense("target weight", value)
        check.same_length("target weight", value, "target index", index.t())
        row, col = index[0], index[1]
    elif isinstance(target, Tensor):
        if target.device != device:
            raise ValueError(f"'target' is on {target.device} but the other inputs are on {device}")
        if tuple(target.shape) != (n, m):
            raise ValueError(f"'target' must have shape ({n}, {m}) = (rows of x, rows of y), "
                             f"got {tuple(target.shape)}")
        if not target.is_floating_point():
            raise TypeError(f"'target' weights must be floating point, got {target.dtype}")
        if target.layout == torch.sparse_csr:
            target = target.to_sparse_coo()
        if target.layout == torch.sparse_coo:
            target = target.coalesce()
            row, col = target.indices()
            value = target.values()
        elif target.layout == torch.strided:
            bad = ~torch.isfinite(target) | (target < 0)
            keep = (target != 0) | bad  # keep the bad entries so that the op's check sees them
            row, col = keep.nonzero(as_tuple=True)
            value = target[row, col]
        else:
            raise TypeError(f"'target' layout {target.layout} is not supported (use COO, CSR or dense)")
    else:
        raise TypeError(f"'target' must be a sparse/dense tensor or (index, weight), got {type(target).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"'target' weights must be floating point, got {value.dtype}")
    row, col, value = row.long(), col.long(), value.detach()
    value, has = torch.ops.tgrep.normalize_target(row, col, value, n, m, empty_rows == "skip")
    return row, col, value, has


def _parts(x, y, target, *, labels, k, centering, detach_stats, mode, empty_rows, dist):
    """``(per_row [n], has_target [n], extra, log_z [n], lin [n])`` of the loss."""
    n, m = x.shape[0], y.shape[0]
    row, col, value, has = normalize_target(target, n, m, x.device, empty_rows=empty_rows)
    if mode == "exact":
        log_z = ops.exact_log_normalizer(x, y)
    else:
        ys, ls = y, labels
        if dist:  # every process holds all of y: each summarizes its share, then all-reduce
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            ys = y[rank::world]
            ls = labels[rank::world] if labels is not None and labels.numel() == m else labels
        log_z = _estimate(x, ys, ls, k, None, detach_stats, dist)
    lin = (x * torch.ops.tgrep.target_matmul(row, col, value, y, n)).sum(1)
    per_row = log_z - lin
    extra = x.new_zeros(())
    if centering:
        sx = x.sum(0)
        if dist:
            world = torch.distributed.get_world_size()
            total_rows = x.new_tensor(float(n))
            torch.distributed.all_reduce(total_rows)
            extra = (all_reduce_sum(sx) ** 2).sum() / total_rows / world
        else:
            world = 1
            extra = (sx * sx).sum() / n
        if y is not x:
            sy = y.sum(0)
            extra = extra + (sy * sy).sum() / m / world
    return per_row, has, extra, log_z, lin


def _reduce(per_row, has, extra, reduction, dist):
    kept = torch.where(has, per_row, torch.zeros_like(per_row))
    n_valid = has.sum().to(per_row.dtype)
    if dist:
        n_valid = n_valid.clone()
        torch.distributed.all_reduce(n_valid)
    if reduction == "none":
        return torch.where(has, per_row + extra / n_valid.clamp_min(1), torch.zeros_like(per_row))
    total = kept.sum() + extra
    return total / n_valid.clamp_min(1) if reduction == "mean" else total


def _check_inputs(x, y, reduction, mode, empty_rows):
    _check_float("x", x)
    _check_float("y", y, device=x.device)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"'x' and 'y' must have the same number of columns, got {x.shape[1]} and {y.shape[1]}")
    check.one_of("reduction", reduction, ("mean", "sum", "none"))
    check.one_of("mode", mode, ("estimate", "exact"))
    check.one_of("empty_rows", empty_rows, EMPTY_ROWS)
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError(f"'x' and 'y' must have at least one row, got {x.shape[0]} and {y.shape[0]}")


def edrep_loss(x: Tensor, y: Tensor, target, *, num_clusters: int = 1, labels: Tensor | None = None,
               centering: bool = True, reduction: str = "mean", detach_stats: bool = True,
               mode: str = "estimate", seed: int = 0, distributed: bool = False, empty_rows: str = "skip") -> Tensor:
    r"""Functional :class:`EDRepLoss` (stateless: k-means runs on every call unless ``labels``,
    and no sampled accuracy check)."""
    _check_inputs(x, y, reduction, mode, empty_rows)
    k = check.positive_int("num_clusters", num_clusters)
    check.seed("seed", seed)
    dist = dist_ready(distributed)
    m = y.shape[0]
    if mode == "estimate":
        if labels is not None:
            check.tensor("labels", labels, dtypes=check.INDEX_DTYPES, dim=1, device=y.device)
            if labels.shape[0] != m:
                raise ValueError(f"'labels' must have one entry per row of 'y' ({m}), got {labels.shape[0]}")
            from ..ops.softmax_norm import _compact

            labels, k = _compact(labels, y, k, dist)
        elif k > 1:
            if k > m and not dist:
                raise ValueError(f"'num_clusters' ({k}) must not exceed the number of rows of 'y' ({m})")
            ys = y[torch.distributed.get_rank()::torch.distributed.get_world_size()] if dist else y
            local = ops.kmeans(ys.detach(), k, seed=seed, distributed=dist, iters=10)
            labels = _spread(local, y, dist)
        else:
            k = 1
    per_row, has, extra, _, _ = _parts(x, y, target, labels=labels, k=k, centering=centering,
                                       detach_stats=detach_stats, mode=mode, empty_rows=empty_rows, dist=dist)
    return _reduce(per_row, has, extra, reduction, dist)


def _spread(local: Tensor, y: Tensor, dist: bool) -> Tensor:
    """Labels of this process's shard ``y[rank::world]`` -> full-length labels (``_parts`` slices)."""
    if not dist:
        return local
    full = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
    full[torch.distributed.get_rank()::torch.distributed.get_world_size()] = local
    return full


class EDRepLoss(torch.nn.Module):
    r"""Cross-entropy between target distributions and :math:`\mathrm{SoftMax}(XY^\top)`, in linear time.

    From Dall'Amico & Belliardo (2025), eq. (6)-(7): for a non-negative target
    :math:`P\in\mathbb{R}^{n\times m}` (rows normalized here to :math:`\tilde P`),

    .. math::
        \mathcal{L} = \sum_{i \in R} \Big[-\sum_j \tilde P_{ij}\, x_i^\top y_j + \log \hat Z_i\Big]
        + \frac{1}{n}\Big\|\sum_i x_i\Big\|^2 \;\Big(+ \frac1m\Big\|\sum_a y_a\Big\|^2
        \text{ if } y \text{ is not } x\Big),

    where :math:`R` are the rows of :math:`P` with positive weight and :math:`\log\hat Z_i` the
    EDRep estimate of :math:`\log\sum_a e^{x_i^\top y_a}` (:func:`tgrep.ops.log_normalizer`,
    eq. 4-5): ``O(E d + n k d^2)`` instead of ``O(n m d)``. ``'mean'`` divides by
    :math:`|R|`. The last (centering) term is the paper's regularizer for :math:`x = y`; the
    :math:`y` part for :math:`x\neq y` is our extension. ``mode='exact'`` uses the exact
    chunked :math:`\log Z_i` instead (validation): without centering it equals
    ``F.cross_entropy(x @ y.T, P_normalized)`` (summed or averaged).

    **Rows without a target** (isolated nodes of a graph: 31% of a DCSBM's nodes) have no
    target distribution; by default they are left out of the sum and of the mean
    (``empty_rows='skip'``); ``empty_rows='error'`` makes them a ``ValueError``.

    **Accuracy check.** The estimate is accurate for embeddings of bounded norm (paper,
    Sec. 2.1; see :mod:`tgrep.ops.softmax_norm`). Whenever the statistics are refreshed (the
    first call and every ``refresh_every`` calls), the exact :math:`\log Z_i` of
    ``check_rows`` random rows (``O(check_rows * m * d)``) is compared with the estimate:
    :attr:`sampled_error` holds the relative error of the loss on those rows
    (:attr:`last_check` the details), and a warning naming the cause and the fixes is issued
    when it exceeds ``tol``. Under ``torch.compile`` the check is not traced (call
    :meth:`check_accuracy` yourself) and the clusters are recomputed on every call.

    **State.** The k-means labels of the rows of ``y`` are kept in the module (``labels``
    attribute) and recomputed on the first call, every ``refresh_every`` calls, and
    whenever the number of rows of ``y`` changes; :meth:`reset_parameters` clears them.

    **Distributed.** With ``distributed=True`` inside an initialized ``torch.distributed``
    group, each process passes its rows of ``x`` (and their ``target`` rows) together with
    the full ``y``; every process summarizes ``y[rank::world]`` and the sufficient
    statistics (and k-means sums) are all-reduced. Summing the ``'sum'`` losses (or the
    gradients) over processes gives the single-process values of the call with the same
    ``x``/``y`` tensors (there a row shard of ``x`` is never ``y`` itself, so the centering
    term includes the ``y`` part).

    Args:
        num_clusters (int): :math:`\kappa`, k-means clusters of the rows of ``y``. (default: ``1``)
        refresh_every (int): recompute the clusters (and check the accuracy) every this many
            calls. (default: ``1``)
        centering (bool): add the centering term. (default: ``True``)
        reduction (str): ``'mean'`` (over rows with a target), ``'sum'`` or ``'none'``. (default: ``'mean'``)
        detach_stats (bool): treat :math:`\mu_\alpha, \Omega_\alpha` as constants (the paper's
            gradient, eq. 8). (default: ``True``)
        mode (str): ``'estimate'`` or ``'exact'``. (default: ``'estimate'``)
        seed (int): k-means and row-sample seed. (default: ``0``)
        distributed (bool): see above. (default: ``False``)
        empty_rows (str): ``'skip'`` or ``'error'``, see above. (default: ``'skip'``)
        check_rows (int): rows of the sampled accuracy check; ``0`` disables it. (default: ``64``)
        tol (float): relative loss error above which the check warns. (default: ``0.05``)

    Shapes:
        ``x [n, d]``, ``y [m, d]``, ``target`` sparse/dense ``[n, m]`` or ``(index [2, E], weight [E])``
        -> scalar (or ``[n]`` with ``reduction='none'``, 0 at rows without a target).
    """

    def __init__(self, num_clusters: int = 1, *, refresh_every: int = 1, centering: bool = True,
                 reduction: str = "mean", detach_stats: bool = True, mode: str = "estimate", seed: int = 0,
                 distributed: bool = False, empty_rows: str = "skip", check_rows: int = 64, tol: float = 0.05):
        super().__init__()
        self.num_clusters = check.positive_int("num_clusters", num_clusters)
        self.refresh_every = check.positive_int("refresh_every", refresh_every)
        check.one_of("reduction", reduction, ("mean", "sum", "none"))
        check.one_of("mode", mode, ("estimate", "exact"))
        check.one_of("empty_rows", empty_rows, EMPTY_ROWS)
        self.check_rows = check.positive_int("check_rows", check_rows, allow_zero=True)
        self.tol = check.in_range("tol", tol, 0.0, math.inf, lo_open=True, hi_open=True)
        self.centering, self.reduction, self.detach_stats = bool(centering), reduction, bool(detach_stats)
        self.mode, self.seed, self.distributed = mode, check.seed("seed", seed), bool(distributed)
        self.empty_rows = empty_rows
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Forget the cached cluster labels, the call counter and the last check."""
        self.labels: Tensor | None = None
        self.calls = 0
        self.sampled_error: float | None = None
        self.last_check: dict | None = None

    def _labels(self, y: Tensor, dist: bool, compiling: bool) -> Tensor | None:
        if self.mode != "estimate" or self.num_clusters == 1:
            return None
        ys = y[torch.distributed.get_rank()::torch.distributed.get_world_size()] if dist else y
        if self.num_clusters > ys.shape[0] and not dist:
            raise ValueError(f"'num_clusters' ({self.num_clusters}) must not exceed the number of "
                             f"rows of 'y' ({ys.shape[0]})")
        if compiling:
            return _spread(ops.kmeans(ys.detach(), self.num_clusters, seed=self.seed, distributed=dist, iters=10),
                           y, dist)
        stale = (self.labels is None or self.labels.shape[0] != ys.shape[0]
                 or self.labels.device != y.device or self.calls % self.refresh_every == 0)
        if stale:
            self.labels = ops.kmeans(ys.detach(), self.num_clusters, seed=self.seed, distributed=dist, iters=10)
        return _spread(self.labels, y, dist)

    def forward(self, x: Tensor, y: Tensor, target) -> Tensor:
        _check_inputs(x, y, self.reduction, self.mode, self.empty_rows)
        compiling = torch.compiler.is_compiling()
        dist = dist_ready(self.distributed)
        refresh = self.calls % self.refresh_every == 0
        labels = self._labels(y, dist, compiling)
        per_row, has, extra, log_z, lin = _parts(
            x, y, target, labels=labels, k=self.num_clusters if labels is not None else 1,
            centering=self.centering, detach_stats=self.detach_stats, mode=self.mode,
            empty_rows=self.empty_rows, dist=dist)
        if not compiling:
            if refresh and self.mode == "estimate" and self.check_rows and not dist:
                self._check(x, y, log_z.detach(), lin.detach(), has)
            self.calls += 1
        return _reduce(per_row, has, extra, self.reduction, dist)

    @torch.no_grad()
    def check_accuracy(self, x: Tensor, y: Tensor, target, *, rows: int | None = None) -> dict:
        """Run the sampled accuracy check now (also under ``torch.compile`` users can call it
        eagerly); returns :attr:`last_check`."""
        _check_inputs(x, y, self.reduction, self.mode, self.empty_rows)
        labels = self._labels(y, False, False)
        _, has, _, log_z, lin = _parts(x, y, target, labels=labels,
                                       k=self.num_clusters if labels is not None else 1, centering=False,
                                       detach_stats=True, mode="estimate", empty_rows=self.empty_rows, dist=False)
        return self._check(x, y, log_z, lin, has, rows=rows)

    @torch.no_grad()
    def _check(self, x, y, log_z, lin, has, rows: int | None = None) -> dict:
        rows = self.check_rows if rows is None else check.positive_int("rows", rows)
        cand = has.nonzero().flatten()
        if cand.numel() == 0:
            return {}
        gen = torch.Generator().manual_seed(self.seed + self.calls)
        pick = cand[torch.randperm(cand.numel(), generator=gen)[:rows].to(cand.device)]
        xs = x.detach()[pick]
        exact = ops.exact_log_normalizer(xs, y.detach()).double()
        est = log_z[pick].double()
        exact_loss = (exact - lin[pick].double()).sum()
        rel = float((est - exact).sum() / exact_loss.abs().clamp_min(1e-12))
        norm_x = float(x.detach().norm(dim=1).mean())
        norm_y = float(y.detach().norm(dim=1).mean())
        self.sampled_error = rel
        self.last_check = {"rows": int(pick.numel()), "loss_rel_error": rel,
                           "log_z_abs_error": float((est - exact).abs().mean()),
                           "mean_norm_x": norm_x, "mean_norm_y": norm_y, "num_clusters": self.num_clusters,
                           "call": self.calls}
        if abs(rel) > self.tol:
            warnings.warn(
                f"EDRepLoss: on {pick.numel()} sampled rows the estimated loss is off by {100 * rel:+.1f}% from "
                f"the exact one (tol {100 * self.tol:.0f}%; mean row norms x {norm_x:.2f}, y {norm_y:.2f}, "
                f"num_clusters={self.num_clusters}). The Gaussian estimate of log Z assumes bounded norms "
                "(paper Sec. 2.1). Fixes: normalize the rows (e.g. F.normalize, or a smaller scale), use more "
                "clusters (num_clusters = the number of groups in y), or mode='exact'. The error is in "
                "EDRepLoss.sampled_error / .last_check.", RuntimeWarning, stacklevel=3)
        return self.last_check

    def extra_repr(self) -> str:
        return (f"num_clusters={self.num_clusters}, refresh_every={self.refresh_every}, centering={self.centering}, "
                f"reduction={self.reduction!r}, detach_stats={self.detach_stats}, mode={self.mode!r}, "
                f"seed={self.seed}, empty_rows={self.empty_rows!r}")
