"""The report of an experiment: tables (mean ± standard deviation over seeds, and paired
differences between methods with 95% confidence intervals), findings and a plot.

``write_report(results_path, report_path)`` reads the JSON-lines results file that ``structkd
experiment`` appends to (one line per run, case and split) and writes

* ``report.md``: the task's ``report_intro`` and what the Δ columns are, then one table per task
  and data set, rows = case x student x method (x temperature x labeled fraction, the latter for
  a task that learns from unlabeled text). Columns: the test score of the task's
  ``primary_metric`` (preceded by its ``secondary_metric``, if any) ``mean ± std (n=seeds)``, the
  dev primary score, the task's further ``report_scores`` on test (dep: the rate of well-formed
  trees before repair), test sentences/s, and the test primary-score difference to the no-KD
  student (and to the Token KD student, when the table has one) of the same case, student and
  labeled fraction, **paired by seed**: ``+0.42 [-0.10, +0.94] (n=3)``, the mean of the per-seed
  differences and its 95% confidence interval (``structkd.experiment.stats``). Then, computed
  from those numbers, whether structural KD beats no KD and Token KD, and Token KD no KD, on the
  primary score (with the secondary one beside it): a gain or a loss is called only when the
  interval excludes 0; whether each teacher beats the no-KD student by the task's
  ``teacher_margin`` (dep: 2 test UAS points); the hardware, the commands and the code commits
  that produced the rows;
* ``report.png``: a grouped bar chart of the primary test score per case (x labeled fraction) and
  method, with one standard deviation as error bars, one panel per task (matplotlib, Agg canvas,
  no display needed).

Scores (F1, precision, recall; UAS, LAS, well-formed rate) are stored as fractions in ``[0, 1]``
and shown in percent. The standard deviation is the sample one (``n - 1`` in the denominator);
with one seed none is shown. Paired differences use the seeds both runs have (the same seed gives
the same initialization and batch order for every method); with one paired seed there is no
interval. A teacher is one model shared by every student seed, so a teacher row's Δ is the
difference of means, not paired. A results file normally holds one task; a mixed one gets a
table (and a plot panel) per task. Method names, titles and order come from
``structkd.distill.methods.METHODS``, with the ``teacher`` rows first.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structkd.distill.methods import METHOD_NAMES, METHODS
from structkd.experiment.config import DEFAULT_TASK
from structkd.experiment.provenance import hardware_info
from structkd.experiment.results import load_results
from structkd.experiment.stats import PairedDifference, paired_differences
from structkd.tasks import Task, get_task

__all__ = [
    "GROUP_KEYS",
    "METHOD_ORDER",
    "SplitSummary",
    "Statistic",
    "Summary",
    "findings",
    "load_results",
    "method_title",
    "paired_delta",
    "render_markdown",
    "render_plot",
    "summarize",
    "teacher_checks",
    "write_report",
]

TEACHER = "teacher"
"""The ``method`` of a teacher's rows."""
METHOD_ORDER = (TEACHER, *METHOD_NAMES)
"""The order of a table's rows within a case: the teacher, then the methods' report order."""
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
"""The fields that identify a table row; seeds are averaged within one. With ``VARIANT_KEYS``,
which a row has only when its KD student's setting is not the default (``kd_schedule``: not
``linear``; ``teacher_targets``: set)."""

VARIANT_KEYS = ("kd_schedule", "teacher_targets")


def method_title(name: str) -> str:
    """``teacher``, or the method's title in ``METHODS`` (the name itself for an unknown one)."""
    return METHODS[name].title if name in METHODS else name


def _score_title(task: Task, name: str) -> str:
    return task.score_titles.get(name, name)


@dataclass(frozen=True)
class Statistic:
    """A score (percent) over seeds: ``mean`` and sample ``std`` (``None`` for one value)."""

    mean: float
    std: float | None


@dataclass(frozen=True)
class SplitSummary:
    """One split of a table row: the primary score (F1 for NER, LAS for dep; percent) ``mean`` and
    sample ``std`` over ``seeds`` (``std`` is ``None`` for one seed), the mean
    ``sentences_per_second``, every score of the task by name in ``scores`` (dep: ``las``,
    ``uas`` and, when the rows have it, ``well_formed_rate``; all in percent), and each score's
    value per seed in ``per_seed`` (``{score: {seed: percent}}``, what paired differences
    pair)."""

    mean: float
    std: float | None
    seeds: tuple[int, ...]
    sentences_per_second: float
    scores: Mapping[str, Statistic] = field(default_factory=dict)
    per_seed: Mapping[str, Mapping[int, float]] = field(default_factory=dict)

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
    kd_schedule: str | None = None
    teacher_targets: str | None = None

    @property
    def variant(self) -> str | None:
        """``reference λ``, ``out-of-fold targets``, both, or ``None`` for the defaults."""
        parts = []
        if self.kd_schedule is not None:
            parts.append(f"{self.kd_schedule} λ")
        if self.teacher_targets is not None:
            parts.append(f"{self.teacher_targets} targets")
        return ", ".join(parts) or None

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
        if self.kd_schedule is not None:
            parts.append(f"{self.kd_schedule} KD weight")
        if self.teacher_targets is not None:
            parts.append(f"{self.teacher_targets} targets")
        return f"case {self.case} ({', '.join(parts)})"


# ---------------------------------------------------------------------------------------------
# Reading and summarizing


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
        summary.kd_schedule or "",
        summary.teacher_targets or "",
    )


def _scores_of(task: Any) -> tuple[str, ...]:
    """The scores a report summarizes for rows of ``task`` (a name), the primary one first."""
    return get_task(str(task)).report_scores


def _required_scores(task: Any) -> tuple[str, ...]:
    """The summarized scores every row of ``task`` (a name) must hold (not the optional ones)."""
    facts = get_task(str(task))
    return tuple(name for name in facts.report_scores if name not in facts.optional_scores)


def _statistic(values: Sequence[float]) -> Statistic:
    return Statistic(
        statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None
    )


def summarize(rows: Iterable[Mapping[str, Any]]) -> list[Summary]:
    """Group rows by ``GROUP_KEYS`` and average over seeds, per split; sorted for the table.

    A row needs its task's ``report_scores`` (NER: ``f1``; dep: ``las`` and ``uas``), less the
    task's ``optional_scores``, which are averaged over the rows that have one (dep's
    ``well_formed_rate``)."""
    groups: dict[tuple, dict[str, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        needed = _required_scores(row["task"]) if "task" in row else ()
        missing = [key for key in (*GROUP_KEYS, "split", "seed", *needed) if key not in row]
        if missing:
            raise ValueError(f"a results row lacks {missing}: {dict(row)}")
        key = (*(row[name] for name in GROUP_KEYS), *(row.get(name) for name in VARIANT_KEYS))
        groups[key][row["split"]].append(row)
    summaries = []
    for key, by_split in groups.items():
        splits = {}
        for split, split_rows in by_split.items():
            seeds = [row["seed"] for row in split_rows]
            if len(set(seeds)) != len(seeds):
                runs = sorted({str(row.get("run_id")) for row in split_rows})
                raise ValueError(
                    f"rows of different runs ({', '.join(runs)}) have the same labels, split "
                    f"{split!r} and seed: {dict(zip(GROUP_KEYS, key, strict=False))}; does the "
                    "results file mix two versions of a config? (structkd experiment reports "
                    "only the runs of its config)"
                )
            scores, per_seed = {}, {}
            for name in _scores_of(key[0]):
                by_seed = {
                    r["seed"]: 100.0 * float(r[name]) for r in split_rows if r.get(name) is not None
                }
                if by_seed:
                    scores[name] = _statistic(list(by_seed.values()))
                    per_seed[name] = dict(sorted(by_seed.items()))
            primary = scores[_scores_of(key[0])[0]]
            speed = [float(row.get("sentences_per_second") or 0.0) for row in split_rows]
            splits[split] = SplitSummary(
                mean=primary.mean,
                std=primary.std,
                seeds=tuple(sorted(seeds)),
                sentences_per_second=statistics.fmean(speed),
                scores=scores,
                per_seed=per_seed,
            )
        labels = dict(zip((*GROUP_KEYS, *VARIANT_KEYS), key, strict=True))
        summaries.append(Summary(**labels, splits=splits))
    return sorted(summaries, key=_sort_key)


def _baseline(summaries: Sequence[Summary], summary: Summary, method: str) -> Summary | None:
    """The ``method`` row of ``summary``'s setting; at the same temperature if there is one."""
    candidates = [s for s in summaries if s.method == method and s.setting == summary.setting]
    for candidate in candidates:
        if candidate.temperature == summary.temperature:
            return candidate
    return candidates[0] if candidates else None


def _paired_baseline(summaries: Sequence[Summary], summary: Summary, method: str) -> Summary | None:
    """The ``method`` row that ``summary``'s seeds pair with: the same setting (task, data set,
    case, labeled fraction) and student; for a tempered ``method``, at ``summary``'s temperature
    and mode if there is one, else at its temperature, else the first."""
    candidates = [
        s
        for s in summaries
        if s.method == method and s.setting == summary.setting and s.student == summary.student
    ]
    here = (summary.temperature, summary.temperature_mode)

    def distance(candidate: Summary) -> tuple[bool, bool, bool]:
        return (
            candidate.temperature != summary.temperature,
            (candidate.temperature, candidate.temperature_mode) != here,
            candidate.variant != summary.variant,
        )

    return min(candidates, key=distance, default=None)


def paired_delta(
    ours: Summary, theirs: Summary, score: str | None = None, split: str = "test"
) -> PairedDifference | None:
    """``ours - theirs`` on ``score`` (default: the task's ``primary_metric``) of ``split``,
    paired by seed, with its 95% interval (``structkd.experiment.stats.paired_differences``);
    ``None`` when either row lacks the split or the score."""
    score = score or get_task(ours.task).primary_metric
    mine, other = ours.splits.get(split), theirs.splits.get(split)
    if mine is None or other is None:
        return None
    if score not in mine.per_seed or score not in other.per_seed:
        return None
    return paired_differences(mine.per_seed[score], other.per_seed[score])


def _means_delta(summaries: Sequence[Summary], summary: Summary) -> float | None:
    """A teacher row's test primary score minus its setting's no-KD student's (means)."""
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


COMPARED = {"struct": ("none", "token"), "token": ("none",)}
"""The findings' comparisons: the methods each method is compared with, paired by seed."""


def findings(summaries: Sequence[Summary]) -> list[str]:
    """Plain sentences comparing structural KD with no KD and with Token KD, and Token KD with no
    KD, on the task's primary test score (NER: F1; dep: LAS, with its ``secondary_metric``, UAS,
    beside it), paired by seed; and, for a task with a ``teacher_margin``, whether each teacher
    beats the no-KD student by that margin (``teacher_checks``).

    Each comparison (``paired_delta``) is called by the 95% confidence interval of the mean
    per-seed difference: "**... beats ...**" when the interval lies above 0, "**... does not
    beat ...**: it is worse" when below, "**No difference the data can resolve ...**" when it
    includes 0 or there is one paired seed (no interval). The first sentence counts the verdicts
    of structural KD vs no KD. With several tasks, the sentences of each task in turn.
    """
    tasks = list(dict.fromkeys(summary.task for summary in summaries))
    if len(tasks) <= 1:
        return _task_findings(summaries, tasks[0] if tasks else DEFAULT_TASK, task_word="")
    sentences = []
    for task in tasks:
        of_task = [summary for summary in summaries if summary.task == task]
        sentences += _task_findings(of_task, task, task_word=f"{task} ")
    return sentences


def _task_findings(summaries: Sequence[Summary], task_name: str, task_word: str) -> list[str]:
    """``findings`` for the rows of one task; ``task_word`` (``"dep "``, or ``""`` when the
    report has one task) qualifies the summary sentences."""
    task = get_task(task_name)
    sentences = []
    verdicts: Counter[str] = Counter()
    for summary in summaries:
        if summary.method not in COMPARED or "test" not in summary.splits:
            continue
        for method in COMPARED[summary.method]:
            baseline = _paired_baseline(summaries, summary, method)
            if baseline is None or "test" not in baseline.splits:
                if method == "none":
                    sentences.append(
                        f"{_capitalized(method_title(summary.method))} in {summary.describe()} "
                        "has no no-KD student to compare with."
                    )
                continue
            sentence, verdict = _comparison(task, summary, baseline)
            sentences.append(sentence)
            if summary.method == "struct" and method == "none":
                verdicts[verdict] += 1
    compared = sum(verdicts.values())
    if compared:
        sentences.insert(0, _verdict_count(task, verdicts, task_word))
    else:
        sentences.append(
            f"No {task_word}structural-KD student has a no-KD student to compare with yet."
        )
    return sentences + teacher_checks(summaries)


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _verdict_count(task: Task, verdicts: Counter[str], task_word: str) -> str:
    """The first finding of a task: in how many settings structural KD beats no KD, loses to
    it, or cannot be told from it (paired, 95% intervals)."""
    score = f"test {_score_title(task, task.primary_metric)}"
    compared = sum(verdicts.values())
    higher, lower = verdicts["higher"], verdicts["lower"]
    unresolved = verdicts["unresolved"] + verdicts["unpaired"]
    interval = f"the 95% confidence interval of the paired per-seed difference in {score}"
    each = " in each" if compared > 1 else ""
    if compared == 1:
        settings = f"the one {task_word}setting measured here"
    elif compared == 2:
        settings = f"both {task_word}settings measured here"
    else:
        settings = f"all {compared} {task_word}settings measured here"
    if higher == compared:
        return f"Structural KD beats no KD in {settings}: {interval} lies above 0{each}."
    if lower == compared:
        return f"Structural KD does worse than no KD in {settings}: {interval} lies below 0{each}."
    if unresolved == compared:
        return (
            f"In {settings} the data cannot tell structural KD from no KD: {interval} includes "
            f"0{each} (or one paired seed gives no interval)."
        )
    return (
        f"Structural KD beats no KD in {higher} of the {compared} {task_word}settings measured "
        f"here ({interval} above 0), is worse in {lower} (the interval below 0), and in "
        f"{unresolved} the data cannot resolve a difference (the interval includes 0, or one "
        "paired seed gives none)."
    )


def _against(ours: Summary, theirs: Summary) -> str:
    """``no KD``, ``Token KD``, or ``Token KD (T=2 local)`` when its temperature differs."""
    name = method_title(theirs.method)
    if theirs.temperature is not None and (theirs.temperature, theirs.temperature_mode) != (
        ours.temperature,
        ours.temperature_mode,
    ):
        name += f" (T={theirs.temperature:g} {theirs.temperature_mode})"
    return name


_OTHER_SCORE = {
    "higher": "it beats {name}",
    "lower": "it does not beat {name} (it is worse)",
    "unresolved": "the data cannot resolve a difference from {name}",
}


def _comparison(task: Task, ours: Summary, theirs: Summary) -> tuple[str, str]:
    """The finding comparing ``ours`` with ``theirs`` (both with test scores) and its verdict
    (``higher``, ``lower``, ``unresolved``, or ``unpaired`` without a common seed)."""
    score = _score_title(task, task.primary_metric)
    name = _against(ours, theirs)
    who = method_title(ours.method)
    where = ours.describe()
    mine, other = ours.splits["test"], theirs.splits["test"]
    means = f"test {score} {_score(mine)} (n={mine.n}) vs {_score(other)} (n={other.n}) with {name}"
    paired = paired_delta(ours, theirs)
    if paired is None or paired.n == 0:
        return (
            f"{_capitalized(who)} in {where} shares no seed with its {name} student: nothing to "
            f"pair ({means}).",
            "unpaired",
        )
    level = f"{paired.level:.0%}"
    body = f"paired Δ test {score} {paired.text()}"
    if paired.verdict == "higher":
        head = f"**{_capitalized(who)} beats {name} in {where}**"
        body += f", the {level} interval above 0"
    elif paired.verdict == "lower":
        head = f"**{_capitalized(who)} does not beat {name} in {where}**"
        body = f"it is worse, {body}, the {level} interval below 0"
    else:
        head = f"**No difference the data can resolve between {who} and {name} in {where}**"
        if paired.interval is not None:
            body += f", the {level} interval includes 0"
    body += f"; {means}"
    clause = ""
    secondary = task.secondary_metric
    other_paired = None if secondary is None else paired_delta(ours, theirs, secondary)
    if secondary is not None and other_paired is not None and other_paired.n:
        title = _score_title(task, secondary)
        body += f"; paired Δ test {title} {other_paired.text()}"
        if other_paired.verdict != paired.verdict:
            clause = f" On test {title} " + _OTHER_SCORE[other_paired.verdict].format(name=name)
            clause += "."
    return f"{head}: {body}.{clause}", paired.verdict


def teacher_checks(summaries: Sequence[Summary]) -> list[str]:
    """For every teacher row with test scores of a task with a ``teacher_margin`` ``(score,
    points)`` (dep: 2 UAS points): does the teacher beat the no-KD student of its case by at
    least that many test points of that score (the margin a teacher worth distilling is expected
    to have)?"""
    sentences = []
    for summary in summaries:
        margin_of = get_task(summary.task).teacher_margin
        if margin_of is None or summary.method != TEACHER or "test" not in summary.splits:
            continue
        score, points = margin_of
        title = _score_title(get_task(summary.task), score)
        where = f"case {summary.case}"
        baseline = _baseline(summaries, summary, "none")
        teacher_score = summary.splits["test"].score(score)
        if baseline is None or "test" not in baseline.splits or teacher_score is None:
            sentences.append(
                f"Teacher {summary.teacher} ({where}) has no no-KD student to compare with."
            )
            continue
        student_score = baseline.splits["test"].score(score)
        if student_score is None:
            continue
        delta = teacher_score.mean - student_score.mean
        numbers = (
            f"test {title} {_statistic_text(teacher_score)} (n={summary.splits['test'].n}) vs "
            f"{_statistic_text(student_score)} (n={baseline.splits['test'].n}) for the no-KD "
            f"{baseline.student}, Δ {delta:+.2f}"
        )
        margin = f"{points:g}"
        if delta >= points - 1e-9:
            sentences.append(
                f"Teacher {summary.teacher} beats the no-KD student by at least {margin} {title} "
                f"in {where}: {numbers}."
            )
        else:
            sentences.append(
                f"**Teacher {summary.teacher} does not beat the no-KD student by {margin} "
                f"{title}** in {where}: {numbers}."
            )
    return sentences


# ---------------------------------------------------------------------------------------------
# Markdown


def _fraction_text(fraction: float) -> str:
    return "all" if fraction == 1 else f"{fraction:g}"


def _temperature_text(summary: Summary) -> str:
    if summary.temperature is None:
        return "-"
    text = f"{summary.temperature:g} {summary.temperature_mode}"
    return text if summary.variant is None else f"{text}, {summary.variant}"


def _table(summaries: Sequence[Summary], task: Task) -> list[str]:
    """The table of one task and data set: case, models, method, temperature, the labeled
    fraction (a task that learns from unlabeled text), the test ``secondary_metric`` and
    ``primary_metric`` (the first with ``(n=seeds)``), the dev primary score, the task's further
    ``report_scores`` on test (mean, one decimal; dep: the well-formed rate before repair), test
    speed, and Δ test primary score vs the no-KD student of the setting and, when the table has
    Token KD rows, vs the Token KD student, both paired by seed (``_delta_cell``)."""
    primary = task.primary_metric
    tested = [name for name in (task.secondary_metric, primary) if name is not None]
    further = [name for name in task.report_scores if name not in tested]
    header = ["case", "teacher -> student", "method", "T"]
    header += ["labeled"] * task.learns_from_unlabeled
    header += [f"test {_score_title(task, name)}" for name in tested]
    header += [f"dev {_score_title(task, primary)}"]
    header += [f"{_score_title(task, name)} % (test)" for name in further]
    header += ["test sentences/s"]
    against = ["none"] + ["token"] * any(summary.method == "token" for summary in summaries)
    header += [f"Δ test {_score_title(task, primary)} vs {method_title(m)}" for m in against]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for summary in summaries:
        speed = summary.splits.get("test")
        cells = [
            summary.case,
            summary.models,
            method_title(summary.method),
            _temperature_text(summary),
        ]
        if task.learns_from_unlabeled:
            cells.append(_fraction_text(summary.labeled_fraction))
        cells += [
            _score_cell(summary, "test", name, with_n=index == 0)
            for index, name in enumerate(tested)
        ]
        cells.append(_score_cell(summary, "dev", primary, with_n=False))
        for name in further:
            statistic = None if speed is None else speed.score(name)
            cells.append("-" if statistic is None else f"{statistic.mean:.1f}")
        cells.append("-" if speed is None else f"{speed.sentences_per_second:,.0f}")
        cells += [_delta_cell(summaries, summary, method) for method in against]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _delta_cell(summaries: Sequence[Summary], summary: Summary, method: str) -> str:
    """The Δ test primary score of ``summary`` vs the ``method`` row it pairs with:
    ``+0.42 [-0.10, +0.94] (n=3)`` (``PairedDifference.text``); on a teacher row vs no KD, the
    difference of means ``+2.13 (means)``; ``-`` on the ``method`` row itself, on rows that are
    not compared with ``method`` and without a row to compare with."""
    if summary.method == TEACHER:
        delta = _means_delta(summaries, summary) if method == "none" else None
        return "-" if delta is None else f"{delta:+.2f} (means)"
    if summary.method == method or summary.method == "none":
        return "-"
    if method != "none" and method not in COMPARED.get(summary.method, ()):
        return "-"
    baseline = _paired_baseline(summaries, summary, method)
    paired = None if baseline is None else paired_delta(summary, baseline)
    return "-" if paired is None else paired.text()


def _score_cell(summary: Summary, split: str, name: str, *, with_n: bool) -> str:
    """``mean ± std`` of score ``name`` on ``split`` (with ``(n=seeds)``), or ``-``."""
    stats = summary.splits.get(split)
    statistic = None if stats is None else stats.score(name)
    if statistic is None:
        return "-"
    return _statistic_text(statistic) + (f" (n={stats.n})" if with_n else "")


def _hardware_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
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
    paragraphs = [get_task(task).report_intro for task in tasks or [DEFAULT_TASK]]
    lines.append("\n\n".join(dict.fromkeys(paragraphs)))
    lines += ["", _delta_paragraph(tasks)]
    tables: dict[tuple[str, str], list[Summary]] = defaultdict(list)
    for summary in summaries:
        tables[(summary.task, summary.dataset)].append(summary)
    for (task, dataset), table_summaries in tables.items():
        lines += ["", f"## {task}: {dataset}", "", *_table(table_summaries, get_task(task))]
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


def _delta_paragraph(tasks: Sequence[str]) -> str:
    """What the Δ columns and the findings' intervals are."""
    return (
        f"Δ vs no KD, Δ vs Token KD: the {_plot_subject(tasks)} of a student minus that of the "
        "no-KD (Token KD) student of the same case, student and labeled fraction, paired by seed "
        "(the same seed gives the same initialization and batch order): the mean of the "
        "per-seed differences [its 95% confidence interval, Student t with n - 1 degrees of "
        "freedom] (n = paired seeds; one paired seed gives no interval). A gain or a loss is "
        "called only when the interval excludes 0. On a teacher row, one model shared by every "
        "student seed: its score minus the no-KD student's mean (means, not paired)."
    )


# ---------------------------------------------------------------------------------------------
# The plot


def _plot_subject(tasks: Sequence[str]) -> str:
    """``test F1`` (ner), ``test LAS`` (dep), or both with their tasks."""
    names = [f"test {_primary_title(task)}" for task in tasks or [DEFAULT_TASK]]
    if len(names) <= 1:
        return names[0]
    return " and ".join(f"{name} ({task})" for name, task in zip(names, tasks, strict=True))


def _primary_title(task: str) -> str:
    """The title of the primary score of the task named ``task`` (``F1``, ``LAS``)."""
    facts = get_task(task)
    return _score_title(facts, facts.primary_metric)


def _series_label(summary: Summary) -> str:
    label = method_title(summary.method)
    if summary.temperature is not None and (
        summary.temperature != 1 or summary.temperature_mode != "global"
    ):
        label += f" (T={summary.temperature:g} {summary.temperature_mode})"
    if summary.variant is not None:
        label += f" [{summary.variant}]"
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
    tasks = list(dict.fromkeys(summary.task for summary in with_test)) or [DEFAULT_TASK]
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
        _draw_bars(axes, panel, several_datasets[index], _primary_title(task))
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
