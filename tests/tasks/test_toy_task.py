"""A third task added through the protocol alone: this file defines and registers it, and the
engine, the API and the CLI train, distill and evaluate it end to end; nothing outside this file
knows it.

The toy task: each sentence is a list of small integers; a word's label is its value mod 3. A
model is an embedding and a linear layer scoring each word (a ``Factorized`` distribution over the
labels); the dev metric is token accuracy; structural KD goes through the library's method halves
(``structkd.distill.halves``) with the teacher's targets computed on the fly.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from structkd import api
from structkd.cli import main
from structkd.distill.halves import student_half, teacher_half
from structkd.structures.factorized import Factorized
from structkd.tasks import TASKS, CaseSpec, Task, get_task, register_task
from structkd.train.checkpoint import read_model, restore_weights, save_model
from structkd.train.data import Part
from structkd.train.fit import PreparedRun
from structkd.train.inference import sorted_batches
from structkd.train.module import KDSettings
from structkd.train.options import DistillOptions, TrainOptions, check_options
from structkd.train.runtime import configure_runtime, seed

N_WORDS, N_LABELS = 30, 3


def write_data(path: Path, n: int, seed_value: int) -> Path:
    """``n`` sentences of 2-8 words, one sentence per line (``word/label`` tokens)."""
    rng = random.Random(seed_value)
    lines = []
    for _ in range(n):
        words = [rng.randrange(N_WORDS) for _ in range(rng.randint(2, 8))]
        lines.append(" ".join(f"{w}/{w % N_LABELS}" for w in words))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_data(spec: str) -> list[list[tuple[int, int]]]:
    return [
        [tuple(int(x) for x in token.split("/")) for token in line.split()]
        for line in Path(spec).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


@dataclass
class ToyBatch:
    sentence_ids: Tensor
    lengths: Tensor
    words: Tensor  # [B, N]
    labels: Tensor | None  # [B, N], -1 at padding

    @property
    def batch_size(self) -> int:
        return int(self.words.shape[0])

    def to(self, device: Any, non_blocking: bool = False) -> ToyBatch:
        labels = None if self.labels is None else self.labels.to(device)
        return replace(
            self,
            sentence_ids=self.sentence_ids.to(device),
            lengths=self.lengths.to(device),
            words=self.words.to(device),
            labels=labels,
        )

    def without_labels(self) -> ToyBatch:
        return replace(self, labels=None)


def collate(items: list[tuple[int, list[tuple[int, int]]]]) -> ToyBatch:
    width = max(len(sentence) for _, sentence in items)
    words = torch.zeros(len(items), width, dtype=torch.long)
    labels = torch.full((len(items), width), -1, dtype=torch.long)
    for row, (_, sentence) in enumerate(items):
        for column, (word, label) in enumerate(sentence):
            words[row, column], labels[row, column] = word, label
    return ToyBatch(
        torch.tensor([index for index, _ in items]),
        torch.tensor([len(sentence) for _, sentence in items]),
        words,
        labels,
    )


class ToyModel(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.embed = torch.nn.Embedding(N_WORDS, dim)
        self.out = torch.nn.Linear(dim, N_LABELS)

    def forward(self, batch: ToyBatch) -> Factorized:
        return Factorized(self.out(self.embed(batch.words)), batch.lengths)


class ToyHooks:
    metric = "accuracy"

    def __init__(self, arch: str, dev: list, test: list | None, options: TrainOptions):
        self.arch, self.dev, self.test, self.options = arch, dev, test, options

    def forward(self, model: ToyModel, batch: ToyBatch) -> Factorized:
        return model(batch)

    def gold_loss(self, model: ToyModel, batch: ToyBatch, output: Factorized) -> Tensor:
        return -output.log_prob(batch.labels.clamp(min=0)).mean()

    def kd_loss(self, output: Factorized, targets: dict, kd: KDSettings) -> Tensor:
        loss = student_half(kd.method, output, [targets], torch.ones(1), temperature=kd.temperature)
        return loss.mean()

    def zero_counts(self) -> Tensor:
        return torch.zeros(2, dtype=torch.long)

    def dev_counts(self, model: ToyModel, batch: ToyBatch) -> Tensor:
        predicted = model(batch).argmax
        mask = batch.labels >= 0
        return torch.stack([((predicted == batch.labels) & mask).sum(), mask.sum()]).long()

    def dev_scores(self, counts: Tensor) -> dict[str, Any]:
        return {"accuracy": float(counts[0]) / max(1, int(counts[1]))}

    def history_scores(self, scores: dict[str, Any]) -> dict[str, Any]:
        return {"dev_accuracy": scores["accuracy"]}

    def optimizer(self, parameters: Iterable[Tensor], learning_rate: float) -> Any:
        return torch.optim.Adam(parameters, lr=learning_rate)

    def save(self, directory: str | os.PathLike[str], model: ToyModel) -> None:
        config = {"dim": model.dim}
        save_model(
            directory,
            model,
            task="toy",
            arch=self.arch,
            config=config,
            vocab={},
            label_scheme="mod3",
            view={"config": config},
        )

    def load(self, directory: str | os.PathLike[str], device: str) -> ToyModel:
        return load_toy(directory, device)

    def model_entries(self, model: ToyModel) -> dict[str, Any]:
        return {"config": {"dim": model.dim}}

    def n_parameters(self, model: ToyModel) -> int:
        return sum(p.numel() for p in model.parameters())

    def final_scores(self, model: ToyModel, device: str) -> dict[str, dict[str, Any]]:
        found = {"dev": {"data": "dev", **score(model, self.dev, device)}}
        if self.test is not None:
            found["test"] = {"data": "test", **score(model, self.test, device)}
        return found


def load_toy(directory: str | os.PathLike[str], device: str = "cpu") -> ToyModel:
    model_file = read_model(directory, task="toy")
    return restore_weights(ToyModel(model_file.config["dim"]), model_file, device)


def score(model: ToyModel, sentences: list, device: str = "cpu") -> dict[str, Any]:
    counts = torch.zeros(2, dtype=torch.long)
    with torch.inference_mode():
        for _, batch in sorted_batches(sentences, collate, 16, device):
            predicted = model(batch).argmax
            mask = batch.labels >= 0
            counts += torch.stack([((predicted == batch.labels) & mask).sum(), mask.sum()])
    return {"accuracy": float(counts[0]) / int(counts[1]), "sentences_per_second": 1.0}


class TeacherReader:
    """Teacher targets on the fly (a real task caches them with ``structkd.train.store``)."""

    def __init__(self, teacher: ToyModel, sentences: list, kd: KDSettings):
        self.teacher, self.sentences, self.kd = teacher, sentences, kd

    def __call__(self, sentence_ids: Tensor, lengths: Tensor) -> Any:
        batch = collate([(int(i), self.sentences[int(i)]) for i in sentence_ids])
        with torch.no_grad():
            return _Targets(
                teacher_half(
                    self.kd.method,
                    self.teacher(batch),
                    student_kind="factorized",
                    n_labels=N_LABELS,
                    temperature=self.kd.temperature,
                )
            )


class _Targets(dict):
    def to(self, device: Any, non_blocking: bool = False) -> _Targets:
        return _Targets({name: value.to(device) for name, value in self.items()})


class ToyTask(Task):
    name = "toy"
    title = "toy tagging"
    scores = ("accuracy",)
    primary_metric = "accuracy"
    report_scores = ("accuracy",)
    score_titles: ClassVar[Mapping[str, str]] = {"accuracy": "Acc"}
    kd_methods = ("none", "struct", "token")
    cases: ClassVar[Mapping[str, CaseSpec]] = {"t": CaseSpec("toy", "toy")}
    default_archs: ClassVar[Mapping[str, str]] = {"train": "toy-big", "distill": "toy-small"}

    def architectures(self) -> tuple[str, ...]:
        return ("toy-big", "toy-small")

    def override_fields(self, kind: str) -> tuple[str, frozenset[str]]:
        return "toy config", frozenset({"dim"})

    def count_sentences(self, data: str, *, max_sentences: int | None = None) -> int:
        return len(read_data(data)[:max_sentences])

    def _run(self, options: TrainOptions, command: str, readers: dict, kd: Any) -> PreparedRun:
        configure_runtime(options.num_threads)
        train = read_data(options.train)[: options.max_train_sentences]
        dev = read_data(options.dev)
        test = None if options.test is None else read_data(options.test)
        seed(options.seed)
        dim = options.arch_overrides.get("dim", 16 if options.arch == "toy-big" else 4)
        model = ToyModel(dim)
        if kd is not None:
            teacher = load_toy(options.teachers[0])
            readers = {"train": TeacherReader(teacher, train, kd)}
        return PreparedRun(
            options=options,
            command=command,
            model=model,
            hooks=ToyHooks(options.arch, dev, test, options),
            train_parts=[Part("train", list(enumerate(train)), labeled=True)],
            dev_part=Part("dev", list(enumerate(dev)), labeled=True),
            collators={"train": collate, "dev": collate},
            target_readers=readers,
            kd=kd,
        )

    def prepare_train(self, options: TrainOptions) -> PreparedRun:
        check_options(options)
        return self._run(options, "train", {}, None)

    def prepare_distill(self, options: DistillOptions) -> PreparedRun:
        self.check_distill_options(options)
        return self._run(options, "distill", {}, KDSettings.of(options))

    def evaluate(self, model_dir, data, **kwargs) -> dict[str, Any]:
        return {"data": data, **score(load_toy(model_dir), read_data(data))}

    def score_line(self, name: str, scores: Mapping[str, Any]) -> str:
        return f"{name:<4} accuracy {100 * scores['accuracy']:.2f}"

    def format_scores(self, result: Mapping[str, Any]) -> str:
        return self.score_line("all", result)


@pytest.fixture
def toy(tmp_path):
    task = register_task(ToyTask())
    data = {
        split: write_data(tmp_path / f"{split}.txt", n, seed_value)
        for split, n, seed_value in (("train", 120, 1), ("dev", 30, 2), ("test", 30, 3))
    }
    yield task, data
    TASKS.pop("toy")


def test_toy_task_trains_distills_and_evaluates_end_to_end(toy, tmp_path, one_thread) -> None:
    task, data = toy
    assert get_task("toy") is task
    common = {
        "task": "toy",
        "train": str(data["train"]),
        "dev": str(data["dev"]),
        "test": str(data["test"]),
        "epochs": 8,
        "learning_rate": 0.05,
        "progress": False,
        "patience": None,
        "cache_dir": str(tmp_path / "cache"),
    }
    teacher = api.train(TrainOptions(out=str(tmp_path / "teacher"), arch="toy-big", **common))
    assert teacher["task"] == "toy" and teacher["best_epoch"] is not None
    assert teacher["dev"]["accuracy"] > 0.9  # word mod 3 is learnable exactly
    assert len(teacher["history"]) == 8 and "dev_accuracy" in teacher["history"][0]
    written = json.loads((tmp_path / "teacher" / "metrics.json").read_text(encoding="utf-8"))
    assert written["test"]["accuracy"] == teacher["test"]["accuracy"]

    student = api.distill(
        DistillOptions(
            out=str(tmp_path / "student"),
            arch="toy-small",
            teachers=[str(tmp_path / "teacher")],
            method="struct",
            temperature=2.0,
            kd_schedule="constant",
            kd_weight=0.5,
            **common,
        )
    )
    assert student["command"] == "distill" and student["dev"]["accuracy"] > 0.5
    evaluated = api.evaluate(str(tmp_path / "student"), str(data["test"]))
    assert evaluated["accuracy"] == pytest.approx(student["test"]["accuracy"])
    with pytest.raises(ValueError, match="the toy tagging task has no predictor"):
        api.load(str(tmp_path / "student"))  # serving hooks are optional

    # the task's own facts are what the checks read: a method it does not implement is refused
    with pytest.raises(ValueError, match="--task toy supports the KD methods"):
        task.prepare_distill(
            DistillOptions(out=str(tmp_path / "x"), teachers=["t"], method="topk", **common)
        )
    # and so are fold teachers (``fold_teachers`` is False): no --folds, no out-of-fold targets
    with pytest.raises(ValueError, match="--task toy cannot train fold teachers"):
        api.train(TrainOptions(out=str(tmp_path / "folds"), arch="toy-big", folds=2, **common))
    with pytest.raises(ValueError, match="--task toy has no fold teachers"):
        task.prepare_distill(
            DistillOptions(
                out=str(tmp_path / "x"),
                teachers=[str(tmp_path / "teacher")],
                teacher_targets="out-of-fold",
                **common,
            )
        )


def test_toy_task_through_the_cli(toy, tmp_path, capsys, one_thread) -> None:
    _, data = toy
    code = main(
        [
            "train",
            "--task",
            "toy",
            "--train",
            str(data["train"]),
            "--dev",
            str(data["dev"]),
            "--out",
            str(tmp_path / "cli"),
            "--epochs",
            "2",
            "--no-progress",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(tmp_path / "cli"), "--data", str(data["dev"])]) == 0
    assert capsys.readouterr().out.startswith("all  accuracy")
