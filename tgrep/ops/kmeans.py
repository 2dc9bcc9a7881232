r"""k-means (Lloyd) in plain torch: deterministic given a seed, any device, DDP-aware.

Used by :func:`tgrep.ops.log_normalizer` to split the rows of :math:`Y` into clusters
(paper, Sec. 2.1: k-means minimizes an upper bound of the total within-cluster variance)
and by :class:`tgrep.models.EDRep` to cluster the final embedding.

Initialization is k-means++ on (a seeded subsample of) the rows; each Lloyd step costs
``O(n k d)`` and never forms more than a ``[block, k]`` distance matrix. Per-cluster sums
and counts are sufficient statistics: when ``distributed=True`` and
``torch.distributed`` is initialized they are all-reduced, so every process holds the same
centroids (the initial centroids are broadcast from rank 0).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..utils import check

__all__ = ["kmeans", "assign_clusters"]


def _dist_ready(distributed: bool) -> bool:
    return bool(distributed) and torch.distributed.is_available() and torch.distributed.is_initialized()


def assign_clusters(x: Tensor, centroids: Tensor, block: int = 65536) -> Tensor:
    """Index of the nearest centroid (squared Euclidean) for every row of ``x``."""
    c2 = (centroids * centroids).sum(1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], block):
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 does not change the argmin
        out[s:s + block] = torch.argmin(c2[None, :] - 2.0 * (x[s:s + block] @ centroids.t()), dim=1)
    return out


def _kmeanspp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen, device="cpu"))
    cent = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if not bool(total > 0):  # fewer distinct points than clusters: take any row
            idx = int(torch.randint(n, (1,), generator=gen, device="cpu"))
        else:
            probs = (d2 / total).double().cpu()
            idx = int(torch.multinomial(probs, 1, generator=gen))
        cent.append(x[idx])
        d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    return torch.stack(cent)


@torch.no_grad()
def kmeans(x: Tensor, num_clusters: int, *, iters: int = 20, seed: int = 0, tol: float = 1e-6,
           init_sample: int = 4096, n_init: int = 1, sample: int | None = None, distributed: bool = False,
           return_centroids: bool = False, _trusted: bool = False):
    r"""Cluster the rows of ``x`` into ``num_clusters`` groups with Lloyd's algorithm.

    Args:
        x (Tensor): points ``[n, d]`` (float, finite).
        num_clusters (int): :math:`k`, ``1 <= k <= n``.
        iters (int): maximum Lloyd iterations. (default: ``20``)
        seed (int): seed of the k-means++ initialization; equal seeds give equal results.
            (default: ``0``)
        tol (float): stop when the centroids move less than ``tol`` (relative, squared).
            (default: ``1e-6``)
        init_sample (int): k-means++ runs on at most this many seeded random rows.
            (default: ``4096``)
        distributed (bool): all-reduce the per-cluster sums across processes when
            ``torch.distributed`` is initialized. (default: ``False``)
        sample (int, optional): run Lloyd on at most this many seeded random rows, then
            assign every row to its nearest centroid once (``None``: all rows). (default: ``None``)
        n_init (int): restarts (seeds ``seed, seed+1, ...``); the run with the lowest
            within-cluster sum of squares wins. (default: ``1``)
        return_centroids (bool): also return the ``[k, d]`` centroids. (default: ``False``)

    Returns:
        ``labels`` (``[n]`` long) or ``(labels, centroids)``. Empty clusters keep their
        previous centroid.
    """
    check.tensor("x", x, dtypes=check.FLOAT_DTYPES, dim=2, finite=not _trusted)
    k = check.positive_int("num_clusters", num_clusters)
    check.positive_int("iters", iters, allow_zero=True)
    n = x.shape[0]
    if n == 0:
        raise ValueError("'x' must have at least one row")
    dist = _dist_ready(distributed)
    if k > n and not dist:
        raise ValueError(f"'num_clusters' ({k}) must not exceed the number of rows of 'x' ({n})")
    check.positive_int("n_init", n_init)
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    xs = xf
    if sample is not None and check.positive_int("sample", sample) < n:
        gen = torch.Generator(device="cpu").manual_seed(int(seed) + 7919)
        xs = xf[torch.randperm(n, generator=gen)[:max(sample, k)].to(xf.device)]
    best = None
    for r in range(n_init):
        labels, cent = _lloyd(xs, k, iters, int(seed) + r, tol, init_sample, dist)
        if xs is not xf:
            labels = assign_clusters(xf, cent)
        if n_init == 1:
            best = (None, labels, cent)
            break
        inertia = ((xf - cent[labels]) ** 2).sum()
        if dist:
            torch.distributed.all_reduce(inertia)
        if best is None or bool(inertia < best[0]):
            best = (inertia, labels, cent)
    _, labels, cent = best
    cent = cent.to(x.dtype)
    return (labels, cent) if return_centroids else labels


def _lloyd(xf: Tensor, k: int, iters: int, seed: int, tol: float, init_sample: int, dist: bool):
    n = xf.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if n > init_sample:
        sub = torch.randperm(n, generator=gen)[:init_sample].to(xf.device)
        cent = _kmeanspp(xf[sub], min(k, init_sample), gen)
    else:
        cent = _kmeanspp(xf, k, gen)
    if dist:
        torch.distributed.broadcast(cent, src=0)
    labels = assign_clusters(xf, cent)
    for _ in range(iters):
        if k <= 256:  # one GEMM beats index_add on CPU
            onehot = torch.nn.functional.one_hot(labels, k).to(xf.dtype)
            sums, counts = onehot.t() @ xf, onehot.sum(0)
        else:
            sums = torch.zeros_like(cent).index_add_(0, labels, xf)
            counts = torch.bincount(labels, minlength=k).to(xf.dtype)
        if dist:
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], cent)
        shift = ((new - cent) ** 2).sum() / (cent ** 2).sum().clamp_min(1e-30)
        cent = new
        labels = assign_clusters(xf, cent)
        if bool(shift < tol):
            break
    return labels, cent
