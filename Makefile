# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tgrep-installed
# torch is pinned only when none is importable: an unpinned torch resolves to a newer CUDA
# build and pulls gigabytes of CUDA packages.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test test-fast bench info clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_PIN)"
	$(PY) -m pip install -e ".[test,demo]"
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

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
