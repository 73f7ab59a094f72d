"""The experiment report: exact means and standard deviations, the "does not beat" sentences
exactly when the numbers say so, and a valid PNG."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from structkd.train.report import findings, load_results, render_markdown, summarize, write_report

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
