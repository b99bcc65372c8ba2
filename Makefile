# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/cache-middleware demo

lint: $(BIN)/.installed
	$(BIN)/ruff check cache_middleware tests sample_apps bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

bench: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/compare.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
