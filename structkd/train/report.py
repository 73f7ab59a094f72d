"""The report of an experiment: a markdown table (mean ± standard deviation over seeds) and a plot.

``write_report(results_path, report_path)`` reads the JSON-lines results file that ``structkd
experiment`` appends to (one line per run, case and split) and writes

* ``report.md``: one table per task and data set, rows = case x student x method (x temperature
  x labeled fraction). NER (``task = "ner"``): columns test F1 ``mean ± std (n=seeds)``, dev F1,
  test sentences/s and the test F1 difference to the no-KD student of the same case and labeled
  fraction. Dependency parsing (``task = "dep"``): test UAS ``mean ± std (n=seeds)``, test LAS,
  dev LAS, the rate of well-formed test trees before repair, test sentences/s and the test LAS
  difference to the no-KD student of the same case. Then, computed from those numbers, where
  structural KD does *not* beat no KD (and Token KD) on the task's main score (F1; LAS, with UAS
  beside it), for dep whether each teacher beats the no-KD student by at least
  ``TEACHER_MARGIN_UAS`` test UAS, the hardware, the commands and the code commits that produced
  the rows;
* ``report.png``: a grouped bar chart of the main test score (F1; LAS) per case (x labeled
  fraction) and method, with one standard deviation as error bars, one panel per task
  (matplotlib, Agg canvas, no display needed).

Scores (F1, precision, recall; UAS, LAS, well-formed rate) are stored as fractions in ``[0, 1]``
and shown in percent. The standard deviation is the sample one (``n - 1`` in the denominator);
with one seed none is shown. A results file normally holds one task; a mixed one gets a table (and
a plot panel) per task.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "METHOD_ORDER",
    "PRIMARY_SCORE",
    "TEACHER_MARGIN_UAS",
    "SplitSummary",
    "Statistic",
    "Summary",
    "findings",
    "load_results",
    "render_markdown",
    "render_plot",
    "summarize",
    "write_report",
]

METHOD_ORDER = ("teacher", "none", "token", "topk", "topwk", "posterior", "struct")
METHOD_NAMES = {
    "teacher": "teacher",
    "none": "no KD",
    "token": "Token KD",
    "topk": "Top-K KD",
    "topwk": "Top-WK KD",
    "posterior": "Posterior KD",
    "struct": "structural KD",
}
GROUP_KEYS = (
    "task",
    "dataset",
    "case",
    "teacher",
    "student",
    "method",
    "temperature",
    "temperature_mode",
    "labeled_fraction",
)
"""The fields that identify a table row; seeds are averaged within one."""

PRIMARY_SCORE = {"ner": "f1", "dep": "las"}
"""The score a task's table, findings and plot compare methods on (other tasks: ``f1``)."""
SCORES = {"ner": ("f1",), "dep": ("las", "uas", "well_formed_rate")}
"""The scores summarized per task, the primary one first (``well_formed_rate`` may be absent)."""
SCORE_NAMES = {"f1": "F1", "las": "LAS", "uas": "UAS", "well_formed_rate": "well-formed"}
TEACHER_MARGIN_UAS = 2.0
"""A dep teacher is expected to beat the no-KD student by at least this many test UAS points."""


@dataclass(frozen=True)
class Statistic:
    """A score (percent) over seeds: ``mean`` and sample ``std`` (``None`` for one value)."""

    mean: float
    std: float | None


@dataclass(frozen=True)
class SplitSummary:
    """One split of a table row: the primary score (F1 for NER, LAS for dep; percent) ``mean`` and
    sample ``std`` over ``seeds`` (``std`` is ``None`` for one seed), the mean
    ``sentences_per_second``, and every score of the task by name in ``scores`` (dep: ``las``,
    ``uas`` and, when the rows have it, ``well_formed_rate``; all in percent)."""

    mean: float
    std: float | None
    seeds: tuple[int, ...]
    sentences_per_second: float
    scores: Mapping[str, Statistic] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.seeds)

    def score(self, name: str) -> Statistic | None:
        """The ``Statistic`` of score ``name`` (``None`` when the rows lack it)."""
        return self.scores.get(name)


@dataclass(frozen=True)
class Summary:
    """A table row: the ``GROUP_KEYS`` values and a ``SplitSummary`` per split present."""

    task: str
    dataset: str
    case: str
    teacher: str
    student: str
    method: str
    temperature: float | None
    temperature_mode: str | None
    labeled_fraction: float
    splits: Mapping[str, SplitSummary]

    @property
    def setting(self) -> tuple[str, str, str, float]:
        """What methods are compared within: task, data set, case (one teacher and one student)
        and labeled fraction."""
        return (self.task, self.dataset, self.case, self.labeled_fraction)

    @property
    def models(self) -> str:
        """``teacher -> student``, or the teacher alone on a teacher row."""
        if self.method == "teacher":
            return self.teacher
        return f"{self.teacher} -> {self.student}"

    def describe(self) -> str:
        """``case 1a (teacher-crf -> student-crf, labeled fraction 0.1, T=2 local)``."""
        parts = [self.models]
        if self.labeled_fraction != 1:
            parts.append(f"labeled fraction {self.labeled_fraction:g}")
        if self.temperature is not None:
            parts.append(f"T={self.temperature:g} {self.temperature_mode}")
        return f"case {self.case} ({', '.join(parts)})"


# ---------------------------------------------------------------------------------------------
# Reading and summarizing


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
        key = (str(row.get("run_id")), str(row.get("case")), str(row.get("split")))
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return rows


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def _sort_key(summary: Summary) -> tuple:
    return (
        summary.task,
        summary.dataset,
        -summary.labeled_fraction,
        summary.case,
        _method_rank(summary.method),
        summary.method,
        summary.temperature or 0.0,
        summary.temperature_mode or "",
    )


def _scores_of(task: Any) -> tuple[str, ...]:
    return SCORES.get(str(task), SCORES["ner"])


def _statistic(values: Sequence[float]) -> Statistic:
    return Statistic(
        statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None
    )


def summarize(rows: Iterable[Mapping[str, Any]]) -> list[Summary]:
    """Group rows by ``GROUP_KEYS`` and average over seeds, per split; sorted for the table.

    A NER row needs ``f1``, a dep row ``las`` and ``uas`` (its ``well_formed_rate`` is averaged
    over the rows that have one)."""
    groups: dict[tuple, dict[str, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        needed = [name for name in _scores_of(row.get("task")) if name != "well_formed_rate"]
        missing = [key for key in (*GROUP_KEYS, "split", "seed", *needed) if key not in row]
        if missing:
            raise ValueError(f"a results row lacks {missing}: {dict(row)}")
        groups[tuple(row[key] for key in GROUP_KEYS)][row["split"]].append(row)
    summaries = []
    for key, by_split in groups.items():
        splits = {}
        for split, split_rows in by_split.items():
            seeds = [row["seed"] for row in split_rows]
            if len(set(seeds)) != len(seeds):
                runs = sorted({str(row.get("run_id")) for row in split_rows})
                raise ValueError(
                    f"rows of different runs ({', '.join(runs)}) have the same labels, split "
                    f"{split!r} and seed: {dict(zip(GROUP_KEYS, key, strict=True))}; does the "
                    "results file mix two versions of a config? (structkd experiment reports "
                    "only the runs of its config)"
                )
            scores = {}
            for name in _scores_of(key[0]):
                values = [100.0 * float(r[name]) for r in split_rows if r.get(name) is not None]
                if values:
                    scores[name] = _statistic(values)
            primary = scores[_scores_of(key[0])[0]]
            speed = [float(row.get("sentences_per_second") or 0.0) for row in split_rows]
            splits[split] = SplitSummary(
                mean=primary.mean,
                std=primary.std,
                seeds=tuple(sorted(seeds)),
                sentences_per_second=statistics.fmean(speed),
                scores=scores,
            )
        summaries.append(Summary(**dict(zip(GROUP_KEYS, key, strict=True)), splits=splits))
    return sorted(summaries, key=_sort_key)


def _baseline(summaries: Sequence[Summary], summary: Summary, method: str) -> Summary | None:
    """The ``method`` row of ``summary``'s setting; at the same temperature if there is one."""
    candidates = [s for s in summaries if s.method == method and s.setting == summary.setting]
    for candidate in candidates:
        if candidate.temperature == summary.temperature:
            return candidate
    return candidates[0] if candidates else None


def _test_delta(summaries: Sequence[Summary], summary: Summary) -> float | None:
    baseline = _baseline(summaries, summary, "none")
    if baseline is None or "test" not in baseline.splits or "test" not in summary.splits:
        return None
    return summary.splits["test"].mean - baseline.splits["test"].mean


# ---------------------------------------------------------------------------------------------
# Findings


def _score(split: SplitSummary) -> str:
    return _statistic_text(Statistic(split.mean, split.std))


def _statistic_text(statistic: Statistic) -> str:
    """``mean ± std`` with two decimals (the mean alone for one seed)."""
    spread = "" if statistic.std is None else f" ± {statistic.std:.2f}"
    return f"{statistic.mean:.2f}{spread}"


def findings(summaries: Sequence[Summary]) -> list[str]:
    """Plain sentences comparing structural KD with no KD and with Token KD on the main test score
    (NER: F1; dep: LAS, with the UAS comparison beside it), and for dep whether each teacher beats
    the no-KD student by at least ``TEACHER_MARGIN_UAS`` test UAS.

    For every structural-KD row with a no-KD row of the same setting: "does not beat no KD" when
    its mean test score is not higher; "beats no KD by only ..." when higher by less than the
    larger of the two standard deviations over seeds; else "beats no KD by ...". The same for
    Token KD. With several tasks, the sentences of each task in turn.
    """
    tasks = list(dict.fromkeys(summary.task for summary in summaries))
    if len(tasks) <= 1:
        return _task_findings(summaries, tasks[0] if tasks else "ner", task_word="")
    sentences = []
    for task in tasks:
        of_task = [summary for summary in summaries if summary.task == task]
        sentences += _task_findings(of_task, task, task_word=f"{task} ")
    return sentences


def _task_findings(summaries: Sequence[Summary], task: str, task_word: str) -> list[str]:
    """``findings`` for the rows of one task; ``task_word`` (``"dep "``, or ``""`` when the
    report has one task) qualifies the summary sentences."""
    primary = PRIMARY_SCORE.get(task, "f1")
    score_name = SCORE_NAMES[primary]
    sentences = []
    beaten_everywhere = True
    compared = 0
    for summary in summaries:
        if summary.method != "struct" or "test" not in summary.splits:
            continue
        for method in ("none", "token"):
            baseline = _baseline(summaries, summary, method)
            if baseline is None or "test" not in baseline.splits:
                if method == "none":
                    sentences.append(
                        f"Structural KD in {summary.describe()} has no no-KD student to compare "
                        "with."
                    )
                continue
            name = METHOD_NAMES[method]
            ours, theirs = summary.splits["test"], baseline.splits["test"]
            delta = ours.mean - theirs.mean
            numbers = (
                f"test {score_name} {_score(ours)} (n={ours.n}) vs {_score(theirs)} "
                f"(n={theirs.n}) with {name}, Δ {delta:+.2f}"
            )
            uas_clause = ""
            if task == "dep":
                numbers, uas_clause = _with_uas(numbers, ours, theirs, delta, name)
            noise = max(ours.std or 0.0, theirs.std or 0.0)
            if method == "none":
                compared += 1
            if delta <= 0:
                if method == "none":
                    beaten_everywhere = False
                sentences.append(
                    f"**Structural KD does not beat {name}** in {summary.describe()}: {numbers}."
                    + uas_clause
                )
            elif delta < noise:
                sentences.append(
                    f"Structural KD beats {name} in {summary.describe()} by only {delta:.2f} "
                    f"{score_name}, less than one standard deviation over seeds ({numbers}): "
                    "not a reliable gain." + uas_clause
                )
            else:
                sentences.append(
                    f"Structural KD beats {name} in {summary.describe()}: {numbers}." + uas_clause
                )
    if compared and beaten_everywhere:
        sentences.insert(
            0,
            f"Structural KD has a higher mean test {score_name} than no KD in every "
            f"{task_word}setting measured here.",
        )
    if not compared:
        sentences.append(
            f"No {task_word}structural-KD student has a no-KD student to compare with yet."
        )
    if task == "dep":
        sentences += teacher_checks(summaries)
    return sentences


def _with_uas(
    numbers: str, ours: SplitSummary, theirs: SplitSummary, las_delta: float, name: str
) -> tuple[str, str]:
    """``numbers`` with the test UAS comparison appended, and a sentence when UAS disagrees with
    LAS on whether structural KD beats ``name`` (``""`` when it agrees or UAS is missing)."""
    ours_uas, theirs_uas = ours.score("uas"), theirs.score("uas")
    if ours_uas is None or theirs_uas is None:
        return numbers, ""
    uas_delta = ours_uas.mean - theirs_uas.mean
    numbers += (
        f"; test UAS {_statistic_text(ours_uas)} vs {_statistic_text(theirs_uas)}, "
        f"Δ {uas_delta:+.2f}"
    )
    if (uas_delta > 0) == (las_delta > 0):
        return numbers, ""
    verdict = "beats" if uas_delta > 0 else "does not beat"
    return numbers, f" On test UAS it {verdict} {name}."


def teacher_checks(summaries: Sequence[Summary]) -> list[str]:
    """For every dep teacher row with test scores: does the teacher beat the no-KD student of its
    case by at least ``TEACHER_MARGIN_UAS`` test UAS points (the margin a teacher worth distilling
    is expected to have)?"""
    sentences = []
    for summary in summaries:
        if summary.task != "dep" or summary.method != "teacher" or "test" not in summary.splits:
            continue
        where = f"case {summary.case}"
        baseline = _baseline(summaries, summary, "none")
        teacher_uas = summary.splits["test"].score("uas")
        if baseline is None or "test" not in baseline.splits or teacher_uas is None:
            sentences.append(
                f"Teacher {summary.teacher} ({where}) has no no-KD student to compare with."
            )
            continue
        student_uas = baseline.splits["test"].score("uas")
        if student_uas is None:
            continue
        delta = teacher_uas.mean - student_uas.mean
        numbers = (
            f"test UAS {_statistic_text(teacher_uas)} (n={summary.splits['test'].n}) vs "
            f"{_statistic_text(student_uas)} (n={baseline.splits['test'].n}) for the no-KD "
            f"{baseline.student}, Δ {delta:+.2f}"
        )
        margin = f"{TEACHER_MARGIN_UAS:g}"
        if delta >= TEACHER_MARGIN_UAS - 1e-9:
            sentences.append(
                f"Teacher {summary.teacher} beats the no-KD student by at least {margin} UAS in "
                f"{where}: {numbers}."
            )
        else:
            sentences.append(
                f"**Teacher {summary.teacher} does not beat the no-KD student by {margin} UAS** "
                f"in {where}: {numbers}."
            )
    return sentences


# ---------------------------------------------------------------------------------------------
# Markdown


def _fraction_text(fraction: float) -> str:
    return "all" if fraction == 1 else f"{fraction:g}"


def _temperature_text(summary: Summary) -> str:
    if summary.temperature is None:
        return "-"
    return f"{summary.temperature:g} {summary.temperature_mode}"


def _split_cell(summary: Summary, split: str, *, with_n: bool) -> str:
    if split not in summary.splits:
        return "-"
    stats = summary.splits[split]
    return _score(stats) + (f" (n={stats.n})" if with_n else "")


def _table(summaries: Sequence[Summary]) -> list[str]:
    lines = [
        "| case | teacher -> student | method | T | labeled | test F1 | dev F1 | "
        "test sentences/s | Δ test F1 vs no KD |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in summaries:
        delta = _test_delta(summaries, summary)
        speed = summary.splits.get("test")
        lines.append(
            "| "
            + " | ".join(
                [
                    summary.case,
                    summary.models,
                    METHOD_NAMES.get(summary.method, summary.method),
                    _temperature_text(summary),
                    _fraction_text(summary.labeled_fraction),
                    _split_cell(summary, "test", with_n=True),
                    _split_cell(summary, "dev", with_n=False),
                    "-" if speed is None else f"{speed.sentences_per_second:,.0f}",
                    "-" if delta is None or summary.method == "none" else f"{delta:+.2f}",
                ]
            )
            + " |"
        )
    return lines


def _score_cell(summary: Summary, split: str, name: str, *, with_n: bool) -> str:
    """``mean ± std`` of score ``name`` on ``split`` (with ``(n=seeds)``), or ``-``."""
    stats = summary.splits.get(split)
    statistic = None if stats is None else stats.score(name)
    if statistic is None:
        return "-"
    return _statistic_text(statistic) + (f" (n={stats.n})" if with_n else "")


def _dep_table(summaries: Sequence[Summary]) -> list[str]:
    """The dependency-parsing table: test UAS (n), test LAS, dev LAS, the well-formed rate of the
    test trees before repair, test speed, Δ test LAS vs the no-KD student of the case."""
    lines = [
        "| case | teacher -> student | method | T | test UAS | test LAS | dev LAS | "
        "well-formed % (test) | test sentences/s | Δ test LAS vs no KD |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in summaries:
        delta = _test_delta(summaries, summary)
        speed = summary.splits.get("test")
        well_formed = None if speed is None else speed.score("well_formed_rate")
        lines.append(
            "| "
            + " | ".join(
                [
                    summary.case,
                    summary.models,
                    METHOD_NAMES.get(summary.method, summary.method),
                    _temperature_text(summary),
                    _score_cell(summary, "test", "uas", with_n=True),
                    _score_cell(summary, "test", "las", with_n=False),
                    _score_cell(summary, "dev", "las", with_n=False),
                    "-" if well_formed is None else f"{well_formed.mean:.1f}",
                    "-" if speed is None else f"{speed.sentences_per_second:,.0f}",
                    "-" if delta is None or summary.method == "none" else f"{delta:+.2f}",
                ]
            )
            + " |"
        )
    return lines


def _hardware_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    from structkd.train.experiment import hardware_info

    runs: dict[tuple, set[str]] = defaultdict(set)
    for row in rows:
        key = (
            row.get("cpu") or "unknown CPU",
            row.get("cores"),
            row.get("torch") or "unknown",
            row.get("num_threads"),
            row.get("jobs"),
        )
        runs[key].add(str(row.get("run_id")))
    lines = []
    for (cpu, cores, torch, threads, jobs), run_ids in sorted(runs.items(), key=str):
        setting = []
        if threads is not None:
            setting.append(f"{threads} torch thread(s) per run")
        if jobs is not None:
            setting.append(f"{jobs} run(s) at a time")
        detail = f" ({', '.join(setting)})" if setting else ""
        lines.append(
            f"- {cpu}, {cores if cores is not None else '?'} cores, torch {torch}{detail}: "
            f"{len(run_ids)} run(s)"
        )
    here = hardware_info()
    lines.append(
        f"- (report rendered on {here['cpu']}, {here['cores']} cores, torch {here['torch']}, "
        f"Python {here['python']})"
    )
    return lines


def _time_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    seconds: dict[str, dict[str, float]] = defaultdict(dict)
    for row in rows:
        if isinstance(row.get("train_seconds"), int | float):
            kind = row.get("kind") or ("teacher" if row.get("method") == "teacher" else "student")
            seconds[kind][str(row.get("run_id"))] = float(row["train_seconds"])
    if not seconds:
        return []
    parts = [
        f"{len(by_run)} {kind} run(s), {_duration(sum(by_run.values()))}"
        for kind, by_run in sorted(seconds.items())
    ]
    total = sum(sum(by_run.values()) for by_run in seconds.values())
    return [
        f"Time to train and evaluate (sum over runs): {'; '.join(parts)}; total {_duration(total)}."
    ]


def _duration(seconds: float) -> str:
    """``42 s``, ``12.5 min`` or ``3.25 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


_NER_INTRO = (
    "Test and dev F1 in percent: mean ± sample standard deviation over seeds (n = number of "
    "seeds). Δ: mean test F1 minus that of the no-KD student of the same case and labeled "
    "fraction. Speed: test sentences per second at inference."
)
_DEP_INTRO = (
    "Dependency parsing: test UAS, test LAS and dev LAS in percent (punctuation excluded): mean "
    "± sample standard deviation over seeds (n = number of seeds). Well-formed: the percentage of "
    "test sentences whose predicted labels form a tree before repair (the parsers decode trees: "
    "100). Δ: mean test LAS minus that of the no-KD student of the same case. Speed: test "
    "sentences per second at inference."
)
"""The paragraphs under the title that say what a task's table shows (in the order of tables)."""


def render_markdown(
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str = "experiment",
    plot_name: str | None = None,
    rerender_command: str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The markdown report of ``rows`` (see the module docstring); ``notes`` are added as list
    items after the commands."""
    summaries = summarize(rows)
    tasks = list(dict.fromkeys(summary.task for summary in summaries))
    lines = [f"# {title}", ""]
    paragraphs = [_DEP_INTRO if task == "dep" else _NER_INTRO for task in tasks or ["ner"]]
    lines.append("\n\n".join(dict.fromkeys(paragraphs)))
    tables: dict[tuple[str, str], list[Summary]] = defaultdict(list)
    for summary in summaries:
        tables[(summary.task, summary.dataset)].append(summary)
    for (task, dataset), table_summaries in tables.items():
        table = _dep_table if task == "dep" else _table
        lines += ["", f"## {task}: {dataset}", "", *table(table_summaries)]
    if plot_name is not None:
        lines += ["", f"![{_plot_subject(tasks)} per case and method]({plot_name})"]
    lines += ["", "## Where structural KD does and does not help", ""]
    lines += [f"- {sentence}" for sentence in findings(summaries)]
    lines += ["", "## Provenance", "", "Hardware:", "", *_hardware_lines(rows)]
    time_lines = _time_lines(rows)
    if time_lines:
        lines += ["", *time_lines]
    commands = Counter(str(row.get("command")) for row in rows if row.get("command"))
    lines += ["", "Commands that produced the rows:", ""]
    lines += [f"- `{command}`" for command in sorted(commands)] or ["- (not recorded)"]
    if rerender_command:
        lines.append(f"- this report: `{rerender_command}`")
    lines += [f"- {note}" for note in notes]
    commits: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        commits[str(row.get("commit", "unknown"))].add(str(row.get("run_id")))
    lines += ["", "Code commits (`-dirty`: uncommitted changes at run time):", ""]
    lines += [f"- `{commit}`: {len(run_ids)} run(s)" for commit, run_ids in sorted(commits.items())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The plot


def _plot_subject(tasks: Sequence[str]) -> str:
    """``test F1`` (ner), ``test LAS`` (dep), or both with their tasks."""
    names = [f"test {SCORE_NAMES[PRIMARY_SCORE.get(task, 'f1')]}" for task in tasks]
    if len(names) <= 1:
        return names[0] if names else "test F1"
    return " and ".join(f"{name} ({task})" for name, task in zip(names, tasks, strict=True))


def _series_label(summary: Summary) -> str:
    label = METHOD_NAMES.get(summary.method, summary.method)
    if summary.temperature is not None and (
        summary.temperature != 1 or summary.temperature_mode != "global"
    ):
        label += f" (T={summary.temperature:g} {summary.temperature_mode})"
    return label


def _group_label(summary: Summary, several_datasets: bool) -> str:
    label = f"case {summary.case}"
    if summary.labeled_fraction != 1:
        label += f"\n{summary.labeled_fraction:g} labeled"
    if several_datasets:
        label = f"{summary.task} {summary.dataset}\n{label}"
    return label


def render_plot(summaries: Sequence[Summary], path: str | os.PathLike[str]) -> Path:
    """A grouped bar chart of the mean main test score (percent; NER: F1, dep: LAS) per case x
    labeled fraction (groups) and method (bars), one sample standard deviation as error bars, one
    panel per task; written as PNG to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with_test = [summary for summary in summaries if "test" in summary.splits]
    tasks = list(dict.fromkeys(summary.task for summary in with_test)) or ["ner"]
    panels = [[summary for summary in with_test if summary.task == task] for task in tasks]
    several_datasets = [len({(s.task, s.dataset) for s in panel}) > 1 for panel in panels]
    n_groups = max(
        len({_group_label(summary, several) for summary in panel})
        for panel, several in zip(panels, several_datasets, strict=True)
    )
    figure = Figure(figsize=(max(6.0, 1.6 * n_groups + 2.0) + 2.0, 4.5 * len(tasks)))
    FigureCanvasAgg(figure)
    for index, (task, panel) in enumerate(zip(tasks, panels, strict=True)):
        axes = figure.add_subplot(len(tasks), 1, index + 1)
        _draw_bars(axes, panel, several_datasets[index], SCORE_NAMES[PRIMARY_SCORE.get(task, "f1")])
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    return path


def _draw_bars(axes: Any, with_test: Sequence[Summary], several_datasets: bool, score: str) -> None:
    """One panel of ``render_plot``: the ``score`` bars of ``with_test`` (rows with test)."""
    groups: list[str] = []
    series: list[str] = []
    for summary in with_test:
        group = _group_label(summary, several_datasets)
        if group not in groups:
            groups.append(group)
        name = _series_label(summary)
        if name not in series:
            series.append(name)
    series.sort(
        key=lambda name: next(_method_rank(s.method) for s in with_test if _series_label(s) == name)
    )
    width = 0.8 / max(1, len(series))
    lowest = math.inf
    for index, name in enumerate(series):
        positions, heights, errors = [], [], []
        for summary in with_test:
            if _series_label(summary) != name:
                continue
            stats = summary.splits["test"]
            group_index = groups.index(_group_label(summary, several_datasets))
            positions.append(group_index - 0.4 + width * (index + 0.5))
            heights.append(stats.mean)
            errors.append(stats.std or 0.0)
            lowest = min(lowest, stats.mean - (stats.std or 0.0))
        axes.bar(positions, heights, width, yerr=errors, capsize=3, label=name)
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylabel(f"test {score} (%)")
    if math.isfinite(lowest):
        axes.set_ylim(bottom=max(0.0, math.floor(lowest - 5)), top=100.0)
    axes.set_title(f"Test {score} per case and method (mean ± std over seeds)")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(axis="y", alpha=0.3)


# ---------------------------------------------------------------------------------------------
# Both


def write_report(
    results_path: str | os.PathLike[str],
    report_path: str | os.PathLike[str],
    *,
    plot_path: str | os.PathLike[str] | None = None,
    title: str = "experiment",
    rerender_command: str | None = None,
    notes: Sequence[str] = (),
    run_ids: Container[str] | None = None,
) -> tuple[Path, Path]:
    """Render the markdown report and the PNG plot from a results file; returns both paths
    (the plot defaults to the report's path with ``.png``). With ``run_ids``, only the rows of
    those runs are reported (a note says how many others were left out)."""
    report_path = Path(report_path)
    plot_path = Path(plot_path) if plot_path is not None else report_path.with_suffix(".png")
    rows = load_results(results_path)
    if run_ids is not None:
        kept = [row for row in rows if row.get("run_id") in run_ids]
        left_out = {str(row.get("run_id")) for row in rows} - {str(r["run_id"]) for r in kept}
        if left_out:
            notes = [
                *notes,
                f"{len(left_out)} run(s) of the results file are not in this config any more "
                "(changed options give new run ids) and are left out of this report",
            ]
        rows = kept
    if not rows:
        raise ValueError(f"{results_path}: no result rows to report")
    render_plot(summarize(rows), plot_path)
    relative_plot = os.path.relpath(plot_path, report_path.parent)
    markdown = render_markdown(
        rows,
        title=title,
        plot_name=relative_plot,
        rerender_command=rerender_command,
        notes=notes,
    )
    report_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = report_path.with_name(report_path.name + ".partial")
    temporary.write_text(markdown, encoding="utf-8")
    os.replace(temporary, report_path)
    return report_path, plot_path
