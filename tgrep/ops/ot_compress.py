r"""Graph compression by optimal transport -- Garg & Jaakkola, "Solving graph compression via
optimal transport", NeurIPS 2019 (not the AAAI 2021 "OTCoarsening" of Ma & Chen, a different
method that shares the name).

A graph with prior node masses :math:`\rho_0` and positive edge costs :math:`c` is compressed
to the support :math:`S` (:math:`|S| \le k`) of the distribution :math:`\rho_1` that is
cheapest to reach from :math:`\rho_0`:

.. math::
    \min_{|S| \le k}\ \min_{\rho_1 \in \Delta,\ \mathrm{supp}\,\rho_1 \subseteq S}
        W(\rho_0, \rho_1) + \tfrac{\lambda}{2} \|\rho_1\|^2 ,

:math:`W` the transport cost along the edges (an edge ``u -> v`` moves mass from ``u`` to
``v`` at cost :math:`c_{uv}`; PyG lists undirected edges in both directions, directed and
mixed graphs follow from the edges given, Sec. 2 of the paper). With support weights
:math:`\epsilon \in [0, 1]^V` and :math:`\rho_1` eliminated (our derivation of Theorem 5,
``docs/architecture.md``, Method notes) the problem is the saddle point

.. math::
    \min_{\epsilon \in E_k} \max_{t \in T,\ \zeta}\ \psi(\epsilon, t, \zeta) =
        t^\top \rho_0 + \zeta - \frac{1}{2\lambda} \sum_v \epsilon_v (t_v + \zeta)_+^2 ,
    \qquad \rho_{1,v} = \epsilon_v (t_v + \zeta)_+ / \lambda ,

with :math:`T = \{t : t_u - t_v \le c_{uv}\}` and :math:`E_k = \{0 \le \epsilon \le 1,
\mathbf 1^\top \epsilon \le k\}`. The solver (``tgrep::mirror_prox``), the rounding
(``tgrep::ot_round``) and the exact support cost (``tgrep::support_cost``) are custom ops
(:mod:`tgrep.library.ot`); their algorithms live in :mod:`tgrep.kernels.reference` and
``csrc/cpu/ot_compress.cpp``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import library  # noqa: F401  (registers torch.ops.tgrep.*)
from ..kernels.reference import ot_costs
from ..kernels.reference import ot_rounding as ref_round
from ..kernels.reference import ot_solver as ref_solver
from ..library.ot import _solve
from ..utils import check
from ..utils.progress import log
from .projections import _graph_ids, check_cost

__all__ = ["psi", "psi_grad", "ot_compression_cost", "ot_compress", "OTCompressResult", "label_cost",
           "degree_cost", "degree_prior"]


def _edges(edge_index, num_nodes: int, device=None) -> torch.Tensor:
    check.positive_int("num_nodes", num_nodes, allow_zero=True)
    check.edge_index("edge_index", edge_index, device=device)  # values are checked inside the ops
    return edge_index.long()


def _graphs(edge_index, batch, num_nodes):
    """``(compact batch, counts [B])`` via ``tgrep::ot_graphs`` (edges inside one graph, sorted ids)."""
    return torch.ops.tgrep.ot_graphs(edge_index, batch, num_nodes)


# ----------------------------------------------------------------------------- priors and costs
def degree_prior(edge_index: torch.Tensor, num_nodes: int, batch: torch.Tensor | None = None,
                 dtype=torch.float64) -> torch.Tensor:
    r"""The paper's default prior :math:`\rho_0(v) = \deg(v) / \sum_u \deg(u)` per graph.

    ``deg`` counts incident edge entries / 2 (the degree for PyG undirected graphs). A graph
    without edges gets the uniform distribution.
    """
    edge_index = _edges(edge_index, num_nodes)
    batch, counts = _graphs(edge_index, batch, num_nodes)
    return ot_costs.degree_prior(edge_index, batch, counts.shape[0], dtype)


def label_cost(edge_index: torch.Tensor, node_label: torch.Tensor, same: float = 0.01, different: float = 0.02,
               dtype=torch.float64) -> torch.Tensor:
    """Edge costs from node labels, as in the paper's Sec. 4.1: ``same`` when both ends share
    a label, ``different`` otherwise (default ``0.01`` / ``0.02``). ``node_label`` may be
    ``[N]`` integer labels or ``[N, C]`` one-hot rows."""
    check.tensor("node_label", node_label, dim=(1, 2))
    lab = node_label.argmax(-1) if node_label.dim() == 2 else node_label
    check.in_range("same", same, 0, math.inf, lo_open=True, hi_open=True)
    check.in_range("different", different, 0, math.inf, lo_open=True, hi_open=True)
    edge_index = _edges(edge_index, lab.numel(), device=lab.device)
    if not torch.compiler.is_compiling():  # a host sync; compiled code gets it from tgrep::ot_graphs
        check.edge_index("edge_index", edge_index, lab.numel())
    return ot_costs.label_cost(edge_index, lab, same, different, dtype)


def degree_cost(edge_index: torch.Tensor, num_nodes: int, dtype=torch.float64) -> torch.Tensor:
    """Edge costs ``max(d_u, d_v)`` (Sec. 3.4: the heavy-edge-matching analogue; flow, hence
    compression, is cheap on edges between low-degree nodes). Isolated ends count degree 1."""
    edge_index = _edges(edge_index, num_nodes)
    return ot_costs.degree_cost(edge_index, num_nodes, dtype)


def _prior(rho0, edge_index, num_nodes, batch, B, device):
    if rho0 is None:
        return ot_costs.degree_prior(edge_index, batch, B)
    check.tensor("rho0", rho0, dtypes=check.FLOAT_DTYPES, dim=1, device=device)
    if rho0.numel() != num_nodes:
        raise ValueError(f"'rho0' must have one entry per node ({num_nodes}), got {rho0.numel()}")
    return ot_costs.normalise(rho0.to(torch.float64), batch, B)  # values checked inside tgrep::mirror_prox


# ----------------------------------------------------------------------------- psi
def psi(eps: torch.Tensor, t: torch.Tensor, zeta: torch.Tensor, rho0: torch.Tensor,
        batch: torch.Tensor | None = None, lam: float = 1.0) -> torch.Tensor:
    r"""The saddle function per graph,
    :math:`\psi(\epsilon, t, \zeta) = t^\top\rho_0 + \zeta - \frac{1}{2\lambda}\sum_v
    \epsilon_v (t_v + \zeta)_+^2` (differentiable; ``zeta`` has one entry per graph).

    For binary :math:`\epsilon = \mathbf 1_S`, :math:`\max_{t \in T, \zeta} \psi` equals
    :func:`ot_compression_cost` of :math:`S`."""
    for name, v in (("eps", eps), ("t", t), ("rho0", rho0)):
        check.tensor(name, v, dtypes=check.FLOAT_DTYPES, dim=1, finite=True)
    check.same_length("eps", eps, "t", t)
    check.same_length("eps", eps, "rho0", rho0)
    batch, B = _graph_ids(batch, eps.numel(), eps.device)
    check.tensor("zeta", zeta, dtypes=check.FLOAT_DTYPES, dim=1, finite=True)
    if zeta.numel() != B:
        raise ValueError(f"'zeta' must have one entry per graph ({B}), got {zeta.numel()}")
    check.in_range("lam", lam, 0, math.inf, lo_open=True, hi_open=True)
    return ref_solver.psi(eps, t, zeta, rho0, batch, B, lam)


def psi_grad(eps, t, zeta, rho0, batch=None, lam: float = 1.0):
    r"""Closed-form gradients of :func:`psi`:
    :math:`\partial_\epsilon \psi = -(t + \zeta)_+^2 / 2\lambda`,
    :math:`\partial_t \psi = \rho_0 - \rho_1`,
    :math:`\partial_\zeta \psi = 1 - \mathbf 1^\top \rho_1`, with
    :math:`\rho_1 = \epsilon (t + \zeta)_+ / \lambda`."""
    psi(eps, t, zeta, rho0, batch, lam)  # validation
    batch, B = _graph_ids(batch, eps.numel(), eps.device)
    return ref_solver.psi_grad(eps, t, zeta, rho0, batch, B, lam)


# ----------------------------------------------------------------------------- exact support cost
def _support_mask(support, num_nodes, device):
    check.tensor("support", support, dim=1, device=device)
    if support.dtype == torch.bool:
        if support.numel() != num_nodes:
            raise ValueError(f"'support' mask must have {num_nodes} entries, got {support.numel()}")
        return support
    check.tensor("support", support, dtypes=check.INDEX_DTYPES, dim=1)
    check.index_range("support", support, num_nodes)
    mask = torch.zeros(num_nodes, dtype=torch.bool, device=device)
    mask[support.long()] = True
    return mask


def ot_compression_cost(edge_index: torch.Tensor, num_nodes: int, support: torch.Tensor, *,
                        cost: torch.Tensor | None = None, rho0: torch.Tensor | None = None, lam: float = 1.0,
                        batch: torch.Tensor | None = None, tol: float = 1e-9, max_iters: int = 5000,
                        return_rho1: bool = False):
    r"""Exact objective of a given support, per graph:

    .. math::
        \mathrm{cost}(S) = \min_{\rho_1 \in \Delta,\ \mathrm{supp}\, \rho_1 \subseteq S}
            W(\rho_0, \rho_1) + \tfrac{\lambda}{2} \|\rho_1\|^2 .

    With positive costs, :math:`W` is the transport cost under the shortest-path metric, so
    the problem is a QP over transport plans from every node to the support; it is solved by
    FISTA until the primal-dual gap (certified by the dual
    :math:`g(\tau) = \sum_u \rho_{0,u} \min_{s \in S}(d_{us} + \tau_s) - \sum_s
    (\tau_s)_+^2 / 2\lambda`) is ``<= tol`` relative (``tgrep::support_cost``). Dense per
    graph (padded blocks): meant for graphs up to a few hundred nodes.

    Args:
        edge_index (LongTensor): ``[2, E]``.
        num_nodes (int): ``N``.
        support (Tensor): ``[N]`` bool mask of the kept nodes, or ``[M]`` node indices.
        cost (Tensor, optional): ``[E]`` positive edge costs (default: ones).
        rho0 (Tensor, optional): ``[N]`` prior mass, normalised per graph (default: degree).
        lam (float, optional): :math:`\lambda > 0` (default: ``1.0``).
        batch (LongTensor, optional): ``[N]`` sorted graph ids (default: one graph).
        tol (float, optional): relative duality-gap tolerance (default: ``1e-9``).
        max_iters (int, optional): FISTA iterations at most (default: ``5000``).
        return_rho1 (bool, optional): also return the optimal ``rho1 [N]`` (default: ``False``).

    Returns:
        ``cost [B]`` (float64; ``inf`` where a node with mass cannot reach the support, e.g.
        an empty support or a component without a kept node), and ``rho1`` if asked.
    """
    edge_index = _edges(edge_index, num_nodes)
    device = edge_index.device
    batch, counts = _graphs(edge_index, batch, num_nodes)
    B = counts.shape[0]
    cost = torch.ones(edge_index.size(1), dtype=torch.float64, device=device) if cost is None else cost
    cost = check_cost(cost, edge_index.size(1), device).detach().to(torch.float64)
    check.in_range("lam", lam, 0, math.inf, lo_open=True, hi_open=True)
    check.in_range("tol", tol, 0, math.inf)
    check.positive_int("max_iters", max_iters)
    mask = _support_mask(support, num_nodes, device)
    r0 = _prior(rho0, edge_index, num_nodes, batch, B, device)
    if r0.numel() and not bool((r0 >= 0).all() & torch.isfinite(r0).all()):
        raise ValueError("'rho0' must be finite and >= 0")
    g = ref_round.Graphs(edge_index, cost, r0, batch, torch.zeros(B, dtype=torch.long, device=device))
    out, rho1 = ref_round.support_cost_blocks(g, mask, lam, tol, max_iters, _solve)
    return (out, rho1) if return_rho1 else out


# ----------------------------------------------------------------------------- ot_compress
@dataclass
class OTCompressResult:
    """Everything :func:`ot_compress` computed (``return_info=True``).

    Attributes:
        perm: ``[M]`` kept nodes, sorted by graph then node index.
        mask: ``[N]`` bool, kept nodes.
        eps: ``[N]`` the relaxed support weights (Mirror Prox average, weights ``alpha_l``).
        rho1: ``[N]`` ``eps (t_bar + zeta_bar)_+ / lam`` at the averaged iterates
            (differentiable in a learned ``cost`` and in ``rho0``, see :func:`ot_compress`).
        cost: ``[B]`` exact objective of the returned support where the refinement computed
            it (``nan`` elsewhere).
        k: ``[B]`` budgets used.
        iterations: ``[B]`` Mirror Prox iterations run per graph.
        gap: ``[B]`` the duality-gap estimate at the end.
    """
    perm: torch.Tensor
    mask: torch.Tensor
    eps: torch.Tensor
    rho1: torch.Tensor
    cost: torch.Tensor
    k: torch.Tensor
    iterations: torch.Tensor
    gap: torch.Tensor


def _budgets(k, counts: torch.Tensor) -> torch.Tensor:
    if isinstance(k, torch.Tensor):  # per-graph budgets: validated here (host sync)
        check.tensor("k", k, dim=(0, 1), finite=True, device=counts.device)
        k = k.reshape(-1)
        if k.numel() == 1:
            k = k.expand(counts.numel())
        if k.numel() != counts.numel():
            raise ValueError(f"'k' must be a scalar or have one entry per graph ({counts.numel()}), got {k.numel()}")
        if k.numel() and k.is_floating_point() and (float(k.min()) < 0 or float(k.max()) > 1):
            raise ValueError("a floating 'k' is a ratio per graph and must lie in [0, 1]")
        if k.numel() and not k.is_floating_point() and int(k.min()) < 0:
            raise ValueError(f"'k' must be >= 0, got min {int(k.min())}")
        return ot_costs.budgets(counts, k_per_graph=k)
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise TypeError(f"'k' must be an int, a ratio in [0, 1] or a tensor, got {type(k).__name__}")
    if isinstance(k, int):
        return ot_costs.budgets(counts, k=check.positive_int("k", k, allow_zero=True))
    return ot_costs.budgets(counts, ratio=check.in_range("k", k, 0.0, 1.0))


def _check_options(lam, num_iters, tol, lip_iters, step_scale, refine, refine_rounds, refine_max_nodes, diff_iters):
    check.in_range("lam", lam, 0, math.inf, lo_open=True, hi_open=True)
    check.positive_int("num_iters", num_iters)
    check.in_range("tol", tol, 0, math.inf, hi_open=True)
    check.positive_int("lip_iters", lip_iters)
    check.in_range("step_scale", step_scale, 0, math.inf, lo_open=True, hi_open=True)
    check.positive_int("refine", refine, allow_zero=True)
    check.positive_int("refine_rounds", refine_rounds, allow_zero=True)
    check.positive_int("refine_max_nodes", refine_max_nodes, allow_zero=True)
    check.positive_int("diff_iters", diff_iters)


def ot_compress(edge_index: torch.Tensor, num_nodes: int, k, *, cost: torch.Tensor | None = None,
                rho0: torch.Tensor | None = None, lam: float = 1.0, num_iters: int = 30,
                batch: torch.Tensor | None = None, tol: float = 1e-3, lip_iters: int = 5,
                step_scale: float = 1.0, refine: int = 0, refine_rounds: int = 3, refine_max_nodes: int = 64,
                diff_iters: int = 3, return_info: bool = False, verbose: bool = False):
    r"""Compress every graph of a batch to at most ``k`` nodes by optimal transport.

    Implements Garg & Jaakkola, *Solving graph compression via optimal transport* (NeurIPS
    2019): Mirror Prox (their Algorithm 2) on the Boolean relaxation of
    :math:`\min_{\epsilon \in E_k} \max_{t \in T, \zeta} \psi(\epsilon, t, \zeta)` (see the
    module docstring), for all graphs of the batch at once, then rounding. (Not the AAAI 2021
    "OTCoarsening" of Ma & Chen, a different method.)

    What we do beyond the paper, and why:

    * **Step sizes scaled to the problem.** The paper's fixed steps (0.1) stall when
      :math:`\rho_0` or :math:`c` are small. We use, per graph, :math:`\beta = \lambda/2` for
      :math:`t` and :math:`\gamma = \lambda / 2k` for :math:`\zeta` (the inverse curvatures of
      :math:`\psi` in those blocks) and :math:`\alpha_\ell = \lambda^2 / 2\max(\beta
      \max_v r_v^2, \gamma \sum_v r_v^2)` for :math:`\epsilon` with
      :math:`r = (t + \zeta)_+` (bounds the coupling of the blocks), all times ``step_scale``.
      :math:`\hat\epsilon` is the :math:`\alpha_\ell`-weighted average, as in Algorithm 2.
      The projection onto :math:`T` is dual FISTA warm-started across iterations
      (``lip_iters`` steps each).
    * **Stopping on a duality-gap estimate**, every 10 iterations and per graph (see
      :func:`tgrep.kernels.reference.ot_solver.mirror_prox`): ``<= tol`` relative, or
      ``num_iters``.
    * **Rounding.** Top-:math:`k` of :math:`\hat\epsilon` (ties broken by the cost of dropping
      a node alone, then by :math:`\rho_1`); then a *coverage repair*: a support has finite
      cost only if every node with mass reaches it (a directed graph's sinks, an undirected
      graph's components), so where top-k misses such a part a kept node is exchanged for one
      that covers it; then, on graphs with ``<= refine_max_nodes`` nodes and ``refine > 0``, a
      local search with the *exact* objective: each round tries swapping each of the
      ``refine`` kept nodes cheapest to drop with each of the ``refine`` dropped nodes that
      pay the most transport, in one batched solve, keeping the best *certified* improvement;
      up to ``refine_rounds`` rounds. It lowers the objective (on tiny random graphs the mean
      excess over the best k-subset drops from ~0.8% to ~0.06%) at 10-40x the Mirror Prox
      time, but it *costs downstream accuracy* (WL kernel + SVM on the paper's Table 1 datasets:
      -0.075 on MUTAG, -0.03 on DHFR; ``benchmarks/bench_ot_classification.py --sweep``), so the
      default is ``refine=0``: top-k plus the coverage repair, as in the paper.
    * **Gradients** (a ``cost`` or ``rho0`` that requires grad): the forward runs the same
      kernel as without gradients (C++ on CPU); ``info.eps`` / ``info.rho1`` get the gradient
      of ``diff_iters`` Mirror Prox iterations replayed from the solution under autograd
      (truncated backpropagation at the solution, instead of through every iteration).

    Args:
        edge_index (LongTensor): ``[2, E]`` edges ``u -> v`` (mass may move from ``u`` to
            ``v``); list undirected edges in both directions.
        num_nodes (int): ``N``.
        k (int, float or Tensor): nodes to keep per graph: an int, a ratio in ``[0, 1]``
            (``ceil(k * n_g)``), or a tensor ``[B]`` of either. ``k >= n_g`` keeps all,
            ``k = 0`` keeps none.
        cost (Tensor, optional): ``[E]`` strictly positive, finite edge costs (default: ones);
            see :func:`label_cost`, :func:`degree_cost`.
        rho0 (Tensor, optional): ``[N]`` non-negative prior, normalised per graph (default:
            :func:`degree_prior`).
        lam (float, optional): :math:`\lambda`, finite and ``> 0`` (default: ``1.0``, as in the paper).
        num_iters (int, optional): Mirror Prox iterations at most (default: ``30``).
        batch (LongTensor, optional): ``[N]`` sorted graph ids, as PyG's ``Batch`` makes them;
            ids need not be consecutive (default: one graph).
        tol (float, optional): relative gap tolerance, ``>= 0`` (default: ``1e-3``).
        lip_iters (int, optional): FISTA steps per projection onto ``T`` (default: ``5``).
        step_scale (float, optional): multiplies all step sizes (default: ``1.0``).
        refine (int, optional): swap candidates per side in the rounding; ``0`` = top-k and
            coverage repair only (default: ``0``, chosen by downstream accuracy).
        refine_rounds (int, optional): swap rounds at most (default: ``3``).
        refine_max_nodes (int, optional): graphs larger than this are not refined
            (dense ``n x n`` work) (default: ``64``).
        diff_iters (int, optional): iterations replayed for the gradients (default: ``3``).
        return_info (bool, optional): return an :class:`OTCompressResult` (default: ``False``).
        verbose (bool, optional): log iterations and the gap (default: ``False``).

    Returns:
        ``perm`` (LongTensor ``[M]``: kept nodes, sorted by graph then index), or an
        :class:`OTCompressResult`.

    Graphs where no ``k``-support has finite cost (more mass-carrying sink components than
    ``k``, e.g. edgeless graphs with ``k < n``) keep the top-``k`` of :math:`\hat\epsilon`;
    their exact cost is ``inf``. Bad input is a ``ValueError`` naming the argument: edges
    out of range or joining two graphs, an unsorted ``batch``, non-positive or non-finite
    costs, negative priors.
    """
    edge_index = _edges(edge_index, num_nodes)
    device = edge_index.device
    _check_options(lam, num_iters, tol, lip_iters, step_scale, refine, refine_rounds, refine_max_nodes, diff_iters)
    batch, counts = _graphs(edge_index, batch, num_nodes)
    B = counts.shape[0]
    kk = _budgets(k, counts)
    if cost is None:
        cost = torch.ones(edge_index.size(1), dtype=torch.float64, device=device)
    check.tensor("cost", cost, dtypes=check.FLOAT_DTYPES, dim=1, device=device)
    check.dense("cost", cost)
    if cost.size(0) != edge_index.size(1):
        raise ValueError(f"'cost' must have one entry per edge ({edge_index.size(1)}), got {cost.size(0)}")
    c64 = cost.to(torch.float64)
    r0 = _prior(rho0, edge_index, num_nodes, batch, B, device)
    eps, rho1, *_, gap, iters = torch.ops.tgrep.mirror_prox(edge_index, c64, r0, batch, kk, float(lam), num_iters,
                                                            float(tol), lip_iters, float(step_scale), diff_iters)
    mask, exact = torch.ops.tgrep.ot_round(edge_index, c64.detach(), r0.detach(), batch, kk, eps.detach(),
                                           rho1.detach(), float(lam), refine, refine_rounds, refine_max_nodes)
    perm = torch.nonzero(mask).flatten()  # batch is sorted: graph then index
    if verbose:
        log(f"ot_compress: {B} graph(s), at most {int(iters.max()) if B else 0} iterations, "
            f"max gap {float(gap.max()) if B else 0:.3g}", verbose)
    if not return_info:
        return perm
    dtype = cost.dtype
    return OTCompressResult(perm, mask, eps.to(dtype), rho1.to(dtype), exact, kk, iters, gap)
