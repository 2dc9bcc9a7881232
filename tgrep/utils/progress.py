"""Progress bars for long work: tqdm, silenced by ``verbose=False`` or ``TGREP_QUIET=1``."""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def quiet() -> bool:
    return os.environ.get("TGREP_QUIET", "0") not in ("", "0")


def progress(iterable=None, *, verbose: bool = True, desc: str | None = None, total: int | None = None,
             leave: bool = False, **kwargs):
    """``tqdm(iterable)`` that is disabled when ``verbose`` is false or ``TGREP_QUIET`` is set."""
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=(not verbose) or quiet(),
                file=sys.stderr, dynamic_ncols=True, **kwargs)


def log(msg: str, verbose: bool = True) -> None:
    """Print a one-line status message unless silenced."""
    if verbose and not quiet():
        tqdm.write(msg, file=sys.stderr)
