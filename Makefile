# Two commands on a fresh machine:
#   make pipeline   set up .venv (first time) and run the embedded pipeline (`dvc repro` stage by
#                   stage under one Prefect flow and one parent MLflow run: `mgpo pipeline`)
#   make test       set up .venv (first time) and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export HF_HUB_OFFLINE := 1

.PHONY: setup pipeline test test-all lint format clean

setup: $(VENV)/.installed

# torch + torchvision first (they come from this machine's disk); the rest from the lock.
$(VENV)/.installed: constraints/cpu.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24,<25"
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -c constraints/cpu.txt -e '.[dev]'
	touch $@

pipeline: setup
	$(BIN)/mgpo pipeline

test: setup
	$(BIN)/python -m pytest

# Also the slow end-to-end tests (dvc repro of every stage in repo copies, Ray, Prefect servers).
test-all: setup
	$(BIN)/python -m pytest -m "slow or not slow"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
