"""Sections of ``tgrep demo``.

Each module here is one section, discovered automatically. It defines ``TITLE`` (str),
``ORDER`` (int, sections run in increasing order) and ``run(quick: bool, verbose: bool)``,
which prints what it does and yields result rows, dicts with keys ``what``, ``tgrep``,
``peer`` and ``ratio`` (strings), gathered into the final table.
"""
