"""Counter-based edge sampling shared bit-for-bit by every backend.

Edge ``e`` is present in row ``r`` of a stochastic search with seed ``s`` iff

    u(s, r, e) = (h >> 8) * 2**-24 < p_e,   h = mix(e ^ mix(r ^ mix(s ^ 0x9E3779B9)))

where ``mix`` is the 32-bit integer finaliser "lowbias32" (C. Wellons) and all arithmetic is
modulo 2**32. The sample of a row depends only on ``(seed, row, edge)``: not on the batch size,
the other rows, thread scheduling or the backend. ``csrc/cpu/shortest_path.cpp`` and the
Triton kernel implement the same function; tests compare them.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9
M1, M2 = 0x7FEB352D, 0x846CA68B


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * M1) & MASK32
    x = x ^ (x >> 15)
    x = (x * M2) & MASK32
    return x ^ (x >> 16)


def seed32(seed: int) -> int:
    return int(seed) & MASK32


def uniform(seed: int, row: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """``u(seed, row, edge)`` in [0, 1) as float64 (exact: 24-bit mantissa), broadcasting."""
    s = mix32(torch.tensor(seed32(seed) ^ GOLDEN, dtype=torch.int64, device=row.device))
    # rows and edges enter modulo 2**32, like the kernels' uint32 casts (ids >= 2**32 wrap)
    h = mix32((edge.long() & MASK32) ^ mix32((row.long() & MASK32) ^ s))
    return (h >> 8).to(torch.float64) * 2.0**-24


def keep(seed: int, row: torch.Tensor, edge: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
    """Boolean presence of ``edge`` in ``row``'s sample (``prob`` broadcast with them)."""
    return uniform(seed, row, edge) < prob.to(torch.float64)
