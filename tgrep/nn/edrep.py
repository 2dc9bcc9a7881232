r"""EDRep cross-entropy loss with linear-time softmax normalizers.

Implements the loss of Dall'Amico & Belliardo (2025), "Learning distributed representations
with efficient SoftMax normalization" (TMLR), eq. (6)-(7), for any PyTorch model.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import ops
from ..ops.softmax_norm import _check_float
from ..utils import check

__all__ = ["EDRepLoss", "edrep_loss", "normalize_target"]


def _dist_ready(distributed: bool) -> bool:
    return bool(distributed) and torch.distributed.is_available() and torch.distributed.is_initialized()


def normalize_target(target, n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    r"""``(row, col, value)`` of the row-normalized target :math:`P_{ij}/\sum_j P_{ij}`.

    ``target`` is a torch sparse COO or CSR ``[n, m]`` tensor, a dense ``[n, m]`` tensor, or a
    pair ``(index [2, E], weight [E])``. Weights must be finite and non-negative and every
    row must carry positive weight.
    """
    if isinstance(target, (tuple, list)):
        if len(target) != 2:
            raise ValueError("'target' given as a tuple must be (index [2, E], weight [E])")
        index, value = target
        check.tensor("target index", index, dtypes=check.INDEX_DTYPES, dim=2, device=device)
        if index.shape[0] != 2:
            raise ValueError(f"'target' index must have shape [2, E], got {tuple(index.shape)}")
        check.tensor("target weight", value, dtypes=check.FLOAT_DTYPES, dim=1, device=device)
        check.same_length("target weight", value, "target index", index.t())
        row, col = index[0].long(), index[1].long()
        check.index_range("target row index", row, n)
        check.index_range("target column index", col, m)
    elif isinstance(target, Tensor):
        if target.device != device:
            raise ValueError(f"'target' is on {target.device} but the other inputs are on {device}")
        if tuple(target.shape) != (n, m):
            raise ValueError(f"'target' must have shape ({n}, {m}) = (rows of x, rows of y), "
                             f"got {tuple(target.shape)}")
        if target.layout == torch.sparse_csr:
            target = target.to_sparse_coo()
        if target.layout == torch.sparse_coo:
            target = target.coalesce()
            row, col = target.indices()
            value = target.values()
        elif target.layout == torch.strided:
            check.tensor("target", target, dtypes=check.FLOAT_DTYPES)
            row, col = target.nonzero(as_tuple=True)
            value = target[row, col]
            if not bool(torch.isfinite(target).all()) or bool((target < 0).any()):
                raise ValueError("'target' must hold finite, non-negative weights")
        else:
            raise TypeError(f"'target' layout {target.layout} is not supported (use COO, CSR or dense)")
    else:
        raise TypeError(f"'target' must be a sparse/dense tensor or (index, weight), got {type(target).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"'target' weights must be floating point, got {value.dtype}")
    value = value.detach()
    if value.numel() and (not bool(torch.isfinite(value).all()) or bool((value < 0).any())):
        raise ValueError("'target' must hold finite, non-negative weights (found negative, NaN or inf)")
    rowsum = torch.zeros(n, dtype=value.dtype, device=device).index_add_(0, row, value)
    empty = rowsum <= 0
    if bool(empty.any()):
        first = int(empty.nonzero()[0])
        raise ValueError(f"'target' has {int(empty.sum())} row(s) without positive weight (first: row {first}); "
                         "every row of x needs a target distribution")
    return row, col, value / rowsum[row]


def _linear_term(x: Tensor, y: Tensor, row: Tensor, col: Tensor, value: Tensor) -> Tensor:
    """``[n]``: ``sum_j P_ij x_i . y_j`` via one CSR sparse-dense product (``P y``)."""
    import warnings

    n = x.shape[0]
    if row.numel() > 1 and not bool((row[1:] >= row[:-1]).all()):
        order = torch.argsort(row, stable=True)
        row, col, value = row[order], col[order], value[order]
    crow = torch.zeros(n + 1, dtype=torch.long, device=x.device)
    crow[1:] = torch.bincount(row, minlength=n).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        p = torch.sparse_csr_tensor(crow, col, value.to(y.dtype), (n, y.shape[0]), check_invariants=False)
    return (x * (p @ y)).sum(1)


def edrep_loss(x: Tensor, y: Tensor, target, *, num_clusters: int = 1, labels: Tensor | None = None,
               centering: bool = True, reduction: str = "mean", detach_stats: bool = True,
               mode: str = "estimate", seed: int = 0, distributed: bool = False) -> Tensor:
    r"""Functional :class:`EDRepLoss` (stateless: k-means runs on every call unless ``labels``)."""
    _check_float("x", x)
    _check_float("y", y, device=x.device)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"'x' and 'y' must have the same number of columns, got {x.shape[1]} and {y.shape[1]}")
    check.one_of("reduction", reduction, ("mean", "sum", "none"))
    check.one_of("mode", mode, ("estimate", "exact"))
    n, m = x.shape[0], y.shape[0]
    if n == 0 or m == 0:
        raise ValueError(f"'x' and 'y' must have at least one row, got {n} and {m}")
    row, col, value = normalize_target(target, n, m, x.device)
    dist = _dist_ready(distributed)
    if mode == "exact":
        log_z = ops.exact_log_normalizer(x, y)
    else:
        ys, ls = y, labels
        if dist:  # every process holds all of y: each summarizes its share, then all-reduce
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            ys = y[rank::world]
            ls = labels[rank::world] if labels is not None and labels.numel() == m else labels
        log_z = ops.log_normalizer(x, ys, num_clusters=num_clusters, labels=ls, detach_stats=detach_stats,
                                   seed=seed, distributed=dist)
    per_row = log_z - _linear_term(x, y, row, col, value)
    total_rows = torch.tensor(float(n), device=x.device)
    world = 1
    if dist:
        torch.distributed.all_reduce(total_rows)
        world = torch.distributed.get_world_size()
    extra = x.new_zeros(())
    if centering:
        sx = x.sum(0)
        if dist:
            from ..ops.softmax_norm import all_reduce_sum

            sx = all_reduce_sum(sx)
        extra = (sx * sx).sum() / total_rows / world
        if y is not x:
            sy = y.sum(0)
            extra = extra + (sy * sy).sum() / m / world
    if reduction == "none":
        return per_row + extra / n
    total = per_row.sum() + extra
    return total / total_rows if reduction == "mean" else total


class EDRepLoss(torch.nn.Module):
    r"""Cross-entropy between target distributions and :math:`\mathrm{SoftMax}(XY^\top)`, in linear time.

    From Dall'Amico & Belliardo (2025), eq. (6)-(7): for a non-negative target
    :math:`P\in\mathbb{R}^{n\times m}` (rows normalized here to :math:`\tilde P`),

    .. math::
        \mathcal{L} = \sum_i \Big[-\sum_j \tilde P_{ij}\, x_i^\top y_j + \log \hat Z_i\Big]
        + \frac{1}{n}\Big\|\sum_i x_i\Big\|^2 \;\Big(+ \frac1m\Big\|\sum_a y_a\Big\|^2
        \text{ if } y \text{ is not } x\Big),

    where :math:`\log\hat Z_i` is the EDRep estimate of :math:`\log\sum_a e^{x_i^\top y_a}`
    (:func:`tgrep.ops.log_normalizer`, eq. 4-5): ``O(E d + n k d^2)`` instead of ``O(n m d)``.
    The last (centering) term is the paper's regularizer for :math:`x = y`; the
    :math:`y` part for :math:`x\neq y` is our extension. ``mode='exact'`` uses the exact
    chunked :math:`\log Z_i` instead (validation): without centering it equals
    ``F.cross_entropy(x @ y.T, P_normalized)`` (summed or averaged).

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
        refresh_every (int): recompute the clusters every this many calls. (default: ``1``)
        centering (bool): add the centering term. (default: ``True``)
        reduction (str): ``'mean'`` (over rows of ``x``), ``'sum'`` or ``'none'``. (default: ``'mean'``)
        detach_stats (bool): treat :math:`\mu_\alpha, \Omega_\alpha` as constants (the paper's
            gradient, eq. 8). (default: ``True``)
        mode (str): ``'estimate'`` or ``'exact'``. (default: ``'estimate'``)
        seed (int): k-means seed. (default: ``0``)
        distributed (bool): see above. (default: ``False``)

    Shapes:
        ``x [n, d]``, ``y [m, d]``, ``target`` sparse/dense ``[n, m]`` or ``(index [2, E], weight [E])``
        -> scalar (or ``[n]`` with ``reduction='none'``).
    """

    def __init__(self, num_clusters: int = 1, *, refresh_every: int = 1, centering: bool = True,
                 reduction: str = "mean", detach_stats: bool = True, mode: str = "estimate", seed: int = 0,
                 distributed: bool = False):
        super().__init__()
        self.num_clusters = check.positive_int("num_clusters", num_clusters)
        self.refresh_every = check.positive_int("refresh_every", refresh_every)
        check.one_of("reduction", reduction, ("mean", "sum", "none"))
        check.one_of("mode", mode, ("estimate", "exact"))
        self.centering, self.reduction, self.detach_stats = bool(centering), reduction, bool(detach_stats)
        self.mode, self.seed, self.distributed = mode, int(seed), bool(distributed)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Forget the cached cluster labels (and the call counter)."""
        self.labels: Tensor | None = None
        self.calls = 0

    def forward(self, x: Tensor, y: Tensor, target) -> Tensor:
        labels = None
        if self.mode == "estimate" and self.num_clusters > 1:
            check.tensor("y", y, dtypes=check.FLOAT_DTYPES, dim=2, finite=True)
            dist = _dist_ready(self.distributed)
            ys = y[torch.distributed.get_rank()::torch.distributed.get_world_size()] if dist else y
            stale = (self.labels is None or self.labels.shape[0] != ys.shape[0]
                     or self.labels.device != y.device or self.calls % self.refresh_every == 0)
            if stale:
                if self.num_clusters > ys.shape[0] and not dist:
                    raise ValueError(f"'num_clusters' ({self.num_clusters}) must not exceed the number of "
                                     f"rows of 'y' ({ys.shape[0]})")
                self.labels = ops.kmeans(ys.detach(), self.num_clusters, seed=self.seed, distributed=dist,
                                         iters=10, sample=8192)
            labels = self.labels
            if dist:  # edrep_loss slices y and labels alike; hand it full-length labels
                full = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
                full[torch.distributed.get_rank()::torch.distributed.get_world_size()] = labels
                labels = full
        self.calls += 1
        return edrep_loss(x, y, target, num_clusters=self.num_clusters, labels=labels, centering=self.centering,
                          reduction=self.reduction, detach_stats=self.detach_stats, mode=self.mode,
                          seed=self.seed, distributed=self.distributed)

    def extra_repr(self) -> str:
        return (f"num_clusters={self.num_clusters}, refresh_every={self.refresh_every}, centering={self.centering}, "
                f"reduction={self.reduction!r}, detach_stats={self.detach_stats}, mode={self.mode!r}")
