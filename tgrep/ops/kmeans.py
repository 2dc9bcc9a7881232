r"""k-means: deterministic given a seed, any device, DDP-aware (``tgrep::kmeans``).

Used by :func:`tgrep.ops.log_normalizer` to split the rows of :math:`Y` into clusters
(paper, Sec. 2.1: k-means minimizes an upper bound of the total within-cluster variance)
and by :class:`tgrep.models.EDRep` to cluster the final embedding. The algorithm
(:mod:`tgrep.kernels.reference.kmeans`) follows faiss: Lloyd on a seeded sub-sample of at
most 256 rows per centroid, k-means++ seeding, then one assignment of every row.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import library  # noqa: F401  (registers torch.ops.tgrep.*)
from ..utils import check
from .shortest_path import seed_tensor

__all__ = ["kmeans", "assign_clusters"]


def _check_x(name: str, x) -> None:
    check.tensor(name, x, dtypes=check.FLOAT_DTYPES, dim=2)
    check.dense(name, x)


def kmeans(x: Tensor, num_clusters: int, *, iters: int = 20, seed: int = 0, tol: float = 1e-6,
           init_sample: int = 4096, n_init: int = 1, sample: int | None = None, distributed: bool = False,
           return_centroids: bool = False):
    r"""Cluster the rows of ``x`` into ``num_clusters`` groups (Lloyd, k-means++ seeds).

    Minimizes :math:`\sum_i \|x_i - c_{\ell_i}\|^2`. Each Lloyd step costs ``O(s k d)`` on the
    ``s`` training rows and never forms more than a ``[block, k]`` distance matrix.

    Args:
        x (Tensor): points ``[n, d]`` (float, finite, dense).
        num_clusters (int): :math:`k`, ``1 <= k <= n``.
        iters (int): maximum Lloyd iterations. (default: ``20``)
        seed (int): seed of the sub-sample and the k-means++ seeds; equal seeds give equal
            results. (default: ``0``)
        tol (float): stop when the centroids move less than ``tol`` (relative, squared).
            (default: ``1e-6``)
        init_sample (int): k-means++ runs on at most ``max(init_sample, k)`` rows of the
            training sample. (default: ``4096``)
        n_init (int): restarts (seeds ``seed, seed+1, ...``); the run with the lowest
            within-cluster sum of squares wins. (default: ``1``)
        sample (int, optional): Lloyd runs on at most this many seeded random rows, then every
            row is assigned to its nearest centroid once. (default: ``None``: ``256 * k``, faiss's
            ``max_points_per_centroid``; pass ``x.shape[0]`` to train on every row)
        distributed (bool): all-reduce the per-cluster sums across processes when
            ``torch.distributed`` is initialized. (default: ``False``)
        return_centroids (bool): also return the ``[k, d]`` centroids. (default: ``False``)

    Returns:
        ``labels`` (``[n]`` long) or ``(labels, centroids)``. Empty clusters keep their
        previous centroid.
    """
    _check_x("x", x)
    k = check.positive_int("num_clusters", num_clusters)
    check.positive_int("iters", iters, allow_zero=True)
    check.seed("seed", seed)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (tol == tol and 0 <= tol < math.inf):
        raise ValueError(f"'tol' must be a finite number >= 0, got {tol!r}")
    check.positive_int("init_sample", init_sample)
    check.positive_int("n_init", n_init)
    if sample is not None:
        check.positive_int("sample", sample)
    if x.shape[0] == 0:
        raise ValueError("'x' must have at least one row")
    labels, cent = torch.ops.tgrep.kmeans(x.detach(), k, iters, seed_tensor(seed, "cpu"), float(tol),
                                          0 if sample is None else sample, init_sample, n_init, bool(distributed))
    return (labels, cent) if return_centroids else labels


def assign_clusters(x: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (squared Euclidean) of every row of ``x``: ``[n]`` long."""
    _check_x("x", x)
    _check_x("centroids", centroids)
    if centroids.device != x.device or centroids.dtype != x.dtype:
        raise ValueError(f"'centroids' must match 'x' in device and dtype, got {centroids.device}/{centroids.dtype} "
                         f"and {x.device}/{x.dtype}")
    return torch.ops.tgrep.assign_clusters(x.detach(), centroids.detach())
