"""Host loop of the C++ FBF solver (``csrc/cpu/graph_learning.cpp``): the symmetric CSR of the
support, per-graph steps, chunks of iterations with a progress bar, and the thread autotuner.

The kernel runs ``steps`` iterations per call; the first calls time 5 iterations with
``torch.get_num_threads()`` threads and with 1 thread and the rest run with the faster (on a
busy machine the per-iteration OpenMP barriers can make 1 thread faster). Twin:
:func:`tgrep.kernels.reference.graph_learning.log_model`.
"""
from __future__ import annotations

import time

import torch

from . import graph_learning as ref

CHUNK = 25   # iterations per kernel call once tuned
PROBE = 5    # iterations per thread-count probe


def solve_cpp(mod, row, col, z, n, w0, c, max_w, max_iter, tol, step, num_threads, bar=None,
              node_graph=None, num_graphs: int = 1):
    """``(w, stats)``: weights and ``[iterations, rel_primal, rel_dual, threads]`` (float64).

    The support goes to the kernel as a symmetric CSR (int32 neighbours, one slot per edge and
    endpoint); with ``node_graph`` (graph of each node, sorted) every graph is solved as an
    independent problem (own step, own stopping test), as if alone.
    """
    row, col, z = row.contiguous(), col.contiguous(), z.contiguous()
    prior = w0 is not None and w0.numel() == z.numel() and c > 0
    if node_graph is None:
        node_graph = torch.zeros(n, dtype=torch.long)
        num_graphs = 1
    G = max(1, int(num_graphs))
    tau, s = ref.graph_steps(row, col, n, step, c if prior else 0.0, node_graph, G)
    gamma = torch.stack([tau, s], 1).contiguous()   # [G, 2]: primal step, dual scale (σ_i = s / deg_i)
    gptr = torch.zeros(G + 1, dtype=torch.long)
    gptr[1:] = torch.cumsum(torch.bincount(node_graph, minlength=G), 0)
    ptr, nbr, eid, first = mod.build_csr(row, col, int(n))
    zs = z[eid].contiguous()
    w0s = w0.to(z.dtype)[eid].contiguous() if prior else z.new_empty(0)
    del eid
    w, v = mod.warm_start_csr(ptr, nbr, zs, float(max_w), max(1, int(num_threads)))   # twin: ref.warm_start
    P = torch.zeros_like(zs)
    state = torch.zeros(G, 4, dtype=torch.float64)
    done, prev = 0, 0
    candidates = [num_threads] if num_threads == 1 else sorted({num_threads, 1}, reverse=True)
    timing = []
    while done < max_iter:
        probing = len(timing) < len(candidates)
        steps = min(PROBE if probing else CHUNK, max_iter - done)
        nt = candidates[len(timing)] if probing else min(timing)[1]
        t0 = time.perf_counter()
        mod.fbf_csr_steps(ptr, nbr, zs, w, P, v, w0s, gptr, gamma, state, float(c), float(max_w), steps, tol, nt)
        it = int(state[:, 0].max())
        if probing:
            timing.append(((time.perf_counter() - t0) / max(it - prev, 1), nt))
        done += steps
        if bar is not None:
            bar.update(it - prev)
            bar.set_postfix(primal=f"{float(state[:, 1].max()):.1e}", dual=f"{float(state[:, 2].max()):.1e}")
        prev = it
        if bool((state[:, 3] != 0).all()):
            break
    threads = min(timing)[1] if timing else num_threads
    it, rel_p, rel_d = ref.stats(state)
    return P[first], torch.tensor([it, rel_p, rel_d, float(threads)], dtype=torch.float64)
