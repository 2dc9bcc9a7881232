"""Launch configurations of the Triton kernels: the one place block sizes and grids are chosen.

Two shapes cover the kernels:

* :func:`flat` -- a 1-D launch over ``total`` work items (edges of a frontier, path cells);
* :func:`row_tiles` -- programs of ``BLOCK_N`` rows of a ``[n, d]`` matrix, ``d`` padded
  to a power of two (the EDRep normalizer);
* :func:`knn_tiles` -- the kNN kernel's candidate-list width and feature tile.

Under the interpreter (``TRITON_INTERPRET=1``, how tests run the kernels on CPU) each program
runs as Python: few large programs are then many times faster than GPU-sized tiles, and the
results are the same (the kernels' semantics never depend on the block size).
Grids are functions of the launch's meta-parameters, so the sizes may be symbolic when
Inductor traces a :func:`torch.library.wrap_triton` launch.
"""
from __future__ import annotations

import triton

from ..._backend import triton_interpret


def flat(total: int, gpu_block: int = 128, interp_cap: int = 2048):
    """``(grid, BLOCK)`` for ``total`` items: ``gpu_block`` on a GPU, one block of up to
    ``interp_cap`` (a power of two >= 16) under the interpreter."""
    block = max(16, min(triton.next_power_of_2(max(int(total), 1)), interp_cap)) if triton_interpret() \
        else gpu_block
    return (lambda meta: (triton.cdiv(total, meta["BLOCK"]),)), block


def row_tiles(n, d: int, max_rows: int = 64):
    """``(grid, BLOCK_N, BLOCK_D)``: ``BLOCK_D`` = ``d`` padded to a power of two >= 16, and
    ``BLOCK_N`` rows per program (halved above ``d = 64`` to bound registers)."""
    block_d = max(16, triton.next_power_of_2(d))
    block_n = max_rows if block_d <= 64 else max_rows // 2
    return (lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)), block_n, block_d


def knn_tiles(k: int, d: int, float64: bool) -> tuple[int, int]:
    """``(K_PAD, BLOCK_D)`` of the kNN kernel: the ``k`` best slots padded to a power of two
    >= 16, and the feature tile (4 in float64, whose path holds a 3-d difference tile; else 16
    or 32 for ``tl.dot``)."""
    return max(16, triton.next_power_of_2(k)), (4 if float64 else (16 if d <= 16 else 32))
