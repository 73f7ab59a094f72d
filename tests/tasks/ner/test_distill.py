"""`structkd distill`: the cached-target losses equal the distill layer's losses computed directly
from the teachers, every method trains, caches are reused, ensembles, unlabeled data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from structkd.api import DistillOptions, TrainOptions, distill, train
from structkd.data.batching import TaggingCollator
from structkd.distill import (
    posterior_kd_loss,
    structural_kd_loss,
    token_kd_loss,
    topk_kd_loss,
)
from structkd.tasks import get_task
from structkd.tasks.ner import targets as targets_module
from structkd.tasks.ner.model import load_tagger
from structkd.tasks.ner.targets import TargetReader, TargetSpec
from structkd.train.fit import build_lightning
from tests.tasks.ner import TINY, write_conll, write_tokens

prepare_distill = get_task("ner").prepare_distill


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two tiny CRF teachers (different seeds), a softmax one and a biaffine span one, trained on
    30 sentences."""
    root = tmp_path_factory.mktemp("teachers")
    write_conll(root / "train.conll", 30, seed=1)
    write_conll(root / "dev.conll", 10, seed=2)
    write_tokens(root / "unlabeled.txt", 12, seed=3)
    span = {"transformer": None, "span_ffnn_dim": 8}
    for name, seed, arch, extra in (("crf1", 0, "student-crf", {}), ("crf2", 1, "student-crf", {}),
                                    ("softmax", 0, "student-softmax", {}),
                                    ("span", 0, "teacher-span", span)):  # fmt: skip
        train(
            TrainOptions(
                train=str(root / "train.conll"),
                dev=str(root / "dev.conll"),
                out=str(root / name),
                arch=arch,
                arch_overrides={**TINY, **extra},
                epochs=4,
                batch_size=8,
                learning_rate=0.02,
                seed=seed,
                patience=None,
                progress=False,
                cache_dir=str(root / "cache"),
            )
        )
    return root


def options(root, tmp_path, **changes) -> DistillOptions:
    fields = {
        "train": str(root / "train.conll"),
        "dev": str(root / "dev.conll"),
        "out": str(tmp_path / "student"),
        "teachers": [str(root / "crf1")],
        "arch": "student-crf",
        "arch_overrides": dict(TINY),
        "epochs": 1,
        "batch_size": 8,
        "learning_rate": 0.01,
        "patience": None,
        "progress": False,
        "cache_dir": str(tmp_path / "cache"),
        "k": 3,
    }
    fields.update(changes)
    return DistillOptions(**fields)


def first_batch_and_direct(run, teacher_dirs):
    """The first training batch, the student's distribution on it, and the teachers'
    distributions on the same sentences (computed now, not from the cache)."""
    module, datamodule = build_lightning(run)
    batch = next(iter(datamodule.train_dataloader()))
    sentences = [s for _, s in run.train_parts[0].items]
    items = [(int(i), sentences[int(i)].without_tags()) for i in batch.batch.sentence_ids]
    teachers = []
    for directory in teacher_dirs:
        teacher, info = load_tagger(directory)
        teachers.append(teacher(TaggingCollator(info.vocab)(items)))
    return module, batch, teachers


CASES = [
    ("struct", "student-crf", 2.0, "global", "crf1"),
    ("struct", "student-softmax", 2.0, "global", "crf1"),
    ("struct", "student-softmax", 2.0, "local", "crf1"),
    ("struct", "student-crf", 1.0, "local", "crf1"),
    ("token", "student-crf", 2.0, "global", "crf1"),
    ("topk", "student-crf", 2.0, "global", "crf1"),
    ("topwk", "student-softmax", 1.5, "global", "crf1"),
    ("posterior", "student-crf", 2.0, "global", "crf1"),
    ("struct", "student-crf", 2.0, "global", "span"),
    ("struct", "student-softmax", 1.0, "global", "span"),
    ("topwk", "student-crf", 1.0, "global", "span"),
    ("posterior", "student-softmax", 2.0, "global", "span"),
]


@pytest.mark.parametrize(("method", "arch", "temperature", "mode", "teacher_name"), CASES)
def test_first_step_loss_equals_direct_loss(
    teachers, tmp_path, method, arch, temperature, mode, teacher_name
):
    """The KD loss of the first training step, from the cache, equals the distill layer's loss
    computed from the teacher's distribution; the step loss is ``T^2 * KD`` (lambda = 1)."""
    run = prepare_distill(
        options(
            teachers, tmp_path, method=method, arch=arch, temperature=temperature,
            temperature_mode=mode, teachers=[str(teachers / teacher_name)],
        )
    )  # fmt: skip
    module, batch, (teacher,) = first_batch_and_direct(run, [teachers / teacher_name])
    losses = module.step_losses(batch)
    student = module.model(batch.batch)
    if method == "struct":
        direct = structural_kd_loss(teacher, student, temperature, mode)
    elif method == "token":
        direct = token_kd_loss(teacher, student, temperature)
    elif method in ("topk", "topwk"):
        weighted = method == "topwk"
        direct = topk_kd_loss(teacher, student, 3, weighted=weighted, temperature=temperature)
    else:
        direct = posterior_kd_loss(teacher, student, temperature)
    kd, direct = float(losses["kd"].detach()), float(direct.detach())
    assert kd == pytest.approx(direct, rel=1e-5, abs=1e-5)
    assert float(losses["lambda"]) == 1.0
    assert float(losses["loss"].detach()) == pytest.approx(temperature**2 * direct, rel=1e-5)
    assert kd > 0


def test_ensemble_loss_is_the_mixture(teachers, tmp_path) -> None:
    run = prepare_distill(
        options(
            teachers, tmp_path, teachers=[str(teachers / "crf1"), str(teachers / "crf2")],
            teacher_weights=[0.3, 0.7], temperature=2.0,
        )
    )  # fmt: skip
    module, batch, pair = first_batch_and_direct(run, [teachers / "crf1", teachers / "crf2"])
    student = module.model(batch.batch)
    direct = structural_kd_loss(pair, student, 2.0, weights=[0.3, 0.7])
    kd = module.step_losses(batch)["kd"].detach()
    assert float(kd) == pytest.approx(float(direct.detach()), rel=1e-5)
    assert len(run.extra["distillation"]["caches"]) == 2  # one cache entry per teacher


@pytest.mark.parametrize("method", ["struct", "token", "topk", "topwk", "posterior", "none"])
def test_every_method_trains(teachers, tmp_path, method) -> None:
    arch = "student-softmax" if method == "token" else "student-crf"
    metrics = distill(options(teachers, tmp_path, method=method, arch=arch, temperature=2.0))
    assert metrics["distillation"]["method"] == method
    assert 0.0 <= metrics["dev"]["f1"] <= 1.0 and metrics["optimizer_steps"] == 4
    assert np.isfinite(metrics["history"][0]["train_loss"])
    # every epoch records its mean gold and KD losses and KD weight
    first = metrics["history"][0]
    assert first["train_gold_loss"] > 0
    if method == "none":
        assert "train_kd_loss" not in first and "kd_weight" not in first
    else:
        assert first["train_kd_loss"] > 0 and 0.0 <= first["kd_weight"] <= 1.0
    expected_head = "softmax" if arch == "student-softmax" else "crf"
    assert load_tagger(metrics["model_dir"])[1].config.head == expected_head


def test_cache_is_reused_and_holds_the_teacher_outputs(teachers, tmp_path, monkeypatch) -> None:
    first = distill(options(teachers, tmp_path, temperature=2.0))
    assert [entry["built"] for entry in first["distillation"]["caches"]] == [True]

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran although its outputs are cached")

    monkeypatch.setattr(targets_module, "teacher_half", no_teacher)
    second = distill(options(teachers, tmp_path, temperature=2.0, out=str(tmp_path / "again")))
    assert [entry["built"] for entry in second["distillation"]["caches"]] == [False]
    assert second["distillation"]["caches"][0]["path"] == first["distillation"]["caches"][0]["path"]
    monkeypatch.undo()

    # the cached values equal the teacher's outputs computed now on another batch composition
    from pathlib import Path

    spec = TargetSpec("struct", temperature=2.0, student_kind="crf")
    reader = TargetReader([Path(first["distillation"]["caches"][0]["path"])], spec, torch.ones(1))
    sentences = [s for _, s in prepare_distill(options(teachers, tmp_path)).train_parts[0].items]
    ids = [7, 0, 13, 2]
    teacher, info = load_tagger(teachers / "crf1")
    batch = TaggingCollator(info.vocab)([(i, sentences[i].without_tags()) for i in ids])
    expected = spec.teacher_outputs(teacher(batch), info.vocab.n_labels)
    read = reader(torch.tensor(ids), batch.lengths)
    for name in ("marginals", "pair_marginals"):
        assert torch.allclose(read.per_teacher[0][name], expected[name].detach(), atol=1e-6)

    # another temperature is another cache entry
    third = distill(options(teachers, tmp_path, temperature=3.0, out=str(tmp_path / "t3")))
    assert [entry["built"] for entry in third["distillation"]["caches"]] == [True]


def test_kbest_cache_contents(teachers, tmp_path) -> None:
    spec = TargetSpec("topk", temperature=1.0, k=3)
    run = prepare_distill(options(teachers, tmp_path, method="topk"))
    sentences = [s for _, s in run.train_parts[0].items]
    reader = run.target_readers["train"]
    ids = [3, 1]
    teacher, info = load_tagger(teachers / "crf1")
    batch = TaggingCollator(info.vocab)([(i, sentences[i].without_tags()) for i in ids])
    distribution = teacher(batch)
    tags, scores = distribution.kbest(3)
    read = reader(torch.tensor(ids), batch.lengths).per_teacher[0]
    assert torch.equal(read["kbest_tags"], tags)
    log_probs = scores - distribution.log_partition
    assert torch.allclose(read["kbest_log_probs"], log_probs.detach(), atol=1e-5)
    assert spec.key_inputs() == {"kind": "kbest", "temperature": 1.0, "k": 3}


def test_labeled_fraction_and_unlabeled_text(teachers, tmp_path) -> None:
    run = prepare_distill(
        options(
            teachers, tmp_path, labeled_fraction=0.5, unlabeled=str(teachers / "unlabeled.txt"),
            temperature=2.0,
        )
    )  # fmt: skip
    assert [(part.source, len(part.items), part.labeled) for part in run.train_parts] == [
        ("train", 15, True),
        ("train", 15, False),
        ("unlabeled", 12, False),
    ]
    assert [item[0] for item in run.train_parts[1].items] == list(range(15, 30))
    module, datamodule = build_lightning(run)
    seen = {True: 0, False: 0}
    for batch in datamodule.train_dataloader():
        seen[batch.labeled] += batch.batch_size
        losses = module.step_losses(batch)
        if not batch.labeled:
            assert batch.batch.label_ids is None and "gold" not in losses
            loss, kd = float(losses["loss"].detach()), float(losses["kd"].detach())
            assert loss == pytest.approx(4.0 * kd)
        else:
            assert batch.batch.label_ids is not None and "gold" in losses
    assert seen == {True: 15, False: 27}
    metrics = distill(run.options)
    assert metrics["data"]["n_labeled"] == 15 and metrics["data"]["n_unlabeled"] == 27
    assert {entry["data"] for entry in metrics["distillation"]["caches"]} == {
        str(teachers / "train.conll"),
        str(teachers / "unlabeled.txt"),
    }
    # what the targets carry beyond the gold tags, per part
    diagnostics = metrics["target_diagnostics"]
    assert set(diagnostics) == {"train (labeled)", "train (unlabeled)", "unlabeled (unlabeled)"}
    labeled = diagnostics["train (labeled)"]
    assert labeled["n_tokens"] == sum(len(s) for _, s in run.train_parts[0].items)
    assert 0 < labeled["mean_gold_probability"] <= 1 and 0 <= labeled["argmax_error"] <= 1
    assert labeled["mean_gold_probability"] <= labeled["mean_max_probability"] + 1e-12
    for values in diagnostics.values():
        assert values["mean_entropy"] >= 0 and 0 < values["mean_max_probability"] <= 1
    assert "mean_gold_probability" not in diagnostics["unlabeled (unlabeled)"]


def test_refused_pairings(teachers, tmp_path) -> None:
    softmax = [str(teachers / "softmax")]
    with pytest.raises(ValueError, match=r"softmax head.*unconstrained"):
        prepare_distill(options(teachers, tmp_path, teachers=softmax, arch="student-crf"))
    with pytest.raises(ValueError, match="CRF student"):
        prepare_distill(options(teachers, tmp_path, temperature=2.0, temperature_mode="local"))
    with pytest.raises(ValueError, match="local"):
        prepare_distill(options(teachers, tmp_path, method="token", temperature_mode="local"))
    with pytest.raises(ValueError, match="needs at least one --teacher"):
        prepare_distill(options(teachers, tmp_path, teachers=[]))
    pair = [str(teachers / "crf1"), str(teachers / "crf2")]
    with pytest.raises(ValueError, match="sum to 1"):
        prepare_distill(options(teachers, tmp_path, teacher_weights=[0.5, 0.6], teachers=pair))
    # a softmax teacher distills into a softmax student
    run = prepare_distill(options(teachers, tmp_path, teachers=softmax, arch="student-softmax"))
    module, batch, (teacher,) = first_batch_and_direct(run, [teachers / "softmax"])
    direct = structural_kd_loss(teacher, module.model(batch.batch))
    kd = module.step_losses(batch)["kd"].detach()
    assert float(kd) == pytest.approx(float(direct.detach()), rel=1e-5)


def test_case_3_softmax_teacher_into_an_unconstrained_crf_student(teachers, tmp_path) -> None:
    """Case 3: the structural KD loss from a softmax teacher to a CRF student without BIOES
    constraints is finite and equals the distill layer's loss computed directly."""
    softmax = [str(teachers / "softmax")]
    run = prepare_distill(
        options(teachers, tmp_path, teachers=softmax, arch="student-crf-unconstrained")
    )
    module, batch, (teacher,) = first_batch_and_direct(run, [teachers / "softmax"])
    direct = structural_kd_loss(teacher, module.model(batch.batch))
    kd = module.step_losses(batch)["kd"].detach()
    assert torch.isfinite(kd)
    assert float(kd) == pytest.approx(float(direct.detach()), rel=1e-5)


def test_every_method_starts_from_the_same_student(teachers, tmp_path) -> None:
    """Paired comparisons: one seed, one initialization, whatever the method (the no-KD student
    of a labeled fraction gets the vocabulary of all the training text too)."""
    states = []
    for method in ("none", "token", "struct"):
        changes = {"method": method, "labeled_fraction": 0.5, "arch": "student-softmax"}
        if method == "none":
            changes["teachers"] = []
        run = prepare_distill(options(teachers, tmp_path, **changes))
        states.append(run.model.state_dict())
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        assert all(torch.equal(state[name], states[0][name]) for name in state)
