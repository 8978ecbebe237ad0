# The two commands: `make demo` (set up, run the whole graph on synthetic data, print a summary)
# and `make test` (set up, run the tests). `make dev` opens the Dagster UI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: setup demo test test-fast lint format dev clean

setup: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml: deploy/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp deploy/dagster.yaml $@

demo: setup
	$(BIN)/pinnersage demo

# the tests also cover the Spark engine: pyspark (an optional extra) and a Java runtime
$(VENV)/.spark: $(VENV)/.installed
	command -v java >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends default-jre-headless)
	$(BIN)/python -m pip install --quiet -e '.[dev,spark]'
	touch $@

test: setup $(VENV)/.spark lint
	$(BIN)/python -m pytest

# lint, format and types: part of `make test`, so CI fails on them
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# the edit loop: the algorithm, the service and the assets on the tiny graph, without the
# slow end-to-end tests (real servers, Spark, a live daemon); `make test` runs everything
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" tests/core tests/serving tests/assets tests/engines

# dg (Dagster's CLI) reads [tool.dg] in pyproject.toml and wants the project's venv active
dev: setup
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dg dev

# what the settings name (PINNERSAGE_DATA_ROOT and the paths under it), then the instance's run history
clean:
	if [ -x $(BIN)/pinnersage ]; then $(BIN)/pinnersage clean; fi
	rm -rf $(DAGSTER_HOME)

.PHONY: bench-serving
bench-serving: setup
	$(BIN)/python benchmarks/serving_load.py

# the committed report in docs/evaluation is for this split day (synthetic data, deterministic seed);
# the report goes to PINNERSAGE_REPORTS_ROOT, and into docs/evaluation only when asked:
# make evaluate OUTPUT=docs/evaluation
SPLIT_DAY ?= 2026-11-14
OUTPUT ?=
.PHONY: evaluate
evaluate: setup
	$(BIN)/pinnersage evaluate --split-day $(SPLIT_DAY) $(if $(OUTPUT),--output $(OUTPUT))

.PHONY: bench-clustering bench-index bench-e2e bench
bench-clustering: setup
	$(BIN)/python benchmarks/clustering.py
bench-index: setup
	$(BIN)/python benchmarks/index.py
bench: bench-clustering bench-index bench-serving bench-e2e
bench-e2e: setup
	$(BIN)/python benchmarks/end_to_end.py
