# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv on first use,
# from requirements/dev.lock: the exact versions CI tested (see README, "Pinned versions").
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
LOCK = requirements/dev.lock

.PHONY: demo test lint bench clean lock test-latest

$(BIN)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/cache-middleware demo

lint: $(BIN)/.installed
	$(BIN)/ruff check cache_middleware tests sample_apps bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

# The newest releases pyproject.toml allows, in a venv of their own, through lint and the suite:
# how drift in a dependency is seen on purpose, before it reaches a fresh machine.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade -e '.[dev]'
	.venv-latest/bin/ruff check cache_middleware tests sample_apps bench
	.venv-latest/bin/mypy
	.venv-latest/bin/pytest -q

# Refresh the lock: resolve the newest allowed versions in a throwaway venv and write them out.
# Run `make test` after it (the changed lock rebuilds .venv) and commit the lock with any fixes.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade -e '.[dev]'
	( echo "# Exact versions of the dev/test environment that CI tested. Refresh: make lock."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | LC_ALL=C sort -f ) > $(LOCK)
	rm -rf .venv-lock

bench: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[bench]'
	$(BIN)/python bench/compare.py

clean:
	rm -rf $(VENV) .venv-latest .venv-lock .pytest_cache .mypy_cache .ruff_cache
