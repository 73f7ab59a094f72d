"""The experiment config: the TOML schema, read into typed, validated dataclasses.

The config is TOML (see ``experiments/ner.toml``)::

    [experiment]
    name = "ner-conll03"       # required
    task = "ner"               # a registered task (structkd.tasks): "ner" (default) or "dep"
    output_dir = "runs/ner"    # required; relative paths are relative to the working directory
    results = "results.jsonl"  # relative to output_dir (this is the default)
    report = "report.md"       # relative to output_dir (default); the plot is report.png
    cache_dir = "runs/cache"   # teacher outputs, MiniLM features (default <output_dir>/cache)
    teacher_seeds = "shared"   # or "per-seed"
    teacher_data = "labeled"   # or "full"

    [data]
    dataset = "conll03-en"     # the name written in the results (default: train's prefix)
    train = "conll03-en:train" # registered data set names or files of the task's format
    dev = "conll03-en:dev"
    test = "conll03-en:test"
    unlabeled = "text.txt"     # optional: text without labels the KD students also distill on
                               # (a task that learns from unlabeled text); teachers' vocabularies
                               # cover it (vocab_text)

    [defaults]                 # options of every run (training-layer option names)
    epochs = 20
    arch_overrides = {}        # model config changes; merged key by key with the models' own

    [teachers.crf]             # a teacher: an architecture and options overriding the defaults
    arch = "teacher-crf"
    [students.crf]
    arch = "student-crf"
    [cases]                    # optional where the task has built-in cases (Task.cases: ner's
    "1a" = { teacher = "crf", student = "crf" }   # use teachers crf, softmax, span and students
                                                  # crf, softmax, crf-unconstrained); required
                                                  # for a task without (dep)
    "1a-ens" = { teacher = ["crf", "crf2"], student = "crf" }   # an ensemble: the student
                                                  # distills from the mixture of the teachers

    [[grid]]                   # one or more blocks; the grid is the union of their products
    cases = ["1a", "2a"]
    methods = ["none", "token", "struct"]   # names of structkd.distill.methods.METHODS
    seeds = [1, 2, 3]
    labeled_fractions = [1.0]  # default [1.0]; below 1 only for a task that learns from unlabeled
    temperatures = [1.0]       # default [1.0]; not used by method "none"
    temperature_modes = ["global"]  # default ["global"]; struct only, and the task's modes only
    options = { k = 5 }        # optional: student options of this block only

What a task allows comes from its plug-in (``structkd.tasks.Task``): its ``kd_methods``, its
``temperature_modes``, labeled fractions below 1 only where it ``learns_from_unlabeled``, its
built-in ``cases``, and the model config fields ``arch_overrides`` may name
(``Task.override_fields``; dep: ``DepEncoderConfig`` fields in ``[defaults]``, as they reach
every model, plus ``ParserConfig`` fields for teachers and ``DepTaggerConfig`` fields for
students). Option names are those of ``structkd.train.options.TrainOptions`` (defaults, teachers)
and ``DistillOptions`` (students, grid options); unknown names, and the ones the runner sets
itself (``RESERVED_OPTIONS``), are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structkd.distill.methods import METHOD_NAMES, METHODS, TEMPERATURE_MODES
from structkd.tasks import Task, get_task, task_names
from structkd.train.options import DistillOptions, TrainOptions

__all__ = [
    "DEFAULT_TASK",
    "RESERVED_OPTIONS",
    "TEACHER_DATA",
    "TEACHER_SEEDS",
    "Case",
    "ConfigError",
    "ExperimentConfig",
    "GridBlock",
    "ModelSpec",
    "builtin_cases",
    "is_number",
    "load_config",
    "option_names",
    "parse_config",
]

DEFAULT_TASK = "ner"
"""The task of a config without ``[experiment] task``."""
TEACHER_SEEDS = ("shared", "per-seed")
TEACHER_DATA = ("labeled", "full")

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
    """A distillation scenario: which teachers and which student (names of the config's tables).

    One teacher, or an ensemble: a student of a case with several ``teachers`` distills from
    their mixture (``structkd distill --teacher A --teacher B``, equal weights)."""

    name: str
    teachers: tuple[str, ...]
    student: str
    description: str = ""

    @property
    def teacher(self) -> str:
        """The teachers' names joined by ``+`` (the one name for a single teacher)."""
        return "+".join(self.teachers)


def builtin_cases(task: Task) -> dict[str, Case]:
    """The built-in cases of ``task`` (``Task.cases``) as ``Case`` objects, by name."""
    return {
        name: Case(name, (spec.teacher,), spec.student, spec.description)
        for name, spec in task.cases.items()
    }


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
    unlabeled: str | None = None
    """Text without labels that the KD students distill on too (``DistillOptions.unlabeled``);
    the teachers' vocabularies cover it."""
    task: str = DEFAULT_TASK
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


# ---------------------------------------------------------------------------------------------
# Checks of single values


def _fail(source: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {problem}")


def is_number(value: Any) -> bool:
    """A finite ``int`` or ``float`` (not a ``bool``)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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


# ---------------------------------------------------------------------------------------------
# Run options


@functools.cache
def option_names(kind: str) -> frozenset[str]:
    """The option names a ``"teacher"`` (``TrainOptions``) or ``"student"`` (``DistillOptions``)
    run accepts, less those the runner sets (``RESERVED_OPTIONS``)."""
    options = TrainOptions if kind == "teacher" else DistillOptions
    return frozenset(f.name for f in dataclasses.fields(options)) - RESERVED_OPTIONS


def _options(
    table: Mapping[str, Any], where: str, source: str, kind: str, task: Task
) -> dict[str, Any]:
    """Run options: JSON-able values named as fields of the training layer's options of ``kind``
    (``"teacher"``: ``TrainOptions``, ``"student"``: ``DistillOptions``, ``"both"``: fields of
    both), none of them reserved for the runner; ``arch_overrides`` name model config fields of
    ``task`` (``Task.override_fields(kind)``)."""
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
            _check_arch_overrides(value, f"{where}.{key}", source, *task.override_fields(kind))
    return dict(table)


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


def _model_specs(raw: Mapping[str, Any], kind: str, source: str, task: Task) -> dict:
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


# ---------------------------------------------------------------------------------------------
# The grid


_GRID_KEYS = (
    "name",
    "cases",
    "methods",
    "seeds",
    "labeled_fractions",
    "temperatures",
    "temperature_modes",
    "options",
)


def _check_methods(methods: Sequence[Any], where: str, source: str, task: Task) -> None:
    """Names of ``structkd.distill.methods.METHODS`` that ``task`` implements."""
    for name in methods:
        if name not in METHODS:
            raise _fail(
                source, f"{where}.methods", f"unknown method {name!r}; known: {list(METHOD_NAMES)}"
            )
        if name not in task.kd_methods:
            raise _fail(
                source,
                f"{where}.methods",
                f"method {name!r} is not defined for task {task.name!r}; use "
                f"{list(task.kd_methods)}",
            )


def _check_fractions(fractions: Sequence[Any], where: str, source: str, task: Task) -> None:
    """Numbers in ``(0, 1]``; 1 only for a task that does not learn from unlabeled text."""
    for fraction in fractions:
        if not is_number(fraction) or not 0 < fraction <= 1:
            raise _fail(
                source,
                f"{where}.labeled_fractions",
                f"fractions must be numbers in (0, 1]; got {fraction!r}",
            )
        if fraction != 1 and not task.learns_from_unlabeled:
            raise _fail(
                source,
                f"{where}.labeled_fractions",
                f"task {task.name!r} distills on the labeled training data only: use [1.0]; "
                f"got {fraction!r}",
            )


def _check_temperatures(
    temperatures: Sequence[Any], modes: Sequence[Any], where: str, source: str, task: Task
) -> None:
    """Positive numbers; modes of ``TEMPERATURE_MODES`` that ``task`` implements."""
    for temperature in temperatures:
        if not is_number(temperature) or temperature <= 0:
            raise _fail(
                source,
                f"{where}.temperatures",
                f"temperatures must be positive numbers; got {temperature!r}",
            )
    for mode in modes:
        if mode not in TEMPERATURE_MODES:
            raise _fail(
                source,
                f"{where}.temperature_modes",
                f"unknown mode {mode!r}; known: {list(TEMPERATURE_MODES)}",
            )
        if mode not in task.temperature_modes:
            raise _fail(
                source,
                f"{where}.temperature_modes",
                f"task {task.name!r} supports the temperature modes "
                f"{list(task.temperature_modes)} only; got {mode!r}",
            )


def _grid_block(
    entry: Any, index: int, cases: Mapping[str, Case], source: str, task: Task
) -> GridBlock:
    """One ``[[grid]]`` block, validated against the methods, temperature modes and labeled
    fractions ``task`` allows."""
    where = f"grid[{index}]"
    if not isinstance(entry, dict):
        raise _fail(source, where, f"must be a table; got {type(entry).__name__}")
    _unknown_keys(entry, _GRID_KEYS, where, source)
    block_cases = _nonempty_list(entry, "cases", where, source)
    for case in block_cases:
        if case not in cases:
            hint = ""
            if not task.cases:
                hint = f" (task {task.name!r} has no built-in cases: define them in [cases])"
            raise _fail(
                source, f"{where}.cases", f"unknown case {case!r}; known: {sorted(cases)}{hint}"
            )
    methods = _nonempty_list(entry, "methods", where, source)
    _check_methods(methods, where, source, task)
    seeds = _nonempty_list(entry, "seeds", where, source)
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise _fail(source, f"{where}.seeds", f"seeds must be integers; got {seed!r}")
    fractions = _nonempty_list(entry, "labeled_fractions", where, source, [1.0])
    _check_fractions(fractions, where, source, task)
    temperatures = _nonempty_list(entry, "temperatures", where, source, [1.0])
    modes = _nonempty_list(entry, "temperature_modes", where, source, ["global"])
    _check_temperatures(temperatures, modes, where, source, task)
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


def _cases(raw: Mapping[str, Any], source: str, task: Task) -> dict[str, Case]:
    """The task's built-in cases, then the config's ``[cases]`` (which may replace them)."""
    cases = builtin_cases(task)
    for case_name, entry in _table(raw, "cases", source, required=False).items():
        where = f"cases.{case_name}"
        if not isinstance(entry, dict):
            raise _fail(source, where, f"must be a table; got {type(entry).__name__}")
        _unknown_keys(entry, ("teacher", "student", "description"), where, source)
        cases[case_name] = Case(
            case_name,
            _case_teachers(entry, where, source),
            _string(entry, "student", where, source, None),
            entry.get("description", ""),
        )
    return cases


def _case_teachers(entry: Mapping[str, Any], where: str, source: str) -> tuple[str, ...]:
    """A case's ``teacher``: one name, or a list of two or more distinct names (an ensemble)."""
    value = entry.get("teacher")
    if not isinstance(value, list):
        return (_string(entry, "teacher", where, source, None),)
    key = f"{where}.teacher"
    if len(value) < 2:
        raise _fail(source, key, f"an ensemble needs at least two teachers; got {value!r}")
    if not all(isinstance(name, str) and name.strip() for name in value):
        raise _fail(source, key, f"must be a list of non-empty strings; got {value!r}")
    if len(set(value)) != len(value):
        raise _fail(source, key, f"names a teacher twice: {value!r}")
    return tuple(value)


def _check_case_models(
    grid: Sequence[GridBlock],
    cases: Mapping[str, Case],
    teachers: Mapping[str, ModelSpec],
    students: Mapping[str, ModelSpec],
    source: str,
) -> None:
    """Every case of the grid names a teacher and a student the config defines."""
    for block_index, block in enumerate(grid):
        for case_name in block.cases:
            case = cases[case_name]
            for role, name, models in (
                *(("teacher", teacher, teachers) for teacher in case.teachers),
                ("student", case.student, students),
            ):
                if name not in models:
                    raise _fail(
                        source,
                        f"grid[{block_index}].cases",
                        f"case {case_name!r} needs the {role} {name!r}, which [{role}s] lacks "
                        f"(it has {sorted(models)})",
                    )


# ---------------------------------------------------------------------------------------------
# The whole config


_EXPERIMENT_KEYS = (
    "name",
    "task",
    "output_dir",
    "results",
    "report",
    "cache_dir",
    "teacher_seeds",
    "teacher_data",
)


def parse_config(raw: Mapping[str, Any], *, source: str = "<config>") -> ExperimentConfig:
    """Validate a parsed TOML document; ``ConfigError`` names the file and the key at fault."""
    known_tables = ("experiment", "data", "defaults", "teachers", "students", "cases", "grid")
    _unknown_keys(raw, known_tables, "top level", source)
    experiment = _table(raw, "experiment", source, required=True)
    _unknown_keys(experiment, _EXPERIMENT_KEYS, "experiment", source)
    name = _string(experiment, "name", "experiment", source, None)
    task_name = _choice(experiment, "task", "experiment", source, task_names(), DEFAULT_TASK)
    task = get_task(task_name)
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
    _unknown_keys(data, ("dataset", "train", "dev", "test", "unlabeled"), "data", source)
    train = _string(data, "train", "data", source, None)
    dev = _string(data, "dev", "data", source, None)
    test = _string(data, "test", "data", source, None)
    unlabeled = data.get("unlabeled")
    if unlabeled is not None:
        unlabeled = _string(data, "unlabeled", "data", source, None)
        if not get_task(task_name).learns_from_unlabeled:
            raise _fail(
                source, "data.unlabeled", f"task {task_name!r} does not learn from unlabeled text"
            )
    dataset = _string(
        data, "dataset", "data", source, train.split(":")[0] if ":" in train else None
    )

    defaults_table = _table(raw, "defaults", source, required=False)
    defaults = _options(defaults_table, "defaults", source, "both", task)
    teachers = _model_specs(raw, "teachers", source, task)
    students = _model_specs(raw, "students", source, task)
    cases = _cases(raw, source, task)

    blocks = raw.get("grid")
    if not isinstance(blocks, list) or not blocks:
        raise _fail(source, "grid", "needs at least one [[grid]] block")
    grid = tuple(
        _grid_block(entry, index, cases, source, task) for index, entry in enumerate(blocks)
    )
    _check_case_models(grid, cases, teachers, students, source)
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
        unlabeled=unlabeled,
        task=task_name,
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
