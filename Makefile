# One-command test run: `make test` does all set-up itself (see scripts/bootstrap.sh) on a fresh
# Debian 12 machine as root, and is fast when the set-up is already done.
#   make test PYTEST_ARGS='-k fixture -x'
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

VENV        ?= .venv
PY          := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test unit venv lint clean demo deb

venv:
	scripts/bootstrap.sh

# ruff (lint and format), mypy --strict over client/ and daemon/, and the import-linter contracts of
# pyproject.toml (the agent's layers; the client imports nothing of the agent; no import cycles).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# pytest exits 5 when it collected no test; make treats any non-zero exit as failure, so a run that
# silently ran nothing can never pass.
test: lint
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)

# The tests that need no server, no root and no agent process: seconds, for the edit-test loop.
unit: venv
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

# The main job end to end: an agent with the embedded store (chDB, no ClickHouse server), an example app
# in several processes, a summary query of what arrived (scripts/demo.py; against a server instead when
# AUTOMAGIK_TELEMETRY_CLICKHOUSE_ENDPOINT is set). Its set-up is light: python3-venv and a .venv with the
# agent and embedded extras (an existing full .venv from `make test` is reused as it is).
demo:
	scripts/bootstrap.sh --demo
	$(PY) scripts/demo.py

# The Debian package, built offline from a cached wheelhouse: dist/automagik-telemetry_<version>_<arch>.deb
# (packaging/README.md).
deb: venv
	packaging/build-deb.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
