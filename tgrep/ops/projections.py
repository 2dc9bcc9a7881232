"""Batched Euclidean projections used by OT graph compression (Garg & Jaakkola, NeurIPS 2019).

All three ops work on a node vector ``y [N]`` holding many graphs at once (PyG ``batch``
vector, any order) and project each graph's slice independently:

* :func:`project_capped_simplex` -- onto ``{0 <= x <= 1, sum x <= k}`` (exact, sort-based);
* :func:`project_diag_simplex`   -- onto ``{x : x * eps in simplex}`` (the paper's Algorithm 1);
* :func:`project_lipschitz`      -- onto ``T = {t : t_u - t_v <= c_uv on every edge}``
  (dual FISTA on the edges).

They are built from differentiable torch ops (sorting, gathers, clamps), so autograd goes
through them almost everywhere (used by the unrolled solver of ``cost='learned'``).
"""
from __future__ import annotations

import math

import torch

from .. import _backend
from ..kernels.reference import ot as ref
from ..utils import check


def _batch(batch, n: int, device, name: str = "batch") -> tuple[torch.Tensor, int]:
    if batch is None:
        return torch.zeros(n, dtype=torch.long, device=device), 1
    check.tensor(name, batch, dtypes=check.INDEX_DTYPES, dim=1, device=device)
    if batch.numel() != n:
        raise ValueError(f"'{name}' must have one entry per node ({n}), got {batch.numel()}")
    batch = batch.long()
    if n and int(batch.min()) < 0:
        raise ValueError(f"'{name}' has negative graph ids")
    return batch, (int(batch.max()) + 1 if n else 0)


def _per_graph(name: str, value, num_graphs: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        check.tensor(name, value, dim=(0, 1), finite=True, device=like.device)
        value = value.to(like.dtype).reshape(-1)
        if value.numel() == 1:
            value = value.expand(num_graphs)
        if value.numel() != num_graphs:
            raise ValueError(f"'{name}' must be a scalar or have one entry per graph ({num_graphs}), "
                             f"got {value.numel()}")
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"'{name}' must be a finite number or a tensor, got {value!r}")
        value = torch.full((num_graphs,), float(value), dtype=like.dtype, device=like.device)
    if value.numel() and float(value.min()) < 0:
        raise ValueError(f"'{name}' must be >= 0, got min {float(value.min())}")
    return value


def project_capped_simplex(y: torch.Tensor, k, batch: torch.Tensor | None = None) -> torch.Tensor:
    r"""Exact Euclidean projection onto the capped simplex, per graph.

    .. math::
        x_g = \arg\min_{0 \le x \le 1,\ \mathbf 1^\top x \le k_g} \tfrac12 \|x - y_g\|^2
            = \mathrm{clip}(y_g - \theta_g, 0, 1),

    with :math:`\theta_g = 0` if :math:`\sum \mathrm{clip}(y_g, 0, 1) \le k_g`, else the root
    of the piecewise-linear :math:`\sum \mathrm{clip}(y_g - \theta, 0, 1) = k_g`, found by
    sorting the :math:`2 n_g` breakpoints :math:`\{y_i, y_i - 1\}` (no bisection).

    Args:
        y (Tensor): ``[N]`` float values.
        k (float or Tensor): budget, a scalar or one per graph ``[B]``, ``>= 0``.
        batch (LongTensor, optional): ``[N]`` graph id of each entry (default: one graph).

    Returns:
        Tensor ``[N]``.
    """
    check.tensor("y", y, dtypes=check.FLOAT_DTYPES, dim=1, finite=True)
    batch, B = _batch(batch, y.numel(), y.device)
    kk = _per_graph("k", k, B, y)
    _backend.choose(y.device, ("reference",), op="project_capped_simplex")
    return ref.project_capped_simplex(y, kk, batch, B)


def project_diag_simplex(y: torch.Tensor, eps: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
    r"""Projection onto the simplex under a diagonal transformation (the paper's Algorithm 1).

    .. math::
        x_g = \arg\min_{x :\ x \odot \epsilon_g \in \Delta} \tfrac12 \|x - y_g\|^2 ,
        \qquad \epsilon_g \in [0, 1]^{n_g} \setminus \{0\},

    in :math:`O(n \log n)`: coordinates with :math:`\epsilon_j = 0` are free
    (:math:`x_j = y_j`); the others are sorted by :math:`y_j / \epsilon_j` and
    :math:`x_j = \max(y_j + \alpha \epsilon_j, 0)` with :math:`\alpha` from the largest
    :math:`\ell` whose :math:`b_\ell > 0` (Garg & Jaakkola, NeurIPS 2019, Theorem 3).

    Args:
        y (Tensor): ``[N]`` values.
        eps (Tensor): ``[N]`` weights in ``[0, 1]``; every graph needs one positive weight.
        batch (LongTensor, optional): ``[N]`` graph ids (default: one graph).
    """
    check.tensor("y", y, dtypes=check.FLOAT_DTYPES, dim=1, finite=True)
    check.tensor("eps", eps, dtypes=check.FLOAT_DTYPES, dim=1, finite=True, device=y.device)
    check.same_length("y", y, "eps", eps)
    batch, B = _batch(batch, y.numel(), y.device)
    if eps.numel() and (float(eps.min()) < 0 or float(eps.max()) > 1):
        raise ValueError(f"'eps' must lie in [0, 1], got range [{float(eps.min())}, {float(eps.max())}]")
    has_pos = ref.seg_sum((eps > 0).to(y.dtype), batch, B) > 0
    present = torch.bincount(batch, minlength=B) > 0
    if bool((present & ~has_pos).any()):
        g = int(torch.nonzero(present & ~has_pos)[0])
        raise ValueError(f"'eps' is all zero on graph {g}: {{x : x * eps in simplex}} is empty")
    _backend.choose(y.device, ("reference",), op="project_diag_simplex")
    return ref.project_diag_simplex(y, eps.to(y.dtype), batch, B)


def check_cost(cost: torch.Tensor, num_edges: int, device) -> torch.Tensor:
    check.tensor("cost", cost, dtypes=check.FLOAT_DTYPES, dim=1, device=device)
    if cost.numel() != num_edges:
        raise ValueError(f"'cost' must have one entry per edge ({num_edges}), got {cost.numel()}")
    if cost.numel():
        if not bool(torch.isfinite(cost.detach()).all()):
            raise ValueError("'cost' contains NaN or infinite values")
        if float(cost.detach().min()) <= 0:
            raise ValueError(f"'cost' must be strictly positive (transport cost per unit mass on an edge), "
                             f"got min {float(cost.min())}")
    return cost


def check_edge_index(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    check.tensor("edge_index", edge_index, dtypes=check.INDEX_DTYPES, dim=2)
    if edge_index.size(0) != 2:
        raise ValueError(f"'edge_index' must have shape [2, E], got {tuple(edge_index.shape)}")
    check.index_range("edge_index", edge_index, num_nodes)
    return edge_index.long()


def project_lipschitz(y: torch.Tensor, edge_index: torch.Tensor, cost: torch.Tensor,
                      batch: torch.Tensor | None = None, *, num_iters: int = 500, tol: float = 1e-9,
                      return_dual: bool = False, mu0: torch.Tensor | None = None):
    r"""Projection onto the transport-dual set :math:`T = \{t : t_u - t_v \le c_e,\ e = (u, v)\}`.

    .. math::
        t = \arg\min_{t \in T} \tfrac12 \|t - y\|^2 = y - A^\top \mu^\star,\qquad
        \mu^\star = \arg\min_{\mu \ge 0} \tfrac12 \|y - A^\top \mu\|^2 + c^\top \mu,

    where row :math:`e` of :math:`A` is :math:`\mathbf e_u - \mathbf e_v`. An undirected edge
    listed in both directions (PyG convention) gives :math:`|t_u - t_v| \le c_e`, and the two
    one-sided steps of its multipliers are the soft-threshold by :math:`c_e`. Solved by FISTA
    on :math:`\mu` with step :math:`1 / \max_e (d_u + d_v) \le 1 / \|A\|^2`, per graph.

    Args:
        y (Tensor): ``[N]`` point to project.
        edge_index (LongTensor): ``[2, E]`` edges ``u -> v``.
        cost (Tensor): ``[E]`` strictly positive edge costs.
        batch (LongTensor, optional): ``[N]`` graph ids; only sets per-graph step sizes
            (default: one graph).
        num_iters (int, optional): FISTA iterations at most (default: ``500``).
        tol (float, optional): stop when the largest violation is ``<= tol`` and the duality
            gap ``<= tol**2`` (default: ``1e-9``).
        return_dual (bool, optional): also return ``mu`` (for warm starts) (default: ``False``).
        mu0 (Tensor, optional): ``[E]`` warm start for ``mu`` (default: zeros).
    """
    check.tensor("y", y, dtypes=check.FLOAT_DTYPES, dim=1, finite=True)
    edge_index = check_edge_index(edge_index, y.numel())
    cost = check_cost(cost, edge_index.size(1), y.device).to(y.dtype)
    batch, B = _batch(batch, y.numel(), y.device)
    check.positive_int("num_iters", num_iters)
    if mu0 is not None:
        check.tensor("mu0", mu0, dim=1, finite=True, device=y.device)
        check.same_length("mu0", mu0, "cost", cost)
    _backend.choose(y.device, ("reference",), op="project_lipschitz")
    t, mu = ref.project_lipschitz(y, edge_index, cost, batch, B, num_iters=num_iters, tol=tol, mu0=mu0)
    return (t, mu) if return_dual else t
