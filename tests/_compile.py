"""Shared by the compile tests: compile once with ``fullgraph=True, dynamic=True`` and count graphs."""
from __future__ import annotations

import torch


def count_compiles(fn, *calls, backend: str = "aot_eager"):
    """``(outputs, graphs)``: ``fn`` compiled (``fullgraph=True``, ``dynamic=True``) and called on
    each argument tuple of ``calls``; ``graphs`` is the number of graphs Dynamo built (1 = no
    recompiles across the calls)."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=backend)
    outs = [compiled(*c) for c in calls]
    return outs, counters["stats"]["unique_graphs"]
