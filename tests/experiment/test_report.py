"""The experiment report: exact means and standard deviations, the "does not beat" sentences
exactly when the numbers say so, and a valid PNG."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from structkd.experiment.report import (
    findings,
    load_results,
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
    """Case 1a: teacher (one seed), none [0.80, 0.82, 0.84], token, struct ``struct_1a``;
    case 2a: none [0.70, 0.70, 0.73], struct [0.75, 0.76, 0.77] (beats clearly)."""
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


def test_markdown_table_cells_and_delta() -> None:
    markdown = render_markdown(handmade_rows((0.83, 0.85, 0.87)), title="unit")
    lines = markdown.splitlines()
    struct_line = next(line for line in lines if "| 1a |" in line and "structural KD" in line)
    assert "85.00 ± 2.00 (n=3)" in struct_line  # test
    assert "90.00 ± 2.00" in struct_line  # dev
    assert "2,000" in struct_line  # sentences per second
    assert struct_line.rstrip(" |").endswith("+3.00")  # vs no KD at 82.00
    teacher_line = next(line for line in lines if "| 1a |" in line and "| teacher |" in line)
    assert "90.00 (n=1)" in teacher_line and "+8.00" in teacher_line
    assert "Test CPU 9000, 2 cores, torch 2.13.0: " in markdown
    assert "`structkd experiment experiments/ner.toml`" in markdown
    assert "`abc123-dirty`" in markdown


@pytest.mark.parametrize(
    ("struct_1a", "verdict"),
    [
        ((0.83, 0.85, 0.87), "beats"),  # +3.00 over 82.00, std 2: a clear gain
        ((0.81, 0.82, 0.83), "equal"),  # 82.00 vs 82.00: does not beat
        ((0.78, 0.80, 0.82), "worse"),  # 80.00: does not beat
        ((0.815, 0.825, 0.835), "noise"),  # +0.50 < std 2.00: beats by only
    ],
)
def test_does_not_beat_appears_exactly_when_it_should(struct_1a, verdict: str) -> None:
    sentences = findings(summarize(handmade_rows(struct_1a)))
    about_1a = [s for s in sentences if "case 1a" in s and "no KD" in s and "Token" not in s]
    about_2a = [s for s in sentences if "case 2a" in s and "no KD" in s]
    assert len(about_1a) == 1 and len(about_2a) == 1
    assert "does not beat" not in about_2a[0] and "by only" not in about_2a[0]
    does_not_beat = [s for s in sentences if "does not beat no KD" in s]
    if verdict in ("equal", "worse"):
        assert does_not_beat == about_1a
        assert "every setting" not in " ".join(sentences)
    else:
        assert does_not_beat == []
        assert sentences[0].startswith("Structural KD has a higher mean test F1 than no KD")
    assert ("by only" in about_1a[0]) == (verdict == "noise")
    # Token KD at 81.00 on every seed: beaten unless structural KD is worse
    about_token = [s for s in sentences if "case 1a" in s and "Token KD" in s]
    assert len(about_token) == 1
    assert ("does not beat Token KD" in about_token[0]) == (verdict == "worse")


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
    assert "**Structural KD does not beat no KD** in case 1a" in text
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
        "| case | teacher -> student | method | T | test UAS | test LAS | dev LAS | "
        "well-formed % (test) | test sentences/s | Δ test LAS vs no KD |"
    ) in lines
    struct_line = next(line for line in lines if "| 1b-hs |" in line and "structural KD" in line)
    cells = [cell.strip() for cell in struct_line.strip("|").split("|")]
    assert cells == [
        "1b-hs",
        "parser-head-selection -> student-dep-offset",
        "structural KD",
        "1 global",
        "75.00 ± 0.00 (n=3)",  # test UAS
        "65.00 ± 2.00",  # test LAS
        "70.00 ± 2.00",  # dev LAS
        "94.0",  # well-formed, percent
        "1,000",
        "+3.00",  # LAS vs no KD at 62.00
    ]
    teacher_line = next(line for line in lines if "| 1b-hs |" in line and "| teacher |" in line)
    assert "| 80.00 (n=1) | 70.00 | 75.00 | 100.0 |" in teacher_line
    assert teacher_line.endswith("| +8.00 |")
    none_line = next(line for line in lines if "| 1b-hs |" in line and "| no KD |" in line)
    assert none_line.endswith("| - |")
    assert "test F1" not in markdown and "Test UAS, test LAS and dev LAS in percent" not in (
        markdown
    )
    assert "Dependency parsing: test UAS, test LAS and dev LAS in percent" in markdown


@pytest.mark.parametrize(
    ("struct_las", "verdict"),
    [
        ((0.63, 0.65, 0.67), "beats"),  # +3.00 LAS over 62.00, std 2
        ((0.61, 0.62, 0.63), "equal"),  # 62.00: does not beat
        ((0.58, 0.60, 0.62), "worse"),  # 60.00: does not beat
        ((0.615, 0.625, 0.635), "noise"),  # +0.50 < std 2: beats by only
    ],
)
def test_dep_findings_follow_the_las_numbers(struct_las, verdict: str) -> None:
    sentences = findings(summarize(handmade_dep_rows(struct_las)))
    about_hs = [s for s in sentences if "case 1b-hs" in s and "with no KD" in s]
    about_mtt = [s for s in sentences if "case 1b-mtt" in s and "with no KD" in s]
    assert len(about_hs) == 1 and len(about_mtt) == 1
    assert "does not beat" not in about_mtt[0] and "by only" not in about_mtt[0]
    # the numbers: LAS, then UAS (75.00 vs 72.00 for 1b-hs)
    assert (
        "test LAS" in about_hs[0]
        and "; test UAS 75.00 ± 0.00 vs 72.00 ± 2.00, Δ +3.00" in (about_hs[0])
    )
    does_not_beat = [s for s in sentences if "does not beat no KD" in s]
    if verdict in ("equal", "worse"):
        assert does_not_beat == about_hs
        # UAS is higher (+3.00) although LAS is not: said so
        assert about_hs[0].endswith("On test UAS it beats no KD.")
        assert not any("every setting" in s for s in sentences)
    else:
        assert does_not_beat == []
        assert "On test UAS" not in about_hs[0]
        assert sentences[0] == (
            "Structural KD has a higher mean test LAS than no KD in every setting measured here."
        )
    assert ("by only 0.50 LAS" in about_hs[0]) == (verdict == "noise")
    about_token = [s for s in sentences if "case 1b-hs" in s and "Token KD" in s]
    assert len(about_token) == 1  # Token KD at 61.50 LAS: beaten unless struct is at 60.00
    assert ("does not beat Token KD" in about_token[0]) == (verdict == "worse")


def test_dep_uas_clause_when_uas_disagrees_with_las() -> None:
    # LAS +3.00 but UAS 71.00 < 72.00
    sentences = findings(summarize(handmade_dep_rows((0.63, 0.65, 0.67), (0.71, 0.71, 0.71))))
    about_hs = next(s for s in sentences if "case 1b-hs" in s and "with no KD" in s)
    assert about_hs.startswith("Structural KD beats no KD in case 1b-hs")
    assert about_hs.endswith("Δ -1.00. On test UAS it does not beat no KD.")


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
    # per task, in table order: dep (not beaten in 1b-hs; no "every setting"), then NER
    assert sentences[0].startswith("**Structural KD does not beat no KD** in case 1b-hs")
    first_ner = sentences.index(
        "Structural KD has a higher mean test F1 than no KD in every ner setting measured here."
    )
    assert "case 1a" in sentences[first_ner + 1]
    assert all("case 1a" not in s and "case 2a" not in s for s in sentences[:first_ner])
    assert not any("every dep setting" in s for s in sentences)
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
