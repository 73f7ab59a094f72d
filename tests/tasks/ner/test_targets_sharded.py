"""Sharded teacher-target caches of the NER task: a tokenized text file read a shard at a time
(``TokenizedText``, the same sentences and fingerprint as ``load_text``), and entries built in
shards, by worker processes, from a list or from the file, holding the same targets for every
sentence id as an entry of one shard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from structkd.api import TrainOptions, train
from structkd.data.conll import DataError, read_tokenized
from structkd.tasks.ner.data import load_text
from structkd.tasks.ner.targets import TargetReader, TargetSpec, TokenizedText, ensure_targets
from structkd.train.store import ShardedArray, ShardPlan, read_meta
from tests.tasks.ner import TINY, write_conll, write_tokens


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny CRF teacher (1 epoch on 20 sentences) and 27 sentences of tokenized text."""
    root = tmp_path_factory.mktemp("sharded")
    write_conll(root / "train.conll", 20, seed=1)
    write_tokens(root / "text.txt", 27, seed=5)
    train(
        TrainOptions(
            train=str(root / "train.conll"),
            dev=str(root / "train.conll"),
            out=str(root / "crf"),
            arch="student-crf",
            arch_overrides=TINY,
            epochs=1,
            batch_size=8,
            patience=None,
            progress=False,
            cache_dir=str(root / "cache"),
        )
    )
    return root


def test_tokenized_text_reads_what_read_tokenized_reads(tmp_path) -> None:
    path = tmp_path / "text.txt"
    path.write_bytes("\ufeffThe cat\tsat \r\n\n  \nOn   the mat\nÉtienne a dit\n\n last\n".encode())
    text = TokenizedText(path)
    expected = read_tokenized(path)
    assert len(text) == len(expected) == 4
    assert list(text) == expected == text[0:4]
    assert text[1:3] == expected[1:3] and text[-1] == expected[-1] and text[3:3] == []
    assert text[::2] == expected[::2]
    assert text.fingerprint == load_text(str(path), file_format="tokens").fingerprint
    with pytest.raises(IndexError):
        text[4]

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"bad.txt, line 2: not valid UTF-8"):
        TokenizedText(bad)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        TokenizedText(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_bytes(b"\n \n")
    with pytest.raises(DataError, match="no sentences"):
        TokenizedText(tmp_path / "blank.txt")
    path.write_bytes(b"changed\n")
    with pytest.raises(DataError, match="changed since"):
        text[0]


def read_all(directory, spec, lengths) -> dict[str, torch.Tensor]:
    """Every sentence's targets of the entry ``directory``, in one batch (ids in order)."""
    reader = TargetReader([directory], spec, torch.ones(1))
    ids = torch.arange(len(lengths))
    return reader(ids, torch.tensor(lengths)).per_teacher[0]


@pytest.mark.parametrize(
    "spec", [TargetSpec("struct", temperature=2.0), TargetSpec("topk", k=2)], ids=str
)
def test_sharded_targets_equal_one_shard(teacher, tmp_path, spec) -> None:
    """Shards of 4 sentences, built by this process from a list and by 2 worker processes from
    the text file (the same key: the second finds the first's entry), hold the targets of one
    shard for every sentence (length-sorted batches differ, so up to float rounding)."""
    source = load_text(str(teacher / "text.txt"), file_format="tokens")
    lengths = source.lengths
    one, built = ensure_targets(
        teacher / "crf", source.sentences, source.fingerprint, spec, tmp_path / "one"
    )
    assert built and one is not None and ShardedArray.open(one, spec.quantities(17).popitem()[0])
    sharded, built = ensure_targets(
        teacher / "crf",
        source.sentences,
        source.fingerprint,
        spec,
        tmp_path / "many",
        batch_size=3,
        plan=ShardPlan(shard_size=4),
    )
    assert built and sharded is not None and sharded.name == one.name
    assert read_meta(sharded)["shards"]["starts"] == list(range(0, 27, 4))
    assert read_meta(sharded)["n_tokens"] == sum(lengths)
    expected, found = read_all(one, spec, lengths), read_all(sharded, spec, lengths)
    assert set(expected) == set(found) == set(spec.quantities(17))
    for name in expected:
        assert torch.allclose(found[name], expected[name], atol=1e-6), name

    text = TokenizedText(teacher / "text.txt")
    assert text.fingerprint == source.fingerprint
    again = ensure_targets(teacher / "crf", text, text.fingerprint, spec, tmp_path / "many")
    assert again == (sharded, False)
    if spec.method != "struct":
        return
    workers, built = ensure_targets(
        teacher / "crf",
        text,
        text.fingerprint,
        spec,
        tmp_path / "workers",
        plan=ShardPlan(shard_size=5, workers=2),
    )
    assert built and workers is not None and workers.name == one.name
    found = read_all(workers, spec, lengths)
    for name in expected:
        assert torch.allclose(found[name], expected[name], atol=1e-6), name
    ids = np.array([26, 4, 5, 19, 20])  # across the boundaries of shards of 5
    marginals = ShardedArray.open(workers, "marginals")
    for item in ids.tolist():
        assert np.allclose(marginals[item], expected["marginals"][item, : lengths[item]].numpy())


def test_distill_options_choose_the_target_shards_and_workers(teacher, tmp_path) -> None:
    """``structkd distill --target-workers 2 --target-shard-size 6``: the cache of the 27
    sentences of text is built in shards of 6 (5 of them) by 2 worker processes; bad values are
    refused by name."""
    import json
    from pathlib import Path

    from structkd.api import DistillOptions, distill
    from structkd.cli import main

    out = tmp_path / "sharded"
    command = ["distill", "--teacher", str(teacher / "crf"), "--method", "struct"]
    command += ["--train", str(teacher / "train.conll"), "--dev", str(teacher / "train.conll")]
    command += ["--unlabeled", str(teacher / "text.txt"), "--arch", "student-crf"]
    command += ["--epochs", "1", "--batch-size", "8", "--no-progress"]
    command += ["--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main([*command, "--target-workers", "2", "--target-shard-size", "6"]) == 0
    caches = json.loads((out / "metrics.json").read_text())["distillation"]["caches"]
    (text,) = [cache for cache in caches if cache["data"].endswith("text.txt")]
    shards = read_meta(Path(text["path"]))["shards"]
    assert shards["size"] == 6 and shards["starts"] == [0, 6, 12, 18, 24]
    for name in ("target_workers", "target_shard_size"):
        with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
            distill(
                DistillOptions(
                    train=str(teacher / "train.conll"),
                    dev=str(teacher / "train.conll"),
                    out=str(tmp_path / "refused"),
                    teachers=[str(teacher / "crf")],
                    **{name: 0},
                )
            )
