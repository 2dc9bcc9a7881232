"""``tgrep.ops.reinforce_coefficients``: score-function (REINFORCE) terms of a stochastic search."""
from __future__ import annotations

import torch

from .. import _backend
from ..kernels.reference import reinforce as ref
from ..kernels.reference import rng
from ..utils import check

IMPLEMENTED = ("reference", "cpp")


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
        seed (int): its seed.
        edge_prob (Tensor): ``[E]`` its edge probabilities.
        advantage (Tensor): ``[B]`` per-row weights.

    Returns:
        ``[E]`` float64 coefficients per CSR edge.
    """
    check.tensor("pred", pred, dtypes=(torch.int64,), dim=2)
    device = pred.device
    check.tensor("indptr", indptr, dtypes=check.INDEX_DTYPES, dim=1, device=device)
    check.tensor("sources", sources, dtypes=check.INDEX_DTYPES, dim=1, device=device)
    check.tensor("edge_prob", edge_prob, dtypes=check.FLOAT_DTYPES, dim=1, device=device)
    check.tensor("advantage", advantage, dtypes=check.FLOAT_DTYPES, dim=1, device=device, finite=True)
    B, n = pred.shape
    if indptr.numel() != n + 1 or int(indptr[-1]) != edge_prob.numel():
        raise ValueError(f"'indptr' must have N + 1 = {n + 1} entries ending at len(edge_prob) = "
                         f"{edge_prob.numel()}, got {indptr.numel()} ending at {int(indptr[-1])}")
    if sources.numel() != B or advantage.numel() != B:
        raise ValueError(f"'sources' and 'advantage' must have B = {B} entries, "
                         f"got {sources.numel()} and {advantage.numel()}")
    check.index_range("sources", sources, n)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"'seed' must be an int, got {type(seed).__name__}")
    seed = rng.seed32(seed)
    backend = _backend.choose(device, IMPLEMENTED, cpp_name="prodige_reinforce", op="reinforce_coefficients")
    if backend == "cpp":
        from .._ext import load_cpp

        return load_cpp("prodige_reinforce").reinforce_coefficients(indptr, pred, sources, seed, edge_prob,
                                                                    advantage)
    return ref.reinforce_coefficients(indptr, pred, sources, seed, edge_prob, advantage)
