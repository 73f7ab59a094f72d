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


def test_predict_and_export_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from structkd.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["predict", "--model", "m", "--input", "i"])
    assert (args.input_format, args.format, args.scheme) == ("auto", "auto", "bioes")
    argv = ["predict", "--model", "m", "--input", "i", "--input-format", "raw", "--format", "json"]
    args = parser.parse_args(argv)
    assert (args.input_format, args.format) == ("raw", "json")
    # --format is the output format now; the input formats it used to take name the new flag
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--model", "m", "--input", "i", "--format", "tokens"])
    assert "the input format is --input-format tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--model", "m", "--input", "i", "--format", "xml"])
    assert "invalid choice: 'xml'" in capsys.readouterr().err
    args = parser.parse_args(["export", "--model", "m", "--out", "o"])
    assert (args.model, args.out, args.format) == ("m", "o", "onnx")


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


# --- issue 10: a model of the wrong task, --scheme ----------------------------------------------


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, one_thread):
    """A tiny NER tagger and a tiny dependency parser, with data of each task."""
    from structkd.api import TrainOptions, train
    from tests.tasks.dep.test_dep import TINY_PARSER, _treebank
    from tests.tasks.ner import TINY, write_conll

    root = tmp_path_factory.mktemp("two_models")
    write_conll(root / "ner.conll", 12, seed=1)
    (root / "dep.conllu").write_text(_treebank(8, 1), encoding="utf-8")
    common = {"epochs": 1, "progress": False, "cache_dir": str(root / "cache")}
    ner, dep = str(root / "ner-model"), str(root / "dep-model")
    ner_data, dep_data = str(root / "ner.conll"), str(root / "dep.conllu")
    ner_options = {"arch": "student-crf", "arch_overrides": dict(TINY)}
    dep_options = {"task": "dep", "arch": "parser-matrix-tree", "arch_overrides": dict(TINY_PARSER)}
    train(TrainOptions(train=ner_data, dev=ner_data, out=ner, **ner_options, **common))
    train(TrainOptions(train=dep_data, dev=dep_data, out=dep, **dep_options, **common))
    return root, {"ner": (ner, ner_data), "dep": (dep, dep_data)}


def _one_error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"structkd {argv[0]}: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(("task", "other"), [("ner", "dep"), ("dep", "ner")])
def test_a_model_of_the_other_task_is_named_as_such(two_models, capsys, task, other):
    root, models = two_models
    wrong, _ = models[other]  # a model of the other task, given where a `task` model is expected
    data = models[task][1]
    expected = f"{wrong!r} holds a {other!r} model, not a {task!r} model"
    argv = ["distill", "--task", task, "--teacher", wrong, "--train", data, "--dev", data,
            "--out", str(root / f"student-{task}"), "--cache-dir", str(root / "cache"),
            "--no-progress"]  # fmt: skip
    assert expected in _one_error_line(capsys, argv)
    argv = ["evaluate", "--task", task, "--model", wrong, "--data", data]
    assert expected in _one_error_line(capsys, argv)
    argv = ["predict", "--task", task, "--model", wrong, "--input", data,
            "--output", str(root / f"out-{task}")]  # fmt: skip
    assert expected in _one_error_line(capsys, argv)
    assert not (root / f"student-{task}").exists() and not (root / f"out-{task}").exists()


def test_scheme_flags_of_labeled_input(two_models, tmp_path, capsys):
    from structkd.cli import build_parser
    from structkd.cli.models import training_fields
    from structkd.data.conll import InferredIOB1Warning

    parser = build_parser()
    for command in ("train", "distill"):
        args = parser.parse_args([command, "--train", "t", "--dev", "d", "--out", "o"])
        assert training_fields(args)["scheme"] == "auto"
        argv = [command, "--train", "t", "--dev", "d", "--out", "o", "--scheme", "iob1"]
        assert training_fields(parser.parse_args(argv))["scheme"] == "iob1"
    assert parser.parse_args(["predict", "--model", "m", "--input", "i"]).scheme == "bioes"
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--model", "m", "--data", "d", "--scheme", "iobes"])
    capsys.readouterr()
    _, models = two_models
    model, _ = models["ner"]
    iob1 = tmp_path / "iob1.conll"
    iob1.write_text("Alice B-PER\nmet O\n\nthe O\nBob I-PER\n", encoding="utf-8")
    line = _one_error_line(capsys, ["evaluate", "--model", model, "--data", str(iob1),
                                    "--scheme", "iob2"])  # fmt: skip
    assert f"{iob1}, line 5: " in line and "IOB2 requires I-PER" in line
    assert main(["evaluate", "--model", model, "--data", str(iob1), "--scheme", "iob1"]) == 0
    with pytest.warns(InferredIOB1Warning, match="--scheme iob1 to confirm"):
        assert main(["evaluate", "--model", model, "--data", str(iob1)]) == 0
    # the input scheme of dependency data: a treebank has none
    dep_model, dep_data = models["dep"]
    line = _one_error_line(capsys, ["evaluate", "--model", dep_model, "--data", dep_data,
                                    "--scheme", "iob1"])  # fmt: skip
    assert "a treebank has no tag scheme" in line


def test_a_warning_is_one_line_on_stderr(two_models, tmp_path):
    """A user sees ``structkd: warning: ...`` on one line, not Python's warning format."""
    import subprocess
    import sys

    _, models = two_models
    model, _ = models["ner"]
    iob1 = tmp_path / "iob1.conll"
    iob1.write_text("Alice B-PER\nmet O\n\nthe O\nBob I-PER\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "structkd", "evaluate", "--model", model, "--data", str(iob1)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("structkd: warning: ")
    assert "--scheme iob1 to confirm" in lines[0]
