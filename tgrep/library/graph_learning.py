"""Custom ops ``tgrep::undirected_pairs`` (the support's pairs, each once) and
``tgrep::graph_learning_fbf``: the weights of the log graph-learning model on a
fixed edge support (Kalofolias 2016; Kalofolias & Perraudin 2019), by forward-backward-forward
primal-dual iterations.

Kernels: on CPU the C++ iteration (``csrc/cpu/graph_learning.cpp``; host loop with the thread
autotuner in :mod:`tgrep.kernels.reference.fbf_host`); elsewhere (CUDA included: the
iteration is a handful of gathers and ``index_add_`` per step, which torch runs well on a
GPU) the plain-torch reference :func:`tgrep.kernels.reference.graph_learning.log_model`.
The op loops on the host until convergence, so it is opaque to Inductor by design.
"""
# no `from __future__ import annotations` here: torch.library infers the schema from real type hints

import math
from typing import Optional

import torch
from torch import Tensor

from .._ext import load_cpp
from ..kernels.reference import graph_learning as ref
from ..utils import check
from ..utils.progress import progress
from ._register import kernel_op


def _check(row, col, z, w0, batch, num_graphs, num_nodes, c, max_w, max_iter, tol, step, num_threads, verbose):
    E = z.numel()
    if row.numel() != E or col.numel() != E:
        raise ValueError(f"'row', 'col' and 'z' must have the same length, got {row.numel()}, {col.numel()}, {E}")
    if w0 is not None and w0.numel() != E:
        raise ValueError(f"'w0' must have one entry per support edge ({E}), got {w0.numel()}")
    if num_nodes < 0 or max_iter < 1 or num_threads < 0:
        raise ValueError("'num_nodes' and 'num_threads' (0: default) must be >= 0, 'max_iter' >= 1")
    if not (0 < step < 1):
        raise ValueError(f"'step' must lie in (0, 1), got {step}")
    if not (c >= 0 and math.isfinite(c)) or not (max_w > 0):
        raise ValueError(f"'c' must be finite and >= 0 and 'max_w' > 0, got c={c}, max_w={max_w}")
    flags = (check.index_flags("row", row, num_nodes) + check.index_flags("col", col, num_nodes)
             + check.nonneg_flags("z", z, allow_inf=False) + check.nonneg_flags("w0", w0, allow_inf=False))
    if E:
        flags.append(((row == col).any(), lambda: "the support must not contain self-loops (row == col)"))
    if batch is not None:
        if batch.numel() != num_nodes or num_graphs < 1:
            raise ValueError(f"'batch' must have one entry per node ({num_nodes}) and 'num_graphs' >= 1")
        flags = flags + check.index_flags("batch", batch, num_graphs)
        if batch.numel() > 1:
            flags.append(((batch.diff() < 0).any(), lambda: "'batch' must be sorted"))
        if E:
            flags.append(((batch[row.clamp(0, max(num_nodes - 1, 0))] != batch[col.clamp(0, max(num_nodes - 1, 0))]).any(),
                          lambda: "the support has edges between different graphs of 'batch'"))
    check.values(flags)


def _stats(it, rp, rd, threads=-1.0):  # threads -1: the reference (no thread count)
    return torch.tensor([float(it), rp, rd, threads], dtype=torch.float64)


def _reference(row, col, z, w0, batch, num_graphs, num_nodes, c, max_w, max_iter, tol, step, num_threads, verbose):
    with progress(total=max_iter, verbose=verbose, desc="graph learning (FBF, reference)") as bar:
        w, st = ref.log_model(row, col, z, num_nodes, max_iter=max_iter, tol=tol, step=step, w0=w0, c=c,
                              max_w=max_w, node_graph=None if batch is None else batch.long(),
                              num_graphs=num_graphs if batch is not None else 1)
        bar.update(int(st[0]))
    return w, _stats(*st.tolist())


def _cpp():
    mod = load_cpp("graph_learning")
    if mod is None:
        return None
    from ..kernels.reference import fbf_host

    def run(row, col, z, w0, batch, num_graphs, num_nodes, c, max_w, max_iter, tol, step, num_threads, verbose):
        if num_nodes >= 2 ** 31:   # the CSR kernel stores int32 neighbour ids
            return _reference(row.long(), col.long(), z, w0, batch, num_graphs, num_nodes, c, max_w, max_iter, tol,
                              step, num_threads, verbose)
        with progress(total=max_iter, verbose=verbose, desc="graph learning (FBF)") as bar:
            return fbf_host.solve_cpp(mod, row.long(), col.long(), z, num_nodes, w0, c, max_w, max_iter, tol,
                                      step, num_threads or max(1, torch.get_num_threads()), bar=bar,
                                      node_graph=None if batch is None else batch.long().contiguous(),
                                      num_graphs=num_graphs if batch is not None else 1)

    return run


@kernel_op("tgrep::graph_learning_fbf", cpp=_cpp, check=_check)
def graph_learning_fbf(row: Tensor, col: Tensor, z: Tensor, w0: Optional[Tensor], batch: Optional[Tensor],
                       num_graphs: int, num_nodes: int, c: float, max_w: float, max_iter: int, tol: float,
                       step: float, num_threads: int, verbose: bool) -> tuple[Tensor, Tensor]:
    """``(w [E], stats [4] float64 = [iterations, rel_primal, rel_dual, threads]``, threads ``-1`` from the reference): the
    minimiser of ``2zᵀw − 1ᵀlog(Kw) + ‖w‖² + c‖w − w0‖²`` over ``0 ≤ w ≤ max_w`` on the
    support ``(row, col)`` (each undirected edge once, ``z`` already θ-scaled). With ``batch``
    (sorted graph id ``[num_nodes]`` in ``[0, num_graphs)``, no edge between graphs) every graph
    is an independent problem with its own step and stopping test: a batch gives what its
    graphs give one by one; ``stats`` is then the worst graph's."""
    return _reference(row.long(), col.long(), z, w0, batch, num_graphs, num_nodes, c, max_w, max_iter, tol, step,
                      num_threads, verbose)


@graph_learning_fbf.register_fake
def _(row, col, z, w0, batch, num_graphs, num_nodes, c, max_w, max_iter, tol, step, num_threads, verbose):
    return z.new_empty(z.shape), z.new_empty((4,), dtype=torch.float64)


def _edge_list_check(a_name: str, b_name: str):
    """The value check of an edge-list op ``(a, b, num_nodes, num_threads)``, naming its arguments."""
    def check_(a, b, num_nodes, num_threads):
        if a.dim() != 1 or b.shape != a.shape:
            raise ValueError(f"'{a_name}' and '{b_name}' must be 1-D of the same length, got {tuple(a.shape)}, "
                             f"{tuple(b.shape)}")
        if num_nodes < 0 or num_threads < 0:
            raise ValueError("'num_nodes' and 'num_threads' (0: default) must be >= 0")
        check.values(check.index_flags(a_name, a, num_nodes) + check.index_flags(b_name, b, num_nodes))

    return check_


_check_pairs = _edge_list_check("src", "dst")


def _int32_edge_kernel(name: str, reference):
    """Loader of the C++ counting sort ``name`` of ``graph_learning.cpp`` over edge lists
    ``(a, b, num_nodes, num_threads)``: its ids and entries are int32, so larger inputs run
    ``reference`` instead."""
    def load():
        mod = load_cpp("graph_learning")
        if mod is None:
            return None
        fn = getattr(mod, name)

        def run(a, b, num_nodes, num_threads):
            if num_nodes >= 2 ** 31 or a.numel() >= 2 ** 31:
                return reference(a.long(), b.long(), num_nodes)
            return tuple(fn(a.long().contiguous(), b.long().contiguous(), int(num_nodes),
                            num_threads or max(1, torch.get_num_threads())))

        return run

    return load


_pairs_cpp = _int32_edge_kernel("undirected_pairs", lambda a, b, n: ref.undirected_pairs(a, b, n))


@kernel_op("tgrep::undirected_pairs", cpp=_pairs_cpp, check=_check_pairs)
def undirected_pairs(src: Tensor, dst: Tensor, num_nodes: int, num_threads: int) -> tuple[Tensor, Tensor]:
    """``(key, inverse)``: the undirected pairs ``{src_e, dst_e}`` each once, as keys
    ``min · num_nodes + max`` in ascending order, and ``inverse [E]`` the pair of every entry
    (``torch.unique(key, return_inverse=True)``; the C++ kernel is a counting sort by the
    smaller endpoint)."""
    return ref.undirected_pairs(src.long(), dst.long(), num_nodes)


@undirected_pairs.register_fake
def _(src, dst, num_nodes, num_threads):
    ctx = torch.library.get_ctx()
    return src.new_empty((ctx.new_dynamic_size(),), dtype=torch.int64), src.new_empty(src.shape, dtype=torch.int64)


_both_cpp = _int32_edge_kernel("both_directions", lambda a, b, n: ref.both_directions(a, b, n))


_check_both = _edge_list_check("row", "col")


@kernel_op("tgrep::both_directions", cpp=_both_cpp, check=_check_both)
def both_directions(row: Tensor, col: Tensor, num_nodes: int, num_threads: int) -> tuple[Tensor, Tensor]:
    """``(edge_index [2, 2E], which [2E])``: both directions of the edges ``(row_e, col_e)``
    sorted by source then target (ties by edge), and the edge of every entry: a learned graph's
    output in the PyG convention (the C++ kernel is a counting sort by source)."""
    return ref.both_directions(row.long(), col.long(), num_nodes)


@both_directions.register_fake
def _(row, col, num_nodes, num_threads):
    return row.new_empty((2, 2 * row.numel()), dtype=torch.int64), row.new_empty((2 * row.numel(),), dtype=torch.int64)
