"""The README's code blocks run as written (the quickstart is a promise)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "__readme__"})


def test_readme_lists_every_example_and_extra():
    """The README's tables stay in step with examples/ and pyproject's extras."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    text = README.read_text()
    root = README.parent
    for script in sorted((root / "examples").glob("[!_]*.py")):
        assert f"`{script.name}`" in text, f"README does not list examples/{script.name}"
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in extras:
        assert f"| `{extra}` |" in text, f"README's extras table misses [{extra}]"
    assert "make docs" in text and "docs/_build/html" in text
