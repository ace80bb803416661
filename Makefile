# Quick start: `make demo` runs the main job, `make test` runs the whole test suite.
# Both create (or reuse) a local virtual environment in .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m involution demo

test: $(STAMP)
	$(PY) -m pytest tests conformance

bench: $(STAMP)
	$(PY) -m involution bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
