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
    argv += ["--train-sentences", "60", "--teacher-epochs", str(TEACHER_EPOCHS)]
    argv += ["--student-epochs", "3"]
    argv += ["--batch-size", "8", "--lr", "0.02"]
    for key, value in TEACHER_OVERRIDES.items():
        argv += ["--teacher-override", f"{key}={json.dumps(value)}"]
    for key, value in TINY.items():
        argv += ["--student-override", f"{key}={json.dumps(value)}"]
    return argv + list(extra)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Tiny CoNLL train/dev/test files (70/15/15 sentences) for the demo runs of this module."""
    tmp_path = tmp_path_factory.mktemp("demo")
    write_conll(tmp_path / "train.conll", 70, seed=1)
    write_conll(tmp_path / "dev.conll", 15, seed=2)
    write_conll(tmp_path / "test.conll", 15, seed=3)
    return tmp_path


def test_demo_trains_four_models_and_writes_the_report(demo_run, capsys) -> None:
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
        "student, Token KD",
        "student, structural KD",
    ]
    assert [row["arch"] for row in rows] == ["teacher-crf"] + ["student-crf"] * 3
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
    # half of the 60 sentences labeled (the teacher's data), the rest unlabeled text
    assert student["data"]["n_train_sentences"] == 60
    assert student["data"]["n_labeled"] == 30 and student["data"]["n_unlabeled"] == 30
    teacher = json.loads((tmp_path / "demo" / "teacher" / "metrics.json").read_text())
    assert teacher["data"]["n_train_sentences"] == 30
    no_kd = json.loads((tmp_path / "demo" / "student-none" / "metrics.json").read_text())
    assert no_kd["data"]["n_labeled"] == 30 and no_kd["data"]["n_unlabeled"] == 0
    # same initialization, but the KD term changed the student
    no_kd_state = read_model(rows[1]["model_dir"]).state_dict
    with_kd = read_model(rows[3]["model_dir"]).state_dict
    assert not all(torch.equal(no_kd_state[name], with_kd[name]) for name in no_kd_state)
    # the gains: differences of the rows' test F1
    gains = results["gains"]
    assert gains["over_none"] == pytest.approx(rows[3]["test_f1"] - rows[1]["test_f1"])
    assert gains["over_token"] == pytest.approx(rows[3]["test_f1"] - rows[2]["test_f1"])
    if rows[0]["test_f1"] > rows[1]["test_f1"]:
        gap = rows[0]["test_f1"] - rows[1]["test_f1"]
        assert gains["gap_closed"] == pytest.approx(gains["over_none"] / gap)
    assert "structural KD" in out and "no KD on test F1" in out
    # the table: printed and in the report, a header, a rule and four rows
    report = report_path.read_text()
    table = [line for line in report.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 4 and "sentences/s" in table[0] and "speed-up" in table[0]
    assert "structural KD" in table[5] and f"{rows[3]['test_f1']:.2f}" in table[5]
    assert "structkd demo --out" in report and "--student-epochs 3" in report
    assert "(first 60 sentences: the first 30 labeled" in report
    printed = [line for line in out.splitlines() if line.startswith(("teacher ", "student,"))]
    assert len(printed) == 4


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
        train_sentences=60,
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
    with pytest.raises(ValueError, match="labeled_fraction"):
        run_demo(DemoOptions(out=str(tmp_path), labeled_fraction=0.0))
    with pytest.raises(ValueError, match="unknown method"):
        run_demo(DemoOptions(out=str(tmp_path), methods=("none", "magic")))


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
        "labeled_fraction",
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


def test_a_killed_teacher_is_never_reused(demo_run, tmp_path) -> None:
    """A teacher whose training was started again and killed: its directory holds the new
    model.pt and no completion marker (the earlier metrics.json removed when the run started,
    or, as an older structkd left it, still there): it is trained again, not reused."""
    from structkd.api import train
    from structkd.tasks import get_task
    from structkd.train.fit import fit
    from structkd.train.interrupts import RunInterrupted

    options = teacher_options(
        DemoOptions(
            out=str(tmp_path / "demo"),
            train=str(demo_run / "train.conll"),
            dev=str(demo_run / "dev.conll"),
            test=str(demo_run / "test.conll"),
            train_sentences=20,
            teacher_epochs=2,
            batch_size=8,
            learning_rate=0.02,
            teacher_overrides=TEACHER_OVERRIDES,
        )
    )
    metrics = train(options)
    reused = reusable_teacher(options)
    assert reused is not None and reused["dev"] == metrics["dev"]
    old_metrics = (tmp_path / "demo" / "teacher" / "metrics.json").read_bytes()
    run = get_task(options.task).prepare_train(options)

    def killed(model, device):
        raise RunInterrupted(15)

    run.hooks.final_scores = killed
    with pytest.raises(RunInterrupted):
        fit(run)
    assert reusable_teacher(options) is None
    (tmp_path / "demo" / "teacher" / "metrics.json").write_bytes(old_metrics)
    assert reusable_teacher(options) is None
