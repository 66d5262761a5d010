# The README's commands. Everything installs itself into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup setup-dev run test lint format bench clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	touch $@

# The dev tools include llama-cpp-python, built from source once (about 5 minutes on 2 cores).
$(VENV)/.dev: $(VENV)/.runtime
	$(PIP) install -e '.[dev]'
	touch $@

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

run: setup
	$(VENV)/bin/inferbus up $(ARGS)

test: setup-dev
	$(PY) -m pytest

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# LITELLM_BIN=/path/to/litellm adds LiteLLM's proxy to the router bench (never a dependency).
bench: setup-dev
	$(PY) ops/bench/worker_bench.py
	$(PY) ops/bench/router_bench.py
	$(PY) ops/bench/stream_bench.py
	$(PY) ops/bench/allow_responses_bench.py

clean:
	rm -rf $(VENV) .inferbus .pytest_cache .mypy_cache .ruff_cache
