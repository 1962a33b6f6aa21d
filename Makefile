# Two entry points (README Quickstart): `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.biofed-installed

.PHONY: demo test lint types layers unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,torch,ray,tracking,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/biofed demo

test: lint types layers unit

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

types: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

# scripts/ci_deps.sh installs the Debian packages the suite needs (Chromium, kubectl…) when
# missing and run as root; otherwise it names them and goes on.
unit: $(STAMP)
	scripts/ci_deps.sh
	scripts/with_postgres.sh $(BIN)/pytest -n 2 --dist worksteal -q

bench: $(STAMP)
	$(BIN)/python benchmarks/aggregation.py
	$(BIN)/python benchmarks/round_overhead.py
	$(BIN)/python benchmarks/flamby_tcga_brca.py
	$(BIN)/python benchmarks/privacy_utility.py
	$(BIN)/python benchmarks/secagg.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis src/*.egg-info
