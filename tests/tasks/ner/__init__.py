"""Tests of the training layer. Shared helpers: tiny CoNLL data written by the tests, tiny tagger
configurations (no GloVe, no transformer) so that each training run takes about a second."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

TINY: dict[str, Any] = {
    "glove": False,
    "word_dim": 8,
    "char_dim": 6,
    "char_filters": 6,
    "lstm_hidden": 8,
    "dropout": 0.0,
}
"""``arch_overrides`` of a tiny tagger (a few thousand parameters)."""

NAMES = {
    "PER": (["Alice", "Bob", "Carol", "Dave"], ["Smith", "Jones"]),
    "LOC": (["Paris", "Berlin", "Rome", "Oslo"], ["City"]),
    "ORG": (["Acme", "Globex", "Initech"], ["Inc"]),
}
FILLERS = ["the", "met", "in", "at", "visited", "from", "and", "with", "today", "works"]


def tagged_sentences(n: int, seed: int, types: tuple[str, ...] = ("LOC", "ORG", "PER")):
    """``n`` random sentences ``[(tokens, IOB2 tags)]`` whose entities are names from fixed lists
    (a first word, sometimes a second), so that a tiny tagger can learn them exactly."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(1, 7)):
            if rng.random() < 0.45:
                entity_type = rng.choice(types)
                first, second = NAMES.get(entity_type, ([entity_type.title()], ["X"]))
                tokens.append(rng.choice(first))
                tags.append(f"B-{entity_type}")
                if rng.random() < 0.4:
                    tokens.append(rng.choice(second))
                    tags.append(f"I-{entity_type}")
            else:
                tokens.append(rng.choice(FILLERS))
                tags.append("O")
        sentences.append((tokens, tags))
    return sentences


def write_conll(path: Path, n: int, seed: int, types=("LOC", "ORG", "PER")) -> Path:
    """Write ``n`` tagged sentences (``tagged_sentences``) as a CoNLL file (``word tag``)."""
    blocks = [
        "".join(f"{token} {tag}\n" for token, tag in zip(tokens, tags, strict=True))
        for tokens, tags in tagged_sentences(n, seed, types)
    ]
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def write_tokens(path: Path, n: int, seed: int) -> Path:
    """Write ``n`` sentences as tokenized text, one sentence per line."""
    lines = [" ".join(tokens) for tokens, _ in tagged_sentences(n, seed)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_options(tmp_path: Path, name: str, **changes: Any) -> Any:
    """``TrainOptions`` of a tiny CRF student on ``tmp_path/train.conll`` (dev = train), written
    to ``tmp_path/name``, 12 epochs; ``changes`` override any field."""
    from structkd.train.options import TrainOptions

    fields = {
        "train": str(tmp_path / "train.conll"),
        "dev": str(tmp_path / "train.conll"),
        "out": str(tmp_path / name),
        "arch": "student-crf",
        "arch_overrides": dict(TINY),
        "epochs": 12,
        "batch_size": 8,
        "learning_rate": 0.02,
        "patience": None,
        "cache_dir": str(tmp_path / "cache"),
        "progress": False,
    }
    fields.update(changes)
    return TrainOptions(**fields)
