"""NER models: architectures with overrides, vocabularies, and model directories (the format of
``structkd.train.checkpoint`` with ``task = "ner"``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from structkd.data.batching import TaggingVocab
from structkd.models.tagger import Tagger, TaggerConfig, architecture
from structkd.train.checkpoint import ModelFile, read_model, restore_weights, save_model

__all__ = [
    "TASK",
    "ModelInfo",
    "build_vocab",
    "check_types",
    "load_tagger",
    "model_info",
    "save_tagger",
    "tagger_config",
]

TASK = "ner"


@dataclass(frozen=True)
class ModelInfo:
    """What a NER model directory says about its tagger (read without building it).

    ``directory``; ``arch``: the architecture name it was trained with; ``config``; ``vocab``;
    ``tag_scheme``: the scheme of its training tags (``"iob2"``, ...); ``file_hash``: SHA-256 of
    ``model.pt`` (keys caches of the model's outputs).
    """

    directory: Path
    task: str
    arch: str
    config: TaggerConfig
    vocab: TaggingVocab
    tag_scheme: str
    file_hash: str

    @property
    def types(self) -> tuple[str, ...]:
        """The entity types, sorted (the BIOES label layout)."""
        return self.vocab.types

    @property
    def head(self) -> str:
        """``"crf"``, ``"softmax"`` or ``"span"``."""
        return self.config.head


def tagger_config(arch: str, overrides: dict[str, Any]) -> TaggerConfig:
    """The ``TaggerConfig`` of architecture ``arch`` with ``overrides`` (``ValueError`` naming an
    unknown field)."""
    try:
        return architecture(arch, **overrides)
    except TypeError as error:  # an unknown field name
        raise ValueError(f"bad --arch-override for {arch!r}: {error}") from None


def build_vocab(
    config: TaggerConfig, sentences: Sequence[Any], types: Sequence[str], extra: Sequence[Any]
) -> TaggingVocab:
    """The vocabulary of a tagger of ``config`` trained on ``sentences``: with GloVe, every word
    GloVe knows among the words of ``sentences`` and of the ``extra`` sources (dev, test)."""
    if config.glove:
        from structkd.models.embeddings import glove_vocabulary

        extra_words = [token for source in extra for s in source.sentences for token in s.tokens]
        return TaggingVocab.build(
            sentences, types=types, known_words=glove_vocabulary(), extra_words=extra_words
        )
    return TaggingVocab.build(sentences, types=types)


def check_types(source: Any, types: Sequence[str], owner: str) -> None:
    """``ValueError`` when ``source`` has entity types that ``owner`` (a model) does not know."""
    unknown = sorted(set(source.types) - set(types))
    if unknown:
        raise ValueError(
            f"data {source.name!r} has entity types {unknown} that {owner} does not know "
            f"(its label set is {sorted(types)})"
        )


def save_tagger(
    directory: str | os.PathLike[str], tagger: Tagger, *, arch: str, tag_scheme: str
) -> Path:
    """Write ``tagger`` to ``directory/model.pt`` (atomically) and its metadata to
    ``config.json``; returns the path of ``model.pt``."""
    return save_model(
        directory,
        tagger,
        task=TASK,
        arch=arch,
        config=tagger.config.to_dict(),
        vocab=tagger.vocab.to_dict(),
        label_scheme=tag_scheme,
        view={
            "config": tagger.config.to_dict(),
            "tag_scheme": tag_scheme,
            "types": list(tagger.vocab.types),
        },
    )


def _info(model_file: ModelFile) -> ModelInfo:
    try:
        config = TaggerConfig.from_dict(dict(model_file.config))
        vocab = TaggingVocab.from_dict(model_file.vocab)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{os.fspath(model_file.path)!r} has a malformed config or vocabulary: {error}"
        ) from None
    return ModelInfo(
        directory=model_file.directory,
        task=model_file.task,
        arch=model_file.arch,
        config=config,
        vocab=vocab,
        tag_scheme=model_file.label_scheme,
        file_hash=model_file.file_hash,
    )


def model_info(directory: str | os.PathLike[str]) -> ModelInfo:
    """The metadata of the NER model in ``directory`` (``ValueError`` with a one-line reason if
    the directory is missing or holds no readable NER model)."""
    return _info(read_model(directory, task=TASK))


def load_tagger(
    directory: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[Tagger, ModelInfo]:
    """The tagger of ``directory`` in eval mode on ``device``, and its metadata. A frozen
    transformer is not in the file: it is read from its package when first used."""
    model_file = read_model(directory, task=TASK)
    info = _info(model_file)
    tagger = Tagger(info.config, info.vocab, load_pretrained=False)
    return restore_weights(tagger, model_file, device), info
