# async-batch-llm developer tasks.
#
#   make install   bootstrap uv if needed, create .venv, sync the lock into it
#   make ci        format-check, lint, typecheck, test (what CI runs)
#   make help      list every target
#
# Every tool runs from .venv/bin directly; nothing re-resolves dependencies
# behind your back. Dependencies change only through `make lock`.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules --no-print-directory

# Interpreter used to bootstrap uv and to create the venv (must be >= 3.11;
# if it is older, uv looks for any Python >= 3.11 on the machine instead).
PYTHON ?= python3
UV_VERSION ?= 0.13.9
# Never let uv fetch a Python build of its own (only package registries are
# reachable here); set UV_PYTHON_DOWNLOADS=automatic to allow it elsewhere.
export UV_PYTHON_DOWNLOADS ?= never

VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/dev.txt
BASE_LOCK := requirements/base.txt
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.install.stamp
UV_BOOTSTRAP_DIR := .uv-bootstrap

# Only the source folders that exist (others may not have been written yet).
PY_PATHS := $(wildcard src tests examples benchmarks)
PYTEST_FLAGS ?= -p no:cacheprovider

# Shell fragment that leaves a working uv command in $uv: uv on PATH, else
# `python3 -m uv`, else a pinned uv installed with pip (into the interpreter,
# or into $(UV_BOOTSTRAP_DIR) where the interpreter refuses, e.g. PEP 668).
FIND_UV = \
	if uv --version >/dev/null 2>&1; then uv=uv; \
	elif $(PYTHON) -m uv --version >/dev/null 2>&1; then uv="$(PYTHON) -m uv"; \
	elif [ -x $(UV_BOOTSTRAP_DIR)/bin/uv ]; then uv="$(CURDIR)/$(UV_BOOTSTRAP_DIR)/bin/uv"; \
	else \
		echo ">> uv not found: installing uv==$(UV_VERSION) with $(PYTHON) -m pip" >&2; \
		if $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)" >&2; then \
			if uv --version >/dev/null 2>&1; then uv=uv; else uv="$(PYTHON) -m uv"; fi; \
		else \
			echo ">> pip refused a global install; installing into $(UV_BOOTSTRAP_DIR)/" >&2; \
			$(PYTHON) -m pip install --quiet --target $(UV_BOOTSTRAP_DIR) "uv==$(UV_VERSION)" >&2; \
			uv="$(CURDIR)/$(UV_BOOTSTRAP_DIR)/bin/uv"; \
		fi; \
	fi; \
	echo ">> using $$($$uv --version) ($$uv)" >&2

COMPILE_FLAGS = --universal --generate-hashes --python-version 3.11 \
	--custom-compile-command "make lock" -c $(CONSTRAINTS)

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-13s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# --- environment -------------------------------------------------------------

.PHONY: install
install: $(STAMP) redis-server ## Create .venv and sync it to requirements/dev.txt (fast when up to date)
	@:

# The Redis quota tests start a real redis-server (Debian package). Install it when it is
# missing and this machine allows it (root and apt-get); never fail the install over it: the
# tests then skip, saying how to install it (and .ci/run turns that skip into a failure).
.PHONY: redis-server
redis-server: ## Install the redis-server program for the Redis tests, if missing and possible
	@if command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo ">> installing redis-server with apt-get (for the Redis tests)"; \
		if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends redis-server; } >/dev/null 2>&1; then \
			echo ">> could not install redis-server: the Redis tests will skip" >&2; \
		fi; \
	else \
		echo ">> redis-server is missing (apt-get install redis-server): the Redis tests will skip" >&2; \
	fi

$(STAMP): $(LOCK) pyproject.toml
	@$(FIND_UV); \
	if [ ! -x $(BIN)/python ]; then \
		if $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
			py="$$($(PYTHON) -c 'import sys; print(sys.executable)')"; \
		else \
			py='>=3.11'; \
		fi; \
		echo ">> creating $(VENV) with Python $$py"; \
		$$uv venv --quiet --python "$$py" $(VENV); \
	fi; \
	echo ">> syncing $(LOCK) into $(VENV)"; \
	$$uv pip sync --quiet --require-hashes --python $(BIN)/python $(LOCK); \
	$$uv pip install --quiet --no-deps --python $(BIN)/python -e .; \
	echo ">> $(VENV) ready: $$($(BIN)/python -V)"
	@touch $@

.PHONY: lock
lock: ## Re-resolve requirements/*.txt (keeps existing pins where possible)
	@$(FIND_UV); \
	$$uv pip compile --quiet pyproject.toml --extra all --group pyproject.toml:dev \
		$(COMPILE_FLAGS) $(LOCK_ARGS) -o $(LOCK); \
	$$uv pip compile --quiet pyproject.toml \
		$(COMPILE_FLAGS) -c $(LOCK) -o $(BASE_LOCK); \
	if grep -n '://' $(LOCK) $(BASE_LOCK); then echo "lock contains URLs" >&2; exit 1; fi; \
	echo ">> $(LOCK): $$(grep -c '==' $(LOCK)) pins; $(BASE_LOCK): $$(grep -c '==' $(BASE_LOCK)) pins"

.PHONY: lock-upgrade
lock-upgrade: ## Re-resolve requirements/*.txt to the newest allowed versions
	@$(MAKE) lock LOCK_ARGS=--upgrade

# --- quality gates -----------------------------------------------------------

.PHONY: format
format: install ## Reformat code and apply safe lint fixes
	$(BIN)/ruff format $(PY_PATHS)
	$(BIN)/ruff check --fix $(PY_PATHS)

.PHONY: format-check
format-check: install ## Fail if any file needs reformatting
	$(BIN)/ruff format --check $(PY_PATHS)

.PHONY: lint
lint: install ## ruff check
	$(BIN)/ruff check $(PY_PATHS)

.PHONY: typecheck
typecheck: install ## mypy --strict over src and tests (see [tool.mypy])
	$(BIN)/mypy

.PHONY: test
test: install ## Run the test suite (without soak tests)
	$(BIN)/pytest $(PYTEST_FLAGS) -m "not soak and not ray" $(PYTEST_ARGS)

.PHONY: test-ray
test-ray: install ## Run the Ray Data tests (one local Ray runtime on 127.0.0.1; about 3 minutes)
	$(BIN)/pytest $(PYTEST_FLAGS) -m ray $(PYTEST_ARGS)

.PHONY: soak
soak: install ## Run the long-running soak tests only
	$(BIN)/pytest $(PYTEST_FLAGS) -m soak $(PYTEST_ARGS)

.PHONY: soak-kill
soak-kill: install ## Kill -9 a 20,000-item run five times, resume it, check nothing lost or paid twice
	$(BIN)/python -m tests.soak.soak_kill --store-kind both

.PHONY: ci
ci: install ## format-check, lint, typecheck, test, in that order, stopping at the first failure
	$(MAKE) format-check
	$(MAKE) lint
	$(MAKE) typecheck
	$(MAKE) test

.PHONY: check-all
check-all: ci ## Alias of ci

# --- running things ----------------------------------------------------------

.PHONY: demo
demo: install ## Offline demo: the async-batch-llm CLI on examples/demo_requests.jsonl, then a free --resume
	$(BIN)/python examples/demo.py

.PHONY: bench
bench: install ## Run every benchmark
	$(BIN)/python benchmarks/run_all.py

.PHONY: docs
docs: install ## Build the documentation site into site/ (warnings are errors)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# --- housekeeping ------------------------------------------------------------

.PHONY: clean
clean: ## Remove caches and build output (keeps .venv)
	rm -rf build dist site .mypy_cache .ruff_cache .pytest_cache .hypothesis \
		.coverage .coverage.* htmlcov $(UV_BOOTSTRAP_DIR)
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 \
		| xargs -0 rm -rf

.PHONY: distclean
distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
