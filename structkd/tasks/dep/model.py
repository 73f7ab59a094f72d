"""Dependency models: the architectures (biaffine parser teachers, sequence-labeling students)
with overrides, and model directories (the format of ``structkd.train.checkpoint`` with
``task = "dep"``)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from structkd.data.dep_batching import DepVocab, scheme_from_dict, scheme_to_dict
from structkd.data.dep_encodings import DepLabelScheme
from structkd.models.dep_encoder import DepEncoderConfig
from structkd.models.dep_tagger import DepTaggerConfig, SequenceLabelingParser
from structkd.models.parser import BiaffineParser, ParserConfig
from structkd.train.checkpoint import ModelFile, read_model, restore_weights, save_model

__all__ = [
    "DEP_ARCHITECTURES",
    "TASK",
    "DepModelInfo",
    "architecture",
    "build_model",
    "dep_info",
    "load_dep_model",
    "model_config",
    "save_dep_model",
    "scheme_of",
]

TASK = "dep"

DEP_ARCHITECTURES: dict[str, dict[str, str]] = {
    "parser-head-selection": {"kind": "parser", "mode": "head-selection"},
    "parser-projective": {"kind": "parser", "mode": "projective"},
    "parser-matrix-tree": {"kind": "parser", "mode": "matrix-tree"},
    "parser-mean-field": {"kind": "parser", "mode": "mean-field"},
    "parser-sibling-exact": {"kind": "parser", "mode": "sibling-exact"},
    "student-dep-offset": {"kind": "student", "encoding": "offset"},
    "student-dep-pos": {"kind": "student", "encoding": "pos"},
}
"""``--arch`` names of ``--task dep``: teachers (``parser-*``) and students (``student-dep-*``)."""

_ENCODER_FIELDS = {field.name for field in dataclasses.fields(DepEncoderConfig)}


def architecture(arch: str) -> dict[str, str]:
    if arch not in DEP_ARCHITECTURES:
        raise ValueError(
            f"unknown dependency architecture {arch!r}; choose one of "
            f"{', '.join(DEP_ARCHITECTURES)}"
        )
    return DEP_ARCHITECTURES[arch]


def model_config(arch: str, overrides: dict[str, Any]) -> ParserConfig | DepTaggerConfig:
    """The config of ``arch`` with ``overrides`` (encoder fields such as ``lstm_hidden`` go to
    the encoder config)."""
    spec = architecture(arch)
    top = {key: value for key, value in overrides.items() if key not in _ENCODER_FIELDS}
    encoder_changes = {key: value for key, value in overrides.items() if key in _ENCODER_FIELDS}
    try:
        if spec["kind"] == "parser":
            config = ParserConfig(mode=spec["mode"], **top)
        else:
            config = DepTaggerConfig(**top)
        if encoder_changes:
            config = dataclasses.replace(
                config, encoder=dataclasses.replace(config.encoder, **encoder_changes)
            )
    except TypeError as error:
        raise ValueError(f"bad --arch-override for {arch!r}: {error}") from None
    return config


def build_model(
    arch: str, config: Any, vocab: DepVocab, scheme: DepLabelScheme | None
) -> torch.nn.Module:
    if architecture(arch)["kind"] == "parser":
        return BiaffineParser(vocab, config)
    assert scheme is not None
    return SequenceLabelingParser(vocab, scheme, config)


def scheme_of(model: torch.nn.Module) -> DepLabelScheme | None:
    return getattr(model, "scheme", None)


def save_dep_model(directory: str | os.PathLike[str], model: torch.nn.Module, *, arch: str) -> Path:
    """Write a parser or a student to ``directory/model.pt`` (loads with ``weights_only=True``)
    and its metadata to ``config.json``, in the model-directory format of
    ``structkd.train.checkpoint`` with ``task = "dep"`` and the student's head encoding as its
    ``label_scheme``."""
    scheme = scheme_of(model)
    return save_model(
        directory,
        model,
        task=TASK,
        arch=arch,
        config={
            "model": model.config.to_dict(),
            "scheme": None if scheme is None else scheme_to_dict(scheme),
        },
        vocab=model.vocab.to_dict(),
        label_scheme="" if scheme is None else scheme.encoding,
        view={"config": model.config.to_dict(), "encoding": scheme and scheme.encoding},
    )


@dataclass(frozen=True)
class DepModelInfo:
    """What a dependency model directory holds: ``arch``, ``kind`` (parser or student),
    ``vocab``, ``scheme`` (students), ``file_hash`` of ``model.pt``."""

    directory: Path
    arch: str
    kind: str
    config: Any
    vocab: DepVocab
    scheme: DepLabelScheme | None
    file_hash: str


def dep_info(directory: str | os.PathLike[str]) -> tuple[DepModelInfo, ModelFile]:
    """The metadata of the dependency model in ``directory`` and its read ``model.pt``."""
    model_file = read_model(directory, task=TASK)
    arch = model_file.arch
    kind = architecture(arch)["kind"]
    try:
        config_data = dict(model_file.config)
        model_config = (ParserConfig if kind == "parser" else DepTaggerConfig).from_dict(
            config_data["model"]
        )
        scheme = None if config_data["scheme"] is None else scheme_from_dict(config_data["scheme"])
        vocab = DepVocab.from_dict(model_file.vocab)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{os.fspath(model_file.path)!r} has a malformed config: {error}"
        ) from None
    info = DepModelInfo(
        model_file.directory, arch, kind, model_config, vocab, scheme, model_file.file_hash
    )
    return info, model_file


def load_dep_model(
    directory: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, DepModelInfo]:
    """The parser or student of ``directory`` in eval mode on ``device``, and its metadata."""
    info, model_file = dep_info(directory)
    model = build_model(info.arch, info.config, info.vocab, info.scheme)
    return restore_weights(model, model_file, device), info
