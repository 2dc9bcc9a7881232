"""Sections of ``tgrep demo``.

Each module here is one section, discovered automatically. It defines ``TITLE`` (str),
``ORDER`` (int, sections run in increasing order) and ``run(quick: bool, verbose: bool)``,
which prints what it does and yields result rows, dicts with keys ``what``, ``tgrep``,
``peer`` and ``ratio`` (strings), gathered into the final table. ``tgrep demo --list``
lists the sections; ``tgrep demo --only NAME ...`` runs some (NAME is the module's name).
"""
from __future__ import annotations

import importlib
import pkgutil

COLUMNS = ["what", "tgrep", "peer", "ratio"]


def sections() -> dict:
    """``{name: module}`` of every section (modules not starting with ``_``), by ``ORDER``."""
    mods = []
    for m in pkgutil.iter_modules(__path__):
        if m.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{m.name}")
        if hasattr(mod, "run") and hasattr(mod, "TITLE"):
            mods.append((getattr(mod, "ORDER", 100), m.name, mod))
    mods.sort(key=lambda t: (t[0], t[1]))
    return {name: mod for _, name, mod in mods}


def summary(results, width: int = 100) -> str:
    """The final table: ``results`` is a list of ``(module, rows, seconds)``; one block per
    section (its title, then its rows), at most ``width`` columns wide."""
    from ..cli import clip, format_table

    out = ["summary (tgrep vs its peer, measured in the same run)"]
    for mod, rows, seconds in results:
        out += ["", clip(f"{mod.TITLE} ({seconds:.0f} s)", width)]
        if rows:
            out.append(format_table(rows, COLUMNS, width=width, indent="  "))
        else:
            out.append("  (no result rows)")
    return "\n".join(out)
