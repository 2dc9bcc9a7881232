"""Custom ops of OT graph compression (Garg & Jaakkola, NeurIPS 2019): ``tgrep::ot_graphs``,
``tgrep::mirror_prox`` (+ ``mirror_prox_backward``), ``tgrep::support_cost``, ``tgrep::ot_round``,
``tgrep::nearest_kept`` and the projections ``tgrep::project_capped_simplex``,
``tgrep::project_diag_simplex``, ``tgrep::project_lipschitz`` (+ ``project_lipschitz_backward``).

Kernels: C++ (``csrc/cpu/ot_compress.cpp``: Mirror Prox and the exact support cost) on CPU,
the plain-torch references (:mod:`tgrep.kernels.reference.ot_solver`, ``ot_rounding``,
``ot_projections``) elsewhere or when forced. The solvers loop on the host until their gap
estimates converge, so the ops are opaque to Inductor: ``torch.compile`` calls each as one
node, and a compiled ``OTCoarsening`` has no graph break.

Gradients: ``mirror_prox``'s ``eps`` and ``rho1`` are differentiable in ``cost`` and ``rho0`` by
truncated backpropagation *at the solution*: ``mirror_prox_backward`` replays ``diff_iters``
iterations from the forward's last iterate under autograd (see
:func:`tgrep.kernels.reference.ot_solver.mirror_prox_replay`); its own derivative is refused
with a clear error. The projections have exact derivatives (almost everywhere).
"""
# no `from __future__ import annotations` here: torch.library infers the schema from real type hints

from typing import Optional

import torch
from torch import Tensor

from .._ext import cpp_kernel
from ..kernels.reference import ot_projections as ref_proj
from ..kernels.reference import ot_rounding as ref_round
from ..kernels.reference import ot_solver as ref_solver
from ..utils import check
from ._register import kernel_op


def _autograd_inside():
    """Re-enable autograd inside a custom-op kernel (the dispatcher excludes its keys there):
    the backward replay of ``mirror_prox`` records and differentiates plain torch ops."""
    K = torch._C.DispatchKey
    ex = torch._C._dispatch_tls_local_exclude_set()
    for k in (K.AutogradOther, K.AutogradNestedTensor, K.AutogradFunctionality):
        ex = ex.remove(k)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), ex)


def _no_setup(ctx, inputs, output):
    pass


def _refuse_double_backward(name):
    def backward(ctx, *grads):
        raise RuntimeError(f"tgrep::{name} (a backward) is not differentiable: double backward through OT "
                           "compression is not supported (use first-order gradients)")
    return backward


# ------------------------------------------------------------------------------ ot_graphs
def _graph_flags(edge_index, batch, num_nodes):
    """Edge ends in range and inside one graph; ``batch`` sorted, ``>= 0``."""
    flags = check.index_flags("edge_index", edge_index, num_nodes)
    if batch is not None and batch.numel():
        flags.append((batch.min() < 0, lambda: f"'batch' must be >= 0, got min {int(batch.min())}"))
        if batch.numel() > 1:
            flags.append(((batch.diff() < 0).any(),
                          lambda: "'batch' must be sorted (nodes of one graph contiguous, as PyG's Batch makes it)"))
    return flags


def _check_graphs(edge_index, batch, num_nodes):
    check.values(_graph_flags(edge_index, batch, num_nodes))
    if batch is not None and edge_index.numel():
        b = batch.long()
        check.values([((b[edge_index[0]] != b[edge_index[1]]).any(),
                       lambda: "'edge_index' has an edge joining two graphs of 'batch' (e.g. edge "
                               f"{int(torch.nonzero(b[edge_index[0]] != b[edge_index[1]])[0])})")])


@kernel_op("tgrep::ot_graphs", check=_check_graphs)
def ot_graphs(edge_index: Tensor, batch: Optional[Tensor], num_nodes: int) -> tuple[Tensor, Tensor]:
    """``(batch [N] int64 with compact ids 0..B-1, counts [B])`` after checking that every edge
    lies inside one graph and that ``batch`` is sorted (``None`` = one graph)."""
    compact, B = check.batch("batch", batch, num_nodes, device=edge_index.device)
    return compact.clone(), torch.bincount(compact, minlength=B)


@ot_graphs.register_fake
def _(edge_index, batch, num_nodes):
    B = 1 if batch is None and num_nodes > 0 else (0 if batch is None else torch.library.get_ctx().new_dynamic_size())
    return edge_index.new_empty(num_nodes, dtype=torch.long), edge_index.new_empty(B, dtype=torch.long)


# ------------------------------------------------------------------------------ mirror_prox
def _check_mirror_prox(edge_index, cost, rho0, batch, k, lam, num_iters, tol, lip_iters, step_scale, diff_iters):
    N, B = rho0.numel(), k.numel()
    flags = _graph_flags(edge_index, batch, N) + check.index_flags("batch", batch, B)
    flags += [(~((cost.min() > 0) & torch.isfinite(cost).all()) if cost.numel() else torch.tensor(False),
               lambda: "'cost' must be finite and strictly positive (transport cost per unit mass on an edge), "
                       f"got min {float(cost.min())}")]
    flags += check.nonneg_flags("rho0", rho0, allow_inf=False) + check.index_flags("k", k, 2**62)
    check.values(flags)
    if edge_index.numel():
        check.values([((batch[edge_index[0]] != batch[edge_index[1]]).any(),
                       lambda: "'edge_index' has an edge joining two graphs of 'batch'")])


def _cpp_mirror_prox():
    fn = cpp_kernel("ot_compress", "mirror_prox")()
    if fn is None:
        return None
    return lambda edge_index, cost, rho0, batch, k, lam, num_iters, tol, lip_iters, step_scale, diff_iters: tuple(
        fn(edge_index, cost, rho0, batch, k, lam, num_iters, tol, lip_iters, step_scale))


@kernel_op("tgrep::mirror_prox", cpp=_cpp_mirror_prox, check=_check_mirror_prox)
def mirror_prox(edge_index: Tensor, cost: Tensor, rho0: Tensor, batch: Tensor, k: Tensor, lam: float, num_iters: int,
                tol: float, lip_iters: int, step_scale: float, diff_iters: int
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(eps, rho1, eps_last, t_last, zeta_last [B], mu_last [E], gap [B], iters [B])`` float64
    (``iters`` int64); see :func:`tgrep.kernels.reference.ot_solver.mirror_prox`. ``diff_iters``
    only sets the backward (replayed iterations)."""
    return tuple(t.clone() for t in ref_solver.mirror_prox(edge_index, cost, rho0, batch, k, lam, num_iters, tol,
                                                           lip_iters, step_scale))


@mirror_prox.register_fake
def _(edge_index, cost, rho0, batch, k, lam, num_iters, tol, lip_iters, step_scale, diff_iters):
    N, B, E = rho0.shape[0], k.shape[0], cost.shape[0]
    v = lambda n: rho0.new_empty(n, dtype=torch.float64)  # noqa: E731
    return v(N), v(N), v(N), v(N), v(B), v(E), v(B), k.new_empty(B, dtype=torch.long)


def _mp_setup(ctx, inputs, output):
    edge_index, cost, rho0, batch, k, lam, num_iters, tol, lip_iters, step_scale, diff_iters = inputs
    ctx.save_for_backward(edge_index, cost, rho0, batch, k, output[2], output[3], output[4], output[5])
    ctx.args = (lam, lip_iters, step_scale, diff_iters)
    ctx.mark_non_differentiable(*output[2:])


def _mp_backward(ctx, g_eps, g_rho1, *_):
    edge_index, cost, rho0, batch, k, e_l, t_l, z_l, m_l = ctx.saved_tensors
    if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        return (None,) * 11
    g_eps = torch.zeros_like(rho0) if g_eps is None else g_eps
    g_rho1 = torch.zeros_like(rho0) if g_rho1 is None else g_rho1
    gc, gr = mirror_prox_backward(g_eps, g_rho1, edge_index, cost, rho0, batch, k, e_l, t_l, z_l, m_l, *ctx.args)
    return (None, gc if ctx.needs_input_grad[1] else None, gr if ctx.needs_input_grad[2] else None) + (None,) * 8


@kernel_op("tgrep::mirror_prox_backward")
def mirror_prox_backward(g_eps: Tensor, g_rho1: Tensor, edge_index: Tensor, cost: Tensor, rho0: Tensor, batch: Tensor,
                         k: Tensor, eps_last: Tensor, t_last: Tensor, zeta_last: Tensor, mu_last: Tensor, lam: float,
                         lip_iters: int, step_scale: float, diff_iters: int) -> tuple[Tensor, Tensor]:
    """``(grad_cost, grad_rho0)``: the vector-Jacobian product of
    :func:`~tgrep.kernels.reference.ot_solver.mirror_prox_replay` with ``(g_eps, g_rho1)``."""
    with _autograd_inside(), torch.enable_grad():
        c = cost.detach().clone().requires_grad_(True)
        r = rho0.detach().clone().requires_grad_(True)
        e, r1 = ref_solver.mirror_prox_replay(edge_index, c, r, batch, k, eps_last, t_last, zeta_last, mu_last, lam,
                                              lip_iters, step_scale, max(int(diff_iters), 1))
        out = (e * g_eps).sum() + (r1 * g_rho1).sum()
        gc, gr = torch.autograd.grad(out, (c, r), allow_unused=True)
    return (torch.zeros_like(cost) if gc is None else gc), (torch.zeros_like(rho0) if gr is None else gr)


@mirror_prox_backward.register_fake
def _(g_eps, g_rho1, edge_index, cost, rho0, batch, k, eps_last, t_last, zeta_last, mu_last, lam, lip_iters,
      step_scale, diff_iters):
    return torch.empty_like(cost), torch.empty_like(rho0)


mirror_prox.register_autograd(_mp_backward, setup_context=_mp_setup)
mirror_prox_backward.register_autograd(_refuse_double_backward("mirror_prox_backward"), setup_context=_no_setup)


# ------------------------------------------------------------------------------ support_cost
def _check_support_cost(D, rho0, support, lam, max_iters, tol, check_every, pi0, return_plan):
    P, n = D.shape[0], D.shape[-1]
    if D.dim() != 3 or D.shape[1] != n or tuple(rho0.shape) != (P, n) or tuple(support.shape) != (P, n):
        raise ValueError(f"'D' [P, n, n], 'rho0' [P, n] and 'support' [P, n] do not match: {tuple(D.shape)}, "
                         f"{tuple(rho0.shape)}, {tuple(support.shape)}")
    if pi0 is not None and tuple(pi0.shape) != (P, n, n):
        raise ValueError(f"'pi0' must have shape [P, n, n] = {(P, n, n)}, got {tuple(pi0.shape)}")
    check.values(check.nonneg_flags("D", D) + check.nonneg_flags("rho0", rho0, allow_inf=False))


def _cpp_support_cost():
    fn = cpp_kernel("ot_compress", "support_cost")()
    if fn is None:
        return None
    empty = torch.zeros(0, dtype=torch.float64)
    return lambda D, rho0, support, lam, max_iters, tol, check_every, pi0, return_plan: tuple(
        fn(D, rho0, support, lam, max_iters, tol, check_every, empty if pi0 is None else pi0, return_plan))


@kernel_op("tgrep::support_cost", cpp=_cpp_support_cost, check=_check_support_cost)
def support_cost(D: Tensor, rho0: Tensor, support: Tensor, lam: float, max_iters: int, tol: float, check_every: int,
                 pi0: Optional[Tensor], return_plan: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(cost [P], rho1 [P, n], gap [P], plan [P, n, n] or [0])``; see
    :func:`tgrep.kernels.reference.ot_rounding.support_cost_dense`."""
    return ref_round.support_cost_dense(D.to(torch.float64), rho0.to(torch.float64), support, lam, max_iters=max_iters,
                                        tol=tol, check_every=check_every, pi0=pi0, return_plan=return_plan)


@support_cost.register_fake
def _(D, rho0, support, lam, max_iters, tol, check_every, pi0, return_plan):
    P, n = D.shape[0], D.shape[1]
    v = lambda *s: D.new_empty(s, dtype=torch.float64)  # noqa: E731
    return v(P), v(P, n), v(P), (v(P, n, n) if return_plan else v(0))


def _solve(D, rho0, S, lam, max_iters, tol, check_every, pi0, return_plan):
    return support_cost(D, rho0, S, float(lam), int(max_iters), float(tol), int(check_every), pi0, bool(return_plan))


# ------------------------------------------------------------------------------ ot_round / nearest_kept
@kernel_op("tgrep::ot_round")
def ot_round(edge_index: Tensor, cost: Tensor, rho0: Tensor, batch: Tensor, k: Tensor, eps: Tensor, rho1: Tensor,
             lam: float, refine: int, refine_rounds: int, refine_max_nodes: int) -> tuple[Tensor, Tensor]:
    """``(mask [N] bool, exact cost [B])``; see :func:`tgrep.kernels.reference.ot_rounding.round_support`
    (its exact solves run ``tgrep::support_cost``, so in C++ on CPU)."""
    g = ref_round.Graphs(edge_index, cost.to(torch.float64), rho0.to(torch.float64), batch, k)
    search = ref_round.SwapSearch(refine, refine_rounds, refine_max_nodes, lam)
    return ref_round.round_support(g, eps.to(torch.float64), rho1.to(torch.float64), search, _solve)


@ot_round.register_fake
def _(edge_index, cost, rho0, batch, k, eps, rho1, lam, refine, refine_rounds, refine_max_nodes):
    return rho0.new_empty(rho0.shape, dtype=torch.bool), rho0.new_empty(k.shape, dtype=torch.float64)


@kernel_op("tgrep::nearest_kept")
def nearest_kept(edge_index: Tensor, cost: Tensor, mask: Tensor) -> Tensor:
    """``[N]`` int64: the kept node each node's mass reaches most cheaply (``-1``: none)."""
    return ref_round.nearest_kept(edge_index, cost, mask)


@nearest_kept.register_fake
def _(edge_index, cost, mask):
    return mask.new_empty(mask.shape, dtype=torch.long)


# ------------------------------------------------------------------------------ projections
@kernel_op("tgrep::project_capped_simplex")
def project_capped_simplex(y: Tensor, k: Tensor, batch: Tensor) -> Tensor:
    """``clip(y - theta_g, 0, 1)`` per graph; see :func:`tgrep.ops.project_capped_simplex`."""
    return ref_proj.project_capped_simplex(y, k, batch, k.numel())


@project_capped_simplex.register_fake
def _(y, k, batch):
    return torch.empty_like(y)


def _capped_setup(ctx, inputs, output):
    y, k, batch = inputs
    ctx.save_for_backward(output, k, batch)


def _capped_backward(ctx, g):
    # x = clip(y - theta, 0, 1); on a graph whose budget binds, theta moves with the free
    # coordinates F (0 < x < 1): dx_F/dy_F = I - 11^T/|F|, dx_F/dk = 1/|F|
    x, k, batch = ctx.saved_tensors
    B = k.numel()
    free = ((x > 0) & (x < 1)).to(g.dtype)
    nfree = ref_proj.seg_sum(free, batch, B)
    binds = (ref_proj.seg_sum(x, batch, B) >= k.to(x.dtype) - 1e-12 * (1 + k.abs().to(x.dtype))) & (nfree > 0) & (k > 0)
    mean = ref_proj.seg_sum(g * free, batch, B) / nfree.clamp(min=1)
    gy = free * (g - torch.where(binds, mean, torch.zeros_like(mean))[batch])
    gk = torch.where(binds, mean, torch.zeros_like(mean)).to(k.dtype) if k.is_floating_point() else None
    return gy, gk, None


project_capped_simplex.register_autograd(_capped_backward, setup_context=_capped_setup)


@kernel_op("tgrep::project_diag_simplex")
def project_diag_simplex(y: Tensor, eps: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Algorithm 1 of the paper; see :func:`tgrep.ops.project_diag_simplex`."""
    return ref_proj.project_diag_simplex(y, eps, batch, num_graphs)


@project_diag_simplex.register_fake
def _(y, eps, batch, num_graphs):
    return torch.empty_like(y)


def _diag_setup(ctx, inputs, output):
    y, eps, batch, num_graphs = inputs
    ctx.save_for_backward(y, eps, batch, output)
    ctx.num_graphs = num_graphs


def _diag_backward(ctx, g):
    # on the active set A (eps > 0, x > 0): x = y + alpha eps, alpha = (1 - sum_A eps y) / sum_A eps^2
    y, eps, batch, x = ctx.saved_tensors
    B = ctx.num_graphs
    free = eps <= 0
    act = ((eps > 0) & (x > 0)).to(g.dtype)
    see = ref_proj.seg_sum(act * eps * eps, batch, B).clamp(min=1e-300)
    alpha = ref_proj.seg_sum(act * eps * (x - y), batch, B) / see  # = alpha on graphs with an active set
    eg = ref_proj.seg_sum(act * eps * g, batch, B)
    gy = torch.where(free, g, act * (g - eps * (eg / see)[batch]))
    ge = act * (alpha[batch] * g + eg[batch] * (-y - 2 * alpha[batch] * eps) / see[batch])
    return gy, ge, None, None


project_diag_simplex.register_autograd(_diag_backward, setup_context=_diag_setup)


@kernel_op("tgrep::project_lipschitz")
def project_lipschitz(y: Tensor, edge_index: Tensor, cost: Tensor, batch: Tensor, num_graphs: int, num_iters: int,
                      tol: float, mu0: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """``(t, mu)``; see :func:`tgrep.ops.project_lipschitz`."""
    return ref_proj.project_lipschitz(y, edge_index, cost, batch, num_graphs, num_iters=num_iters, tol=tol, mu0=mu0)


@project_lipschitz.register_fake
def _(y, edge_index, cost, batch, num_graphs, num_iters, tol, mu0):
    return torch.empty_like(y), torch.empty_like(cost)


def _lip_setup(ctx, inputs, output):
    y, edge_index, cost, batch, num_graphs, num_iters, tol, mu0 = inputs
    ctx.save_for_backward(edge_index, output[0], cost)
    ctx.mark_non_differentiable(output[1])


def _lip_backward(ctx, g_t, _g_mu):
    edge_index, t, cost = ctx.saved_tensors
    gy, gc = project_lipschitz_backward(g_t, edge_index, t, cost)
    return gy, None, gc, None, None, None, None, None


@kernel_op("tgrep::project_lipschitz_backward")
def project_lipschitz_backward(g_t: Tensor, edge_index: Tensor, t: Tensor, cost: Tensor) -> tuple[Tensor, Tensor]:
    """VJP of the projection onto ``T`` at its solution ``t``: with ``A`` the tight edges
    (``t_u - t_v = c_e``) and ``L = A^T A`` their Laplacian, ``dt/dy = I - L^+ L`` (the mean over
    each component of tight edges) and ``dt/dc_A = L^+ A^T``; so ``g_y = g - L L^+ g`` and
    ``g_c = A L^+ g`` (``L^+ g`` by conjugate gradients, one component mean removed)."""
    src, dst = edge_index
    n = t.numel()
    tight = (t[src] - t[dst]) >= cost - 1e-9 * (1 + cost.abs())
    ei = edge_index[:, tight]
    if ei.size(1) == 0:
        return g_t.clone(), torch.zeros_like(cost)
    from torch_geometric.utils import scatter
    from scipy.sparse.csgraph import connected_components
    import scipy.sparse as sp
    import numpy as np
    e = ei.cpu().numpy()
    _, comp = connected_components(sp.coo_matrix((np.ones(e.shape[1]), (e[0], e[1])), shape=(n, n)), directed=False)
    comp = torch.as_tensor(comp, device=t.device)
    C = int(comp.max()) + 1

    def cmean(v):
        s = scatter(v, comp, 0, dim_size=C, reduce="mean")
        return s[comp]

    def lap(v):
        d = v[ei[0]] - v[ei[1]]
        return ref_proj.incidence_t(d, ei, n)

    b = g_t - cmean(g_t)
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rs = (r * r).sum()
    for _ in range(4 * n + 10):
        if float(rs) <= 1e-30 * (1 + float((b * b).sum())):
            break
        Ap = lap(p)
        a = rs / (p * Ap).sum().clamp(min=1e-300)
        x, r = x + a * p, r - a * Ap
        rs_new = (r * r).sum()
        p, rs = r + (rs_new / rs) * p, rs_new
    gc = torch.zeros_like(cost)
    gc[tight] = x[ei[0]] - x[ei[1]]
    return cmean(g_t), gc


@project_lipschitz_backward.register_fake
def _(g_t, edge_index, t, cost):
    return torch.empty_like(g_t), torch.empty_like(cost)


project_lipschitz.register_autograd(_lip_backward, setup_context=_lip_setup)
project_lipschitz_backward.register_autograd(_refuse_double_backward("project_lipschitz_backward"),
                                             setup_context=_no_setup)
