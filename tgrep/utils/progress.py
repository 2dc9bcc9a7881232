"""Progress for long work: a tqdm bar on a terminal, one line per stage otherwise.

* ``verbose=False`` (every long-running tgrep call takes it) or ``TGREP_QUIET=1`` (the
  environment) silences everything: no bar, no line.
* On a terminal (``sys.stderr.isatty()``) the bar is tqdm's.
* Anywhere else (a log file, a pipe, CI, a notebook) a bar would be thousands of carriage
  returns, so the stage prints a single line when it ends instead:
  ``knn: 5000/5000 in 1.2 s (primal=1e-05)``.

``TGREP_PROGRESS=bar|line|off`` overrides the choice (``bar`` forces tqdm, e.g. inside a
Jupyter front-end that renders carriage returns).
"""
from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm  # the text bar (tqdm.auto warns in notebooks without ipywidgets)

__all__ = ["progress", "log", "quiet", "mode"]


def quiet() -> bool:
    """Whether ``TGREP_QUIET`` is set (to anything but ``""`` / ``"0"``)."""
    return os.environ.get("TGREP_QUIET", "0").strip() not in ("", "0")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:  # closed or replaced streams
        return False


def mode(verbose: bool = True) -> str:
    """``"off"``, ``"bar"`` or ``"line"``: how progress is shown right now."""
    if not verbose or quiet():
        return "off"
    forced = os.environ.get("TGREP_PROGRESS", "").strip().lower()
    if forced in ("bar", "line", "off"):
        return forced
    return "bar" if _isatty(sys.stderr) else "line"


class _Line:
    """The stand-in for a tqdm bar off a terminal: counts, and prints one line at ``close()``.

    It supports the part of tqdm's interface that tgrep uses (iteration, ``update``,
    ``set_postfix``, ``set_postfix_str``, ``set_description``, ``reset``, ``close``, ``n``,
    ``total``, ``with``); any other tqdm method is accepted and ignored.
    """

    def __init__(self, iterable=None, desc=None, total=None, silent=False):
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.total, self.desc, self.n = total, desc, 0
        self.silent, self.closed = silent, False
        self._postfix = ""
        self._t0 = time.perf_counter()

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def __len__(self):
        return self.total if self.total is not None else len(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n=1):
        self.n += n
        return True

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        items = dict(ordered_dict or {}, **kwargs)
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s="", refresh=True):
        self._postfix = str(s)

    def set_description(self, desc=None, refresh=True):
        self.desc = desc

    set_description_str = set_description

    def reset(self, total=None):
        self.n, self._t0 = 0, time.perf_counter()
        if total is not None:
            self.total = total

    def write(self, s, file=None, end="\n"):
        if not self.silent:
            print(s, file=file or sys.stderr, end=end, flush=True)

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.silent:
            return
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        line = f"{self.desc or 'done'}: {count} in {time.perf_counter() - self._t0:.1f} s"
        if self._postfix:
            line += f" ({self._postfix})"
        print(line, file=sys.stderr, flush=True)

    def __getattr__(self, name):  # refresh, clear, unpause, display, ...: no-ops here
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def progress(iterable=None, *, verbose: bool = True, desc: str | None = None, total: int | None = None,
             leave: bool = False, **kwargs):
    """Progress over ``iterable`` (or ``total`` manual ``update`` steps), shown as :func:`mode` says.

    Args:
        iterable: what to iterate over (optional: use ``update()`` otherwise).
        verbose (bool): show anything at all. (default: :obj:`True`)
        desc (str, optional): the stage's name. (default: :obj:`None`)
        total (int, optional): the number of steps. (default: ``len(iterable)``)
        leave (bool): keep the finished bar on a terminal. (default: :obj:`False`)
        **kwargs: passed to :class:`tqdm.tqdm` when a bar is shown.
    """
    how = mode(verbose)
    if how == "bar":
        return tqdm(iterable, desc=desc, total=total, leave=leave, file=sys.stderr,
                    dynamic_ncols=True, **kwargs)
    return _Line(iterable, desc=desc, total=total, silent=how == "off")


def log(msg: str, verbose: bool = True) -> None:
    """Print a one-line status message (to stderr) unless silenced."""
    how = mode(verbose)
    if how == "bar":
        tqdm.write(msg, file=sys.stderr)
    elif how == "line":
        print(msg, file=sys.stderr, flush=True)
