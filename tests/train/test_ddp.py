"""Distillation in two CPU processes (Lightning DDP, gloo): both ranks train on their shard of
the batches, the dev entity counts are summed across them, rank 0 writes the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from structkd.api import TrainOptions, evaluate, train
from tests.tasks.ner import TINY, write_conll

TINY_ARGS = [f"--arch-override={key}={json.dumps(value)}" for key, value in TINY.items()]


@pytest.mark.ddp
def test_ddp_two_cpu_processes(tmp_path) -> None:
    torch.set_num_threads(1)
    write_conll(tmp_path / "train.conll", 24, seed=1)
    write_conll(tmp_path / "dev.conll", 11, seed=2)
    train(
        TrainOptions(
            train=str(tmp_path / "train.conll"),
            dev=str(tmp_path / "dev.conll"),
            out=str(tmp_path / "teacher"),
            arch="student-crf",
            arch_overrides=dict(TINY),
            epochs=2,
            batch_size=8,
            learning_rate=0.02,
            patience=None,
            progress=False,
            cache_dir=str(tmp_path / "cache"),
        )
    )
    command = [
        sys.executable, "-m", "structkd", "distill",
        "--teacher", str(tmp_path / "teacher"), "--method", "struct", "--temperature", "2",
        "--train", str(tmp_path / "train.conll"), "--dev", str(tmp_path / "dev.conll"),
        "--out", str(tmp_path / "student"), "--cache-dir", str(tmp_path / "cache"),
        "--arch", "student-crf", *TINY_ARGS, "--epochs", "2", "--batch-size", "4",
        "--no-early-stopping", "--no-progress", "--num-threads", "1",
        "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop("MASTER_PORT", None)
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=environment
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # 24 sentences in batches of 4: 6 batches, 3 per rank and epoch
    assert metrics["optimizer_steps"] == 6 and len(metrics["history"]) == 2
    # the dev F1 seen during training (counts summed over both ranks) is that of the whole dev set
    best = metrics["history"][metrics["best_epoch"]]
    assert best["dev_f1"] == pytest.approx(metrics["dev"]["f1"])
    result = evaluate(tmp_path / "student", str(tmp_path / "dev.conll"))
    assert result["f1"] == pytest.approx(metrics["dev"]["f1"])
