# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tgrep-installed
# torch is pinned only when none is importable: an unpinned torch resolves to a newer CUDA
# build and pulls gigabytes of CUDA packages.
TORCH_PIN ?= torch==2.13.0
# Every later install runs under this constraints file, which pins the torch installed above,
# so an extra that asks for torch (lightning does) can never replace it.
CONSTRAINTS := $(VENV)/constraints.txt
# the extras `make setup` installs: all that the tests and demos use (`mutation`, for
# tools/mutate.py, is installed by `.venv/bin/pip install -c .venv/constraints.txt -e ".[mutation]"`)
EXTRAS ?= test,demo,lightning,docs,notebooks

.PHONY: setup demo test test-fast bench info docs notebooks clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_PIN)"
	$(PY) -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' > $(CONSTRAINTS)
	$(PY) -m pip install -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	$(PY) -c 'import sys, torch; want = open(sys.argv[1]).read().split("==")[1].strip(); \
	  got = torch.__version__.split("+")[0]; sys.exit(0 if got == want else f"torch changed: {want} -> {got}")' $(CONSTRAINTS)
	$(VENV)/bin/tgrep build
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/tgrep demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

info: setup
	$(VENV)/bin/tgrep info

# the API reference (Sphinx), built to docs/_build/html; warnings are errors
docs: setup
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

# execute every notebook at full size, in place (outputs and plots committed)
notebooks: setup
	$(PY) notebooks/execute.py notebooks/*.ipynb

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache docs/_build
