"""Host loop of the C++ FBF solver (``csrc/cpu/graph_learning.cpp``): incidence CSR, chunks
of iterations with a progress bar, and the thread autotuner.

The kernel runs ``steps`` iterations per call; the first calls time 5 iterations with
``torch.get_num_threads()`` threads and with 1 thread and the rest run with the faster (on a
busy machine the per-iteration OpenMP barriers can make 1 thread faster). Twin:
:func:`tgrep.kernels.reference.graph_learning.log_model`.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from . import graph_learning as ref

CHUNK = 25   # iterations per kernel call once tuned
PROBE = 5    # iterations per thread-count probe


def argsort(t: torch.Tensor) -> torch.Tensor:
    """Stable argsort; numpy's single-threaded sort on CPU (torch's OpenMP sort stalls badly on
    an oversubscribed machine: measured 20-30x slower on the shared 2-core box)."""
    if t.device.type == "cpu":
        return torch.from_numpy(np.argsort(t.numpy(), kind="stable"))
    return torch.argsort(t, stable=True)


def incidence(row, col, n):
    """CSR of the edges incident to each node (for per-node sums without atomics)."""
    nodes = torch.cat([row, col])
    eids = torch.arange(row.numel(), device=row.device).repeat(2)
    order = argsort(nodes)
    ptr = torch.zeros(n + 1, dtype=torch.long, device=row.device)
    ptr[1:] = torch.cumsum(torch.bincount(nodes, minlength=n), 0)
    return ptr, eids[order].contiguous()


def solve_cpp(mod, row, col, z, n, w0, c, max_w, max_iter, tol, step, num_threads, bar=None):
    """``(w, stats)``: weights and ``[iterations, rel_primal, rel_dual, threads]`` (float64)."""
    row, col, z = row.contiguous(), col.contiguous(), z.contiguous()
    prior = w0 is not None and w0.numel() == z.numel() and c > 0
    gamma = ref.fbf_gamma(row, col, n, step, c if prior else 0.0)
    w = torch.zeros_like(z)
    v = torch.zeros(n, dtype=z.dtype)
    P = torch.zeros_like(z)
    w0 = w0.to(z.dtype).contiguous() if prior else z.new_empty(0)
    ptr, inc = incidence(row, col, n)
    done, rel_p, rel_d = 0, math.inf, math.inf
    candidates = [num_threads] if num_threads == 1 else sorted({num_threads, 1}, reverse=True)
    timing = []
    while done < max_iter:
        probing = len(timing) < len(candidates)
        steps = min(PROBE if probing else CHUNK, max_iter - done)
        nt = candidates[len(timing)] if probing else min(timing)[1]
        t0 = time.perf_counter()
        it, rel_p, rel_d = mod.fbf_log_steps(row, col, z, ptr, inc, w, v, P, w0, float(c), float(max_w), gamma,
                                             steps, tol, nt)
        it = int(it)
        if probing:
            timing.append(((time.perf_counter() - t0) / max(it, 1), nt))
        done += it
        if bar is not None:
            bar.update(it)
            bar.set_postfix(primal=f"{rel_p:.1e}", dual=f"{rel_d:.1e}")
        if rel_p < tol and rel_d < tol:
            break
    threads = min(timing)[1] if timing else num_threads
    return P, torch.tensor([float(done), rel_p, rel_d, float(threads)], dtype=torch.float64)
