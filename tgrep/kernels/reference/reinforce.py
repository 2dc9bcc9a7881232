"""Reference REINFORCE coefficients of a stochastic shortest-path search (PRODIGE, eq. 3–4).

For a batch searched by :func:`tgrep.ops.shortest_paths` with ``seed`` and ``edge_prob``,

    coef[e] = sum over rows b that settled src(e) of  adv[b] * (present(seed, b, e) - p[e]),

i.e. the score-function terms of exactly the samples each row read (the out-edges of the
vertices it settled; ``v`` settled iff ``pred[b, v] >= 0`` or ``v == sources[b]``), weighted by
the row's advantage. ``present`` is :func:`tgrep.kernels.reference.rng.keep`. Sums in float64.
"""
from __future__ import annotations

import torch

from . import rng

PAIR_CHUNK = 1 << 22  # (row, inspected edge) pairs processed at once


def reinforce_coefficients(indptr: torch.Tensor, pred: torch.Tensor, sources: torch.Tensor, seed: int,
                           edge_prob: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """``[E]`` float64 coefficients (see the module docstring)."""
    device = pred.device
    B = pred.size(0)
    settled = pred >= 0
    settled[torch.arange(B, device=device), sources.long()] = True
    deg = indptr.diff()
    adv = advantage.double()
    coef = torch.zeros(edge_prob.numel(), dtype=torch.float64, device=device)
    work = (settled.double() @ deg.double()).cumsum(0)
    start = 0
    while start < B:
        done = float(work[start - 1]) if start else 0.0
        limit = torch.tensor(done + PAIR_CHUNK, dtype=work.dtype, device=device)
        stop = max(int(torch.searchsorted(work, limit, right=True)), start + 1)
        rows, verts = settled[start:stop].nonzero(as_tuple=True)
        rows = rows + start
        cnt = deg[verts]
        total = int(cnt.sum())
        if total:
            offs = cnt.cumsum(0) - cnt
            edges = torch.arange(total, device=device) + (indptr[verts] - offs).repeat_interleave(cnt)
            rrows = rows.repeat_interleave(cnt)
            pe = edge_prob[edges]
            b = rng.keep(seed, rrows, edges, pe)
            coef.index_add_(0, edges, (b.double() - pe.double()) * adv[rrows])
        start = stop
    return coef
