# One-command test run: `make test` does all set-up itself (see scripts/bootstrap.sh) on a fresh
# Debian 12 machine as root, and is fast when the set-up is already done.
#   make test PYTEST_ARGS='-k fixture -x'
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

VENV        ?= .venv
PY          := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test venv lint clean demo

venv:
	scripts/bootstrap.sh

lint: venv
	$(VENV)/bin/ruff check .

# pytest exits 5 when it collected no test; make treats any non-zero exit as failure, so a run that
# silently ran nothing can never pass.
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The main job end to end: an agent, an example app in several processes, a summary of what arrived.
demo: venv
	$(PY) scripts/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
