"""The plan of an experiment: the grid's points, the runs (models to train) they need, each run's
stable id, and the result rows each run produces.

A grid point is (case, method, seed, labeled fraction, temperature, temperature mode). Each run
(one model trained) gets a stable id, the hash of its resolved options (architecture, data, every
hyperparameter, seed, and its teachers' ids), and its own directory
``<output_dir>/runs/<label>-<id>``. Runs that resolve to the same options are trained once: the
no-KD student of case 2a is the no-KD student of case 4.

**Teachers are shared across student seeds** by default (``teacher_seeds = "shared"``): each
teacher is trained once, with its own ``seed`` (default: the first seed of the grid), and every
student of every seed distills from that one model. ``teacher_seeds = "per-seed"`` trains one
teacher per student seed instead. In the semi-supervised setting (``labeled_fraction < 1``) the
teacher is trained on the labeled part only (``teacher_data = "labeled"``, the default: the
unlabeled rest is then really unlabeled for everyone); ``teacher_data = "full"`` trains it on all
of train.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structkd.distill.methods import method as kd_method
from structkd.experiment.config import ExperimentConfig, ModelSpec
from structkd.train.options import DEFAULT_KD_SCHEDULE

__all__ = [
    "NOT_IN_RUN_ID",
    "VARIANT_OPTIONS",
    "GridPoint",
    "Plan",
    "RunSpec",
    "expand_grid",
    "plan_experiment",
    "run_id_of",
]

NOT_IN_RUN_ID = frozenset({"progress", "num_threads", "target_workers", "target_shard_size"})
VARIANT_OPTIONS: dict[str, Any] = {"kd_schedule": DEFAULT_KD_SCHEDULE, "teacher_targets": None}
"""Student options that label a KD student's rows (with their defaults, which do not): two
rows that differ in them are different table rows of a report."""
"""Options left out of the run id: progress bars, and CPU threads (they change the speed, not the
model; the speed is measured again by every run)."""


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

    ``options`` holds ``task``, ``arch``, ``arch_overrides`` (dict, may be empty), ``train``,
    ``dev``, ``test``, ``seed``, ``labeled_fraction`` and every default/override; a student's
    also ``method``, ``temperature``, ``temperature_mode``.
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


def expand_grid(config: ExperimentConfig) -> list[GridPoint]:
    """Every student grid point, in order (seed outermost, so the first seed's comparison is
    complete early), without repeats (a point listed by two blocks is kept once).

    A method that reads no teacher (``none``) has no temperature; the baselines (``token``,
    ``topk``, ``topwk``, ``posterior``) temper globally only, so a block's ``temperature_modes``
    apply to ``struct``.
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
                if not kd_method(method).uses_teacher:
                    settings = [(None, None)]
                elif kd_method(method).uses_temperature_mode:
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


def _teacher_run(config: ExperimentConfig, point: GridPoint, name: str) -> RunSpec:
    """The run of the teacher ``name`` (a ``[teachers]`` table) that ``point`` reads."""
    spec = config.teachers[name]
    first_seed = min(seed for block in config.grid for seed in block.seeds)
    if config.teacher_seeds == "per-seed":
        seed = point.seed
    else:
        seed = spec.seed if spec.seed is not None else first_seed
    fraction = point.labeled_fraction if config.teacher_data == "labeled" else 1.0
    extra: dict[str, Any] = {"seed": seed, "labeled_fraction": fraction}
    if config.unlabeled is not None:  # the teacher labels it: its words join the vocabulary
        extra["vocab_text"] = [*spec.options.get("vocab_text", []), config.unlabeled]
    options = _resolved(config, spec, extra)
    run_id = run_id_of("teacher", options)
    label = f"teacher-{spec.name}-s{seed}" + ("" if fraction == 1 else f"-f{fraction:g}")
    return RunSpec(run_id, "teacher", label, options)


def _student_run(
    config: ExperimentConfig, point: GridPoint, teachers: Sequence[RunSpec]
) -> RunSpec:
    case = config.cases[point.case]
    spec = config.students[case.student]
    extra: dict[str, Any] = {
        "seed": point.seed,
        "labeled_fraction": point.labeled_fraction,
        "method": point.method,
        **point.options,
    }
    teacher_ids: tuple[str, ...] = ()
    uses_teacher = kd_method(point.method).uses_teacher
    if uses_teacher:
        extra.update(temperature=point.temperature, temperature_mode=point.temperature_mode)
        teacher_ids = tuple(teacher.run_id for teacher in teachers)
        if config.unlabeled is not None:
            extra["unlabeled"] = config.unlabeled
    options = _resolved(config, spec, extra)
    if not kd_method(point.method).uses_k:  # k is dropped from the others' run ids
        options.pop("k", None)
    run_id = run_id_of("student", options, teacher_ids)
    label = f"student-{spec.name}-{point.method}-s{point.seed}"
    if uses_teacher:
        label = f"student-{spec.name}-{point.method}-from-{case.teacher}-s{point.seed}"
    if point.labeled_fraction != 1:
        label += f"-f{point.labeled_fraction:g}"
    return RunSpec(run_id, "student", label, options, teacher_ids)


def plan_experiment(config: ExperimentConfig) -> Plan:
    """The runs of the grid (each once, teachers first when needed) and the rows they produce.

    A student's row labels: ``task``, ``dataset``, ``experiment``, ``case``, ``teacher`` and
    ``student`` (architectures; an ensemble's teachers joined by ``+``), ``method``,
    ``temperature``, ``temperature_mode`` (``None`` for ``none``), ``labeled_fraction``,
    ``seed``, and each of ``VARIANT_OPTIONS`` (``kd_schedule``, ``teacher_targets``) that a KD
    student sets to other than its default. A teacher's: the same with ``method = "teacher"``,
    ``student`` = the teacher's architecture, one set per case that uses it (each teacher of an
    ensemble has its own rows).
    """
    runs: dict[str, RunSpec] = {}
    rows: dict[str, dict[str, dict[str, Any]]] = {}

    def add(run: RunSpec, labels: dict[str, Any]) -> None:
        runs.setdefault(run.run_id, run)
        rows.setdefault(run.run_id, {}).setdefault(labels["case"], labels)

    for point in expand_grid(config):
        case = config.cases[point.case]
        teachers = [_teacher_run(config, point, name) for name in case.teachers]
        student = _student_run(config, point, teachers)

        def common(teacher_label: str, point: GridPoint = point) -> dict[str, Any]:
            return {
                "task": config.task,
                "dataset": config.dataset,
                "experiment": config.name,
                "case": point.case,
                "teacher": teacher_label,
                "labeled_fraction": point.labeled_fraction,
            }

        for teacher in teachers:
            add(
                teacher,
                {
                    **common(teacher.options["arch"]),
                    "student": teacher.options["arch"],
                    "method": "teacher",
                    "temperature": None,
                    "temperature_mode": None,
                    "seed": teacher.options["seed"],
                },
            )
        labels = {
            **common("+".join(teacher.options["arch"] for teacher in teachers)),
            "student": config.students[case.student].arch,
            "method": point.method,
            "temperature": point.temperature,
            "temperature_mode": point.temperature_mode,
            "seed": point.seed,
        }
        if kd_method(point.method).uses_teacher:
            # rows of the default settings stay as they were
            for name, default in VARIANT_OPTIONS.items():
                value = student.options.get(name, default)
                if value != default:
                    labels[name] = value
        add(student, labels)
    return Plan(
        runs=tuple(runs.values()),
        rows={run_id: tuple(labels.values()) for run_id, labels in rows.items()},
    )
