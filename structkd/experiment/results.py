"""The results file of an experiment: JSON lines, one per (run, case, split), appended as runs
finish and read back by the report.

A row holds the run's labels (``plan_experiment``), the split, the task's scores (fractions in
``[0, 1]``: ner ``precision``, ``recall``, ``f1`` and ``per_type``; dep ``uas``, ``las`` and
``well_formed_rate``), ``sentences_per_second`` and provenance (commit, hardware, command). A line
with the same ``(run_id, case, split)`` is never written twice, so an interrupted experiment is
resumed by running it again; a last line cut short by an interrupted append is repaired before
the next append and ignored when reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from structkd.experiment.config import DEFAULT_TASK, is_number
from structkd.experiment.plan import RunSpec
from structkd.tasks import Task, get_task

__all__ = [
    "METRICS_FILE",
    "RUN_FILE",
    "SPLITS",
    "append_rows",
    "check_metrics",
    "load_results",
    "read_result_keys",
    "repair_partial_line",
    "result_row",
    "row_key",
    "task_of",
    "write_json_atomic",
]

SPLITS = ("dev", "test")
METRICS_FILE = "metrics.json"
"""A run's record once finished (its presence marks the run finished), in its run directory."""
RUN_FILE = "run.json"
"""A run's resolved options, teachers and row labels, written when it starts."""


def row_key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(run_id, case, split)``: what identifies a results line."""
    return (str(row.get("run_id")), str(row.get("case")), str(row.get("split")))


def repair_partial_line(path: Path) -> None:
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
                keys.add(row_key(json.loads(line)))
            except json.JSONDecodeError:
                continue
    return keys


def load_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a results file, each ``(run_id, case, split)`` once (the first line wins).

    A last line without its newline (an append cut short) is ignored; any other line that is not
    JSON raises ``ValueError`` naming the file and line.
    """
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    with open(path, encoding="utf-8") as results:
        lines = results.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines) and not line.endswith("\n"):
                continue
            raise ValueError(f"{path}:{number}: not a JSON line ({error})") from None
        key = row_key(row)
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return rows


def append_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append ``rows`` as JSON lines in one write, flushed and synced to disk."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_partial_line(path)
    text = "".join(json.dumps(row, sort_keys=False, allow_nan=False) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as results:
        results.write(text)
        results.flush()
        os.fsync(results.fileno())


def write_json_atomic(path: Path, content: Mapping[str, Any]) -> None:
    """Write ``content`` as indented JSON to ``path`` through a ``.partial`` file and a rename."""
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def task_of(run: RunSpec) -> Task:
    """The task plug-in of ``run`` (its ``task`` option)."""
    return get_task(str(run.options.get("task", DEFAULT_TASK)))


def check_metrics(metrics: Any, run: RunSpec) -> dict[str, dict[str, Any]]:
    """The run function's ``{split: metrics}``, checked: every split of ``SPLITS``, with the
    task's ``scores`` and ``sentences_per_second`` as finite numbers, and the task's ``scores``
    and ``optional_scores`` (these may be ``None``) in ``[0, 1]`` (a percentage is an error, not
    a score)."""
    if not isinstance(metrics, Mapping):
        raise ValueError(f"run {run.run_id}: the run function must return a dict of splits")
    task = task_of(run)
    checked = {}
    for split in SPLITS:
        if split not in metrics:
            raise ValueError(f"run {run.run_id}: the run function returned no {split!r} metrics")
        values = dict(metrics[split])
        for key in (*task.scores, "sentences_per_second"):
            if not is_number(values.get(key)):
                raise ValueError(
                    f"run {run.run_id}: {split} metric {key!r} must be a finite number; "
                    f"got {values.get(key)!r}"
                )
        for key in (*task.scores, *task.optional_scores):
            value = values.get(key)
            if key in task.optional_scores and value is None:
                continue
            if not is_number(value) or not 0 <= value <= 1:
                raise ValueError(
                    f"run {run.run_id}: {split} metric {key!r} must be a fraction in [0, 1]; "
                    f"got {value!r}"
                )
        checked[split] = values
    return checked


def result_row(
    run: RunSpec, labels: Mapping[str, Any], split: str, record: Mapping[str, Any]
) -> dict[str, Any]:
    """One results line: ``labels``, the split's scores (``Task.result_scores``: the task's
    ``scores`` and ``optional_scores``, then any further ones such as ner's ``per_type`` at the
    end of the row), speed and provenance."""
    metrics = record["splits"][split]
    hardware = record.get("hardware") or {}
    task = task_of(run)
    scores = task.result_scores(metrics)
    named = (*task.scores, *task.optional_scores)
    row = {
        **labels,
        "split": split,
        **{name: scores[name] for name in named if name in scores},
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
    row.update({name: value for name, value in scores.items() if name not in named})
    return row
