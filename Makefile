# Two entry points: `make demo` (the main job on its embedded default) and `make test` (the test suite).
# Both install what is missing first and nothing twice.
VENV ?= .venv
BIN := $(VENV)/bin
export FEDFINGPT_DATA_DIR ?= $(abspath ../shared/data)
export FLWR_TELEMETRY_ENABLED = 0
export FLWR_DISABLE_UPDATE_CHECK = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: setup demo test test-slow bench clean

setup:
	@bash scripts/setup.sh

demo: setup  ## federated LoRA across 3 simulated banks, sentiment + AML (configs/federated.yaml defaults)
	$(BIN)/fedfingpt simulate

test: setup
	$(BIN)/python -m pytest -q tests

test-slow: setup
	$(BIN)/python -m pytest -q -m slow tests

bench: setup
	$(BIN)/python benchmarks/sentiment_central.py

clean:
	rm -rf runs
