# Two commands: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed
DEMO_FRAMES ?= 300
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba

.PHONY: demo test lint install install-dev bench clean browser

demo: $(RUNTIME_STAMP)
	$(VENV)/bin/inspectd run --config config.yaml --max-frames $(DEMO_FRAMES)

test: lint browser
	$(PY) -m pytest

# the review page's tests look at it in a real headless Chromium (Debian's); installed once, where apt is at hand
browser:
	@command -v chromium >/dev/null || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# ruff (lint + format), mypy, and the import-linter layer contracts in pyproject.toml
lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

install: $(RUNTIME_STAMP)
install-dev: $(DEV_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e .
	touch $@

# torch==2.13.0 (CPU build) for the training and labelling tests; never needed by the daemon
$(DEV_STAMP): pyproject.toml $(RUNTIME_STAMP)
	$(PIP) install --quiet -e '.[train,dev]'
	touch $@

clean:
	rm -rf $(VENV) .cache .pytest_cache build *.egg-info
