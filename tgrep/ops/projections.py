"""Batched Euclidean projections of OT graph compression (Garg & Jaakkola, NeurIPS 2019).

Each works on a node vector ``y [N]`` holding many graphs at once (a PyG ``batch`` vector,
sorted or not) and projects each graph's slice independently:

* :func:`project_capped_simplex` -- onto ``{0 <= x <= 1, sum x <= k}`` (exact, sort-based);
* :func:`project_diag_simplex`   -- onto ``{x : x * eps in simplex}`` (the paper's Algorithm 1);
* :func:`project_lipschitz`      -- onto ``T = {t : t_u - t_v <= c_uv on every edge}``
  (dual FISTA on the edges).

Each is one ``torch.ops.tgrep`` custom op (:mod:`tgrep.library.ot`) with exact derivatives
almost everywhere (``project_lipschitz``: through its tight edges).
"""
from __future__ import annotations

import math

import torch

from .. import library  # noqa: F401  (registers torch.ops.tgrep.*)
from ..utils import check


def _graph_ids(batch, n: int, device) -> tuple[torch.Tensor, int]:
    """Compact graph ids of any-order ``batch`` (``unique``, so ids ``{0, 10**7}`` are 2 graphs)."""
    if batch is None:
        return torch.zeros(n, dtype=torch.long, device=device), (1 if n else 0)
    check.tensor("batch", batch, dtypes=check.INDEX_DTYPES, dim=1, device=device)
    check.dense("batch", batch)
    if batch.numel() != n:
        raise ValueError(f"'batch' must have one entry per node ({n}), got {batch.numel()}")
    if n == 0:
        return batch.long(), 0
    if int(batch.min()) < 0:
        raise ValueError(f"'batch' must be >= 0, got min {int(batch.min())}")
    ids, inv = torch.unique(batch.long(), return_inverse=True)
    return inv, ids.numel()


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


def check_cost(cost: torch.Tensor, num_edges: int, device) -> torch.Tensor:
    """``cost [E]``: floating, one per edge, finite and strictly positive (one host sync)."""
    check.tensor("cost", cost, dtypes=check.FLOAT_DTYPES, dim=1, device=device)
    check.dense("cost", cost)
    if cost.numel() != num_edges:
        raise ValueError(f"'cost' must have one entry per edge ({num_edges}), got {cost.numel()}")
    if cost.numel():
        c = cost.detach()
        if not bool(torch.isfinite(c).all()):
            raise ValueError("'cost' contains NaN or infinite values")
        if float(c.min()) <= 0:
            raise ValueError(f"'cost' must be strictly positive (transport cost per unit mass on an edge), "
                             f"got min {float(c.min())}")
    return cost


def project_capped_simplex(y: torch.Tensor, k, batch: torch.Tensor | None = None) -> torch.Tensor:
    r"""Exact Euclidean projection onto the capped simplex, per graph.

    .. math::
        x_g = \arg\min_{0 \le x \le 1,\ \mathbf 1^\top x \le k_g} \tfrac12 \|x - y_g\|^2
            = \mathrm{clip}(y_g - \theta_g, 0, 1),

    with :math:`\theta_g = 0` if :math:`\sum \mathrm{clip}(y_g, 0, 1) \le k_g`, else the root
    of the piecewise-linear :math:`\sum \mathrm{clip}(y_g - \theta, 0, 1) = k_g`, found by
    sorting the :math:`2 n_g` breakpoints :math:`\{y_i, y_i - 1\}` (no bisection).
    Differentiable in ``y`` (and a floating ``k``).

    Args:
        y (Tensor): ``[N]`` float values.
        k (float or Tensor): budget, a scalar or one per graph ``[B]``, ``>= 0``.
        batch (LongTensor, optional): ``[N]`` graph id of each entry (default: one graph).

    Returns:
        Tensor ``[N]``.
    """
    check.tensor("y", y, dtypes=check.FLOAT_DTYPES, dim=1, finite=True)
    batch, B = _graph_ids(batch, y.numel(), y.device)
    kk = _per_graph("k", k, B, y)
    return torch.ops.tgrep.project_capped_simplex(y, kk, batch)


def project_diag_simplex(y: torch.Tensor, eps: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
    r"""Projection onto the simplex under a diagonal transformation (the paper's Algorithm 1).

    .. math::
        x_g = \arg\min_{x :\ x \odot \epsilon_g \in \Delta} \tfrac12 \|x - y_g\|^2 ,
        \qquad \epsilon_g \in [0, 1]^{n_g} \setminus \{0\},

    in :math:`O(n \log n)`: coordinates with :math:`\epsilon_j = 0` are free
    (:math:`x_j = y_j`); the others are sorted by :math:`y_j / \epsilon_j` and
    :math:`x_j = \max(y_j + \alpha \epsilon_j, 0)` with :math:`\alpha` from the largest
    :math:`\ell` whose :math:`b_\ell > 0` (Garg & Jaakkola, NeurIPS 2019, Theorem 3).
    Differentiable in ``y`` and ``eps``.

    Args:
        y (Tensor): ``[N]`` values.
        eps (Tensor): ``[N]`` weights in ``[0, 1]``; every graph needs one positive weight.
        batch (LongTensor, optional): ``[N]`` graph ids (default: one graph).
    """
    check.tensor("y", y, dtypes=check.FLOAT_DTYPES, dim=1, finite=True)
    check.tensor("eps", eps, dtypes=check.FLOAT_DTYPES, dim=1, finite=True, device=y.device)
    check.same_length("y", y, "eps", eps)
    batch, B = _graph_ids(batch, y.numel(), y.device)
    if eps.numel() and (float(eps.min()) < 0 or float(eps.max()) > 1):
        raise ValueError(f"'eps' must lie in [0, 1], got range [{float(eps.min())}, {float(eps.max())}]")
    has_pos = torch.bincount(batch[eps > 0], minlength=B) > 0
    if B and not bool(has_pos.all()):
        g = int(torch.nonzero(~has_pos)[0])
        raise ValueError(f"'eps' is all zero on graph {g}: {{x : x * eps in simplex}} is empty")
    return torch.ops.tgrep.project_diag_simplex(y, eps.to(y.dtype), batch, B)


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
    Differentiable in ``y`` and ``cost`` through the tight edges at the returned ``t``.

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
    check.edge_index("edge_index", edge_index, y.numel(), device=y.device)
    cost = check_cost(cost, edge_index.size(1), y.device).to(y.dtype)
    batch, B = _graph_ids(batch, y.numel(), y.device)
    check.positive_int("num_iters", num_iters)
    check.in_range("tol", tol, 0, math.inf)
    if mu0 is not None:
        check.tensor("mu0", mu0, dtypes=check.FLOAT_DTYPES, dim=1, finite=True, device=y.device)
        check.same_length("mu0", mu0, "cost", cost)
        if mu0.numel() and float(mu0.min()) < 0:
            raise ValueError(f"'mu0' must be >= 0 (multipliers of inequality constraints), got min {float(mu0.min())}")
        mu0 = mu0.to(y.dtype)
    t, mu = torch.ops.tgrep.project_lipschitz(y, edge_index.long(), cost, batch, B, num_iters, float(tol), mu0)
    return (t, mu) if return_dual else t
