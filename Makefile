# batchcraft: the two commands.  `make run` (the main job) and `make test`.
# Each creates .venv when missing and installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.batchcraft-installed
# The CPU wheel of torch available on the reference machine; users elsewhere get the range in pyproject.
TORCH_PIN ?= torch==2.13.0
LINT_PATHS := $(wildcard src tests examples)

.PHONY: run test install lint typecheck pytest bench clean data docs wheel

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# Real data the reproductions prefer when present (Fashion-MNIST IDX files from Debian's
# dataset-fashion-mnist); optional: without it they fall back to scikit-learn's digits.
FMNIST_DIR := /usr/share/datasets/fashion-mnist
data:
	@if [ ! -d $(FMNIST_DIR) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "note: dataset-fashion-mnist not installed; reproductions use scikit-learn digits"; fi

run: $(STAMP) data
	$(BIN)/batchcraft reproduce --quick

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/batchcraft bench all

# HTML docs and the API reference (from the docstrings) into site/; strict: warnings fail
docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict --site-dir site

# a wheel and an sdist into dist/
wheel: $(STAMP)
	$(BIN)/python -m build --outdir dist

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist site src/*.egg-info
