"""The command line answers --help and --version, as installed and as a module."""

import subprocess
import sys

import pytest

from structkd import __version__
from structkd.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"structkd {__version__}"


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "structural knowledge distillation" in out.lower()


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "usage: structkd" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["frobnicate"])
    assert stop.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_module_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "structkd", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"structkd {__version__}"


def test_choices_and_defaults_come_from_the_tasks_and_the_method_table() -> None:
    from structkd.cli import build_parser
    from structkd.cli.models import training_fields
    from structkd.distill.methods import DEFAULT_METHOD, METHOD_NAMES
    from structkd.tasks import get_task, task_names

    parser = build_parser()
    for command in ("train", "distill"):
        for task in task_names():
            argv = [command, "--task", task, "--train", "t", "--dev", "d", "--out", "o"]
            fields = training_fields(parser.parse_args(argv))
            assert fields["arch"] == get_task(task).default_arch(command)
    args = parser.parse_args(["distill", "--train", "t", "--dev", "d", "--out", "o"])
    assert args.task == "ner" and args.method == DEFAULT_METHOD
    assert training_fields(args)["arch"] == "student-crf"
    for method in METHOD_NAMES:
        assert (
            parser.parse_args(
                ["distill", "--train", "t", "--dev", "d", "--out", "o", "--method", method]
            ).method
            == method
        )


def test_bad_choices_and_user_errors(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["train", "--task", "pos", "--train", "t", "--dev", "d", "--out", "o"])
    assert stop.value.code == 2 and "invalid choice" in capsys.readouterr().err
    # a user's mistake: one line on standard error, exit code 2
    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--data", "x.conll"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("structkd evaluate: error: ") and err.count("\n") == 1


def test_summary_is_written_by_the_task() -> None:
    from structkd.cli.models import summary
    from structkd.tasks import get_task

    dev = {"f1": 0.5, "precision": 0.4, "recall": 0.6, "sentences_per_second": 100.0}
    metrics = {
        "model_dir": "m",
        "best_epoch": 2,
        "training_seconds": 1.25,
        "n_parameters": 1234,
        "dev": dev,
        "test": dev,
    }
    lines = summary(metrics, "ner").splitlines()
    assert lines[0] == "model: m  (best epoch 2, 1.2 s of training, 1,234 parameters)"
    assert lines[1] == "dev  F1 50.00  P 40.00  R 60.00  (100 sentences/s)"
    assert lines[2] == get_task("ner").score_line("test", dev) == "test F1 50.00  P 40.00  R 60.00"
    assert summary({"model_dir": "m"}, "ner") == ""
