"""Input validation shared by every op: errors name the argument and what was expected."""
from __future__ import annotations

from typing import Iterable

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def tensor(name: str, value, *, dtypes: Iterable[torch.dtype] | None = None, dim: int | tuple | None = None,
           device: torch.device | None = None, finite: bool = False) -> torch.Tensor:
    """Check that ``value`` is a tensor with an allowed dtype, rank, device (and finite values).

    Raises :class:`TypeError` for a non-tensor or a wrong dtype, :class:`ValueError` for a
    wrong rank, device or non-finite entries. Returns ``value`` unchanged.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(value).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if value.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"'{name}' must have dtype in ({names}), got {str(value.dtype).replace('torch.', '')}")
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if value.dim() not in dims:
            raise ValueError(f"'{name}' must have {' or '.join(map(str, dims))} dimension(s), "
                             f"got shape {tuple(value.shape)}")
    if device is not None and value.device != torch.device(device):
        raise ValueError(f"'{name}' is on {value.device} but the other inputs are on {device}")
    if finite and value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"'{name}' contains NaN or infinite values")
    return value


def index_range(name: str, value: torch.Tensor, upper: int, *, lower: int = 0) -> None:
    """Check ``lower <= value < upper`` for an index tensor."""
    if value.numel() == 0:
        return
    lo, hi = int(value.min()), int(value.max())
    if lo < lower or hi >= upper:
        raise ValueError(f"'{name}' has entries outside [{lower}, {upper}): min {lo}, max {hi}")


def same_length(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, dim: int = 0) -> None:
    if a.shape[dim] != b.shape[dim]:
        raise ValueError(f"'{name_a}' and '{name_b}' must have the same length along dim {dim}, "
                         f"got {a.shape[dim]} and {b.shape[dim]}")


def positive_int(name: str, value, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"'{name}' must be an int, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"'{name}' must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def in_range(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"'{name}' must be a number, got {type(value).__name__}")
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok or value != value:
        raise ValueError(f"'{name}' must lie in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, got {value}")
    return float(value)


def one_of(name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"'{name}' must be one of {choices}, got {value!r}")
