# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Set-up is idempotent: the venv is rebuilt only when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.skiff-installed

.PHONY: setup demo test test-fast lint snapshot ui bench manifest clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and alone: this exact spec takes the local CPU build (see ../shared/STACK.md)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip check
	touch $(STAMP)

demo: setup
	$(BIN)/skiff demo $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# the dbt templater opens the profile's DuckDB file: a scratch SKIFF_HOME of its own
	mkdir -p .skiff/lint && SKIFF_HOME=$(CURDIR)/.skiff/lint $(BIN)/sqlfluff lint dbt_project

# Two workers, one test file each (module fixtures are built once): the suite waits on dbt,
# servers and subprocesses as much as it computes, so two cores take about half the time.
# Files go out in collection order, the heaviest first (tests/conftest.py HEAVY_FIRST), not
# xdist's default of the most tests first, which left the minute-long files for the end.
test: lint
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder

# Everything but the slow and end-to-end tests, for a quick loop while editing.
test-fast: setup
	$(BIN)/pytest -n 2 --dist loadfile -m "not slow and not e2e"

# Rewrite the graph snapshot (tests/__snapshots__/) after an intended change of the graph;
# the diff of the .ambr file is what changed, for the review.
snapshot: setup
	$(BIN)/pytest -p no:xdist tests/test_graph_snapshot.py --snapshot-update

ui: setup
	$(BIN)/skiff ui

bench: setup
	$(BIN)/python bench/pipeline.py

# Build the dbt manifest ahead (production images): the code location then never parses.
manifest: setup
	SKIFF_HOME=$${SKIFF_HOME:-$(CURDIR)/.skiff} $(BIN)/dbt parse --project-dir dbt_project --profiles-dir dbt_project

clean:
	rm -rf .skiff dbt_project/target dbt_project/logs .pytest_cache
