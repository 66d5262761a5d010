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

# The dev tools include llama-cpp-python, built from source once (about 5 minutes on 2 idle
# cores, far longer on a busy machine): say so before, and show cmake's progress lines.
$(VENV)/.dev: $(VENV)/.runtime
	@echo "Installing the dev tools into $(VENV). The first time, pip builds llama-cpp-python"
	@echo "from source: about 5 minutes on 2 idle cores, much longer on a busy machine."
	@echo "Progress of that build follows ([ NN%] lines); later runs take seconds."
	@bash -o pipefail -c "$(PY) -m pip --disable-pip-version-check install -v -e '.[dev]' 2>&1 \
		| { grep --line-buffered -E '^ *\[ *[0-9]+%\]|^Successfully installed|^ERROR|error:' || true; }"
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
	$(VENV)/bin/lint-imports

format: setup-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# LITELLM_BIN=/path/to/litellm adds LiteLLM's proxy to the router bench (never a dependency).
bench: setup-dev
	$(PY) ops/bench/worker_bench.py
	$(PY) ops/bench/router_bench.py
	$(PY) ops/bench/whole_path_bench.py
	$(PY) ops/bench/stream_bench.py
	$(PY) ops/bench/allow_responses_bench.py

clean:
	rm -rf $(VENV) .inferbus .pytest_cache .mypy_cache .ruff_cache
