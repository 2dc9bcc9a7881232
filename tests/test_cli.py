"""The command line (`tgrep --version`, `info`, `demo --list/--only`), the summary table and
the progress output off a terminal."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest

import tgrep
from tgrep import cli
from tgrep.demos import sections, summary
prog = importlib.import_module("tgrep.utils.progress")  # the module (tgrep.utils.progress is the function)

SECTIONS = ["shortest_paths", "edrep", "prodige", "learned_graph", "ot_coarsening"]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"tgrep {tgrep.__version__}"


def test_console_script_version():
    """The installed entry point (``python -m tgrep.cli``) answers --version with exit 0."""
    out = subprocess.run([sys.executable, "-m", "tgrep.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"tgrep {tgrep.__version__}"


def test_demo_list(capsys):
    assert cli.main(["demo", "--list"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines()[2:] if line and not line.startswith((" ", "run"))]
    assert set(SECTIONS) <= set(listed)
    for name, mod in sections().items():
        assert name in out and mod.TITLE.split()[0] in out
    assert max(len(line) for line in out.splitlines()) <= cli.TABLE_WIDTH


def test_sections_ordered():
    mods = sections()
    orders = [getattr(m, "ORDER", 100) for m in mods.values()]
    assert orders == sorted(orders)
    assert not any(name.startswith("_") for name in mods)


@pytest.mark.parametrize("argv", [["demo", "--only", "foo"], ["demo", "--only", "edrep", "shortest_path"]])
def test_demo_unknown_section_is_an_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "unknown section" in err and argv[-1] in err
    for name in SECTIONS:  # the valid names are listed
        assert name in err


def test_demo_function_rejects_unknown_section():
    with pytest.raises(ValueError, match="valid: .*shortest_paths"):
        cli.demo(only=["nope"])


def test_demo_runs_only_the_named_section(monkeypatch, capsys):
    """`--only` runs exactly the named section and ends with the summary table."""
    ran = []
    fake = {}
    for name in ("a", "b"):
        mod = type(sys)(name)
        mod.TITLE, mod.ORDER = f"Section {name} " + "x" * 120, 1

        def run(quick=False, verbose=True, name=name):
            ran.append((name, quick, verbose))
            yield {"what": "a very long description " * 6, "tgrep": "1.0 s", "peer": "scipy 2.0 s",
                   "ratio": "2.0x faster"}
        mod.run = run
        fake[name] = mod
    monkeypatch.setattr(cli, "demo_sections", lambda: fake)
    assert cli.main(["demo", "--only", "b", "--quick", "-q"]) == 0
    assert ran == [("b", True, False)]
    out = capsys.readouterr().out
    assert "Section b" in out and "Section a" not in out
    assert max(len(line) for line in out.splitlines()) <= cli.TABLE_WIDTH


def _words(text):
    return re.findall(r"\S+", text)


def test_format_table_fits_and_keeps_every_word():
    rows = [{"what": "full SSSP, B=64 rows (max |err| 1.2e-07) " * 3, "tgrep": "0.123 s",
             "peer": "scipy full 0.456 s with many extra words here", "ratio": "3.7x faster"},
            {"what": "short", "tgrep": "x", "peer": None, "ratio": ""}]
    cols = ["what", "tgrep", "peer", "ratio"]
    for width in (100, 60):
        text = cli.format_table(rows, cols, width=width, indent="  ")
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= width
        # every word of every cell is printed (wrapped, not cut)
        expected = sorted(w for c in cols for r in rows for w in _words(str(r.get(c) or "")))
        body = "\n".join(lines[2:])
        assert sorted(_words(body)) == expected
    # a table that fits is not wrapped: one line per row
    small = cli.format_table([{"a": "1", "b": "2"}], ["a", "b"])
    assert small.splitlines() == ["a  b", "-  -", "1  2"]


def test_summary_fits_100_columns_with_the_real_titles():
    rows = [{"what": "log Z, n=m=20000, d=64, k=4 and a long tail of words to wrap", "tgrep": "12.3 ms",
             "peer": "exact 1.234 s", "ratio": "100.3x faster"}] * 3
    text = summary([(mod, rows, 12.0) for mod in sections().values()], width=100)
    assert max(len(line) for line in text.splitlines()) <= 100
    for mod in sections().values():
        assert mod.TITLE[:60] in text


def _columns_aligned(block: str) -> bool:
    """Every row of a table starts each column where its header does."""
    lines = block.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("--"))
    lines = lines[at - 1:]  # drop the title line(s) above the header
    header, rule = lines[0], lines[1]
    starts = [m.start() for m in re.finditer(r"-+", rule)]
    if [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)][: len(starts)] != starts[: len(starts)]:
        return False
    for line in lines[2:]:
        for s in starts[1:]:
            # a cell begins at each column start: preceded by two spaces (or it is blank)
            if len(line) > s and line[s] != " " and line[s - 2:s] != "  ":
                return False
    return True


def test_info_aligned_and_without_choose(monkeypatch, capsys):
    import tgrep._backend as backend

    def boom(*args, **kwargs):
        raise AssertionError("tgrep info must not call _backend.choose")

    monkeypatch.setattr(backend, "choose", boom, raising=False)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    blocks = [b for b in out.split("\n\n") if "\n---" in b or "\n-" in b]
    assert len(blocks) >= 4
    for block in blocks:
        assert _columns_aligned(block), block
    assert max(len(line) for line in out.splitlines()) <= cli.TABLE_WIDTH
    ops = dict(cli._custom_ops())
    assert "shortest_paths" in ops and "shortest_paths" in out
    assert ops["shortest_paths"] == tuple(torch_op_kernels("shortest_paths"))


def torch_op_kernels(name):
    from tgrep.library._register import OPS

    return OPS[f"tgrep::{name}"].kernels


def test_op_rows_default_backends_and_ops_without_kernels():
    rows = cli.op_rows([("a", ("reference", "cpp", "triton")), ("b", ("reference",)),
                        ("shortest_paths", None)])
    assert rows[0]["cpu tensors"] == "cpp" and rows[0]["cuda tensors"] == "triton"
    assert rows[1]["cpu tensors"] == rows[1]["cuda tensors"] == "reference"
    assert rows[2]["cpu tensors"] == "dispatcher"        # no .kernels: no guess
    assert "CPU" in rows[2]["kernels"]                  # what the dispatcher holds instead
    with tgrep.use_backend("reference"):
        assert cli.op_rows([("a", ("reference", "cpp"))])[0]["cpu tensors"] == "reference"


# ----------------------------------------------------------------------------- progress
@pytest.fixture
def not_a_terminal(monkeypatch, capsys):
    """stderr captured by pytest (not a terminal); ``.getvalue()`` reads what was written."""
    monkeypatch.delenv("TGREP_QUIET", raising=False)
    monkeypatch.delenv("TGREP_PROGRESS", raising=False)
    assert not sys.stderr.isatty()

    class Err:
        text = ""

        def getvalue(self):
            self.text += capsys.readouterr().err
            return self.text

    return Err()


def test_progress_one_line_per_stage_off_a_terminal(not_a_terminal):
    assert prog.mode() == "line"
    total = 0
    for i in prog.progress(range(500), desc="stage one"):
        total += i
    with prog.progress(total=40, desc="stage two") as bar:
        for _ in range(40):
            bar.update(1)
            bar.set_postfix(loss=f"{0.5:.2f}")
            bar.refresh()  # any other tqdm method is accepted
    prog.log("a status line")
    lines = not_a_terminal.getvalue().splitlines()
    assert total == sum(range(500))
    assert len(lines) == 3, lines
    assert lines[0].startswith("stage one: 500/500 in ")
    assert lines[1].startswith("stage two: 40/40 in ") and lines[1].endswith("(loss=0.50)")
    assert lines[2] == "a status line"
    assert "\r" not in not_a_terminal.getvalue()


def test_progress_quiet_everywhere(not_a_terminal, monkeypatch):
    monkeypatch.setenv("TGREP_QUIET", "1")
    for how in ("", "bar", "line"):
        monkeypatch.setenv("TGREP_PROGRESS", how)
        assert prog.mode() == "off"
        assert sum(prog.progress(range(10), desc="x")) == 45
        prog.log("hidden")
    monkeypatch.delenv("TGREP_QUIET")
    list(prog.progress(range(10), desc="y", verbose=False))
    prog.log("hidden", verbose=False)
    assert not_a_terminal.getvalue() == ""


def test_progress_bar_when_forced(not_a_terminal, monkeypatch):
    from tqdm import tqdm

    monkeypatch.setenv("TGREP_PROGRESS", "bar")
    bar = prog.progress(range(3), desc="z")
    assert isinstance(bar, tqdm)
    list(bar)


def test_progress_break_closes_once(not_a_terminal):
    for i in prog.progress(range(100), desc="early"):
        if i == 9:
            break
    lines = not_a_terminal.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("early: 9/100")


def test_demo_cli_output_is_small_off_a_terminal(tmp_path):
    """A real section run with output to a file: progress is a few lines, not a log of bars."""
    out = subprocess.run([sys.executable, "-m", "tgrep.cli", "demo", "--only", "ot_coarsening", "--quick"],
                         capture_output=True, text=True, env={**__import__("os").environ, "TGREP_QUIET": "0"},
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\r" not in out.stderr
    assert len(out.stderr.splitlines()) < 40
    assert max(len(line) for line in out.stdout.splitlines()) <= cli.TABLE_WIDTH
