"""``structkd demo`` (what ``make demo`` runs): NER distillation on the real CoNLL-2003 data, in
the setting where distillation matters most: a small labeled set and more text without labels.

On a reduced budget (the first ``train_sentences`` sentences of CoNLL-2003 English train, of which
the first ``labeled_fraction`` keep their tags and the rest are used as unlabeled text; a few
epochs), through the training API of ``structkd.api``:

1. trains the teacher (``teacher-crf``: frozen MiniLM features, cached, + GloVe + char CNN + BiLSTM
   + CRF) on the labeled sentences, or reuses the one in ``<out>/teacher`` when it was trained
   with the same options;
2. trains the student (``student-crf``: GloVe + char CNN + small BiLSTM + CRF) once per method, on
   the same seed (the same initialization): no KD (gold tags of the labeled part only), Token KD
   and structural KD (case 1a, CRF -> CRF: ``-sum_y P_t(y) log P_s(y) = -sum_u P_t(u) s(u) +
   log Z_s`` with the teacher's exact unary and pair marginals), which learn from the teacher on
   the unlabeled text as well (``T^2 * KD`` there, ``lambda * T^2 * KD + (1 - lambda) * gold`` on
   the labeled part);
3. prints a table of the models' dev and test F1 (seqeval, strict) and inference speed (sentences
   per second on dev + test, length-sorted batches, features such as MiniLM's computed on the fly,
   one thread), the gains of structural KD over no KD and Token KD and the share of the
   teacher-student gap it closes, and writes them with the settings to ``<out>/report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from structkd.distill.methods import METHODS
from structkd.structures.base import NumericalError
from structkd.train.options import DistillOptions, TrainOptions

__all__ = [
    "DemoOptions",
    "DemoResult",
    "DemoRow",
    "Gains",
    "demo_command",
    "format_table",
    "markdown_table",
    "parse_arch_overrides",
    "reusable_teacher",
    "run_demo",
    "student_options",
    "teacher_options",
]

# ---------------------------------------------------------------------------------------------
# The main job: teacher, student without KD, student with structural KD on CoNLL-2003

_RUN_ONLY_OPTIONS = frozenset({"out", "num_threads", "cache_dir", "progress"})
"""``TrainOptions`` fields that do not change the model trained (ignored when reusing a teacher)."""


@dataclass
class DemoOptions:
    """The settings of ``run_demo``; the defaults are the budget of ``make demo``.

    ``out``: the output directory (``teacher/``, ``student-<method>/``, ``report.md``,
    ``results.json``; the caches in ``cache/`` unless ``cache_dir`` is given). ``train``, ``dev``,
    ``test``: data set names or CoNLL files. ``train_sentences``: use the first N training
    sentences; ``labeled_fraction``: of which the first fraction keep their tags (the teacher's
    training data and the students' gold), the rest is unlabeled text (1: all labeled).
    ``methods``: the students, one per KD method (``none`` first: the baseline of the gains).
    ``teacher_epochs``, ``student_epochs``: epochs (the model with the best
    dev F1 is kept). ``teacher_arch``, ``student_arch``: names of ``structkd.models.ARCHITECTURES``,
    changed by ``teacher_overrides`` / ``student_overrides`` (``{"lstm_hidden": 32}``).
    ``retrain_teacher``: train the teacher even if ``out/teacher`` holds a matching one.
    ``num_threads``: torch CPU threads (1: the fastest for these models on this machine).
    """

    out: str = "runs/demo"
    train: str = "conll03-en:train"
    dev: str = "conll03-en:dev"
    test: str = "conll03-en:test"
    train_sentences: int | None = 3000
    labeled_fraction: float = 0.5
    methods: tuple[str, ...] = ("none", "token", "struct")
    teacher_epochs: int = 4
    student_epochs: int = 8
    seed: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-3
    teacher_arch: str = "teacher-crf"
    student_arch: str = "student-crf"
    teacher_overrides: dict[str, Any] = field(default_factory=dict)
    student_overrides: dict[str, Any] = field(default_factory=dict)
    retrain_teacher: bool = False
    num_threads: int = 1
    cache_dir: str | None = None
    progress: bool = False

    @property
    def cache_directory(self) -> str:
        """Where MiniLM features and teacher outputs are cached (``out/cache`` by default)."""
        return self.cache_dir if self.cache_dir else os.path.join(self.out, "cache")


@dataclass(frozen=True)
class DemoRow:
    """One model of the table. F1 in percent; ``sentences_per_second`` over dev and test
    together; ``speedup``: its speed over the teacher's; ``training_seconds``: the Trainer's fit;
    ``stage_seconds``: the wall time of its stage in this run (caches and evaluation included;
    about 0 for a reused teacher)."""

    model: str
    arch: str
    method: str
    model_dir: str
    dev_f1: float
    test_f1: float
    sentences_per_second: float
    speedup: float
    n_parameters: int
    training_seconds: float
    stage_seconds: float
    reused: bool


@dataclass(frozen=True)
class Gains:
    """Test F1 differences (points) of the structural KD student over the no-KD and Token KD
    students (``None`` when that student was not trained), and ``gap_closed``: the share of the
    teacher-student gap (teacher minus no-KD student) that structural KD closes (``None``
    without a gap)."""

    over_none: float | None
    over_token: float | None
    gap_closed: float | None

    def lines(self) -> list[str]:
        """Plain sentences saying what the numbers show (a loss is called a loss)."""
        lines = []
        for name, value in (("no KD", self.over_none), ("Token KD", self.over_token)):
            if value is not None:
                verb = "beats" if value > 0 else "does not beat"
                lines.append(f"structural KD {verb} {name} on test F1: {value:+.2f} points")
        if self.gap_closed is not None:
            lines.append(
                f"structural KD closes {100 * self.gap_closed:.0f}% of the teacher-student gap "
                "(test F1)"
            )
        return lines


@dataclass(frozen=True)
class DemoResult:
    """What ``run_demo`` produced: the rows (teacher first), the gains, the report's path, the
    wall time."""

    rows: list[DemoRow]
    gains: Gains
    report_path: Path
    results_path: Path
    seconds: float


def parse_arch_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["lstm_hidden=32", "transformer=null"]`` -> ``{"lstm_hidden": 32, "transformer": None}``
    (each value read as JSON, else kept as a string); ``ValueError`` without ``=``."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"an architecture override must be KEY=VALUE; got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def _check_demo_options(options: DemoOptions) -> None:
    for name in ("teacher_epochs", "student_epochs", "batch_size", "num_threads"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    count = options.train_sentences
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"train_sentences must be None or an integer >= 1; got {count!r}")
    fraction = options.labeled_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ValueError(f"labeled_fraction must be a number in (0, 1]; got {fraction!r}")
    for method in options.methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose among {', '.join(METHODS)}")
    if not options.methods:
        raise ValueError("methods must name at least one student")


def labeled_sentences(options: DemoOptions) -> int:
    """How many training sentences keep their tags: the teacher's training set."""
    from structkd.data.conll import labeled_count
    from structkd.tasks import get_task

    task = get_task(TrainOptions.task)
    total = task.count_sentences(options.train, max_sentences=options.train_sentences)
    return labeled_count(total, options.labeled_fraction)


def _shared_options(options: DemoOptions) -> dict[str, Any]:
    """The options every model of the demo is trained with (no early stopping)."""
    return {
        "train": options.train,
        "dev": options.dev,
        "test": options.test,
        "batch_size": options.batch_size,
        "learning_rate": options.learning_rate,
        "seed": options.seed,
        "patience": None,
        "num_threads": options.num_threads,
        "cache_dir": options.cache_directory,
        "progress": options.progress,
    }


def teacher_options(options: DemoOptions) -> TrainOptions:
    """The teacher's training options: gold tags of the labeled sentences, no early stopping."""
    return TrainOptions(
        **_shared_options(options),
        out=os.path.join(options.out, "teacher"),
        arch=options.teacher_arch,
        arch_overrides=dict(options.teacher_overrides),
        epochs=options.teacher_epochs,
        max_train_sentences=labeled_sentences(options),
        vocab_text=[options.train],  # the teacher will label the rest: its words keep GloVe vectors
    )


def student_options(options: DemoOptions, method: str, teacher_dir: str) -> DistillOptions:
    """The student's options for ``method`` (``"none"``: gold tags of the labeled part only; a KD
    method: the teacher's targets on the labeled part and the unlabeled rest too); everything
    else equal, so every student starts from the same initialization."""
    fraction = options.labeled_fraction
    return DistillOptions(
        **_shared_options(options),
        out=os.path.join(options.out, f"student-{method}"),
        arch=options.student_arch,
        arch_overrides=dict(options.student_overrides),
        epochs=options.student_epochs,
        max_train_sentences=options.train_sentences,
        teachers=[teacher_dir] if METHODS[method].uses_teacher else [],
        method=method,
        labeled_fraction=None if fraction == 1 else fraction,
    )


def reusable_teacher(train_options: Any) -> dict[str, Any] | None:
    """The ``metrics.json`` of the finished model in ``train_options.out`` if it was trained with
    the same options (all but ``out``, ``num_threads``, ``cache_dir``, ``progress``) and its model
    file loads; else ``None`` (no model, an unfinished run, other options, an unreadable file)."""
    from structkd.train.checkpoint import METRICS_FILE, read_model

    directory = Path(train_options.out)
    try:
        metrics = json.loads((directory / METRICS_FILE).read_text(encoding="utf-8"))
        read_model(directory, task=train_options.task)
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("options"), dict):
        return None
    wanted = {
        key: value
        for key, value in dataclasses.asdict(train_options).items()
        if key not in _RUN_ONLY_OPTIONS
    }
    stored = metrics["options"]
    if any(stored.get(key, object()) != value for key, value in wanted.items()):
        return None
    if not all(isinstance(metrics.get(split), dict) for split in ("dev", "test")):
        return None
    return metrics


def gains_of(rows: Sequence[DemoRow], methods: Sequence[str]) -> Gains:
    """The gains of the structural KD student (rows: the teacher, then one student per method in
    ``methods``' order)."""
    test = {method: row.test_f1 for method, row in zip(methods, rows[1:], strict=True)}
    if "struct" not in test:
        return Gains(None, None, None)
    over = {m: test["struct"] - test[m] if m in test else None for m in ("none", "token")}
    gap_closed = None
    if "none" in test and rows[0].test_f1 > test["none"]:
        gap_closed = (test["struct"] - test["none"]) / (rows[0].test_f1 - test["none"])
    return Gains(over["none"], over["token"], gap_closed)


def _row(
    model: str,
    method: str,
    metrics: dict[str, Any],
    teacher_speed: float | None,
    stage_seconds: float,
    reused: bool,
) -> DemoRow:
    """A table row from a ``metrics.json``: speed over dev and test together (the seconds of
    ``evaluate_tagger``, the same measurement for every model)."""
    dev, test = metrics["dev"], metrics["test"]
    seconds = dev["seconds"] + test["seconds"]
    sentences = dev["n_sentences"] + test["n_sentences"]
    speed = sentences / seconds if seconds > 0 else math.inf
    row = DemoRow(
        model=model,
        arch=str(metrics["arch"]),
        method=method,
        model_dir=str(metrics.get("model_dir") or metrics["options"]["out"]),
        dev_f1=100 * float(dev["f1"]),
        test_f1=100 * float(test["f1"]),
        sentences_per_second=speed,
        speedup=speed / (speed if teacher_speed is None else teacher_speed),
        n_parameters=int(metrics["n_parameters"]),
        training_seconds=float(metrics["training_seconds"]),
        stage_seconds=stage_seconds,
        reused=reused,
    )
    for name in ("dev_f1", "test_f1", "sentences_per_second", "speedup"):
        if not math.isfinite(getattr(row, name)):
            raise NumericalError(f"{model}: {name} is {getattr(row, name)} (not finite)")
    return row


_COLUMNS = (
    "model",
    "arch",
    "method",
    "dev F1",
    "test F1",
    "sentences/s",
    "speed-up",
    "parameters",
    "training s",
)


def _cells(row: DemoRow) -> list[str]:
    return [
        row.model + (" (reused)" if row.reused else ""),
        row.arch,
        row.method,
        f"{row.dev_f1:.2f}",
        f"{row.test_f1:.2f}",
        f"{row.sentences_per_second:.0f}",
        f"{row.speedup:.1f}x",
        f"{row.n_parameters:,}",
        f"{row.training_seconds:.0f}",
    ]


def format_table(rows: Sequence[DemoRow]) -> str:
    """The rows as an aligned plain-text table (text left, numbers right)."""
    cells = [list(_COLUMNS), *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    lines = []
    for line in cells:
        parts = [
            text.ljust(width) if i < 3 else text.rjust(width)
            for i, (text, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[DemoRow]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(_COLUMNS) - 3)) + "|",
    ]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def demo_command(options: DemoOptions) -> str:
    """The ``structkd demo`` command line that reproduces ``options``."""
    words = [
        "structkd",
        "demo",
        "--out",
        options.out,
        "--train-sentences",
        "all" if options.train_sentences is None else str(options.train_sentences),
        "--labeled-fraction",
        f"{options.labeled_fraction:g}",
        "--teacher-epochs",
        str(options.teacher_epochs),
        "--student-epochs",
        str(options.student_epochs),
        "--seed",
        str(options.seed),
    ]
    defaults = DemoOptions()
    for name in (
        "train",
        "dev",
        "test",
        "batch_size",
        "learning_rate",
        "teacher_arch",
        "student_arch",
        "num_threads",
        "cache_dir",
    ):
        value = getattr(options, name)
        if value != getattr(defaults, name):
            words += [f"--{name.replace('_', '-')}", str(value)]
    for flag, overrides in (
        ("--teacher-override", options.teacher_overrides),
        ("--student-override", options.student_overrides),
    ):
        for key, value in overrides.items():
            words += [flag, f"{key}={json.dumps(value)}"]
    if options.retrain_teacher:
        words.append("--retrain-teacher")
    return shlex.join(words)


def _overrides_text(overrides: dict[str, Any]) -> str:
    return f" with `{json.dumps(overrides)}`" if overrides else ""


def _train_text(options: DemoOptions) -> str:
    return "all" if options.train_sentences is None else str(options.train_sentences)


def _threads(count: int) -> str:
    return f"{count} torch thread" + ("" if count == 1 else "s")


def _report(
    options: DemoOptions,
    rows: Sequence[DemoRow],
    gains: Gains,
    command: str,
    timing: dict[str, Any],
    teacher: dict[str, Any],
) -> str:
    from structkd.experiment.provenance import hardware_info

    hardware = hardware_info()
    data = teacher.get("data", {})
    n_train = data.get("n_train_sentences", options.train_sentences)
    teacher_row = rows[0]
    reuse_note = (
        "reused from an earlier run with the same options (its training time and speed are "
        "that run's)"
        if teacher_row.reused
        else "trained by this run"
    )
    lines = [
        "# structkd demo: structural knowledge distillation for NER on CoNLL-2003",
        "",
        f"Command: `{command}`",
        "",
        markdown_table(rows),
        "",
        *(f"- {line}" for line in gains.lines()),
        "",
        "One seed: a single run shows the direction, not the noise; the results pages give "
        "means and confidence intervals over seeds.",
        "",
        "## Settings",
        "",
        f"- data: train `{options.train}` (first {_train_text(options)} sentences: the first "
        f"{n_train} labeled, the rest as text without labels), dev `{options.dev}`, test "
        f"`{options.test}`",
        f"- teacher: `{options.teacher_arch}`{_overrides_text(options.teacher_overrides)}, "
        f"{options.teacher_epochs} epochs on the labeled sentences; {reuse_note}",
        f"- students: `{options.student_arch}`{_overrides_text(options.student_overrides)}, "
        f"{options.student_epochs} epochs each, same seed (same initialization); no KD: gold "
        "tags of the labeled sentences only; Token KD and structural KD (case 1a, CRF -> CRF): "
        "`lambda * KD + (1 - lambda) * gold` on the labeled sentences (lambda linear from 1 to "
        "0), the KD term alone on the unlabeled ones, temperature 1",
        f"- batch size {options.batch_size}, learning rate {options.learning_rate}, seed "
        f"{options.seed}; the model with the best dev F1 over the epochs is kept",
        "- F1: entity-level, strict (seqeval); dev F1 is also the model-selection criterion, so "
        "test F1 is the unbiased one",
        "- sentences/s: inference over dev and test together (length-sorted batches of 64, "
        f"{_threads(options.num_threads)}, MiniLM features computed on the fly, decoding "
        "included), measured once per model at the end of its training; speed-up: over the "
        "teacher's. Other processes on the machine slow them unevenly (see the load below)",
        f"- machine: {hardware['cpu']}, {hardware['cores']} cores usable; torch "
        f"{hardware['torch']}, Python {hardware['python']}",
        f"- wall time of this run: {timing['seconds']:.0f} s (stages: "
        + ", ".join(f"{row.model} {row.stage_seconds:.0f} s" for row in rows)
        + f"); CPU time of this process {timing['cpu_seconds']:.0f} s; load average "
        f"{timing['load_start']:.1f} at the start, {timing['load_end']:.1f} at the end",
        f"- models in `{options.out}`, caches (MiniLM features, teacher marginals) in "
        f"`{options.cache_directory}`",
        "",
        "A reduced budget: the scores are below those of full training (experiments/ner.toml).",
        "",
    ]
    return "\n".join(lines)


def _load_average() -> float:
    """The 1-minute load average of the machine (``nan`` where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def run_demo(
    options: DemoOptions | None = None, *, command: str | None = None, stream: TextIO | None = None
) -> DemoResult:
    """Train (or reuse) the teacher, train the student without KD and with structural KD,
    print the table and write ``<out>/report.md`` and ``<out>/results.json``; see the module
    docstring. ``command``: the command line recorded in the report (default: the equivalent
    ``structkd demo`` command). ``stream``: where progress lines and the table go (stdout)."""
    from structkd.api import distill, train

    options = options if options is not None else DemoOptions()
    _check_demo_options(options)
    stream = stream if stream is not None else sys.stdout
    command = command if command is not None else demo_command(options)
    torch.set_num_threads(options.num_threads)
    started = time.perf_counter()
    cpu_started = time.process_time()
    load_start = _load_average()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {text}", file=stream, flush=True)

    budget = "all" if options.train_sentences is None else f"the first {options.train_sentences}"
    say(
        f"structkd demo: {budget} sentences of {options.train} ({options.labeled_fraction:g} "
        f"labeled, the rest as unlabeled text), output in {options.out}"
    )
    total = 1 + len(options.methods)
    teacher_run = teacher_options(options)
    teacher_metrics = None if options.retrain_teacher else reusable_teacher(teacher_run)
    reused = teacher_metrics is not None
    stage_started = time.perf_counter()
    if teacher_metrics is not None:
        say(f"1/{total} teacher: reusing {teacher_run.out} (trained with the same options)")
    else:
        say(
            f"1/{total} teacher: training {options.teacher_arch} for {options.teacher_epochs} "
            "epochs on the labeled sentences "
            "(MiniLM features are computed once and cached)"
        )
        teacher_metrics = train(teacher_run)
    teacher_row = _row(
        "teacher", "gold tags", teacher_metrics, None, time.perf_counter() - stage_started, reused
    )
    say(f"    teacher: dev F1 {teacher_row.dev_f1:.2f}, test F1 {teacher_row.test_f1:.2f}")

    rows = [teacher_row]
    for step, method in enumerate(options.methods, start=2):
        model = f"student, {METHODS[method].title}"
        say(
            f"{step}/{total} {model}: training {options.student_arch} for "
            f"{options.student_epochs} epochs"
        )
        stage_started = time.perf_counter()
        metrics = distill(student_options(options, method, teacher_run.out))
        stage_seconds = time.perf_counter() - stage_started
        label = "gold tags (no KD)" if method == "none" else METHODS[method].title
        row = _row(model, label, metrics, teacher_row.sentences_per_second, stage_seconds, False)
        say(f"    {model}: dev F1 {row.dev_f1:.2f}, test F1 {row.test_f1:.2f}")
        rows.append(row)
    gains = gains_of(rows, options.methods)

    seconds = time.perf_counter() - started
    timing = {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_started,
        "load_start": load_start,
        "load_end": _load_average(),
    }
    out = Path(options.out)
    report_path = out / "report.md"
    results_path = out / "results.json"
    report_path.write_text(
        _report(options, rows, gains, command, timing, teacher_metrics), encoding="utf-8"
    )
    from structkd.train.checkpoint import write_json

    write_json(
        results_path,
        {
            "command": command,
            "options": dataclasses.asdict(options),
            **timing,
            "rows": [dataclasses.asdict(row) for row in rows],
            "gains": dataclasses.asdict(gains),
        },
    )
    print(f"\n{format_table(rows)}\n", file=stream)
    for line in gains.lines():
        print(line, file=stream)
    print(
        f"F1: entity-level (seqeval, strict); sentences/s: inference on dev + test, "
        f"{_threads(options.num_threads)}. Total {seconds:.0f} s.",
        file=stream,
    )
    print(f"report written to {report_path}", file=stream, flush=True)
    return DemoResult(rows, gains, report_path, results_path, seconds)
