# The README's two commands: `make run` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml setup.py app/netlink/_batch.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: setup test-deps run test lint
setup: $(BIN)/.installed

# The Debian packages the tests use (auditd, wrk, chromium): installed when run as root,
# skipped with a message otherwise (the kernel and browser tests are skipped then).
test-deps:
	scripts/test-deps.sh

run: setup
	$(BIN)/lifewatch serve

lint: setup
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy app tests bench
	$(BIN)/lint-imports

test: test-deps lint
	$(BIN)/pytest
	scripts/test-unprivileged.sh
