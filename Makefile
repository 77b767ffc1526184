# Two commands from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install services-up services-down lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/seechange demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

services-up: $(STAMP)
	$(BIN)/seechange services up

services-down: $(STAMP)
	$(BIN)/seechange services down

lint: $(STAMP)
	$(BIN)/ruff check seechange consumers producers tests
	$(BIN)/ruff format --check seechange consumers producers tests
	$(BIN)/mypy seechange consumers producers

clean:
	rm -rf $(VENV) .cache
