"""`structkd demo`: the main job end to end on tiny CoNLL files (tiny models, no MiniLM)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from structkd.api import evaluate
from structkd.cli import main
from structkd.demo.main import (
    DemoOptions,
    parse_arch_overrides,
    reusable_teacher,
    run_demo,
    teacher_options,
)
from structkd.train.checkpoint import read_model
from tests.tasks.ner import TINY, write_conll

# The teacher: teacher-crf without its transformer, a little wider than the student.
TEACHER_OVERRIDES = {**TINY, "transformer": None, "lstm_hidden": 12}
TEACHER_EPOCHS = 6


@pytest.fixture(autouse=True, scope="module")
def _on_one_thread(one_thread):
    yield


def _argv(tmp_path, *extra: str) -> list[str]:
    argv = ["demo", "--out", str(tmp_path / "demo")]
    for split in ("train", "dev", "test"):
        argv += [f"--{split}", str(tmp_path / f"{split}.conll")]
    argv += ["--train-sentences", "30", "--teacher-epochs", str(TEACHER_EPOCHS)]
    argv += ["--student-epochs", "3"]
    argv += ["--batch-size", "8", "--lr", "0.02"]
    for key, value in TEACHER_OVERRIDES.items():
        argv += ["--teacher-override", f"{key}={json.dumps(value)}"]
    for key, value in TINY.items():
        argv += ["--student-override", f"{key}={json.dumps(value)}"]
    return argv + list(extra)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Tiny CoNLL train/dev/test files (40/15/15 sentences) for the demo runs of this module."""
    tmp_path = tmp_path_factory.mktemp("demo")
    write_conll(tmp_path / "train.conll", 40, seed=1)
    write_conll(tmp_path / "dev.conll", 15, seed=2)
    write_conll(tmp_path / "test.conll", 15, seed=3)
    return tmp_path


def test_demo_trains_three_models_and_writes_the_report(demo_run, capsys) -> None:
    tmp_path = demo_run
    assert main(_argv(tmp_path)) == 0
    out = capsys.readouterr().out
    report_path = tmp_path / "demo" / "report.md"
    assert f"report written to {report_path}" in out
    assert "training teacher-crf" in out and "reusing" not in out
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    rows = results["rows"]
    assert [row["model"] for row in rows] == [
        "teacher",
        "student, no KD",
        "student, structural KD",
    ]
    assert [row["arch"] for row in rows] == ["teacher-crf", "student-crf", "student-crf"]
    for row in rows:
        for key in ("dev_f1", "test_f1", "sentences_per_second", "speedup"):
            assert math.isfinite(row[key]) and row[key] >= 0
        assert 0 <= row["dev_f1"] <= 100 and row["sentences_per_second"] > 0
        # the table's test F1 is that of the saved model, scored again here
        scores = evaluate(row["model_dir"], str(tmp_path / "test.conll"))
        assert row["test_f1"] == pytest.approx(100 * scores["f1"])
    assert rows[0]["test_f1"] > 50  # the teacher learned the names
    assert rows[0]["speedup"] == 1.0
    assert rows[1]["speedup"] == pytest.approx(
        rows[1]["sentences_per_second"] / rows[0]["sentences_per_second"]
    )
    # the student with KD was distilled from this teacher, by the structural method
    student = json.loads((tmp_path / "demo" / "student-struct" / "metrics.json").read_text())
    assert student["distillation"]["method"] == "struct"
    assert student["distillation"]["teachers"] == [str(tmp_path / "demo" / "teacher")]
    assert student["data"]["n_train_sentences"] == 30
    # same initialization and batches, but the KD term changed the student
    no_kd = read_model(rows[1]["model_dir"]).state_dict
    with_kd = read_model(rows[2]["model_dir"]).state_dict
    assert not all(torch.equal(no_kd[name], with_kd[name]) for name in no_kd)
    # the table: printed and in the report, a header, a rule and three rows
    report = report_path.read_text()
    table = [line for line in report.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3 and "sentences/s" in table[0] and "speed-up" in table[0]
    assert "structural KD" in table[4] and f"{rows[2]['test_f1']:.2f}" in table[4]
    assert "structkd demo --out" in report and "--student-epochs 3" in report
    printed = [line for line in out.splitlines() if line.startswith(("teacher ", "student,"))]
    assert len(printed) == 3


def test_demo_reuses_a_matching_teacher_only(demo_run, capsys) -> None:
    tmp_path = demo_run
    teacher_model = tmp_path / "demo" / "teacher" / "model.pt"
    if not teacher_model.exists():  # run alone: make the first run
        assert main(_argv(tmp_path)) == 0
    stamp = teacher_model.stat().st_mtime_ns
    capsys.readouterr()
    assert main(_argv(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "reusing" in out and "training teacher-crf" not in out
    assert teacher_model.stat().st_mtime_ns == stamp
    rows = json.loads((tmp_path / "demo" / "results.json").read_text())["rows"]
    assert rows[0]["reused"] and not rows[1]["reused"]
    assert "(reused)" in (tmp_path / "demo" / "report.md").read_text()
    # other teacher options: retrained
    changed = DemoOptions(
        out=str(tmp_path / "demo"),
        train=str(tmp_path / "train.conll"),
        dev=str(tmp_path / "dev.conll"),
        test=str(tmp_path / "test.conll"),
        train_sentences=30,
        teacher_epochs=TEACHER_EPOCHS + 1,
        batch_size=8,
        learning_rate=0.02,
        teacher_overrides=TEACHER_OVERRIDES,
    )
    assert reusable_teacher(teacher_options(changed)) is None
    assert reusable_teacher(
        teacher_options(DemoOptions(**{**vars(changed), "teacher_epochs": TEACHER_EPOCHS}))
    )


def test_demo_rejects_bad_options(tmp_path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path), "--train-sentences", "many"]) == 2
    assert "--train-sentences must be a number or 'all'" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--teacher-epochs", "0"]) == 2
    assert "teacher_epochs must be an integer >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_arch_overrides(["lstm_hidden"])
    assert parse_arch_overrides(["transformer=null", "lstm_hidden=8", "x=abc"]) == {
        "transformer": None,
        "lstm_hidden": 8,
        "x": "abc",
    }
    with pytest.raises(ValueError, match="train_sentences"):
        run_demo(DemoOptions(out=str(tmp_path), train_sentences=0))


def test_command_line_defaults_are_the_demo_budget() -> None:
    from structkd.cli import build_parser

    args = build_parser().parse_args(["demo"])
    defaults = DemoOptions()
    assert int(args.train_sentences) == defaults.train_sentences
    for name in (
        "out",
        "train",
        "dev",
        "test",
        "teacher_epochs",
        "student_epochs",
        "seed",
        "batch_size",
        "learning_rate",
        "teacher_arch",
        "student_arch",
        "num_threads",
        "cache_dir",
    ):
        assert getattr(args, name) == getattr(defaults, name), name
    assert not args.quick and not args.retrain_teacher
