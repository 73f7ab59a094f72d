"""``structkd experiment CONFIG``: a resumable grid of teachers and students, and its report.

Two tasks (``[experiment] task``): ``ner`` (taggers on CoNLL column files; the default) and
``dep`` (dependency parsers and sequence-labeling parsers on CoNLL-U treebanks). A grid point is
(case, method, seed, labeled fraction, temperature, temperature mode). The built-in cases are
those of DESIGN.md section 2 that a NER tagger can play:

* ``1a``: CRF teacher -> CRF student (structural KD: pairwise marginals by forward-backward);
* ``2a``: CRF teacher -> softmax student (unary marginals);
* ``3``: softmax teacher -> CRF student without BIOES constraints (products of the teacher's
  token distributions; a constrained CRF cannot represent the ill-formed sequences a softmax
  teacher puts probability on, so the KD loss would be infinite);
* ``4``: span teacher -> softmax student (BIOES marginals of the semi-Markov span distribution).

The methods: ``none`` (the student on gold tags only), ``token`` (Token KD), ``struct``
(structural KD), ``topk`` / ``topwk`` (the teacher's k best structures, uniform / weighted) and
``posterior`` (KL between token marginals). Teacher rows are reported with method ``teacher``.

**Dependency parsing** (``task = "dep"``, see ``experiments/dep.toml``) has no built-in cases: the
config's ``[cases]`` name them (``"1b-hs" = { teacher = "head-selection", student = "offset" }``),
teachers are ``parser-*`` architectures and students ``student-dep-*`` ones
(``structkd.train.dep.DEP_ARCHITECTURES``). Its methods are ``none``, ``token`` (per-word KL to the
teacher's local head and relation softmax) and ``struct`` (the teacher's tree marginals on the
student's labels), on all of the labeled trees (``labeled_fractions = [1.0]``) with a global
temperature; other methods, fractions and modes are config errors. ``arch_overrides`` name
``DepEncoderConfig`` fields (``[defaults]``: these only, as they reach every model),
``ParserConfig`` fields (teachers) or ``DepTaggerConfig`` fields (students). Its rows hold
``uas``, ``las`` and ``well_formed_rate`` (fractions in ``[0, 1]``; punctuation excluded) in
place of NER's ``precision``, ``recall`` and ``f1``.

**Teachers are shared across student seeds** by default (``teacher_seeds = "shared"``): each
teacher is trained once, with its own ``seed`` (default: the first seed of the grid), and every
student of every seed distills from that one model, as in the paper. The spread over seeds then
measures the student, not the teacher, and it saves one teacher training per extra seed (hours on
a CPU). ``teacher_seeds = "per-seed"`` trains one teacher per student seed instead. In the
semi-supervised setting (``labeled_fraction < 1``) the teacher is trained on the labeled part
only (``teacher_data = "labeled"``, the default: the unlabeled rest is then really unlabeled for
everyone); ``teacher_data = "full"`` trains it on all of train.

Each run (one model trained) gets a stable id, the hash of its resolved options (architecture,
data, every hyperparameter, seed, and its teachers' ids), and its own directory
``<output_dir>/runs/<label>-<id>``. A run is finished when its ``metrics.json`` exists; a directory
without one is an interrupted run and is cleared and started again. Runs that resolve to the same
options are trained once: the no-KD student of case 2a is the no-KD student of case 4. After a run
finishes, one JSON line per (case, split) is appended to the results file, unless a line with that
run id, case and split is already there, so an interrupted experiment is resumed by running the
same command again.

The config is TOML (see ``experiments/ner.toml``)::

    [experiment]
    name = "ner-conll03"       # required
    task = "ner"               # "ner" (default) or "dep"
    output_dir = "runs/ner"    # required; relative paths are relative to the working directory
    results = "results.jsonl"  # relative to output_dir (this is the default)
    report = "report.md"       # relative to output_dir (default); the plot is report.png
    cache_dir = "runs/cache"   # teacher outputs, MiniLM features (default <output_dir>/cache)
    teacher_seeds = "shared"   # or "per-seed"
    teacher_data = "labeled"   # or "full"

    [data]
    dataset = "conll03-en"     # the name written in the results (default: train's prefix)
    train = "conll03-en:train" # registered data set names or CoNLL files
    dev = "conll03-en:dev"
    test = "conll03-en:test"

    [defaults]                 # options of every run (training-layer option names)
    epochs = 20
    arch_overrides = {}        # TaggerConfig changes; merged key by key with the models' own

    [teachers.crf]             # a teacher: an architecture and options overriding the defaults
    arch = "teacher-crf"
    [students.crf]
    arch = "student-crf"
    [cases]                    # optional for ner: the built-in cases use teachers crf,
    "1a" = { teacher = "crf", student = "crf" }   # softmax, span and students crf, softmax,
                                                  # crf-unconstrained; required for dep

    [[grid]]                   # one or more blocks; the grid is the union of their products
    cases = ["1a", "2a"]
    methods = ["none", "token", "struct"]
    seeds = [1, 2, 3]
    labeled_fractions = [1.0]  # default [1.0]; dep: [1.0] only
    temperatures = [1.0]       # default [1.0]; not used by method "none"
    temperature_modes = ["global"]  # default ["global"]; struct only (baselines, dep: global)
    options = { k = 5 }        # optional: student options of this block only

Option names are those of ``structkd.train.commands.TrainOptions`` (defaults, teachers) and
``DistillOptions`` (students, grid options); unknown names, and the ones the runner sets itself
(``RESERVED_OPTIONS``), are errors that name the key. Each run directory holds ``run.json`` (the
resolved options), ``command.sh`` (the equivalent ``structkd train``/``distill`` command),
``model/`` (the training layer's model directory) and, once finished, ``metrics.json``.

``--jobs N`` trains N runs at once in worker processes (a student starts when its teacher has
finished); with N runs sharing the cores, set ``num_threads`` (cores / N) in ``[defaults]``:
measured here, two processes of 2 threads each on 2 cores run several times slower than two of 1.
``num_threads`` and ``progress`` are not part of the run id, so changing them keeps finished runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CASES",
    "DEP_METHODS",
    "KD_METHODS",
    "METHODS",
    "RESERVED_OPTIONS",
    "TASKS",
    "TASK_METRICS",
    "Case",
    "ConfigError",
    "ExperimentConfig",
    "ExperimentOutcome",
    "GridBlock",
    "GridPoint",
    "ModelSpec",
    "Plan",
    "RunFunction",
    "RunSpec",
    "TrainingLayerRun",
    "cli_command",
    "code_commit",
    "expand_grid",
    "hardware_info",
    "load_config",
    "parse_config",
    "plan_experiment",
    "read_result_keys",
    "run_experiment",
    "run_id_of",
]

TASKS = ("ner", "dep")
METHODS = ("none", "token", "struct", "topk", "topwk", "posterior")
"""Student training methods: no KD, Token KD, structural KD, Top-K, Top-WK, Posterior KD."""
KD_METHODS = tuple(method for method in METHODS if method != "none")
DEP_METHODS = ("none", "token", "struct")
"""The methods of ``task = "dep"`` (the training layer's ``DEP_KD_METHODS``)."""
TASK_METRICS = {"ner": ("precision", "recall", "f1"), "dep": ("uas", "las")}
"""The scores (fractions in ``[0, 1]``) a run function must return per split, by task; with
``sentences_per_second``. A dep split may also hold ``well_formed_rate`` (a fraction)."""
PRIMARY_METRIC = {"ner": "f1", "dep": "las"}
"""The score logged as each run finishes (and the one the report compares methods on)."""
TEMPERATURE_MODES = ("global", "local")
TEACHER_SEEDS = ("shared", "per-seed")
TEACHER_DATA = ("labeled", "full")
SPLITS = ("dev", "test")
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"

NOT_IN_RUN_ID = frozenset({"progress", "num_threads"})
"""Options left out of the run id: progress bars, and CPU threads (they change the speed, not the
model; the speed is measured again by every run)."""

RESERVED_OPTIONS = frozenset(
    {
        "task",
        "train",
        "dev",
        "test",
        "out",
        "arch",
        "seed",
        "teachers",
        "teacher_weights",
        "method",
        "temperature",
        "temperature_mode",
        "labeled_fraction",
        "unlabeled",
        "cache_dir",
    }
)
"""Options the runner sets itself from the grid; a config may not set them in an options table."""


class ConfigError(ValueError):
    """An experiment config is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Case:
    """A distillation scenario: which teacher and which student (names of the config's tables)."""

    name: str
    teacher: str
    student: str
    description: str = ""


CASES: dict[str, Case] = {
    "1a": Case("1a", "crf", "crf", "CRF teacher -> CRF student"),
    "2a": Case("2a", "crf", "softmax", "CRF teacher -> softmax student"),
    "3": Case("3", "softmax", "crf-unconstrained", "softmax teacher -> unconstrained CRF student"),
    "4": Case("4", "span", "softmax", "span teacher -> softmax student"),
}
"""The built-in NER cases of DESIGN.md section 2; ``teacher``/``student`` name config tables."""


@dataclass(frozen=True)
class ModelSpec:
    """A teacher or student of the config: an architecture name and its option overrides."""

    name: str
    arch: str
    options: Mapping[str, Any]
    seed: int | None = None


@dataclass(frozen=True)
class GridBlock:
    """One ``[[grid]]`` block: the product of its lists is a set of grid points."""

    cases: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    labeled_fractions: tuple[float, ...] = (1.0,)
    temperatures: tuple[float, ...] = (1.0,)
    temperature_modes: tuple[str, ...] = ("global",)
    options: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment config (see the module docstring for the TOML layout)."""

    name: str
    output_dir: Path
    results_path: Path
    report_path: Path
    dataset: str
    train: str
    dev: str
    test: str
    defaults: Mapping[str, Any]
    teachers: Mapping[str, ModelSpec]
    students: Mapping[str, ModelSpec]
    cases: Mapping[str, Case]
    grid: tuple[GridBlock, ...]
    cache_dir: Path = Path("runs/cache")
    """Where the training layer caches teacher outputs and transformer features."""
    task: str = "ner"
    teacher_seeds: str = "shared"
    teacher_data: str = "labeled"
    source: str = "<config>"

    @property
    def plot_path(self) -> Path:
        """The PNG beside the markdown report."""
        return self.report_path.with_suffix(".png")

    @property
    def runs_dir(self) -> Path:
        return self.output_dir / "runs"


@dataclass(frozen=True)
class GridPoint:
    """One student configuration of the grid (``temperature``/``temperature_mode`` are ``None``
    for method ``none``, which does not read a teacher)."""

    case: str
    method: str
    seed: int
    labeled_fraction: float
    temperature: float | None
    temperature_mode: str | None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    """One model to train: ``kind`` ``"teacher"`` or ``"student"``, its resolved ``options``
    (JSON-able; what the run id hashes), and the ids of the teachers it distills from.

    ``options`` holds ``arch``, ``arch_overrides`` (dict, may be empty), ``train``, ``dev``,
    ``test``, ``seed``, ``labeled_fraction`` and every default/override; a student's also
    ``method``, ``temperature``, ``temperature_mode``.
    """

    run_id: str
    kind: str
    label: str
    options: Mapping[str, Any]
    teacher_ids: tuple[str, ...] = ()

    def directory(self, config: ExperimentConfig) -> Path:
        return config.runs_dir / f"{self.label}-{self.run_id}"


@dataclass(frozen=True)
class Plan:
    """The runs in execution order (every teacher before its students) and, per run id, the
    labels of the result rows it produces (one row per labels and split)."""

    runs: tuple[RunSpec, ...]
    rows: Mapping[str, tuple[Mapping[str, Any], ...]]

    def run(self, run_id: str) -> RunSpec:
        for run in self.runs:
            if run.run_id == run_id:
                return run
        raise KeyError(run_id)


RunFunction = Callable[[RunSpec, Path, Mapping[str, Path]], Mapping[str, Mapping[str, Any]]]
"""``run_function(run, run_dir, teacher_dirs) -> {split: metrics}``: train the model of ``run``
into ``run_dir`` (the teachers' run directories by run id) and return its metrics per split
(``"dev"``, ``"test"``), each with at least the task's ``TASK_METRICS`` (ner: ``precision``,
``recall``, ``f1``; dep: ``uas``, ``las`` and optionally ``well_formed_rate``; fractions in
``[0, 1]``) and ``sentences_per_second``."""


# ---------------------------------------------------------------------------------------------
# The config


def _fail(source: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {problem}")


def _table(raw: Mapping[str, Any], key: str, source: str, *, required: bool) -> dict[str, Any]:
    if key not in raw:
        if required:
            raise _fail(source, key, "missing table")
        return {}
    value = raw[key]
    if not isinstance(value, dict):
        raise _fail(source, key, f"must be a table; got {type(value).__name__}")
    return value


def _string(table: Mapping[str, Any], key: str, where: str, source: str, default: str | None):
    if key not in table:
        if default is None:
            raise _fail(source, f"{where}.{key}", "missing (a string is required)")
        return default
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, f"{where}.{key}", f"must be a non-empty string; got {value!r}")
    return value


def _choice(table, key, where, source, choices: Sequence[str], default: str) -> str:
    value = _string(table, key, where, source, default)
    if value not in choices:
        raise _fail(source, f"{where}.{key}", f"must be one of {list(choices)}; got {value!r}")
    return value


def _unknown_keys(table: Mapping[str, Any], known: Iterable[str], where: str, source: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise _fail(source, where, f"unknown keys {unknown}; known: {sorted(known)}")


@functools.cache
def option_names(kind: str) -> frozenset[str]:
    """The option names a ``"teacher"`` (``TrainOptions``) or ``"student"`` (``DistillOptions``)
    run accepts, less those the runner sets (``RESERVED_OPTIONS``)."""
    from structkd.train.commands import DistillOptions, TrainOptions

    options = TrainOptions if kind == "teacher" else DistillOptions
    return frozenset(f.name for f in dataclasses.fields(options)) - RESERVED_OPTIONS


def _options(
    table: Mapping[str, Any], where: str, source: str, kind: str, task: str = "ner"
) -> dict[str, Any]:
    """Run options: JSON-able values named as fields of the training layer's options of ``kind``
    (``"teacher"``: ``TrainOptions``, ``"student"``: ``DistillOptions``, ``"both"``: fields of
    both), none of them reserved for the runner; ``arch_overrides`` name model config fields of
    ``task`` (``_arch_fields``)."""
    allowed = option_names("teacher") if kind in ("teacher", "both") else option_names("student")
    for key, value in table.items():
        if key in RESERVED_OPTIONS:
            raise _fail(
                source, f"{where}.{key}", "is set by the runner from the grid; remove it here"
            )
        if key not in allowed:
            hint = ""
            if kind != "student" and key in option_names("student"):
                hint = " (a distillation option: set it under [students.*] or a grid's options)"
            raise _fail(
                source,
                f"{where}.{key}",
                f"unknown option{hint}; known: {', '.join(sorted(allowed))}",
            )
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise _fail(source, f"{where}.{key}", f"must be JSON-able; got {value!r}") from None
        if key == "arch_overrides":
            _check_arch_overrides(value, f"{where}.{key}", source, *_arch_fields(task, kind))
    return dict(table)


def _arch_fields(task: str, kind: str) -> tuple[str, frozenset[str]]:
    """What ``arch_overrides`` may change: a description and the field names.

    ner: ``TaggerConfig`` fields. dep: the word encoder's (``DepEncoderConfig``) fields, plus
    ``ParserConfig`` fields for a teacher or ``DepTaggerConfig`` fields for a student; the
    ``[defaults]`` (``kind = "both"``), which reach every model, the encoder's only.
    """
    if task != "dep":
        from structkd.models.tagger import TaggerConfig

        return "TaggerConfig", frozenset(f.name for f in dataclasses.fields(TaggerConfig))
    from structkd.models.dep_encoder import DepEncoderConfig

    encoder = frozenset(f.name for f in dataclasses.fields(DepEncoderConfig))
    if kind == "teacher":
        from structkd.models.parser import ParserConfig

        top = {f.name for f in dataclasses.fields(ParserConfig)} - {"mode", "encoder"}
        return "ParserConfig or DepEncoderConfig", encoder | top
    if kind == "student":
        from structkd.models.dep_tagger import DepTaggerConfig

        top = {f.name for f in dataclasses.fields(DepTaggerConfig)} - {"encoder"}
        return "DepTaggerConfig or DepEncoderConfig", encoder | top
    return "DepEncoderConfig (the [defaults] reach teachers and students)", encoder


def _check_arch_overrides(
    value: Any, where: str, source: str, description: str, known: frozenset[str]
) -> None:
    if not isinstance(value, dict):
        raise _fail(source, where, f"must be a table of {description} fields; got {value!r}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise _fail(
            source, where, f"unknown {description} fields {unknown}; known: {sorted(known)}"
        )


def _nonempty_list(table, key, where, source, default=None) -> list[Any]:
    if key not in table:
        if default is None:
            raise _fail(source, f"{where}.{key}", "missing (a non-empty list is required)")
        return list(default)
    value = table[key]
    if not isinstance(value, list) or not value:
        raise _fail(source, f"{where}.{key}", f"must be a non-empty list; got {value!r}")
    if len({json.dumps(item) for item in value}) != len(value):
        raise _fail(source, f"{where}.{key}", f"has repeated values: {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _model_specs(
    raw: Mapping[str, Any], kind: str, source: str, task: str = "ner"
) -> dict[str, ModelSpec]:
    table = _table(raw, kind, source, required=True)
    if not table:
        raise _fail(source, kind, "needs at least one entry")
    specs = {}
    for name, entry in table.items():
        where = f"{kind}.{name}"
        if not isinstance(entry, dict):
            raise _fail(source, where, f"must be a table; got {type(entry).__name__}")
        arch = _string(entry, "arch", where, source, None)
        seed = entry.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise _fail(source, f"{where}.seed", f"must be an integer; got {seed!r}")
        if seed is not None and kind == "students":
            raise _fail(source, f"{where}.seed", "student seeds come from the grid's seeds")
        options = {key: value for key, value in entry.items() if key not in ("arch", "seed")}
        role = "teacher" if kind == "teachers" else "student"
        specs[name] = ModelSpec(name, arch, _options(options, where, source, role, task), seed)
    return specs


def _grid_block(
    entry: Any, index: int, cases: Mapping[str, Case], source: str, task: str = "ner"
) -> GridBlock:
    """One ``[[grid]]`` block, validated; for ``task = "dep"`` only the methods
    ``DEP_METHODS``, labeled fraction 1 and the global temperature mode."""
    where = f"grid[{index}]"
    if not isinstance(entry, dict):
        raise _fail(source, where, f"must be a table; got {type(entry).__name__}")
    known = (
        "name",
        "cases",
        "methods",
        "seeds",
        "labeled_fractions",
        "temperatures",
        "temperature_modes",
        "options",
    )
    _unknown_keys(entry, known, where, source)
    block_cases = _nonempty_list(entry, "cases", where, source)
    for case in block_cases:
        if case not in cases:
            hint = " (task 'dep' has no built-in cases: define them in [cases])" * (task == "dep")
            raise _fail(
                source, f"{where}.cases", f"unknown case {case!r}; known: {sorted(cases)}{hint}"
            )
    methods = _nonempty_list(entry, "methods", where, source)
    for method in methods:
        if method not in METHODS:
            raise _fail(
                source, f"{where}.methods", f"unknown method {method!r}; known: {list(METHODS)}"
            )
        if task == "dep" and method not in DEP_METHODS:
            raise _fail(
                source,
                f"{where}.methods",
                f"method {method!r} is not defined for task 'dep'; use {list(DEP_METHODS)}",
            )
    seeds = _nonempty_list(entry, "seeds", where, source)
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise _fail(source, f"{where}.seeds", f"seeds must be integers; got {seed!r}")
    fractions = _nonempty_list(entry, "labeled_fractions", where, source, [1.0])
    for fraction in fractions:
        if not _is_number(fraction) or not 0 < fraction <= 1:
            raise _fail(
                source,
                f"{where}.labeled_fractions",
                f"fractions must be numbers in (0, 1]; got {fraction!r}",
            )
        if task == "dep" and fraction != 1:
            raise _fail(
                source,
                f"{where}.labeled_fractions",
                f"task 'dep' distills on the labeled training trees only: use [1.0]; got "
                f"{fraction!r}",
            )
    temperatures = _nonempty_list(entry, "temperatures", where, source, [1.0])
    for temperature in temperatures:
        if not _is_number(temperature) or temperature <= 0:
            raise _fail(
                source,
                f"{where}.temperatures",
                f"temperatures must be positive numbers; got {temperature!r}",
            )
    modes = _nonempty_list(entry, "temperature_modes", where, source, ["global"])
    for mode in modes:
        if mode not in TEMPERATURE_MODES:
            raise _fail(
                source,
                f"{where}.temperature_modes",
                f"unknown mode {mode!r}; known: {list(TEMPERATURE_MODES)}",
            )
        if task == "dep" and mode != "global":
            raise _fail(
                source,
                f"{where}.temperature_modes",
                f"task 'dep' tempers globally only: use ['global']; got {mode!r}",
            )
    options = entry.get("options", {})
    if not isinstance(options, dict):
        raise _fail(source, f"{where}.options", f"must be a table; got {options!r}")
    name = entry.get("name", "")
    if not isinstance(name, str):
        raise _fail(source, f"{where}.name", f"must be a string; got {name!r}")
    return GridBlock(
        cases=tuple(block_cases),
        methods=tuple(methods),
        seeds=tuple(seeds),
        labeled_fractions=tuple(float(fraction) for fraction in fractions),
        temperatures=tuple(float(temperature) for temperature in temperatures),
        temperature_modes=tuple(modes),
        options=_options(options, f"{where}.options", source, "student", task),
        name=name,
    )


def parse_config(raw: Mapping[str, Any], *, source: str = "<config>") -> ExperimentConfig:
    """Validate a parsed TOML document; ``ConfigError`` names the file and the key at fault."""
    known_tables = ("experiment", "data", "defaults", "teachers", "students", "cases", "grid")
    _unknown_keys(raw, known_tables, "top level", source)
    experiment = _table(raw, "experiment", source, required=True)
    _unknown_keys(
        experiment,
        (
            "name",
            "task",
            "output_dir",
            "results",
            "report",
            "cache_dir",
            "teacher_seeds",
            "teacher_data",
        ),
        "experiment",
        source,
    )
    name = _string(experiment, "name", "experiment", source, None)
    task = _choice(experiment, "task", "experiment", source, TASKS, "ner")
    output_dir = Path(_string(experiment, "output_dir", "experiment", source, None))
    results_path = output_dir / _string(
        experiment, "results", "experiment", source, "results.jsonl"
    )
    report_path = output_dir / _string(experiment, "report", "experiment", source, "report.md")
    cache_dir = Path(
        _string(experiment, "cache_dir", "experiment", source, str(output_dir / "cache"))
    )
    if report_path.suffix != ".md":
        raise _fail(source, "experiment.report", f"must end with .md; got {report_path.name!r}")
    teacher_seeds = _choice(
        experiment, "teacher_seeds", "experiment", source, TEACHER_SEEDS, "shared"
    )
    teacher_data = _choice(
        experiment, "teacher_data", "experiment", source, TEACHER_DATA, "labeled"
    )

    data = _table(raw, "data", source, required=True)
    _unknown_keys(data, ("dataset", "train", "dev", "test"), "data", source)
    train = _string(data, "train", "data", source, None)
    dev = _string(data, "dev", "data", source, None)
    test = _string(data, "test", "data", source, None)
    dataset = _string(
        data, "dataset", "data", source, train.split(":")[0] if ":" in train else None
    )

    defaults_table = _table(raw, "defaults", source, required=False)
    defaults = _options(defaults_table, "defaults", source, "both", task)
    teachers = _model_specs(raw, "teachers", source, task)
    students = _model_specs(raw, "students", source, task)

    cases = dict(CASES) if task == "ner" else {}
    for case_name, entry in _table(raw, "cases", source, required=False).items():
        where = f"cases.{case_name}"
        if not isinstance(entry, dict):
            raise _fail(source, where, f"must be a table; got {type(entry).__name__}")
        _unknown_keys(entry, ("teacher", "student", "description"), where, source)
        cases[case_name] = Case(
            case_name,
            _string(entry, "teacher", where, source, None),
            _string(entry, "student", where, source, None),
            entry.get("description", ""),
        )

    blocks = raw.get("grid")
    if not isinstance(blocks, list) or not blocks:
        raise _fail(source, "grid", "needs at least one [[grid]] block")
    grid = tuple(
        _grid_block(entry, index, cases, source, task) for index, entry in enumerate(blocks)
    )
    for block_index, block in enumerate(grid):
        for case_name in block.cases:
            case = cases[case_name]
            if case.teacher not in teachers:
                raise _fail(
                    source,
                    f"grid[{block_index}].cases",
                    f"case {case_name!r} needs the teacher {case.teacher!r}, which [teachers] "
                    f"lacks (it has {sorted(teachers)})",
                )
            if case.student not in students:
                raise _fail(
                    source,
                    f"grid[{block_index}].cases",
                    f"case {case_name!r} needs the student {case.student!r}, which [students] "
                    f"lacks (it has {sorted(students)})",
                )
    return ExperimentConfig(
        name=name,
        output_dir=output_dir,
        results_path=results_path,
        report_path=report_path,
        dataset=dataset,
        train=train,
        dev=dev,
        test=test,
        defaults=defaults,
        teachers=teachers,
        students=students,
        cases=cases,
        grid=grid,
        cache_dir=cache_dir,
        task=task,
        teacher_seeds=teacher_seeds,
        teacher_data=teacher_data,
        source=source,
    )


def load_config(path: str | os.PathLike[str]) -> ExperimentConfig:
    """Read and validate the TOML experiment config at ``path``."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_config(raw, source=str(path))


# ---------------------------------------------------------------------------------------------
# The grid and the plan


def expand_grid(config: ExperimentConfig) -> list[GridPoint]:
    """Every student grid point, in order (seed outermost, so the first seed's comparison is
    complete early), without repeats (a point listed by two blocks is kept once).

    Method ``none`` has no temperature; the baselines (``token``, ``topk``, ``topwk``,
    ``posterior``) temper globally only, so a block's ``temperature_modes`` apply to ``struct``.
    """
    points: dict[str, GridPoint] = {}
    seeds = sorted({seed for block in config.grid for seed in block.seeds})
    for seed in seeds:
        for block in config.grid:
            if seed not in block.seeds:
                continue
            for fraction, case, method in itertools.product(
                block.labeled_fractions, block.cases, block.methods
            ):
                if method == "none":
                    settings = [(None, None)]
                elif method == "struct":
                    settings = list(itertools.product(block.temperatures, block.temperature_modes))
                else:  # the baselines temper globally only
                    settings = [(temperature, "global") for temperature in block.temperatures]
                for temperature, mode in settings:
                    point = GridPoint(
                        case, method, seed, fraction, temperature, mode, dict(block.options)
                    )
                    key = json.dumps(dataclasses.asdict(point), sort_keys=True)
                    points.setdefault(key, point)
    return list(points.values())


def run_id_of(kind: str, options: Mapping[str, Any], teacher_ids: Sequence[str] = ()) -> str:
    """The run's stable id: 12 hex digits of the SHA-256 of its canonical JSON description
    (options that cannot change the trained model, ``NOT_IN_RUN_ID``, left out)."""
    kept = {key: value for key, value in options.items() if key not in NOT_IN_RUN_ID}
    description = {"kind": kind, "options": kept, "teachers": list(teacher_ids)}
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def _resolved(config: ExperimentConfig, spec: ModelSpec, extra: Mapping[str, Any]) -> dict:
    """Defaults, then the model's options, then ``extra`` (the grid's); ``arch_overrides``
    tables are merged key by key in the same order."""
    layers = (config.defaults, spec.options, extra)
    options = {key: value for layer in layers for key, value in layer.items()}
    options["arch_overrides"] = {
        key: value for layer in layers for key, value in layer.get("arch_overrides", {}).items()
    }
    options.update(
        task=config.task, arch=spec.arch, train=config.train, dev=config.dev, test=config.test
    )
    return options


def _teacher_run(config: ExperimentConfig, point: GridPoint) -> RunSpec:
    case = config.cases[point.case]
    spec = config.teachers[case.teacher]
    first_seed = min(seed for block in config.grid for seed in block.seeds)
    if config.teacher_seeds == "per-seed":
        seed = point.seed
    else:
        seed = spec.seed if spec.seed is not None else first_seed
    fraction = point.labeled_fraction if config.teacher_data == "labeled" else 1.0
    options = _resolved(config, spec, {"seed": seed, "labeled_fraction": fraction})
    run_id = run_id_of("teacher", options)
    label = f"teacher-{spec.name}-s{seed}" + ("" if fraction == 1 else f"-f{fraction:g}")
    return RunSpec(run_id, "teacher", label, options)


def _student_run(config: ExperimentConfig, point: GridPoint, teacher: RunSpec) -> RunSpec:
    case = config.cases[point.case]
    spec = config.students[case.student]
    extra: dict[str, Any] = {
        "seed": point.seed,
        "labeled_fraction": point.labeled_fraction,
        "method": point.method,
        **point.options,
    }
    teacher_ids: tuple[str, ...] = ()
    if point.method != "none":
        extra.update(temperature=point.temperature, temperature_mode=point.temperature_mode)
        teacher_ids = (teacher.run_id,)
    options = _resolved(config, spec, extra)
    if point.method not in ("topk", "topwk"):
        options.pop("k", None)
    run_id = run_id_of("student", options, teacher_ids)
    label = f"student-{spec.name}-{point.method}-s{point.seed}"
    if point.method != "none":
        label = f"student-{spec.name}-{point.method}-from-{case.teacher}-s{point.seed}"
    if point.labeled_fraction != 1:
        label += f"-f{point.labeled_fraction:g}"
    return RunSpec(run_id, "student", label, options, teacher_ids)


def plan_experiment(config: ExperimentConfig) -> Plan:
    """The runs of the grid (each once, teachers first when needed) and the rows they produce.

    A student's row labels: ``case``, ``teacher`` and ``student`` (architectures), ``method``,
    ``temperature``, ``temperature_mode`` (``None`` for ``none``), ``labeled_fraction``, ``seed``.
    A teacher's: the same with ``method = "teacher"``, ``student`` = the teacher's architecture,
    one set per case that uses it.
    """
    runs: dict[str, RunSpec] = {}
    rows: dict[str, dict[str, dict[str, Any]]] = {}

    def add(run: RunSpec, labels: dict[str, Any]) -> None:
        runs.setdefault(run.run_id, run)
        rows.setdefault(run.run_id, {}).setdefault(labels["case"], labels)

    for point in expand_grid(config):
        case = config.cases[point.case]
        teacher = _teacher_run(config, point)
        teacher_arch = config.teachers[case.teacher].arch
        student = _student_run(config, point, teacher)
        common = {
            "task": config.task,
            "dataset": config.dataset,
            "experiment": config.name,
            "case": point.case,
            "teacher": teacher_arch,
            "labeled_fraction": point.labeled_fraction,
        }
        add(
            teacher,
            {
                **common,
                "student": teacher_arch,
                "method": "teacher",
                "temperature": None,
                "temperature_mode": None,
                "seed": teacher.options["seed"],
            },
        )
        add(
            student,
            {
                **common,
                "student": config.students[case.student].arch,
                "method": point.method,
                "temperature": point.temperature,
                "temperature_mode": point.temperature_mode,
                "seed": point.seed,
            },
        )
    return Plan(
        runs=tuple(runs.values()),
        rows={run_id: tuple(labels.values()) for run_id, labels in rows.items()},
    )


# ---------------------------------------------------------------------------------------------
# Provenance


def code_commit(directory: str | os.PathLike[str] | None = None) -> str:
    """``git rev-parse HEAD`` of the code (the structkd package's repository), plus ``-dirty``
    when ``git status --porcelain`` lists anything; ``"unknown"`` outside a git work tree."""
    where = Path(directory) if directory is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if head.returncode != 0:
            return "unknown"
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = head.stdout.strip()
    if not commit:
        return "unknown"
    dirty = status.returncode != 0 or bool(status.stdout.strip())
    return commit + ("-dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware_info() -> dict[str, Any]:
    """``cpu`` (model name), ``cores`` (usable by this process), ``torch`` (version) and
    ``python`` of the machine running now."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 0
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_version = "not installed"
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "torch": torch_version,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------------
# Results files


def _row_key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(row.get("run_id")), str(row.get("case")), str(row.get("split")))


def _repair_partial_line(path: Path) -> None:
    """Cut a last line left without its newline by an interrupted append (it is incomplete)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as results:
        content = results.read()
        if content.endswith(b"\n"):
            return
        results.truncate(content.rfind(b"\n") + 1)


def read_result_keys(path: str | os.PathLike[str]) -> set[tuple[str, str, str]]:
    """The ``(run_id, case, split)`` of every complete line of the results file."""
    path = Path(path)
    keys: set[tuple[str, str, str]] = set()
    if not path.exists():
        return keys
    with open(path, encoding="utf-8") as results:
        for line in results:
            if not line.endswith("\n") or not line.strip():
                continue
            try:
                keys.add(_row_key(json.loads(line)))
            except json.JSONDecodeError:
                continue
    return keys


def _append_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append ``rows`` as JSON lines in one write, flushed and synced to disk."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair_partial_line(path)
    text = "".join(json.dumps(row, sort_keys=False, allow_nan=False) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as results:
        results.write(text)
        results.flush()
        os.fsync(results.fileno())


def _write_json_atomic(path: Path, content: Mapping[str, Any]) -> None:
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _task_of(run: RunSpec) -> str:
    return str(run.options.get("task", "ner"))


def _check_metrics(metrics: Any, run: RunSpec) -> dict[str, dict[str, Any]]:
    """The run function's ``{split: metrics}``, checked: every split of ``SPLITS``, with the
    task's ``TASK_METRICS`` (finite numbers; dep's ``uas``, ``las`` and ``well_formed_rate``, if
    given, in ``[0, 1]``: a percentage is an error, not a score) and ``sentences_per_second``."""
    if not isinstance(metrics, Mapping):
        raise ValueError(f"run {run.run_id}: the run function must return a dict of splits")
    task = _task_of(run)
    checked = {}
    for split in SPLITS:
        if split not in metrics:
            raise ValueError(f"run {run.run_id}: the run function returned no {split!r} metrics")
        values = dict(metrics[split])
        for key in (*TASK_METRICS[task], "sentences_per_second"):
            if not _is_number(values.get(key)):
                raise ValueError(
                    f"run {run.run_id}: {split} metric {key!r} must be a finite number; "
                    f"got {values.get(key)!r}"
                )
        if task == "dep":
            for key in ("uas", "las", "well_formed_rate"):
                value = values.get(key)
                if key == "well_formed_rate" and value is None:
                    continue
                if not _is_number(value) or not 0 <= value <= 1:
                    raise ValueError(
                        f"run {run.run_id}: {split} metric {key!r} must be a fraction in "
                        f"[0, 1]; got {value!r}"
                    )
        checked[split] = values
    return checked


# ---------------------------------------------------------------------------------------------
# Running


COMMAND_FILE = "command.sh"
"""The equivalent ``structkd train``/``distill`` command of a run, in its run directory."""
MODEL_DIR = "model"
"""The model directory inside a run directory (``model.pt``, ``config.json``, ``metrics.json``)."""


def labeled_train_sentences(train: str, max_sentences: int | None, fraction: float) -> int:
    """How many sentences keep their tags under ``labeled_fraction = fraction``: the count of
    ``split_labeled_fraction`` on the first ``max_sentences`` sentences of ``train``."""
    from structkd.data.conll import labeled_count
    from structkd.train.data import load_labeled

    source = load_labeled(train, role="train", max_sentences=max_sentences)
    return labeled_count(len(source), fraction)


_FLAG_NAMES = {"learning_rate": "--lr", "teachers": "--teacher"}
_NO_FLAG = {"gradient_clip": 5.0, "eval_batch_size": 64}
"""Options without a command-line flag, with their defaults (a command is exact only there)."""


def cli_command(kind: str, options: Mapping[str, Any]) -> str:
    """The ``structkd train`` (teacher) or ``structkd distill`` (student) command line that
    trains with ``options`` (the resolved keyword options of ``TrainOptions``/``DistillOptions``).
    An option that has no flag and is not at its default is appended as a ``# python-only``
    comment."""
    words = ["structkd", "train" if kind == "teacher" else "distill"]
    python_only = []
    for key, value in options.items():
        if key in _NO_FLAG:
            if value != _NO_FLAG[key]:
                python_only.append(f"{key}={value!r}")
            continue
        if value is None:
            if key == "patience":
                words.append("--no-early-stopping")
            continue
        if key == "progress":
            if not value:
                words.append("--no-progress")
            continue
        flag = _FLAG_NAMES.get(key, "--" + key.replace("_", "-"))
        if key == "arch_overrides":
            for name, override in value.items():
                words += ["--arch-override", f"{name}={json.dumps(override)}"]
        elif key == "teachers":
            for teacher in value:
                words += [flag, str(teacher)]
        elif key == "teacher_weights":
            words += [flag, *(str(weight) for weight in value)]
        else:
            words += [flag, str(value)]
    command = shlex.join(words)
    if python_only:
        command += f"  # python-only: {', '.join(python_only)}"
    return command


@dataclass(frozen=True)
class TrainingLayerRun:
    """The default ``RunFunction``, through ``structkd.train.commands`` (picklable, so that
    ``run_experiment(jobs=2)`` can send it to worker processes).

    A teacher is trained by ``train`` (on the first ``labeled_count`` sentences of train when its
    ``labeled_fraction`` is below 1: exactly the labeled part its students get), a student by
    ``distill`` (``method = "none"`` included, so every student takes the same path). The model
    goes to ``<run_dir>/model``; teacher outputs and transformer features are cached under
    ``cache_dir``, shared by every run. Progress bars are off unless an option turns them on. The
    training layer has no resumable checkpoints, so an interrupted run starts over. A dep student
    gets no ``labeled_fraction`` (the grid allows 1 only; ``distill --task dep`` takes the
    default, ``None``).
    """

    cache_dir: Path

    def __call__(
        self, spec: RunSpec, run_dir: Path, teacher_dirs: Mapping[str, Path]
    ) -> dict[str, dict[str, Any]]:
        from structkd.train.commands import DistillOptions, TrainOptions, distill, train

        options = dict(spec.options)
        fraction = options.pop("labeled_fraction")
        options.setdefault("progress", False)
        options.update(out=os.fspath(run_dir / MODEL_DIR), cache_dir=os.fspath(self.cache_dir))
        if spec.kind == "teacher":
            if fraction != 1:
                options["max_train_sentences"] = labeled_train_sentences(
                    options["train"], options.get("max_train_sentences"), fraction
                )
        else:
            options["teachers"] = [
                os.fspath(teacher_dirs[teacher] / MODEL_DIR) for teacher in spec.teacher_ids
            ]
            if options.get("task") == "dep":
                if fraction != 1:
                    raise ValueError(f"task 'dep' needs labeled_fraction 1; got {fraction!r}")
            else:
                options["labeled_fraction"] = None if fraction == 1 else fraction
        (run_dir / COMMAND_FILE).write_text(cli_command(spec.kind, options) + "\n")
        if spec.kind == "teacher":
            metrics = train(TrainOptions(**options))
        else:
            metrics = distill(DistillOptions(**options))
        missing = [split for split in SPLITS if split not in metrics]
        if missing:
            raise RuntimeError(f"the training layer returned no {missing} metrics")
        return {split: dict(metrics[split]) for split in SPLITS}


def _timed_call(
    run_function: RunFunction, run: RunSpec, run_dir: Path, teacher_dirs: Mapping[str, Path]
) -> tuple[Mapping[str, Mapping[str, Any]], float]:
    """``run_function(run, run_dir, teacher_dirs)`` and its wall-clock seconds (in a worker)."""
    started = time.perf_counter()
    metrics = run_function(run, run_dir, teacher_dirs)
    return metrics, time.perf_counter() - started


@dataclass
class ExperimentOutcome:
    """What ``run_experiment`` did: run ids trained now, found finished, failed or skipped (a
    teacher failed), and how many result lines it appended."""

    trained: list[str] = field(default_factory=list)
    finished_before: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rows_appended: int = 0


class _Runner:
    """The bookkeeping of one ``run_experiment`` call: run directories, metrics files, rows."""

    def __init__(self, config: ExperimentConfig, plan: Plan, command: str, log, keep_going, jobs):
        self.config, self.plan, self.command, self.log = config, plan, command, log
        self.keep_going, self.jobs = keep_going, jobs
        self.done_keys = read_result_keys(config.results_path)
        self.outcome = ExperimentOutcome()
        self.finished: set[str] = set()
        self.unavailable: set[str] = set()
        self.position = {run.run_id: index for index, run in enumerate(plan.runs, start=1)}
        self._provenance: tuple[str, dict[str, Any]] | None = None

    def tag(self, run: RunSpec) -> str:
        return (
            f"[{self.position[run.run_id]}/{len(self.plan.runs)}] {run.directory(self.config).name}"
        )

    def provenance(self) -> tuple[str, dict[str, Any]]:
        if self._provenance is None:
            self._provenance = (code_commit(), hardware_info())
        return self._provenance

    def collect_finished(self) -> list[RunSpec]:
        """Write the missing rows of runs finished before; return the runs still to train."""
        to_train = []
        for run in self.plan.runs:
            metrics_path = run.directory(self.config) / METRICS_FILE
            if metrics_path.exists():
                record = json.loads(metrics_path.read_text(encoding="utf-8"))
                self.outcome.finished_before.append(run.run_id)
                self.finished.add(run.run_id)
                self.write_rows(run, record)
            else:
                to_train.append(run)
        return to_train

    def blocked_by(self, run: RunSpec) -> str | None:
        """The id of a failed or skipped teacher of ``run``, if any."""
        return next((t for t in run.teacher_ids if t in self.unavailable), None)

    def ready(self, run: RunSpec) -> bool:
        return all(teacher in self.finished for teacher in run.teacher_ids)

    def skip(self, run: RunSpec, teacher: str) -> None:
        self.log(f"{self.tag(run)}: skipped, its teacher {teacher} failed")
        self.outcome.skipped.append(run.run_id)
        self.unavailable.add(run.run_id)

    def prepare(self, run: RunSpec) -> tuple[Path, dict[str, Path]]:
        """Clear an interrupted run's directory, write ``run.json``; the teachers' directories."""
        run_dir = run.directory(self.config)
        if run_dir.exists():
            self.log(f"{self.tag(run)}: interrupted before; starting again")
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        self.provenance()
        description = {
            "run_id": run.run_id,
            "kind": run.kind,
            "options": dict(run.options),
            "teacher_ids": list(run.teacher_ids),
            "rows": [dict(labels) for labels in self.plan.rows[run.run_id]],
        }
        _write_json_atomic(run_dir / RUN_FILE, description)
        self.log(f"{self.tag(run)}: train")
        teacher_dirs = {t: self.plan.run(t).directory(self.config) for t in run.teacher_ids}
        return run_dir, teacher_dirs

    def succeeded(self, run: RunSpec, metrics: Any, seconds: float) -> None:
        checked = _check_metrics(metrics, run)
        commit, hardware = self.provenance()
        record = {
            "run_id": run.run_id,
            "splits": checked,
            "train_seconds": seconds,
            "commit": commit,
            "hardware": hardware,
            "jobs": self.jobs,
            "command": self.command,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_json_atomic(run.directory(self.config) / METRICS_FILE, record)
        self.outcome.trained.append(run.run_id)
        self.finished.add(run.run_id)
        metric = PRIMARY_METRIC[_task_of(run)]
        score = checked["test"][metric]
        self.log(f"{self.tag(run)}: done in {seconds:.0f} s, test {metric.upper()} {score:.4f}")
        self.write_rows(run, record)

    def failed(self, run: RunSpec, error: BaseException) -> None:
        """Record a failed run (``keep_going``); the caller re-raises otherwise."""
        message = f"{type(error).__name__}: {error}"
        (run.directory(self.config) / "error.txt").write_text(message + "\n", encoding="utf-8")
        self.log(f"{self.tag(run)}: FAILED: {message}")
        self.outcome.failed.append(run.run_id)
        self.unavailable.add(run.run_id)

    def write_rows(self, run: RunSpec, record: Mapping[str, Any]) -> None:
        new_rows = []
        for labels in self.plan.rows[run.run_id]:
            for split in SPLITS:
                row = _result_row(run, labels, split, record)
                if _row_key(row) not in self.done_keys:
                    new_rows.append(row)
                    self.done_keys.add(_row_key(row))
        _append_rows(self.config.results_path, new_rows)
        self.outcome.rows_appended += len(new_rows)


def run_experiment(
    config: ExperimentConfig,
    run_function: RunFunction | None = None,
    *,
    jobs: int = 1,
    keep_going: bool = False,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> ExperimentOutcome:
    """Train every run of the plan that has no ``metrics.json`` yet, appending result rows.

    Args:
        config: the validated config.
        run_function: trains one run (``RunFunction``); default: the training layer
            (``TrainingLayerRun(config.cache_dir)``).
        jobs: how many runs train at once, each in its own worker process (``1``: one after
            the other, in this process). A run starts once its teachers have finished. With
            ``jobs > 1`` the run function must be picklable; give each run
            ``num_threads = cores / jobs`` so the runs do not fight over cores.
        keep_going: when a run raises, record the error in its ``error.txt``, skip the runs that
            need it and go on (default: no new run starts, the running ones finish and write
            their rows, then the exception propagates).
        command: the command line recorded in the rows (default: this process's).
        log: progress messages (default: print to stderr).

    An interrupted run (a directory without ``metrics.json``) is cleared and trained again. A row
    whose ``(run_id, case, split)`` is already in the results file is not written again.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1; got {jobs!r}")
    if run_function is None:
        run_function = TrainingLayerRun(config.cache_dir)
    if log is None:

        def log(message: str) -> None:
            print(message, file=sys.stderr, flush=True)

    command = command if command is not None else shlex.join(["structkd", *sys.argv[1:]])
    config.runs_dir.mkdir(parents=True, exist_ok=True)
    runner = _Runner(config, plan_experiment(config), command, log, keep_going, jobs)
    to_train = runner.collect_finished()
    if jobs == 1:
        for run in to_train:
            teacher = runner.blocked_by(run)
            if teacher is not None:
                runner.skip(run, teacher)
                continue
            run_dir, teacher_dirs = runner.prepare(run)
            try:
                metrics, seconds = _timed_call(run_function, run, run_dir, teacher_dirs)
                runner.succeeded(run, metrics, seconds)
            except Exception as error:
                if not keep_going:
                    raise
                runner.failed(run, error)
        return runner.outcome
    _run_in_parallel(runner, to_train, run_function, jobs)
    return runner.outcome


def _run_in_parallel(
    runner: _Runner, to_train: list[RunSpec], run_function: RunFunction, jobs: int
) -> None:
    """Schedule ``to_train`` on ``jobs`` worker processes, in plan order as teachers allow."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    waiting = list(to_train)
    running: dict[Future, RunSpec] = {}
    first_error: BaseException | None = None
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        try:
            while waiting or running:
                for run in list(waiting):
                    if first_error is not None or len(running) >= jobs:
                        break
                    teacher = runner.blocked_by(run)
                    if teacher is not None:
                        runner.skip(run, teacher)
                        waiting.remove(run)
                    elif runner.ready(run):
                        run_dir, teacher_dirs = runner.prepare(run)
                        future = pool.submit(_timed_call, run_function, run, run_dir, teacher_dirs)
                        running[future] = run
                        waiting.remove(run)
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    run = running.pop(future)
                    try:
                        metrics, seconds = future.result()
                        runner.succeeded(run, metrics, seconds)
                    except Exception as error:
                        if not runner.keep_going:
                            first_error = first_error or error
                            continue
                        runner.failed(run, error)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    if first_error is not None:
        raise first_error


def _result_row(
    run: RunSpec, labels: Mapping[str, Any], split: str, record: Mapping[str, Any]
) -> dict[str, Any]:
    """One results line: ``labels``, the split's scores (ner: ``precision``, ``recall``, ``f1``
    and ``per_type``; dep: ``uas``, ``las``, ``well_formed_rate``), speed and provenance."""
    metrics = record["splits"][split]
    hardware = record.get("hardware") or {}
    if _task_of(run) == "dep":
        scores = {
            "uas": metrics["uas"],
            "las": metrics["las"],
            "well_formed_rate": metrics.get("well_formed_rate"),
        }
    else:
        scores = {
            "precision": metrics["precision"],
            "recall": metrics["recall"],
            "f1": metrics["f1"],
        }
    row = {
        **labels,
        "split": split,
        **scores,
        "sentences_per_second": metrics["sentences_per_second"],
        "commit": record.get("commit", "unknown"),
        "run_id": run.run_id,
        "kind": run.kind,
        "train_seconds": record.get("train_seconds"),
        "cpu": hardware.get("cpu"),
        "cores": hardware.get("cores"),
        "torch": hardware.get("torch"),
        "num_threads": run.options.get("num_threads"),
        "jobs": record.get("jobs", 1),
        "command": record.get("command"),
    }
    if "per_type" in metrics and _task_of(run) != "dep":
        row["per_type"] = metrics["per_type"]
    return row


# ---------------------------------------------------------------------------------------------
# The command line


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``structkd experiment`` (shared by the CLI and ``main``)."""
    parser.add_argument("config", help="the experiment's TOML file (e.g. experiments/ner.toml)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: re-render the report from the results file",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs (finished or not) and the result rows they give; train nothing",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train N runs at once, each in its own process (give each run num_threads = "
        "cores / N in the config's [defaults]); default 1",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="when a run fails, note it in its directory, skip its students and go on",
    )


def experiment_command(args: argparse.Namespace) -> int:
    """Run ``structkd experiment`` from parsed arguments; returns the exit status."""
    from structkd.train.report import write_report

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"structkd experiment: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        plan = plan_experiment(config)
        n_finished = 0
        for run in plan.runs:
            finished = (run.directory(config) / METRICS_FILE).exists()
            n_finished += finished
            cases = ", ".join(str(labels["case"]) for labels in plan.rows[run.run_id])
            state = "finished" if finished else "to run"
            print(f"{run.run_id}  {state:8}  {run.label}  (cases {cases})")
        n_teachers = sum(run.kind == "teacher" for run in plan.runs)
        print(
            f"{len(plan.runs)} runs ({n_teachers} teachers, {len(plan.runs) - n_teachers} "
            f"students): {n_finished} finished, {len(plan.runs) - n_finished} to run"
        )
        return 0
    status = 0
    if not args.report_only:
        outcome = run_experiment(config, jobs=args.jobs, keep_going=args.keep_going)
        if outcome.failed or outcome.skipped:
            status = 1
    if not config.results_path.exists():
        print(f"structkd experiment: no results yet at {config.results_path}", file=sys.stderr)
        return 1
    paths = write_report(
        config.results_path,
        config.report_path,
        plot_path=config.plot_path,
        title=config.name,
        rerender_command=shlex.join(["structkd", "experiment", args.config, "--report-only"]),
        notes=[
            "each run's own `structkd train` / `structkd distill` command: "
            f"`{os.path.relpath(config.runs_dir, config.report_path.parent)}/*/{COMMAND_FILE}`"
        ],
        run_ids={run.run_id for run in plan_experiment(config).runs},
    )
    print(f"report: {paths[0]}\nplot: {paths[1]}")
    return status
