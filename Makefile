# Everything a fresh machine needs: `make demo` and `make test` create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.shiftaudit-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-all fuzz planted mutate mutation-survivors bench lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/shiftaudit demo --out demo-report

# The suite without the tests marked slow (under 3 minutes on 2 cores); CI runs both.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal $(PYTEST_ARGS)

# The property tests (hypothesis) with fresh randomness and ten times the examples: profile "fuzz" of
# tests/conftest.py. `make test` runs them derandomised (profile "ci"), so CI never depends on luck (docs/testing.md).
fuzz: $(STAMP)
	SHIFTAUDIT_HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -n 2 -m hypothesis --timeout 3600 $(PYTEST_ARGS)

# Known bugs planted one at a time: each must fail the test named for it.
planted: $(STAMP)
	$(BIN)/python scripts/check_planted_bugs.py

# Mutation testing of metrics/, the gate, the statistics, shift sets and the report tables (docs/testing.md).
mutate: $(STAMP)
	rm -rf mutants
	SHIFTAUDIT_TEST_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2 || true
	$(BIN)/python scripts/mutation_score.py

# Every surviving mutant of the last `make mutate` with its changed lines, grouped by reason (generated, not kept).
mutation-survivors: $(STAMP)
	$(BIN)/python scripts/mutation_score.py --survivors > mutation-survivors.md
	@echo "wrote mutation-survivors.md"

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# ruff (lint and format) over the whole repository, mypy over the package; all configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy shiftaudit

clean:
	rm -rf $(VENV) demo-report bench-results .pytest_cache mutants
