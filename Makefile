# The two commands of the README. Both build .venv themselves, idempotently.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck unit venv clean bench demo soak

venv: $(STAMP)

# Rebuilt only when the project's dependencies or its C extension change.
$(STAMP): pyproject.toml src/forehand/wire/_speedups.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite in TEST_WORKERS processes (pytest-xdist), longest tests first (tests/conftest.py);
# TEST_WORKERS=0 runs it in this one.
TEST_WORKERS ?= 2

unit: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal

test: lint typecheck unit

# A live cluster on loopback for about 100 seconds: a predicted handoff, then a crash.
demo: $(STAMP)
	$(BIN)/python -m forehand.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis

# Every benchmarks/bench_*.py, one JSON file (benchmarks/results/bench.json) and a summary table;
# BENCH_ARGS="--quick" or "--only handoff,redis" or "--output PATH".
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

# A long simulator campaign beyond the corpus `make test` runs (seeds 0 to 359): SOAK_SEEDS seeds
# of every scenario from SOAK_START, on SOAK_JOBS processes; a failure prints the seed to replay.
SOAK_SEEDS ?= 4000
SOAK_START ?= 1000000
SOAK_JOBS ?= 2
soak: $(STAMP)
	$(BIN)/forehand sim --scenario all --seeds $(SOAK_SEEDS) --seed-start $(SOAK_START) --jobs $(SOAK_JOBS)
