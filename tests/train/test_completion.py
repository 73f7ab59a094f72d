"""Model directories are complete only with their completion marker (written last, with the
hashes of model.pt and metrics.json); a run removes an earlier run's outputs first; Lightning's
handling of an interrupt becomes ``RunInterrupted``; cache scratch directories never survive."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from structkd.api import DistillOptions, distill, evaluate, train
from structkd.tasks import get_task
from structkd.train import checkpoint
from structkd.train.checkpoint import COMPLETE_FILE, MODEL_FILE, read_model
from structkd.train.fit import fit
from structkd.train.interrupts import RunInterrupted
from structkd.train.store import build_entry, fingerprint, locked
from tests.tasks.ner import tiny_options, write_conll


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny model directory (and its data)."""
    tmp_path = tmp_path_factory.mktemp("complete")
    write_conll(tmp_path / "train.conll", 24, seed=1)
    train(tiny_options(tmp_path, "model", epochs=3))
    return tmp_path


def _copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_a_finished_run_writes_the_marker_last(finished) -> None:
    model_dir = finished / "model"
    marker = json.loads((model_dir / COMPLETE_FILE).read_text())
    assert marker["sha256"] == {
        name: checkpoint.file_sha256(model_dir / name) for name in ("model.pt", "metrics.json")
    }
    written = {name: (model_dir / name).stat().st_mtime_ns for name in os.listdir(model_dir)}
    assert written[COMPLETE_FILE] == max(written.values())
    assert sorted(written) == ["complete.json", "config.json", "metrics.json", "model.pt"]
    assert read_model(model_dir).task == "ner"


def test_a_directory_without_the_marker_is_refused_by_every_consumer(finished, tmp_path) -> None:
    killed = _copy(finished / "model", tmp_path / "killed")
    (killed / COMPLETE_FILE).unlink()
    (killed / "metrics.json").unlink()  # a killed run: the best model so far, no metrics
    with pytest.raises(ValueError, match="training did not finish") as error:
        read_model(killed)
    assert str(killed) in str(error.value) and "no complete.json" in str(error.value)
    with pytest.raises(ValueError, match="training did not finish"):
        evaluate(killed, str(finished / "train.conll"))
    with pytest.raises(ValueError, match="training did not finish"):
        distill(
            DistillOptions(
                **vars(tiny_options(finished, "unused", out=str(tmp_path / "student"), epochs=3)),
                teachers=[str(killed)],
                method="struct",
            )
        )
    assert not (tmp_path / "student" / MODEL_FILE).exists()


def test_an_old_directory_with_metrics_but_no_marker_names_the_fix(finished, tmp_path) -> None:
    old = _copy(finished / "model", tmp_path / "old")
    (old / COMPLETE_FILE).unlink()
    with pytest.raises(ValueError, match="training did not finish") as error:
        read_model(old)
    assert f"python -m structkd.train.checkpoint mark-complete {old}" in str(error.value)
    done = subprocess.run(
        [sys.executable, "-m", "structkd.train.checkpoint", "mark-complete", str(old)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert read_model(old).task == "ner"


def test_a_malformed_marker_or_changed_metrics_are_refused(finished, tmp_path) -> None:
    model_dir = _copy(finished / "model", tmp_path / "copy")
    (model_dir / COMPLETE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=r"training did not finish .*unreadable or malformed"):
        read_model(model_dir)
    checkpoint.mark_complete(model_dir)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    metrics["dev"]["f1"] = 1.0
    (model_dir / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"metrics\.json does not match its recorded hash"):
        read_model(model_dir)


def _largest_tensor_offset(path: Path) -> tuple[int, int]:
    """(offset in the file, size) of the largest stored tensor of a ``torch.save`` zip."""
    with zipfile.ZipFile(path) as archive:
        info = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    with open(path, "rb") as stream:
        stream.seek(info.header_offset)
        header = stream.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length, info.file_size


def test_a_corrupted_model_file_is_refused(finished, tmp_path) -> None:
    model_dir = _copy(finished / "model", tmp_path / "corrupted")
    path = model_dir / MODEL_FILE
    offset, size = _largest_tensor_offset(path)
    assert size >= 800
    data = bytearray(path.read_bytes())
    start = offset + size // 2 - 200
    data[start : start + 400] = bytes(b ^ 0x5A for b in data[start : start + 400])
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch itself accepts it: only the hash tells
    with pytest.raises(ValueError, match=r"model.pt does not match its recorded hash") as error:
        read_model(model_dir)
    assert "corrupted or changed after training" in str(error.value)
    with pytest.raises(ValueError, match="does not match its recorded hash"):
        evaluate(model_dir, str(finished / "train.conll"))


def test_a_new_run_removes_the_old_outputs_before_training(finished, tmp_path) -> None:
    model_dir = _copy(finished / "model", tmp_path / "rerun")
    (model_dir / ".metrics.json.123.tmp").write_text("{}")
    (model_dir / "notes.txt").write_text("mine")
    options = tiny_options(finished, "rerun", out=str(model_dir), epochs=2)
    run = get_task("ner").prepare_train(options)

    def killed(model, device):  # the run dies after training, before its final scores
        raise RunInterrupted(signal.SIGTERM)

    run.hooks.final_scores = killed
    with pytest.raises(RunInterrupted):
        fit(run)
    assert sorted(os.listdir(model_dir)) == ["config.json", "model.pt", "notes.txt"]
    with pytest.raises(ValueError, match="training did not finish"):
        read_model(model_dir)


def test_lightning_does_not_swallow_an_interrupt(finished, tmp_path) -> None:
    run = get_task("ner").prepare_train(tiny_options(finished, "swallowed", epochs=50))
    gold_loss, calls = run.hooks.gold_loss, []

    def interrupted_at_the_fifth_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # what SIGINT raises in Python
        return gold_loss(*args, **kwargs)

    run.hooks.gold_loss = interrupted_at_the_fifth_step
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted) as error:
        fit(run)  # Lightning turns KeyboardInterrupt into SystemExit(1)
    assert error.value.signum == signal.SIGINT and error.value.exit_status == 130
    assert signal.getsignal(signal.SIGINT) is handler  # not left ignored by Lightning
    assert not (tmp_path / "swallowed" / COMPLETE_FILE).exists()


# ---------------------------------------------------------------------------------------------
# Cache scratch directories


def _scratch(root: Path) -> list[str]:
    return sorted(path.name for path in root.glob(".*.building"))


@pytest.mark.parametrize("error", [RuntimeError("bug"), KeyboardInterrupt(), RunInterrupted(15)])
def test_a_failed_or_interrupted_build_leaves_no_scratch(tmp_path, error) -> None:
    def build(scratch: Path) -> dict:
        (scratch / "part.npy").write_bytes(b"x" * 100)
        raise error

    with pytest.raises(type(error)):
        build_entry(tmp_path, {"what": "failing"}, build)
    assert _scratch(tmp_path) == [] and not (tmp_path / fingerprint({"what": "failing"})).exists()
    directory, built = build_entry(tmp_path, {"what": "failing"}, lambda scratch: {"n": 1})
    assert built and json.loads((directory / "meta.json").read_text())["n"] == 1


def test_scratch_of_killed_builds_is_removed_when_the_lock_is_taken(tmp_path) -> None:
    root = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import sys, time
        from structkd.train.store import build_entry
        def build(scratch):
            (scratch / "half.npy").write_bytes(b"x" * 10)
            print("building", flush=True)
            time.sleep(120)
        build_entry({str(root)!r}, {{"what": sys.argv[1]}}, build)
        """
    )
    left = []
    for what in ("same", "other"):  # the entry built next, then another entry
        process = subprocess.Popen(
            [sys.executable, "-c", script, what], stdout=subprocess.PIPE, text=True
        )
        try:
            assert process.stdout.readline() == "building\n"
        finally:
            process.kill()  # SIGKILL: no finally block runs
            process.wait(30)
        # the second build removed the first one's scratch when it took its own lock
        left = _scratch(root)
        assert left == [f".{fingerprint({'what': what})}.{process.pid}.building"]
    # a build in progress elsewhere (its lock held) keeps its scratch directory
    busy = fingerprint({"what": "busy"})
    (root / f".{busy}.{os.getpid() + 1}.building").mkdir()
    with locked(root / f"{busy}.lock"):
        directory, built = build_entry(root, {"what": "same"}, lambda scratch: {})
        assert built and (directory / "meta.json").is_file()
        assert _scratch(root) == [f".{busy}.{os.getpid() + 1}.building"]
