"""Reference batched (stochastic) single-source shortest paths: the executable spec.

One binary-heap Dijkstra per row, in plain Python on host copies of the inputs, with sums in
the weight's own dtype (numpy scalars) so float32 rounding matches the kernels.

Semantics every backend must reproduce:

* Row ``b`` searches from ``sources[b]`` in its own sample of the graph (edge ``e`` present iff
  :func:`tgrep.kernels.reference.rng.keep` says so; every edge when ``edge_prob`` is None).
* With targets, ``D_b`` = the largest distance among row ``b``'s targets (``inf`` if one is
  unreachable, ``-inf`` if there are none). The search settles exactly the vertices ``v`` with
  ``d(v) <= D_b`` and reads the samples of exactly their out-edges; then it stops (early exit).
  Without targets every reachable vertex is settled.
* ``pred[b, v]`` = the CSR index of the edge into ``v`` on a shortest path, for every settled
  ``v`` except the source; ``-1`` elsewhere. So ``v`` was settled iff ``pred[b, v] >= 0`` or
  ``v == sources[b]``. Among equal-length candidates the first one relaxed wins (edges are
  relaxed in CSR order, vertices in settling order).
"""
from __future__ import annotations

import heapq
import math

import numpy as np
import torch

from . import rng


def shortest_paths(indptr: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor, sources: torch.Tensor,
                   targets: torch.Tensor | None, edge_prob: torch.Tensor | None, seed: int,
                   need_pred: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns ``(dist [B, T] or [B, N], pred [B, N] int64 or None)`` on ``weight.device``."""
    device, dtype = weight.device, weight.dtype
    n, B = indptr.numel() - 1, sources.numel()
    ip = indptr.cpu().tolist()
    ix = indices.cpu().tolist()
    w = weight.detach().cpu().numpy()
    tg = None if targets is None else targets.cpu().tolist()
    E = len(ix)
    dist_full = np.full((B, n), np.inf, dtype=w.dtype)
    pred = np.full((B, n), -1, dtype=np.int64)
    for b, s in enumerate(sources.cpu().tolist()):
        if edge_prob is None:
            present = None
        else:
            present = rng.keep(seed, torch.tensor(b), torch.arange(E), edge_prob.detach().cpu()).tolist()
        want = None if tg is None else set(tg[b])
        if want is not None and not want:
            continue  # no targets: nothing to search
        d = dist_full[b]
        d[s] = w.dtype.type(0)
        done = np.zeros(n, dtype=bool)
        heap = [(d[s], s)]
        bound = math.inf  # D_b, known once every target is settled
        while heap:
            du, u = heapq.heappop(heap)
            if done[u] or du > d[u]:
                continue
            if du > bound:
                break
            done[u] = True
            if want is not None and u in want:
                want.discard(u)
                if not want:
                    bound = du
            for e in range(ip[u], ip[u + 1]):
                if present is not None and not present[e]:
                    continue
                v = ix[e]
                nd = du + w[e]
                if nd < d[v]:
                    d[v] = nd
                    pred[b, v] = e
                    heapq.heappush(heap, (nd, v))
        unsettled = ~done
        d[unsettled] = np.inf
        pred[b, unsettled] = -1
    dist = torch.from_numpy(dist_full).to(device=device, dtype=dtype)
    if targets is not None:
        dist = dist.gather(1, targets.long().to(device)) if B else dist.new_empty(targets.shape)
    return dist, (torch.from_numpy(pred).to(device) if need_pred else None)


def path_gradient(grad_dist: torch.Tensor, dist: torch.Tensor, pred: torch.Tensor, sources: torch.Tensor,
                  targets: torch.Tensor | None, edge_src: torch.Tensor, num_edges: int) -> torch.Tensor:
    """d(sum grad_dist * dist)/d weight: walk predecessor edges from each target to its source.

    Vectorised over all (row, target) pairs; one step per hop of the longest path. Entries
    with infinite distance (unreachable) or zero gradient contribute nothing. A walk stops at a
    negative ``pred`` entry or after ``N + 1`` steps (a valid tree has paths of at most
    ``N - 1`` edges; a malformed ``pred`` with a cycle is cut there, as in every kernel).
    """
    B = pred.size(0)
    if targets is None:
        targets = torch.arange(pred.size(1), device=pred.device).expand(B, -1)
    g = torch.where(torch.isfinite(dist), grad_dist, torch.zeros_like(grad_dist)).reshape(-1)
    cur = targets.long().reshape(-1)
    rows = torch.arange(B, device=pred.device).repeat_interleave(targets.size(1))
    out = torch.zeros(num_edges, dtype=grad_dist.dtype, device=grad_dist.device)
    live = g != 0
    rows, cur, g = rows[live], cur[live], g[live]
    for _ in range(pred.size(1) + 1):
        if not cur.numel():
            break
        e = pred[rows, cur]
        ok = e >= 0
        rows, e, g = rows[ok], e[ok], g[ok]
        out.index_add_(0, e, g)
        cur = edge_src[e]
    return out


def path_sum(edge_values: torch.Tensor, dist: torch.Tensor, pred: torch.Tensor, sources: torch.Tensor,
             targets: torch.Tensor | None, edge_src: torch.Tensor) -> torch.Tensor:
    """``out[b, t]`` = sum of ``edge_values`` along row ``b``'s predecessor path to target ``t``
    (0 where ``dist`` is not finite): the transpose of :func:`path_gradient`."""
    B = pred.size(0)
    if targets is None:
        targets = torch.arange(pred.size(1), device=pred.device).expand(B, -1)
    T = targets.size(1)
    out = torch.zeros(B * T, dtype=edge_values.dtype, device=edge_values.device)
    pair = torch.arange(B * T, device=pred.device)
    live = torch.isfinite(dist).reshape(-1)
    pair = pair[live]
    rows, cur = pair // max(T, 1), targets.long().reshape(-1)[live]
    for _ in range(pred.size(1) + 1):  # as in path_gradient: at most N + 1 steps
        if not pair.numel():
            break
        e = pred[rows, cur]
        ok = e >= 0
        pair, rows, e = pair[ok], rows[ok], e[ok]
        out.index_add_(0, pair, edge_values[e])
        cur = edge_src[e]
    return out.view(B, T)
