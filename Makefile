# The two commands: `make demo` (set up, run the whole graph on synthetic data, print a summary)
# and `make test` (set up, run the tests). `make dev` opens the Dagster UI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: setup demo test dev clean

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

test: setup $(VENV)/.spark
	$(BIN)/python -m pytest

# dg (Dagster's CLI) reads [tool.dg] in pyproject.toml and wants the project's venv active
dev: setup
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dg dev

clean:
	rm -rf data/pinnersage.duckdb data/pinnersage.duckdb.wal data/pin_index data/serving data/exchange data/events $(DAGSTER_HOME)

.PHONY: bench-serving
bench-serving: setup
	$(BIN)/python benchmarks/serving_load.py

# the committed report in docs/evaluation is for this split day (synthetic data, deterministic seed)
SPLIT_DAY ?= 2026-11-14
.PHONY: evaluate
evaluate: setup
	$(BIN)/pinnersage evaluate --split-day $(SPLIT_DAY) --output docs/evaluation

.PHONY: bench-clustering bench-index bench-e2e bench
bench-clustering: setup
	$(BIN)/python benchmarks/clustering.py
bench-index: setup
	$(BIN)/python benchmarks/index.py
bench: bench-clustering bench-index bench-serving bench-e2e
bench-e2e: setup
	$(BIN)/python benchmarks/end_to_end.py
