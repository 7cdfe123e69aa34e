# songscan: `make run` installs and serves on embedded defaults (`make run HOST=0.0.0.0 PORT=9000`
# to listen elsewhere); `make test` installs and runs every test.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATA    ?= $(CURDIR)/data
HOST    ?= 127.0.0.1
PORT    ?= 8000

.PHONY: install install-test system-deps run test lint bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python system-deps
	$(BIN)/pip install -q -e '.[test]'

system-deps:
	bash scripts/install-system-deps

run: install
	$(BIN)/songscan --data $(DATA) serve --host $(HOST) --port $(PORT)

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: install-test
	bash scripts/fetch-corpus
	$(MAKE) lint
	$(BIN)/pytest -n 2 --dist loadgroup

bench: install-test
	bash scripts/fetch-corpus
	$(BIN)/python -m bench.accuracy
