# The README's two commands: `make run` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: setup run test lint
setup: $(BIN)/.installed

run: setup
	$(BIN)/lifewatch serve

lint: setup
	$(BIN)/ruff check app tests bench
	$(BIN)/mypy app tests bench
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest
