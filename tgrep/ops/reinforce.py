"""``tgrep.ops.reinforce_coefficients``: score-function (REINFORCE) terms of a stochastic search."""
from __future__ import annotations

import torch

from .. import library  # noqa: F401  (registers torch.ops.tgrep.*)
from ..utils import check
from .shortest_path import seed_tensor


def reinforce_coefficients(indptr: torch.Tensor, pred: torch.Tensor, sources: torch.Tensor, seed: int,
                           edge_prob: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    r"""REINFORCE coefficients of a :func:`tgrep.ops.shortest_paths` call made with ``seed`` and
    ``edge_prob`` (``return_predecessors=True`` gave ``pred``):

    .. math::
        c_e = \sum_{b:\ \mathrm{src}(e)\ \text{settled in row } b} a_b\,(b_{be} - p_e),

    the score :math:`\partial \log p(b_{be}) / \partial \mathrm{logit}(p_e) = b_{be} - p_e` of
    every edge sample row :math:`b` read (the out-edges of the vertices it settled, PRODIGE
    eq. 4), weighted by the row's advantage :math:`a_b` (loss minus a baseline independent of
    the row's sample). :math:`\sum_e c_e\,\mathrm{logit}_e` is then a surrogate whose gradient
    is the REINFORCE estimator.

    Args:
        indptr (LongTensor): ``[N + 1]`` CSR row pointers of the searched graph.
        pred (LongTensor): ``[B, N]`` predecessor edges returned by the search.
        sources (LongTensor): ``[B]`` its sources.
        seed (int or Tensor): its seed (an int, or the 0-d int64 tensor the search used).
        edge_prob (Tensor): ``[E]`` its edge probabilities.
        advantage (Tensor): ``[B]`` per-row weights.

    Returns:
        ``[E]`` float64 coefficients per CSR edge (``torch.ops.tgrep.reinforce_coefficients``:
        C++ on CPU, the reference elsewhere).
    """
    check.tensor("pred", pred, dtypes=(torch.int64,), dim=2)
    device = pred.device
    check.tensor("indptr", indptr, dtypes=check.INDEX_DTYPES, dim=1, device=device)
    check.tensor("sources", sources, dtypes=check.INDEX_DTYPES, dim=1, device=device)
    check.tensor("edge_prob", edge_prob, dtypes=check.FLOAT_DTYPES, dim=1, device=device)
    check.tensor("advantage", advantage, dtypes=check.FLOAT_DTYPES, dim=1, device=device)
    for name, t in (("pred", pred), ("indptr", indptr), ("sources", sources), ("edge_prob", edge_prob),
                    ("advantage", advantage)):
        check.dense(name, t)
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 0 or seed.dtype != torch.int64:
            raise TypeError("'seed' must be an int or a 0-d int64 tensor")
    else:
        seed = seed_tensor(check.seed("seed", seed), device)
    return torch.ops.tgrep.reinforce_coefficients(indptr, pred, sources, seed, edge_prob.detach(),
                                                  advantage.detach())
