"""``tgrep.ops.shortest_paths``: batched, optionally stochastic, differentiable SSSP."""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import library  # noqa: F401  (registers torch.ops.tgrep.*)
from ..kernels.reference import rng
from ..utils import check


class ShortestPaths(NamedTuple):
    """``dist`` ``[B, T]`` (or ``[B, N]``) and ``pred`` ``[B, N]`` (int64 CSR edge ids, -1 = none)."""

    dist: torch.Tensor
    pred: torch.Tensor


def _check_meta(indptr, indices, weight, sources, targets, edge_prob, seed):
    """Types, ranks, shapes and devices (no host sync; the value checks run inside the op)."""
    check.tensor("weight", weight, dtypes=(torch.float32, torch.float64), dim=1)
    device = weight.device
    check.tensor("indptr", indptr, dtypes=check.INDEX_DTYPES, dim=1, device=device)
    check.tensor("indices", indices, dtypes=check.INDEX_DTYPES, dim=1, device=device)
    check.tensor("sources", sources, dtypes=check.INDEX_DTYPES, dim=1, device=device)
    check.dense("weight", weight)
    if indptr.numel() < 1:
        raise ValueError("'indptr' must have N + 1 >= 1 entries, got 0")
    check.same_length("indices", indices, "weight", weight)
    if targets is not None:
        check.tensor("targets", targets, dtypes=check.INDEX_DTYPES, dim=2, device=device)
        if targets.size(0) != sources.numel():
            raise ValueError(f"'targets' must have shape [B, T] with B = len(sources) = {sources.numel()}, "
                             f"got {tuple(targets.shape)}")
    if edge_prob is not None:
        check.tensor("edge_prob", edge_prob, dtypes=check.FLOAT_DTYPES, dim=1, device=device)
        check.same_length("edge_prob", edge_prob, "weight", weight)
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 0 or seed.dtype != torch.int64:
            raise TypeError(f"'seed' must be an int, a 0-d int64 tensor or None, got a {seed.dtype} tensor "
                            f"of shape {tuple(seed.shape)}")
    elif seed is not None:
        check.seed("seed", seed)


def seed_tensor(seed, device) -> torch.Tensor:
    """The 0-d int64 seed the ops take: ``seed`` (masked to 32 bits; a 0-d int64 tensor passes
    through), or one drawn from torch's default generator when ``None`` (a tensor op, so no host
    sync and no graph break)."""
    if isinstance(seed, torch.Tensor):
        return seed
    if seed is None:
        return torch.randint(0, 2**31 - 1, (), dtype=torch.int64)
    return torch.tensor(rng.seed32(seed), dtype=torch.int64)


def shortest_paths(indptr: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor, sources: torch.Tensor,
                   targets: torch.Tensor | None = None, *, edge_prob: torch.Tensor | None = None,
                   seed: int | None = None, return_predecessors: bool = False):
    r"""Batched single-source shortest paths, optionally each row in its own random graph.

    Row :math:`b` computes :math:`d_b(v) = \min_{\text{paths } s_b \to v} \sum_{e} w_e` over the
    edges present in its sample :math:`G_b`: every edge when ``edge_prob`` is ``None``, else edge
    :math:`e` independently with probability :math:`p_e`, drawn from a counter-based hash of
    ``(seed, b, e)`` (so a row's sample does not depend on the batch size, the other rows or the
    backend, and the same ``seed`` gives the same samples). Samples are read lazily: a row stops
    as soon as all of its targets are settled.

    Gradients flow to ``weight``: :math:`\partial d_b(t) / \partial w_e = 1` if :math:`e` lies on
    the (returned) shortest path from :math:`s_b` to :math:`t`, else 0; unreachable entries
    (``inf``) get none.

    Args:
        indptr (LongTensor): ``[N + 1]`` CSR row pointers over source vertices (int32 or int64).
        indices (LongTensor): ``[E]`` edge targets.
        weight (Tensor): ``[E]`` non-negative edge lengths (float32/float64; ``inf`` = no edge).
            Duplicate edges are allowed (the lightest wins), so are self-loops and zeros.
        sources (LongTensor): ``[B]`` source vertex of each row.
        targets (LongTensor, optional): ``[B, T]`` vertices whose distances row ``b`` returns;
            ``None`` returns all ``N`` (default: ``None``).
        edge_prob (Tensor, optional): ``[E]`` presence probabilities in ``[0, 1]``; ``None``
            means every edge is present (default: ``None``).
        seed (int or Tensor, optional): sampling seed (an int, or a 0-d int64 tensor, which
            keeps a compiled caller free of host syncs); ``None`` draws one from torch's default
            generator (default: ``None``).
        return_predecessors (bool, optional): also return ``pred`` ``[B, N]``, the CSR index of
            the edge into each settled vertex on its shortest path (``-1`` for the source and
            for vertices the row did not settle). A vertex ``v`` was settled, and the samples
            of all its out-edges read, iff ``pred[b, v] >= 0`` or ``v == sources[b]``; with
            targets these are exactly the vertices with :math:`d_b(v) \le \max_t d_b(t)`
            (default: ``False``).

    Returns:
        ``dist`` ``[B, T]`` (or ``[B, N]``), ``inf`` where unreachable; or
        :class:`ShortestPaths` ``(dist, pred)`` when ``return_predecessors``.

    Memory is :math:`O(B N)`. ``torch.ops.tgrep.shortest_paths`` runs it: the C++ kernel on
    CPU, the Triton one on CUDA, the plain reference elsewhere or when forced
    (:func:`tgrep.use_backend`). Works under ``torch.compile(fullgraph=True)``.
    """
    _check_meta(indptr, indices, weight, sources, targets, edge_prob, seed)
    need_pred = bool(return_predecessors) or (weight.requires_grad and torch.is_grad_enabled())
    dist, pred = torch.ops.tgrep.shortest_paths(indptr, indices, weight, sources, targets, edge_prob,
                                                seed_tensor(seed, weight.device), need_pred)
    return ShortestPaths(dist, pred) if return_predecessors else dist


def edge_presence(seed: int, rows: torch.Tensor, edges: torch.Tensor, edge_prob: torch.Tensor) -> torch.Tensor:
    """Whether edge ``edges[i]`` was present in row ``rows[i]``'s sample of a search run with
    ``seed`` (broadcasting): the same draws :func:`shortest_paths` made.

    Args:
        seed (int): the search's seed.
        rows (LongTensor): row ids (``>= 0``).
        edges (LongTensor): CSR edge ids (``>= 0``).
        edge_prob (Tensor): the presence probability of each queried edge, in ``[0, 1]``
            (broadcast with ``rows`` and ``edges``; e.g. ``p[edges]``).
    """
    check.seed("seed", seed)
    check.tensor("edge_prob", edge_prob, dtypes=check.FLOAT_DTYPES)
    check.tensor("rows", rows, dtypes=check.INDEX_DTYPES)
    check.tensor("edges", edges, dtypes=check.INDEX_DTYPES)
    check.values(check.index_flags("rows", rows, 2**63 - 1) + check.index_flags("edges", edges, 2**63 - 1)
                 + check.prob_flags("edge_prob", edge_prob))
    return rng.keep(seed, rows, edges, edge_prob)
