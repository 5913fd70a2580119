# Set-up is idempotent: .venv is created once, and the install step re-runs only
# when pyproject.toml or the constraints file change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt

.PHONY: setup demo test lint typecheck unit bench docs zoo clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/digits.py

lint: $(STAMP)
	$(BIN)/ruff check recipe_callbacks tests examples benchmarks docs
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

test: lint unit

# The documentation: the pictures of a healthy and a buggy run, then the site with warnings as errors.
docs: $(STAMP)
	$(BIN)/python docs/make_pictures.py --out docs/pictures
	$(BIN)/mkdocs build --strict --site-dir site

zoo: $(STAMP)
	$(BIN)/python -m tests.zoo.run

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py --json benchmarks/overhead.json
	$(BIN)/python benchmarks/fit_start_scaling.py --json benchmarks/fit_start_scaling.json

clean:
	rm -rf $(VENV) lightning_logs recipe_demo_logs site docs/pictures
