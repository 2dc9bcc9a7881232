r"""k-means in plain torch (the kernel of ``tgrep::kmeans`` / ``tgrep::assign_clusters``).

The recipe is faiss's (``faiss.Kmeans``, the one the original EDRep package calls):

* **sub-sampled training**: Lloyd runs on at most ``sample`` seeded random rows (faiss:
  ``max_points_per_centroid = 256`` rows per centroid), then every row is assigned once;
* **k-means++ seeding** (Arthur & Vassilvitskii, 2007) on at most ``max(init_sample, k)`` rows
  of the training sample (faiss seeds at random; k-means++ needs fewer iterations);
* the **assignment** ``argmin_c ||x - c||^2 = argmin_c (||c||^2 - 2 x.c)`` is one GEMM per row
  block (never more than ``[block, k]`` distances), the update one GEMM with the one-hot
  matrix (``k <= 256``) or an ``index_add``.

Everything is torch ops, so the threads are torch's intra-op pool
(``torch.get_num_threads()``): no thread of our own, no nested parallel region.
With ``distributed=True`` (and ``torch.distributed`` initialized) the per-cluster sums and
counts are all-reduced and rank 0's seeds broadcast, so every process holds the same centroids.
"""
from __future__ import annotations

import torch
from torch import Tensor

POINTS_PER_CENTROID = 256  # faiss's max_points_per_centroid


def dist_ready(distributed: bool) -> bool:
    """Whether to all-reduce: ``distributed`` asked for and a process group is up."""
    return bool(distributed) and torch.distributed.is_available() and torch.distributed.is_initialized()


def _block(k: int, budget: int = 1 << 22) -> int:
    return max(1024, budget // max(1, k))


def assign_clusters(x: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (squared Euclidean) of every row of ``x`` (``[n]`` int64)."""
    c2 = (centroids * centroids).sum(1)
    n = x.shape[0]
    block = _block(centroids.shape[0])
    if n <= block:
        return torch.argmin(torch.addmm(c2[None, :], x, centroids.t(), alpha=-2.0), dim=1)
    out = torch.empty(n, dtype=torch.long, device=x.device)
    for s in range(0, n, block):
        out[s:s + block] = torch.argmin(torch.addmm(c2[None, :], x[s:s + block], centroids.t(), alpha=-2.0), dim=1)
    return out


def _kmeanspp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeds: ``k`` rows of ``x`` (``x`` has at least ``k`` rows)."""
    n = x.shape[0]
    idx = [int(torch.randint(n, (1,), generator=gen))]
    d2 = ((x - x[idx[0]]) ** 2).sum(1)
    u = torch.rand(k, generator=gen, dtype=torch.float64)
    for j in range(1, k):
        cum = torch.cumsum(d2.double(), 0)
        total = float(cum[-1])
        if not total > 0:  # fewer distinct points than clusters: any row not taken yet
            i = int(torch.randint(n, (1,), generator=gen))
        else:
            i = min(int(torch.searchsorted(cum, u[j] * total)), n - 1)
        idx.append(i)
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return x[torch.tensor(idx, device=x.device)].clone()


def _update(x: Tensor, labels: Tensor, k: int, cent: Tensor, dist: bool) -> Tensor:
    if k <= 256:  # one GEMM beats index_add on CPU
        onehot = torch.nn.functional.one_hot(labels, k).to(x.dtype)
        sums, counts = onehot.t() @ x, onehot.sum(0)
    else:
        sums = torch.zeros_like(cent).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
    if dist:
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(counts)
    return torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], cent)


def lloyd(x: Tensor, k: int, iters: int, seed: int, tol: float, init_sample: int, dist: bool) -> tuple[Tensor, Tensor]:
    """k-means++ seeding then at most ``iters`` Lloyd steps on ``x``: ``(labels, centroids)``."""
    n = x.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    m = max(init_sample, k)
    sub = x if n <= m else x[torch.randperm(n, generator=gen)[:m].to(x.device)]
    cent = _kmeanspp(sub, min(k, sub.shape[0]), gen)
    if cent.shape[0] < k:  # distributed, fewer local rows than clusters: repeat seeds (all-reduce fixes them)
        cent = cent[torch.arange(k, device=x.device) % max(1, cent.shape[0])]
    if dist:
        torch.distributed.broadcast(cent, src=0)
    labels = assign_clusters(x, cent)
    scale = (cent ** 2).sum().clamp_min(1e-30)
    for _ in range(iters):
        new = _update(x, labels, k, cent, dist)
        shift = float(((new - cent) ** 2).sum() / scale)
        cent = new
        labels = assign_clusters(x, cent)
        if shift < tol:
            break
    return labels, cent


@torch.no_grad()
def kmeans(x: Tensor, num_clusters: int, iters: int, seed: int, tol: float, sample: int, init_sample: int,
           n_init: int, distributed: bool) -> tuple[Tensor, Tensor]:
    """``(labels [n] int64, centroids [k, d])``; see :func:`tgrep.ops.kmeans` for the contract.

    ``sample <= 0`` means ``POINTS_PER_CENTROID * k`` rows (faiss's rule).
    """
    n = x.shape[0]
    k = num_clusters
    dist = dist_ready(distributed)
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if sample <= 0:
        sample = POINTS_PER_CENTROID * k
    xs = xf
    if sample < n:
        gen = torch.Generator(device="cpu").manual_seed(int(seed) + 7919)
        xs = xf[torch.randperm(n, generator=gen)[:max(sample, k)].to(xf.device)]
    best = None
    for r in range(n_init):
        labels, cent = lloyd(xs, k, iters, int(seed) + r, tol, init_sample, dist)
        if xs is not xf:
            labels = assign_clusters(xf, cent)
        if n_init == 1:
            best = (None, labels, cent)
            break
        c2 = (cent * cent).sum(1)
        inertia = (xf * xf).sum() + (c2[labels] - 2.0 * (xf * cent[labels]).sum(1)).sum()
        if dist:
            torch.distributed.all_reduce(inertia)
        if best is None or float(inertia) < float(best[0]):
            best = (inertia, labels, cent)
    _, labels, cent = best
    return labels, cent.to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the backward sums the incoming gradients over processes too (each
    process's loss depends on the global sum)."""

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
