# Two commands: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed
DEMO_FRAMES ?= 300
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba

.PHONY: demo test lint install install-dev browser bench clean postgres-server

demo: $(RUNTIME_STAMP)
	$(VENV)/bin/inspectd run --config config.yaml --max-frames $(DEMO_FRAMES)

test: lint postgres-server browser
	$(PY) -m pytest

# ruff (lint + format), mypy, and the import-linter layer contracts in pyproject.toml
lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Debian's chromium + chromium-driver for the web page tests (tests/support/browser.py); apt as root, nothing
# when both are there. Without root (and no sudo) it says so and those tests skip with that reason (fail on CI).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium + chromium-driver (apt) for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "chromium/chromium-driver missing and no root: the browser tests will skip"; fi

install: $(RUNTIME_STAMP)
install-dev: $(DEV_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e .
	touch $@

# torch==2.13.0 (CPU build) for the training and labelling tests; never needed by the daemon; genicam: the GenTL
# consumer and the simulated producer (viky.cti) the genicam camera tests run against; report: matplotlib for
# `inspectd evaluate --report`
$(DEV_STAMP): pyproject.toml $(RUNTIME_STAMP)
	$(PIP) install --quiet -e '.[train,dev,genicam,registry,report]'
	touch $@

# The registry's tests start their own throwaway PostgreSQL server (tests/support/postgres.py) from Debian's
# `postgresql` package: installed here once if missing (root + apt-get); elsewhere those tests skip and say why.
postgres-server:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's postgresql for the registry tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q postgresql >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }; \
	else echo "note: no PostgreSQL server and no root apt-get: the registry's PostgreSQL tests will be skipped"; fi

clean:
	rm -rf $(VENV) .cache .pytest_cache build *.egg-info
