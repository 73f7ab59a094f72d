"""SIGINT and SIGTERM during `structkd train` and `structkd experiment`: one line on standard
error, exit status 130/143, the run left incomplete, the experiment's workers stopped and its grid
resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from structkd.experiment import load_config, plan_experiment, read_result_keys, run_experiment
from structkd.train.checkpoint import COMPLETE_FILE, MODEL_FILE, read_model
from tests.tasks.ner import TINY, write_conll

TINY_ARGS = [f"--arch-override={key}={json.dumps(value)}" for key, value in TINY.items()]
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _wait_for(condition, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"exited early ({process.returncode}): {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for training to start")
        time.sleep(0.2)


def _finish(process: subprocess.Popen, signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"still running 120 s after signal {signum}") from None
    return process.returncode, stderr


def _last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.strip()][-1]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_training_with_its_status(tmp_path, signum, status) -> None:
    write_conll(tmp_path / "train.conll", 24, seed=1)
    out = tmp_path / "model"
    command = [
        sys.executable, "-m", "structkd", "train",
        "--train", str(tmp_path / "train.conll"), "--dev", str(tmp_path / "train.conll"),
        "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
        "--arch", "student-crf", *TINY_ARGS, "--epochs", "100000", "--batch-size", "8",
        "--no-early-stopping", "--no-progress", "--num-threads", "1",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=ENVIRONMENT
    )
    _wait_for((out / MODEL_FILE).exists, process)  # the best model of the first epoch
    returncode, stderr = _finish(process, signum)
    assert returncode == status, stderr[-3000:]
    name = signal.Signals(signum).name
    assert _last_line(stderr).startswith(f"structkd train: interrupted by {name}; the run did not")
    assert stderr.count("interrupted by") == 1
    assert (out / MODEL_FILE).exists() and not (out / COMPLETE_FILE).exists()
    assert not (out / "metrics.json").exists()
    with pytest.raises(ValueError, match="training did not finish"):
        read_model(out)


EXPERIMENT = """
[experiment]
name = "signals"
output_dir = "{out}"

[data]
dataset = "toy"
train = "{train}"
dev = "{train}"
test = "{train}"

[defaults]
epochs = 100000
batch_size = 8
num_threads = 1
patience = 100000
arch_overrides = {overrides}

[teachers.crf]
arch = "student-crf"
epochs = 2

[students.crf]
arch = "student-crf"

[[grid]]
cases = ["1a"]
methods = ["none", "struct"]
seeds = [1]
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def fake_run(spec, run_dir: Path, teacher_dirs) -> dict:
    """Metrics without training (the resumed grid)."""
    score = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "sentences_per_second": 1.0}
    return {"dev": score, "test": score}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigterm_stops_an_experiment_and_its_workers_and_it_resumes(tmp_path) -> None:
    write_conll(tmp_path / "train.conll", 24, seed=1)
    config_path = tmp_path / "signals.toml"
    config_path.write_text(
        EXPERIMENT.format(
            out=tmp_path / "out",
            train=tmp_path / "train.conll",
            overrides="{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in TINY.items()) + " }",
        ),
        encoding="utf-8",
    )
    config = load_config(config_path)
    plan = plan_experiment(config)
    teacher, *students = plan.runs
    assert teacher.kind == "teacher" and len(students) == 2
    command = [sys.executable, "-m", "structkd", "experiment", str(config_path), "--jobs", "2"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=ENVIRONMENT
    )
    student_models = [run.directory(config) / "model" / MODEL_FILE for run in students]
    _wait_for(lambda: all(path.exists() for path in student_models), process, seconds=300)
    workers = _children(process.pid)
    returncode, stderr = _finish(process, signal.SIGTERM)
    assert returncode == 143, stderr[-3000:]
    assert _last_line(stderr).startswith(
        "structkd experiment: interrupted by SIGTERM; finished runs are kept"
    )
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers and all(_gone(pid) for pid in workers)
    # the teacher finished (its rows kept), the students did not
    assert (teacher.directory(config) / "metrics.json").exists()
    assert {key[0] for key in read_result_keys(config.results_path)} == {teacher.run_id}
    for run in students:
        assert not (run.directory(config) / "metrics.json").exists()
        assert not (run.directory(config) / "model" / COMPLETE_FILE).exists()
    # the next call trains the interrupted runs only
    outcome = run_experiment(config, fake_run, log=lambda message: None, command="test")
    assert outcome.finished_before == [teacher.run_id]
    assert sorted(outcome.trained) == sorted(run.run_id for run in students)
