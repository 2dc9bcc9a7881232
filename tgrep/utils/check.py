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


def dense(name: str, value: torch.Tensor) -> torch.Tensor:
    """Refuse sparse and other non-strided layouts (kernels read raw strided memory)."""
    if value.layout != torch.strided:
        raise TypeError(f"'{name}' must be a dense (strided) tensor, got layout {value.layout}")
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


def edge_index(name: str, value, num_nodes: int | None = None, *, device: torch.device | None = None) -> torch.Tensor:
    """A PyG ``edge_index``: an int32/int64 ``[2, E]`` dense tensor, entries in ``[0, num_nodes)``
    when ``num_nodes`` is given (one host sync). Returns it unchanged."""
    tensor(name, value, dtypes=INDEX_DTYPES, dim=2, device=device)
    dense(name, value)
    if value.size(0) != 2:
        raise ValueError(f"'{name}' must have shape [2, E], got {tuple(value.shape)}")
    if num_nodes is not None:
        positive_int("num_nodes", num_nodes, allow_zero=True)
        index_range(name, value, num_nodes)
    return value


def batch(name: str, value, num_nodes: int, *, device: torch.device | None = None) -> tuple[torch.Tensor, int]:
    """A PyG ``batch`` vector (``None`` = one graph): ``[N]`` int64, sorted, ids ``>= 0``.

    Returns ``(batch, num_graphs)`` with the ids made *compact* (``0 .. G-1`` in order, empty
    ids dropped), so no caller sizes anything by ``max(id) + 1``: ids ``{0, 10**7}`` are two
    graphs, not ten million.
    """
    if value is None:
        dev = device if device is not None else torch.device("cpu")
        return torch.zeros(num_nodes, dtype=torch.long, device=dev), (1 if num_nodes else 0)
    tensor(name, value, dtypes=INDEX_DTYPES, dim=1, device=device)
    dense(name, value)
    if value.numel() != num_nodes:
        raise ValueError(f"'{name}' must have one entry per node ({num_nodes}), got {value.numel()}")
    if value.numel() == 0:
        return value.long(), 0
    value = value.long()
    if int(value.min()) < 0:
        raise ValueError(f"'{name}' must be >= 0, got min {int(value.min())}")
    if value.numel() > 1 and bool((value.diff() < 0).any()):
        raise ValueError(f"'{name}' must be sorted (nodes of one graph contiguous, as PyG's Batch makes it)")
    new = torch.ones(value.numel(), dtype=torch.long, device=value.device)
    new[1:] = (value.diff() != 0).long()
    new[0] = 0
    compact = new.cumsum(0)
    return compact, int(compact[-1]) + 1


# ---------------------------------------------------------------------------------------------
# Value checks that run inside the custom ops (see tgrep.library): each builder returns a list
# of (violated: 0-d bool tensor, message thunk); :func:`values` reads them all in one host sync.

Flag = tuple  # (torch.Tensor 0-d bool, Callable[[], str])


def values(flags: list) -> None:
    """Raise ``ValueError`` with the message of the first violated flag; one host sync."""
    if not flags:
        return
    bad = torch.stack([f for f, _ in flags]).tolist()
    for violated, (_, message) in zip(bad, flags):
        if violated:
            raise ValueError(message())


def index_flags(name: str, idx: torch.Tensor | None, upper: int, *, lower: int = 0) -> list:
    """``lower <= idx < upper``."""
    if idx is None or idx.numel() == 0:
        return []
    lo, hi = torch.aminmax(idx)
    return [((lo < lower) | (hi >= upper),
             lambda: f"'{name}' has entries outside [{lower}, {upper}): min {int(idx.min())}, max {int(idx.max())}")]


def csr_flags(indptr: torch.Tensor, indices: torch.Tensor, num_cols: int, *, indptr_name: str = "indptr",
              indices_name: str = "indices") -> list:
    """``indptr`` starts at 0, ends at ``len(indices)``, never decreases; ``indices`` in ``[0, num_cols)``."""
    E = indices.numel()
    return (indptr_flags(indptr, E, f"len({indices_name}) = {E}", name=indptr_name)
            + index_flags(indices_name, indices, num_cols))


def indptr_flags(indptr: torch.Tensor, num_entries: int, end: str, *, name: str = "indptr") -> list:
    """``indptr`` (non-empty) starts at 0, ends at ``num_entries`` (``end`` says what that is in
    the message), and never decreases."""
    flags = [((indptr[0] != 0) | (indptr[-1] != num_entries),
              lambda: f"'{name}' must start at 0 and end at {end}, got {int(indptr[0])} and {int(indptr[-1])}")]
    if indptr.numel() > 1:
        flags.append(((indptr.diff() < 0).any(), lambda: f"'{name}' must be non-decreasing"))
    return flags


def nonneg_flags(name: str, value: torch.Tensor | None, *, allow_inf: bool = True) -> list:
    """No NaN, no negative entries (and no ``inf`` unless ``allow_inf``)."""
    if value is None or value.numel() == 0:
        return []
    bad = ~(value.min() >= 0)  # min() propagates NaN, which fails the comparison
    if not allow_inf:
        bad = bad | ~torch.isfinite(value).all()
    return [(bad, lambda: f"'{name}' contains NaN" if bool(torch.isnan(value).any()) else
             f"'{name}' must be >= 0{'' if allow_inf else ' and finite'}, got min {float(value.min())}, "
             f"max {float(value.max())}")]


def prob_flags(name: str, value: torch.Tensor | None) -> list:
    """Entries in ``[0, 1]``, no NaN."""
    if value is None or value.numel() == 0:
        return []
    lo, hi = torch.aminmax(value)
    return [(~((lo >= 0) & (hi <= 1)), lambda: f"'{name}' must lie in [0, 1] (and not be NaN)")]


def finite_flags(name: str, value: torch.Tensor | None) -> list:
    if value is None or value.numel() == 0 or not value.is_floating_point():
        return []
    return [(~torch.isfinite(value).all(), lambda: f"'{name}' contains NaN or infinite values")]


def seed(name: str, value) -> int:
    """An int seed (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"'{name}' must be an int, got {type(value).__name__}")
    return value
