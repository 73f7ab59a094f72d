"""The runner of an experiment: trains the plan's runs that have not finished (one after the
other, or several at once in worker processes) and appends their result rows.

A run is finished when its ``metrics.json`` exists; a directory without one is an interrupted run
and is cleared and started again. After a run finishes, one JSON line per (case, split) is
appended to the results file, unless a line with that run id, case and split is already there, so
an interrupted experiment is resumed by running the same command again.

Each run directory holds ``run.json`` (the resolved options), ``command.sh`` (the equivalent
``structkd train``/``distill`` command), ``model/`` (the training layer's model directory) and,
once finished, ``metrics.json``.

``jobs = N`` trains N runs at once in worker processes (a student starts when its teacher has
finished); with N runs sharing the cores, set ``num_threads`` (cores / N) in ``[defaults]``:
measured here, two processes of 2 threads each on 2 cores run several times slower than two of 1.
``num_threads`` and ``progress`` are not part of the run id, so changing them keeps finished runs.

SIGINT or SIGTERM (``RunInterrupted``, ``KeyboardInterrupt``) stops the experiment: the worker
processes are stopped (SIGTERM, then SIGKILL after a grace period), the runs that were training
have no ``metrics.json`` and are trained again by the next call, finished runs and their rows are
kept, and the exception propagates (the command line turns it into exit status 130 or 143).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structkd import api
from structkd.experiment.config import ExperimentConfig
from structkd.experiment.plan import Plan, RunSpec, plan_experiment
from structkd.experiment.provenance import code_commit, hardware_info
from structkd.experiment.results import (
    METRICS_FILE,
    RUN_FILE,
    SPLITS,
    append_rows,
    check_metrics,
    read_result_keys,
    result_row,
    row_key,
    task_of,
    write_json_atomic,
)
from structkd.tasks import Task
from structkd.train.interrupts import RunInterrupted
from structkd.train.options import DistillOptions, TrainOptions

__all__ = [
    "COMMAND_FILE",
    "MODEL_DIR",
    "ExperimentOutcome",
    "RunFunction",
    "TrainingLayerRun",
    "cli_command",
    "labeled_train_sentences",
    "run_experiment",
]

COMMAND_FILE = "command.sh"
"""The equivalent ``structkd train``/``distill`` command of a run, in its run directory."""
MODEL_DIR = "model"
"""The model directory inside a run directory (``model.pt``, ``config.json``, ``metrics.json``)."""

RunFunction = Callable[[RunSpec, Path, Mapping[str, Path]], Mapping[str, Mapping[str, Any]]]
"""``run_function(run, run_dir, teacher_dirs) -> {split: metrics}``: train the model of ``run``
into ``run_dir`` (the teachers' run directories by run id) and return its metrics per split
(``"dev"``, ``"test"``), each with at least the task's ``Task.scores`` (ner: ``precision``,
``recall``, ``f1``; dep: ``uas``, ``las``; fractions in ``[0, 1]``), optionally its
``Task.optional_scores`` (dep: ``well_formed_rate``), and ``sentences_per_second``."""


def labeled_train_sentences(
    task: Task, train: str, max_sentences: int | None, fraction: float
) -> int:
    """How many sentences keep their labels under ``labeled_fraction = fraction``: the count of
    ``split_labeled_fraction`` on the first ``max_sentences`` sentences of ``train``."""
    from structkd.data.conll import labeled_count

    return labeled_count(task.count_sentences(train, max_sentences=max_sentences), fraction)


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
    """The default ``RunFunction``, through ``structkd.api`` with typed options (picklable, so
    that ``run_experiment(jobs=2)`` can send it to worker processes).

    A teacher is trained by ``api.train`` (``TrainOptions``; on the first ``labeled_count``
    sentences of train when its ``labeled_fraction`` is below 1: exactly the labeled part its
    students get), a student by ``api.distill`` (``DistillOptions``; ``method = "none"``
    included, so every student takes the same path), whose ``labeled_fraction`` is the run's
    (``None`` for 1: all of train labeled). The model goes to ``<run_dir>/model``; teacher outputs
    and transformer features are cached under ``cache_dir``, shared by every run. Progress bars
    are off unless an option turns them on. The training layer has no resumable checkpoints, so
    an interrupted run starts over.
    """

    cache_dir: Path

    def __call__(
        self, spec: RunSpec, run_dir: Path, teacher_dirs: Mapping[str, Path]
    ) -> dict[str, dict[str, Any]]:
        task = task_of(spec)
        options = dict(spec.options)
        fraction = options.pop("labeled_fraction")
        if fraction != 1 and not task.learns_from_unlabeled:
            raise ValueError(f"task {task.name!r} needs labeled_fraction 1; got {fraction!r}")
        options.setdefault("progress", False)
        options.update(out=os.fspath(run_dir / MODEL_DIR), cache_dir=os.fspath(self.cache_dir))
        if spec.kind == "teacher":
            if fraction != 1:
                options["max_train_sentences"] = labeled_train_sentences(
                    task, options["train"], options.get("max_train_sentences"), fraction
                )
        else:
            options["teachers"] = [
                os.fspath(teacher_dirs[teacher] / MODEL_DIR) for teacher in spec.teacher_ids
            ]
            options["labeled_fraction"] = None if fraction == 1 else fraction
        (run_dir / COMMAND_FILE).write_text(cli_command(spec.kind, options) + "\n")
        if spec.kind == "teacher":
            metrics = api.train(TrainOptions(**options))
        else:
            metrics = api.distill(DistillOptions(**options))
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


_WORKER = {"busy": False, "interrupted": False}
"""The state of a worker process: in a run; stopped once already."""
_STOP_GRACE_SECONDS = 10.0
"""How long stopped workers get to unwind their runs (SIGTERM) before SIGKILL."""


def _worker_signal(signum: int, frame: Any) -> None:
    """SIGTERM in a worker: an idle one exits at once; a busy one unwinds its run
    (``RunInterrupted``: scratch directories removed, no completion marker), then exits; a
    second SIGTERM exits at once."""
    if not _WORKER["busy"] or _WORKER["interrupted"]:
        os._exit(128 + signum)
    _WORKER["interrupted"] = True
    raise RunInterrupted(signum)


def _worker_setup() -> None:
    """The initializer of a worker process: SIGINT ignored (a terminal's Ctrl+C reaches every
    process of the group; the parent stops the workers), SIGTERM handled by ``_worker_signal``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_signal)


def _worker_call(
    run_function: RunFunction, run: RunSpec, run_dir: Path, teacher_dirs: Mapping[str, Path]
) -> tuple[Mapping[str, Mapping[str, Any]], float]:
    """``_timed_call`` in a worker process; an interrupted run ends the process."""
    _WORKER["busy"] = True
    try:
        return _timed_call(run_function, run, run_dir, teacher_dirs)
    except RunInterrupted as error:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(error.exit_status)
    finally:
        _WORKER["busy"] = False


def _stop_workers(processes: list[Any]) -> None:
    """SIGTERM to the live ``processes``, SIGKILL to those still alive after the grace period."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(5)


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
        write_json_atomic(run_dir / RUN_FILE, description)
        self.log(f"{self.tag(run)}: train")
        teacher_dirs = {t: self.plan.run(t).directory(self.config) for t in run.teacher_ids}
        return run_dir, teacher_dirs

    def succeeded(self, run: RunSpec, metrics: Any, seconds: float) -> None:
        checked = check_metrics(metrics, run)
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
        write_json_atomic(run.directory(self.config) / METRICS_FILE, record)
        self.outcome.trained.append(run.run_id)
        self.finished.add(run.run_id)
        metric = task_of(run).primary_metric
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
                row = result_row(run, labels, split, record)
                if row_key(row) not in self.done_keys:
                    new_rows.append(row)
                    self.done_keys.add(row_key(row))
        append_rows(self.config.results_path, new_rows)
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
    SIGINT/SIGTERM (``RunInterrupted``, ``KeyboardInterrupt``) stop the worker processes and
    propagate, leaving the experiment resumable.
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
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_setup)
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
                    future = pool.submit(_worker_call, run_function, run, run_dir, teacher_dirs)
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
        # an interrupt (or a broken pool): stop the workers now, not after their runs
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        _stop_workers(processes)
        raise
    pool.shutdown(wait=True)
    if first_error is not None:
        raise first_error
