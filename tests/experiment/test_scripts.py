"""The analysis scripts of ``experiments/``: merging result files (``collect.py``) and comparing
a student with its teacher (``agreement.py``)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_collect_keeps_each_run_case_and_split_once(tmp_path: Path) -> None:
    collect = script("collect")
    row = {"run_id": "a", "case": "1a", "split": "test", "f1": 0.5}
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text(json.dumps(row) + "\n" + json.dumps({**row, "split": "dev"}) + "\n")
    second.write_text(
        json.dumps({**row, "f1": 0.9}) + "\n\n" + json.dumps({**row, "case": "2a"}) + "\n"
    )
    lines, given = collect.merge([first, second])
    kept = [json.loads(line) for line in lines]
    assert [(r["case"], r["split"], r["f1"]) for r in kept] == [
        ("1a", "test", 0.5),  # the first file's line wins
        ("1a", "dev", 0.5),
        ("2a", "test", 0.5),
    ]
    assert given == {first: 2, second: 1}
    second.write_text("{not json\n")
    with pytest.raises(SystemExit, match=r"second.jsonl:1: not a result line"):
        collect.merge([first, second])


def test_agreement_compares_in_the_teachers_label_order() -> None:
    agreement = script("agreement")
    # teacher labels O, B-X; the student lists them the other way round
    teacher = (
        ["O", "B-X"],
        [torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)],
        [torch.tensor([0, 1])],
    )
    student = (
        ["B-X", "O"],
        [torch.tensor([[0.3, 0.7], [0.6, 0.4]], dtype=torch.float64)],
        [torch.tensor([1, 1])],  # O, O in the student's ids
    )
    found = agreement.compare(teacher, student, [["O", "B-X"]])
    assert found["agreement"] == 0.5 and found["entity_agreement"] == 0.0
    assert found["gold_agreement"] == 0.5 and found["tokens"] == 2
    kl = 0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3)
    kl += 0.2 * math.log(0.2 / 0.4) + 0.8 * math.log(0.8 / 0.6)
    assert found["kl"] == pytest.approx(kl / 2)
    zero = (student[0], [torch.tensor([[0.0, 1.0], [0.6, 0.4]], dtype=torch.float64)], student[2])
    with pytest.raises(FloatingPointError, match="sentence 0"):
        agreement.compare(teacher, zero, [["O", "B-X"]])
