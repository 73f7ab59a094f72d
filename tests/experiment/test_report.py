"""The experiment report: exact means and standard deviations, paired differences with their
95% intervals, the "beats" / "does not beat" / "no difference the data can resolve" sentences
exactly when the intervals say so, and a valid PNG."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from structkd.experiment.report import (
    findings,
    load_results,
    paired_delta,
    render_markdown,
    summarize,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def row(case: str, method: str, seed: int, split: str, f1: float, **changes: Any) -> dict:
    teacher, student = {
        "1a": ("teacher-crf", "student-crf"),
        "2a": ("teacher-crf", "student-softmax"),
    }[case]
    kd = method not in ("none", "teacher")
    result = {
        "task": "ner",
        "dataset": "conll03-en",
        "case": case,
        "teacher": teacher,
        "student": teacher if method == "teacher" else student,
        "method": method,
        "temperature": 1.0 if kd else None,
        "temperature_mode": "global" if kd else None,
        "labeled_fraction": 1.0,
        "seed": seed,
        "split": split,
        "precision": f1,
        "recall": f1,
        "f1": f1,
        "sentences_per_second": 1000.0 * seed,
        "commit": "abc123-dirty",
        "run_id": f"{case}-{method}-{seed}",
        "kind": "teacher" if method == "teacher" else "student",
        "train_seconds": 60.0,
        "cpu": "Test CPU 9000",
        "cores": 2,
        "torch": "2.13.0",
        "command": "structkd experiment experiments/ner.toml",
    }
    result.update(changes)
    return result


def handmade_rows(struct_1a: tuple[float, float, float]) -> list[dict[str, Any]]:
    """Case 1a: teacher (one seed), none [0.80, 0.82, 0.84], token 0.81, struct ``struct_1a``;
    case 2a: none [0.70, 0.70, 0.73], struct [0.75, 0.76, 0.77] (beats clearly: paired
    differences [5, 6, 4] points, 95% interval [2.52, 7.48])."""
    rows = []
    for split, shift in (("test", 0.0), ("dev", 0.05)):
        rows.append(row("1a", "teacher", 1, split, 0.90 + shift))
        for seed in (1, 2, 3):
            rows.append(row("1a", "none", seed, split, [0.80, 0.82, 0.84][seed - 1] + shift))
            rows.append(row("1a", "token", seed, split, 0.81 + shift))
            rows.append(row("1a", "struct", seed, split, struct_1a[seed - 1] + shift))
            rows.append(row("2a", "none", seed, split, [0.70, 0.70, 0.73][seed - 1] + shift))
            rows.append(row("2a", "struct", seed, split, [0.75, 0.76, 0.77][seed - 1] + shift))
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_means_and_standard_deviations_are_exact() -> None:
    summaries = summarize(handmade_rows((0.83, 0.85, 0.87)))
    by_key = {(s.case, s.method): s for s in summaries}
    none = by_key[("1a", "none")].splits["test"]
    assert none.mean == pytest.approx(82.0, abs=1e-9)
    assert none.std == pytest.approx(2.0, abs=1e-9)
    assert none.seeds == (1, 2, 3) and none.n == 3
    assert none.sentences_per_second == pytest.approx(2000.0)
    skewed = by_key[("2a", "none")].splits["test"]
    assert skewed.mean == pytest.approx(71.0, abs=1e-9)
    assert skewed.std == pytest.approx(statistics.stdev([70.0, 70.0, 73.0]), abs=1e-9)
    assert skewed.std == pytest.approx(3**0.5, abs=1e-9)
    teacher = by_key[("1a", "teacher")].splits["dev"]
    assert teacher.mean == pytest.approx(95.0) and teacher.std is None and teacher.n == 1
    # table order: teacher, none, token, struct within a case
    assert [s.method for s in summaries if s.case == "1a"] == ["teacher", "none", "token", "struct"]
    # the values per seed, what the paired differences pair
    assert none.per_seed["f1"] == pytest.approx({1: 80.0, 2: 82.0, 3: 84.0})
    assert list(none.per_seed["f1"]) == [1, 2, 3]


def test_paired_delta_pairs_the_seeds_of_the_same_group() -> None:
    by_key = {(s.case, s.method): s for s in summarize(handmade_rows((0.83, 0.85, 0.87)))}
    struct, none, token = (by_key[("1a", method)] for method in ("struct", "none", "token"))
    vs_none = paired_delta(struct, none)
    assert vs_none.differences == pytest.approx((3.0, 3.0, 3.0)) and vs_none.verdict == "higher"
    vs_token = paired_delta(struct, token)  # [2, 4, 6]: mean 4, std 2, t(2) = 4.302653
    assert vs_token.mean == pytest.approx(4.0) and vs_token.std == pytest.approx(2.0)
    half = 4.302653 * 2.0 / 3**0.5
    assert vs_token.interval == pytest.approx((4.0 - half, 4.0 + half), abs=1e-6)
    assert vs_token.verdict == "unresolved"
    assert paired_delta(struct, none, split="dev").differences == pytest.approx((3.0,) * 3)
    assert paired_delta(struct, none, score="uas") is None  # NER rows have no UAS


def test_markdown_table_cells_and_delta() -> None:
    markdown = render_markdown(handmade_rows((0.83, 0.85, 0.87)), title="unit")
    lines = markdown.splitlines()
    assert lines[4].startswith("Δ vs no KD, Δ vs Token KD: the test F1 of a student minus")
    assert lines[8].endswith("| test sentences/s | Δ test F1 vs no KD | Δ test F1 vs Token KD |")
    struct_line = next(line for line in lines if "| 1a |" in line and "structural KD" in line)
    assert "85.00 ± 2.00 (n=3)" in struct_line  # test
    assert "90.00 ± 2.00" in struct_line  # dev
    assert "2,000" in struct_line  # sentences per second
    # vs no KD at [80, 82, 84]: +3 on every seed; vs Token KD at 81: [2, 4, 6]
    assert struct_line.endswith("| +3.00 [+3.00, +3.00] (n=3) | +4.00 [-0.97, +8.97] (n=3) |")
    token_line = next(line for line in lines if "| 1a |" in line and "| Token KD |" in line)
    assert token_line.endswith("| -1.00 [-5.97, +3.97] (n=3) | - |")
    teacher_line = next(line for line in lines if "| 1a |" in line and "| teacher |" in line)
    assert "90.00 (n=1)" in teacher_line and teacher_line.endswith("| +8.00 (means) | - |")
    none_line = next(line for line in lines if "| 1a |" in line and "| no KD |" in line)
    assert none_line.endswith("| - | - |")
    struct_2a = next(line for line in lines if "| 2a |" in line and "structural KD" in line)
    assert struct_2a.endswith("| +5.00 [+2.52, +7.48] (n=3) | - |")  # no Token KD in case 2a
    assert "Test CPU 9000, 2 cores, torch 2.13.0: " in markdown
    assert "`structkd experiment experiments/ner.toml`" in markdown
    assert "`abc123-dirty`" in markdown


@pytest.mark.parametrize(
    ("struct_1a", "verdict", "versus_token"),
    [
        ((0.83, 0.85, 0.87), "beats", "unresolved"),  # +3 on every seed; vs Token [2, 4, 6]
        ((0.81, 0.82, 0.83), "unresolved", "unresolved"),  # [1, 0, -1]: mean 0
        ((0.78, 0.80, 0.82), "worse", "unresolved"),  # -2 on every seed; vs Token [-3, -1, 1]
        ((0.815, 0.825, 0.835), "unresolved", "unresolved"),  # [1.5, 0.5, -0.5]: 0.5 ± 2.48
        # +0.5 on average, half the no-KD std over seeds, but on every seed: a gain
        ((0.804, 0.825, 0.846), "beats", "unresolved"),  # [0.4, 0.5, 0.6]: [+0.25, +0.75]
        ((0.86, 0.80, 0.86), "unresolved", "unresolved"),  # [6, -2, 2]: a mean of +2, noise
        ((0.76, 0.76, 0.76), "worse", "worse"),  # [-4, -6, -8]; vs Token -5 on every seed
    ],
)
def test_verdicts_follow_the_paired_intervals(struct_1a, verdict: str, versus_token: str) -> None:
    sentences = findings(summarize(handmade_rows(struct_1a)))
    about_1a = [s for s in sentences if "case 1a" in s and "structural kd" in s.lower()]
    about_1a = [s for s in about_1a if "no KD in case" in s]
    about_2a = [s for s in sentences if "case 2a" in s and "no KD" in s]
    assert len(about_1a) == 1 and len(about_2a) == 1
    assert about_2a[0].startswith(
        "**Structural KD beats no KD in case 2a (teacher-crf -> student-softmax, T=1 global)**: "
        "paired Δ test F1 +5.00 [+2.52, +7.48] (n=3), the 95% interval above 0; test F1 76.00 "
        "± 1.00 (n=3) vs 71.00 ± 1.73 (n=3) with no KD."
    )
    where = "in case 1a (teacher-crf -> student-crf, T=1 global)"
    expected_head = {
        "beats": f"**Structural KD beats no KD {where}**: paired Δ test F1 ",
        "worse": f"**Structural KD does not beat no KD {where}**: it is worse, paired Δ test F1 ",
        "unresolved": (
            f"**No difference the data can resolve between structural KD and no KD {where}**: "
            "paired Δ test F1 "
        ),
    }[verdict]
    assert about_1a[0].startswith(expected_head)
    interval_words = {"beats": "above 0", "worse": "below 0", "unresolved": "includes 0"}
    assert f"the 95% interval {interval_words[verdict]}; test F1" in about_1a[0]
    assert not any("less than one standard deviation" in s or "by only" in s for s in sentences)
    # the first sentence counts the verdicts of structural KD vs no KD (case 2a: beats)
    if verdict == "beats":
        assert sentences[0].startswith(
            "Structural KD beats no KD in both settings measured here: the 95% confidence "
            "interval of the paired per-seed difference in test F1 lies above 0 in each."
        )
    else:
        worse, unresolved = (1, 0) if verdict == "worse" else (0, 1)
        assert sentences[0] == (
            "Structural KD beats no KD in 1 of the 2 settings measured here (the 95% confidence "
            "interval of the paired per-seed difference in test F1 above 0), is worse in "
            f"{worse} (the interval below 0), and in {unresolved} the data cannot resolve a "
            "difference (the interval includes 0, or one paired seed gives none)."
        )
    # Token KD at 81.00 on every seed
    about_token = [s for s in sentences if "case 1a" in s and "with Token KD" in s]
    assert len(about_token) == 1
    assert ("**Structural KD does not beat Token KD" in about_token[0]) == (versus_token == "worse")
    assert ("**No difference the data can resolve" in about_token[0]) == (
        versus_token == "unresolved"
    )
    # Token KD vs no KD: [1, -1, -3], whatever structural KD does
    token_vs_none = [s for s in sentences if "between Token KD and no KD in case 1a" in s]
    assert len(token_vs_none) == 1
    assert "paired Δ test F1 -1.00 [-5.97, +3.97] (n=3)" in token_vs_none[0]


def test_one_paired_seed_or_none_calls_nothing() -> None:
    rows = handmade_rows((0.83, 0.85, 0.87))
    # the structural-KD student of case 1a has seed 1 only; that of case 2a seeds 4 and 5
    rows = [
        r for r in rows if not (r["method"] == "struct" and r["case"] == "1a" and r["seed"] > 1)
    ]
    rows = [
        {**r, "seed": r["seed"] + 3} if r["method"] == "struct" and r["case"] == "2a" else r
        for r in rows
        if not (r["method"] == "struct" and r["case"] == "2a" and r["seed"] == 3)
    ]
    sentences = findings(summarize(rows))
    about_1a = next(s for s in sentences if "structural KD and no KD in case 1a" in s)
    assert about_1a.startswith("**No difference the data can resolve")
    assert "paired Δ test F1 +3.00 (n=1: no interval); test F1 83.00 (n=1) vs" in about_1a
    about_2a = next(s for s in sentences if "case 2a" in s)
    assert about_2a.startswith(
        "Structural KD in case 2a (teacher-crf -> student-softmax, T=1 global) shares no seed "
        "with its no KD student: nothing to pair (test F1 75.50 ± 0.71 (n=2) vs"
    )
    assert sentences[0].startswith(
        "In both settings measured here the data cannot tell structural KD from no KD"
    )
    lines = render_markdown(rows, title="unit").splitlines()
    struct_1a = next(line for line in lines if "| 1a |" in line and "structural KD" in line)
    assert struct_1a.endswith("| +3.00 (n=1: no interval) | +2.00 (n=1: no interval) |")
    struct_2a = next(line for line in lines if "| 2a |" in line and "structural KD" in line)
    assert struct_2a.endswith("| - | - |")


def test_token_kd_pairs_at_the_same_temperature() -> None:
    rows = handmade_rows((0.83, 0.85, 0.87))
    hot = [
        {**r, "temperature": 2.0, "f1": r["f1"] + 0.01, "run_id": r["run_id"] + "-t2"}
        for r in rows
        if r["method"] in ("token", "struct") and r["case"] == "1a"
    ]
    lines = render_markdown(rows + hot, title="unit").splitlines()
    struct_lines = [line for line in lines if "| 1a |" in line and "structural KD" in line]
    assert len(struct_lines) == 2
    # each temperature against the Token KD student of its own temperature: [2, 4, 6] both
    for line in struct_lines:
        assert line.endswith("| +4.00 [-0.97, +8.97] (n=3) |")
    assert struct_lines[1].endswith("| +4.00 [+4.00, +4.00] (n=3) | +4.00 [-0.97, +8.97] (n=3) |")


def test_write_report_renders_markdown_and_png(tmp_path: Path) -> None:
    rows = handmade_rows((0.78, 0.80, 0.82))
    # duplicated lines and an interrupted last append are tolerated
    results = write_rows(tmp_path / "results.jsonl", [*rows, rows[0]])
    with open(results, "a", encoding="utf-8") as handle:
        handle.write('{"task": "ner", "cas')
    assert len(load_results(results)) == len(rows)
    report, plot = write_report(
        results,
        tmp_path / "report" / "report.md",
        title="unit",
        rerender_command="structkd experiment unit.toml --report-only",
    )
    text = report.read_text(encoding="utf-8")
    assert text.startswith("# unit\n")
    assert (
        "**Structural KD does not beat no KD in case 1a (teacher-crf -> student-crf, T=1 "
        "global)**: it is worse, paired Δ test F1 -2.00 [-2.00, -2.00] (n=3)"
    ) in text
    assert "![test F1 per case and method](report.png)" in text
    assert "`structkd experiment unit.toml --report-only`" in text
    assert plot == tmp_path / "report" / "report.png"
    content = plot.read_bytes()
    assert content.startswith(PNG_SIGNATURE) and content[12:16] == b"IHDR"
    width, height = int.from_bytes(content[16:20], "big"), int.from_bytes(content[20:24], "big")
    assert width > 300 and height > 200


def test_bad_lines_and_empty_results_are_errors(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text('{"a": 1}\nnot json\n{"b": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"results.jsonl:2: not a JSON line"):
        load_results(results)
    results.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="no result rows"):
        write_report(results, tmp_path / "report.md")
    with pytest.raises(ValueError, match="lacks"):
        summarize([{"task": "ner"}])


def test_rows_of_runs_no_longer_in_the_config(tmp_path: Path) -> None:
    rows = handmade_rows((0.83, 0.85, 0.87))
    current = {row["run_id"] for row in rows}
    # an older version of the config trained the seed-1 structural-KD student differently
    stale = [
        {**row, "run_id": "old-struct-1", "f1": 0.10}
        for row in rows
        if row["run_id"] == "1a-struct-1"
    ]
    with pytest.raises(ValueError, match="mix two versions of a config"):
        summarize(rows + stale)
    results = write_rows(tmp_path / "results.jsonl", rows + stale)
    report, _ = write_report(results, tmp_path / "report.md", run_ids=current)
    text = report.read_text(encoding="utf-8")
    assert "85.00 ± 2.00 (n=3)" in text
    assert "1 run(s) of the results file are not in this config any more" in text


# ---------------------------------------------------------------------------------------------
# Dependency parsing rows (task "dep"): UAS, LAS, well-formed rate


def dep_row(
    case: str, method: str, seed: int, split: str, uas: float, las: float, **changes: Any
) -> dict:
    teacher = {"1b-hs": "parser-head-selection", "1b-mtt": "parser-matrix-tree"}[case]
    kd = method not in ("none", "teacher")
    result = {
        "task": "dep",
        "dataset": "twt-tr",
        "case": case,
        "teacher": teacher,
        "student": teacher if method == "teacher" else "student-dep-offset",
        "method": method,
        "temperature": 1.0 if kd else None,
        "temperature_mode": "global" if kd else None,
        "labeled_fraction": 1.0,
        "seed": seed,
        "split": split,
        "uas": uas,
        "las": las,
        "well_formed_rate": 1.0 if method == "teacher" else 0.9 + 0.02 * seed,
        "sentences_per_second": 500.0 * seed,
        "commit": "def456",
        "run_id": f"{case}-{method}-{seed}",
        "kind": "teacher" if method == "teacher" else "student",
        "train_seconds": 30.0,
        "cpu": "Test CPU 9000",
        "cores": 2,
        "torch": "2.13.0",
        "command": "structkd experiment experiments/dep.toml",
    }
    result.update(changes)
    return result


def handmade_dep_rows(
    struct_las: tuple[float, float, float],
    struct_uas: tuple[float, float, float] = (0.75, 0.75, 0.75),
    teacher_uas: float = 0.80,
) -> list[dict[str, Any]]:
    """Case 1b-hs: teacher (one seed, test UAS ``teacher_uas``, LAS 0.70); none: UAS
    [0.70, 0.72, 0.74], LAS [0.60, 0.62, 0.64]; token: UAS 0.73, LAS 0.615; struct:
    ``struct_uas``, ``struct_las``. Case 1b-mtt: teacher UAS 0.73 (less than 2 points above its
    no-KD student at 72.00), none as in 1b-hs, struct UAS 0.76, LAS [0.66, 0.67, 0.68]. Dev: every
    score + 0.05."""
    rows = []
    for split, shift in (("test", 0.0), ("dev", 0.05)):
        rows.append(dep_row("1b-hs", "teacher", 1, split, teacher_uas + shift, 0.70 + shift))
        rows.append(dep_row("1b-mtt", "teacher", 1, split, 0.73 + shift, 0.65 + shift))
        for seed in (1, 2, 3):
            index = seed - 1
            none_uas = [0.70, 0.72, 0.74][index] + shift
            none_las = [0.60, 0.62, 0.64][index] + shift
            for case in ("1b-hs", "1b-mtt"):
                rows.append(
                    dep_row(case, "none", seed, split, none_uas, none_las, run_id=f"none-{seed}")
                )
            rows.append(dep_row("1b-hs", "token", seed, split, 0.73 + shift, 0.615 + shift))
            rows.append(
                dep_row(
                    "1b-hs",
                    "struct",
                    seed,
                    split,
                    struct_uas[index] + shift,
                    struct_las[index] + shift,
                )
            )
            rows.append(
                dep_row(
                    "1b-mtt", "struct", seed, split, 0.76 + shift, [0.66, 0.67, 0.68][index] + shift
                )
            )
    return rows


def test_dep_means_and_standard_deviations_are_exact() -> None:
    summaries = summarize(handmade_dep_rows((0.63, 0.65, 0.67)))
    by_key = {(s.case, s.method): s for s in summaries}
    none = by_key[("1b-hs", "none")].splits["test"]
    # the primary score of dep is LAS
    assert none.mean == pytest.approx(62.0, abs=1e-9) and none.std == pytest.approx(2.0)
    assert none.score("las").mean == none.mean and none.score("las").std == none.std
    assert none.score("uas").mean == pytest.approx(72.0) and none.score("uas").std == (
        pytest.approx(2.0)
    )
    assert none.score("well_formed_rate").mean == pytest.approx(94.0)
    assert none.score("well_formed_rate").std == pytest.approx(2.0)
    assert none.seeds == (1, 2, 3) and none.sentences_per_second == pytest.approx(1000.0)
    assert none.score("f1") is None
    dev = by_key[("1b-hs", "teacher")].splits["dev"]
    assert dev.mean == pytest.approx(75.0) and dev.std is None and dev.n == 1
    assert [s.method for s in summaries if s.case == "1b-hs"] == [
        "teacher",
        "none",
        "token",
        "struct",
    ]
    # a row without well_formed_rate (e.g. an older file) is fine; one without las is not
    rows = handmade_dep_rows((0.63, 0.65, 0.67))
    for row in rows:
        row.pop("well_formed_rate")
    assert summarize(rows)[0].splits["test"].score("well_formed_rate") is None
    rows[0].pop("las")
    with pytest.raises(ValueError, match="lacks \\['las'\\]"):
        summarize(rows)


def test_dep_table_cells_and_delta() -> None:
    markdown = render_markdown(handmade_dep_rows((0.63, 0.65, 0.67)), title="dep unit")
    lines = markdown.splitlines()
    assert "## dep: twt-tr" in lines
    assert (
        "| case | teacher -> student | method | T | labeled | test UAS | test LAS | dev LAS | "
        "well-formed % (test) | test sentences/s | Δ test LAS vs no KD | Δ test LAS vs Token KD |"
    ) in lines  # dep learns from unlabeled text: the labeled fraction is a column, as for NER
    struct_line = next(line for line in lines if "| 1b-hs |" in line and "structural KD" in line)
    cells = [cell.strip() for cell in struct_line.strip("|").split("|")]
    assert cells == [
        "1b-hs",
        "parser-head-selection -> student-dep-offset",
        "structural KD",
        "1 global",
        "all",  # labeled fraction
        "75.00 ± 0.00 (n=3)",  # test UAS
        "65.00 ± 2.00",  # test LAS
        "70.00 ± 2.00",  # dev LAS
        "94.0",  # well-formed, percent
        "1,000",
        "+3.00 [+3.00, +3.00] (n=3)",  # LAS vs no KD at [60, 62, 64]: +3 on every seed
        "+3.50 [-1.47, +8.47] (n=3)",  # vs Token KD at 61.50: [1.5, 3.5, 5.5]
    ]
    teacher_line = next(line for line in lines if "| 1b-hs |" in line and "| teacher |" in line)
    assert "| 80.00 (n=1) | 70.00 | 75.00 | 100.0 |" in teacher_line
    assert teacher_line.endswith("| +8.00 (means) | - |")
    none_line = next(line for line in lines if "| 1b-hs |" in line and "| no KD |" in line)
    assert none_line.endswith("| - | - |")
    token_line = next(line for line in lines if "| 1b-hs |" in line and "| Token KD |" in line)
    assert token_line.endswith("| -0.50 [-5.47, +4.47] (n=3) | - |")
    assert "test F1" not in markdown and "Test UAS, test LAS and dev LAS in percent" not in (
        markdown
    )
    assert "Dependency parsing: test UAS, test LAS and dev LAS in percent" in markdown


@pytest.mark.parametrize(
    ("struct_las", "verdict"),
    [
        ((0.63, 0.65, 0.67), "beats"),  # +3 LAS on every seed
        ((0.61, 0.62, 0.63), "unresolved"),  # [1, 0, -1]
        ((0.58, 0.60, 0.62), "worse"),  # -2 on every seed
        ((0.615, 0.625, 0.635), "unresolved"),  # [1.5, 0.5, -0.5]
        ((0.604, 0.625, 0.646), "beats"),  # [0.4, 0.5, 0.6]: small, but on every seed
    ],
)
def test_dep_findings_follow_the_paired_las(struct_las, verdict: str) -> None:
    sentences = findings(summarize(handmade_dep_rows(struct_las)))
    about_hs = [s for s in sentences if "structural KD and no KD in case 1b-hs" in s]
    about_hs += [s for s in sentences if "Structural KD beats no KD in case 1b-hs" in s]
    about_hs += [s for s in sentences if "Structural KD does not beat no KD in case 1b-hs" in s]
    about_mtt = [s for s in sentences if "no KD in case 1b-mtt" in s]
    assert len(about_hs) == 1 and len(about_mtt) == 1
    # 1b-mtt: LAS [6, 5, 4] (interval [2.52, 7.48]); UAS 76 vs [70, 72, 74]: [6, 4, 2]
    assert about_mtt[0] == (
        "**Structural KD beats no KD in case 1b-mtt (parser-matrix-tree -> student-dep-offset, "
        "T=1 global)**: paired Δ test LAS +5.00 [+2.52, +7.48] (n=3), the 95% interval above 0; "
        "test LAS 67.00 ± 1.00 (n=3) vs 62.00 ± 2.00 (n=3) with no KD; paired Δ test UAS +4.00 "
        "[-0.97, +8.97] (n=3). On test UAS the data cannot resolve a difference from no KD."
    )
    # the numbers: LAS, then UAS (75 vs [70, 72, 74]: [5, 3, 1])
    assert "test LAS" in about_hs[0]
    if verdict == "unresolved":
        # UAS unresolved too: no clause
        assert about_hs[0].endswith("; paired Δ test UAS +3.00 [-1.97, +7.97] (n=3).")
    else:
        assert about_hs[0].endswith(
            "; paired Δ test UAS +3.00 [-1.97, +7.97] (n=3). On test UAS the data cannot resolve "
            "a difference from no KD."
        )
    heads = {
        "beats": "**Structural KD beats no KD in case 1b-hs",
        "worse": "**Structural KD does not beat no KD in case 1b-hs",
        "unresolved": "**No difference the data can resolve between structural KD and no KD",
    }
    assert about_hs[0].startswith(heads[verdict])
    if verdict == "beats":
        assert sentences[0] == (
            "Structural KD beats no KD in both settings measured here: the 95% confidence "
            "interval of the paired per-seed difference in test LAS lies above 0 in each."
        )
    else:
        assert sentences[0].startswith("Structural KD beats no KD in 1 of the 2 settings")
    about_token = [s for s in sentences if "case 1b-hs" in s and "with Token KD" in s]
    assert len(about_token) == 1  # Token KD at 61.50 LAS on every seed: never resolved here
    assert about_token[0].startswith("**No difference the data can resolve")


@pytest.mark.parametrize(
    ("struct_las", "struct_uas", "head", "clause"),
    [
        # LAS +3 on every seed, UAS -1 on every seed
        (
            (0.63, 0.65, 0.67),
            (0.69, 0.71, 0.73),
            "**Structural KD beats no KD in case 1b-hs",
            "On test UAS it does not beat no KD (it is worse).",
        ),
        # LAS [1, 0, -1], UAS +1 on every seed
        (
            (0.61, 0.62, 0.63),
            (0.71, 0.73, 0.75),
            "**No difference the data can resolve between structural KD and no KD in case 1b-hs",
            "On test UAS it beats no KD.",
        ),
    ],
)
def test_dep_uas_clause_when_uas_disagrees_with_las(struct_las, struct_uas, head, clause) -> None:
    sentences = findings(summarize(handmade_dep_rows(struct_las, struct_uas)))
    about_hs = next(
        s for s in sentences if "case 1b-hs" in s and "with no KD" in s and "Token KD" not in s
    )
    assert about_hs.startswith(head)
    assert about_hs.endswith(clause)


@pytest.mark.parametrize(
    ("teacher_uas", "beats"), [(0.80, True), (0.74, True), (0.7399, False), (0.70, False)]
)
def test_teacher_check_needs_two_uas_points(teacher_uas: float, beats: bool) -> None:
    """The no-KD student has test UAS 72.00: a teacher must reach 74.00."""
    sentences = findings(summarize(handmade_dep_rows((0.63, 0.65, 0.67), teacher_uas=teacher_uas)))
    about_hs = [s for s in sentences if s.startswith(("Teacher", "**Teacher")) and "1b-hs" in s]
    about_mtt = [s for s in sentences if s.startswith(("Teacher", "**Teacher")) and "1b-mtt" in s]
    assert len(about_hs) == 1 and len(about_mtt) == 1
    # the matrix-tree teacher is 1.00 UAS above: not enough
    assert about_mtt[0].startswith(
        "**Teacher parser-matrix-tree does not beat the no-KD student by 2 UAS** in case 1b-mtt: "
        "test UAS 73.00 (n=1) vs 72.00 ± 2.00 (n=3) for the no-KD student-dep-offset, Δ +1.00"
    )
    if beats:
        assert about_hs[0].startswith(
            "Teacher parser-head-selection beats the no-KD student by at least 2 UAS in case 1b-hs"
        )
    else:
        assert about_hs[0].startswith("**Teacher parser-head-selection does not beat")


def test_mixed_results_get_a_table_per_task(tmp_path: Path) -> None:
    ner_rows = handmade_rows((0.83, 0.85, 0.87))
    dep_rows = handmade_dep_rows((0.58, 0.60, 0.62))
    ner_only = render_markdown(ner_rows, title="unit")
    mixed = render_markdown(ner_rows + dep_rows, title="unit")
    ner_table = [line for line in ner_only.splitlines() if line.startswith("|")]
    mixed_lines = mixed.splitlines()
    # the dep table (tables are in the order of task names), then the NER table, unchanged
    start = mixed_lines.index("## ner: conll03-en")
    assert mixed_lines[start + 2 : start + 2 + len(ner_table)] == ner_table
    assert "## dep: twt-tr" in mixed_lines
    assert mixed.index("## dep: twt-tr") < mixed.index("## ner: conll03-en")
    assert mixed.index("Dependency parsing: test UAS") < mixed.index("Test and dev F1 in percent")
    sentences = findings(summarize(ner_rows + dep_rows))
    # per task, in table order: dep (worse in 1b-hs, better in 1b-mtt), then NER (better in both)
    assert sentences[0].startswith(
        "Structural KD beats no KD in 1 of the 2 dep settings measured here"
    )
    assert sentences[2].startswith("**Structural KD does not beat no KD in case 1b-hs")
    first_ner = sentences.index(
        "Structural KD beats no KD in both ner settings measured here: the 95% confidence "
        "interval of the paired per-seed difference in test F1 lies above 0 in each."
    )
    assert "case 1a" in sentences[first_ner + 1]
    assert all("case 1a" not in s and "case 2a" not in s for s in sentences[:first_ner])
    results = write_rows(tmp_path / "results.jsonl", ner_rows + dep_rows)
    report, plot = write_report(results, tmp_path / "report.md")
    text = report.read_text(encoding="utf-8")
    assert "![test LAS (dep) and test F1 (ner) per case and method](report.png)" in text
    content = plot.read_bytes()
    assert content.startswith(PNG_SIGNATURE)
    height = int.from_bytes(content[20:24], "big")
    assert height > 2 * 4.5 * 120 * 0.9  # two panels


def test_dep_write_report(tmp_path: Path) -> None:
    results = write_rows(tmp_path / "results.jsonl", handmade_dep_rows((0.63, 0.65, 0.67)))
    report, plot = write_report(results, tmp_path / "out" / "report.md", title="dep")
    text = report.read_text(encoding="utf-8")
    assert "![test LAS per case and method](report.png)" in text
    assert "`structkd experiment experiments/dep.toml`" in text and "`def456`" in text
    assert plot.read_bytes().startswith(PNG_SIGNATURE)


def test_one_setting_is_counted_as_one() -> None:
    rows = [r for r in handmade_rows((0.83, 0.85, 0.87)) if r["case"] == "1a"]
    sentences = findings(summarize(rows))
    assert sentences[0] == (
        "Structural KD beats no KD in the one setting measured here: the 95% confidence "
        "interval of the paired per-seed difference in test F1 lies above 0."
    )


def test_kd_weight_schedules_are_rows_of_their_own() -> None:
    """A student trained under a non-default KD weight schedule has ``kd_schedule`` in its rows:
    it is a row of its own, named in the temperature cell, paired with the no-KD seeds."""
    from structkd.experiment.report import render_markdown, summarize

    rows = []
    for seed in (1, 2):
        rows.append(row("1a", "none", seed, "test", 0.80 + 0.001 * seed))
        rows.append(row("1a", "struct", seed, "test", 0.82 + 0.001 * seed))
        reference = row("1a", "struct", seed, "test", 0.83 + 0.001 * seed)
        reference["kd_schedule"] = "reference"
        reference["run_id"] += "-reference"
        rows.append(reference)
    summaries = summarize(rows)
    structs = [s for s in summaries if s.method == "struct"]
    assert [s.kd_schedule for s in structs] == [None, "reference"]
    assert [round(s.splits["test"].mean, 2) for s in structs] == [82.15, 83.15]
    assert "reference KD weight" in structs[1].describe()
    text = render_markdown(rows, title="schedules")
    assert "1 global, reference λ" in text
