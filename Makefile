# Quick start: `make demo` runs the main job, `make test` runs the whole test suite.
# Both create (or reuse) a local virtual environment in .venv and install what they need: the `dev` extra at the
# exact versions of constraints.txt, then `involution warmup` compiles the fast CPU kernels into numba's cache.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# pytest-xdist workers for `make test` (the test processes share numba's on-disk kernel cache).
JOBS   ?= 2

.PHONY: demo test bench warmup clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m involution warmup --dtype float32 --dtype float64
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m involution demo

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup tests conformance

bench: $(STAMP)
	$(PY) -m involution bench

warmup: $(STAMP)
	$(PY) -m involution warmup --dtype float32 --dtype float64

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
