# Two entry points on a fresh machine (Python 3.11 + pip):
#   make demo   set up .venv and run the whole pipeline on configs/default.yaml
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# test files run in parallel, one file per worker at a time (pytest-xdist --dist loadfile: a file's
# module fixtures and the SLURM cluster's tests stay in one process); the suite is single-threaded
# per test (tests/conftest.py), so one worker per usable CPU, at most 4 (tests/workers.py)
TEST_WORKERS ?= $(or $(shell $(PYTHON) tests/workers.py 2>/dev/null),1)

.PHONY: demo test test-fast setup clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(PY) -m pipeline run all

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow and not slurm"

clean-runs:
	rm -rf runs
