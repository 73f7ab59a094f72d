"""Model directories: the trained tagger as plain tensors and dicts, its config and its metrics.

A model directory written by ``structkd train`` or ``structkd distill`` holds:

* ``model.pt``: ``{"format", "task", "arch", "config", "vocab", "tag_scheme", "state_dict"}``, only
  tensors, strings, numbers, lists and dicts, so it loads with ``torch.load(path,
  weights_only=True)`` (no pickled classes, nothing executed on load);
* ``config.json``: the same metadata without the weights, for people;
* ``metrics.json``: dev (and test) scores, best epoch, sizes and timings (see ``commands``).

A frozen transformer's weights are not in ``model.pt``: they are the unchanged public checkpoint,
reloaded from its package (``structkd.models.transformer``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from structkd.data.batching import TaggingVocab
from structkd.models.tagger import Tagger, TaggerConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "ModelInfo",
    "file_sha256",
    "load_tagger",
    "model_info",
    "model_task",
    "save_tagger",
    "write_json",
]

CHECKPOINT_FORMAT = 1
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
_KEYS = {"format", "task", "arch", "config", "vocab", "tag_scheme", "state_dict"}


@dataclass(frozen=True)
class ModelInfo:
    """What a model directory says about its tagger (read without building it).

    ``directory``: the model directory; ``arch``: the architecture name it was trained with;
    ``config``; ``vocab``; ``tag_scheme``: the scheme of its training tags (``"iob2"``, ...);
    ``file_hash``: SHA-256 of ``model.pt`` (keys caches of the model's outputs).
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


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (a temporary file, then a rename)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def save_tagger(
    directory: str | os.PathLike[str], tagger: Tagger, *, arch: str, tag_scheme: str
) -> Path:
    """Write ``tagger`` to ``directory/model.pt`` (atomically) and its metadata to
    ``config.json``; returns the path of ``model.pt``. Creates ``directory`` if needed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "task": "ner",
        "arch": arch,
        "config": tagger.config.to_dict(),
        "vocab": tagger.vocab.to_dict(),
        "tag_scheme": tag_scheme,
    }
    state = {name: value.detach().cpu().clone() for name, value in tagger.state_dict().items()}
    path = directory / MODEL_FILE
    temporary = directory / f".{MODEL_FILE}.{os.getpid()}.tmp"
    torch.save({**metadata, "state_dict": state}, temporary)
    os.replace(temporary, path)
    config_view = {key: metadata[key] for key in ("task", "arch", "config", "tag_scheme")}
    write_json(directory / CONFIG_FILE, {**config_view, "types": list(tagger.vocab.types)})
    return path


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (memoized per path, size and modification time)."""
    stat = os.stat(path)
    return _file_sha256(os.fspath(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _model_file(directory: str | os.PathLike[str]) -> Path:
    directory = Path(directory)
    if not directory.exists():
        raise ValueError(f"model directory {os.fspath(directory)!r} does not exist")
    if not directory.is_dir():
        raise ValueError(f"model directory {os.fspath(directory)!r} is not a directory")
    path = directory / MODEL_FILE
    if not path.is_file():
        raise ValueError(
            f"{os.fspath(directory)!r} has no {MODEL_FILE}: not a model directory written by "
            "`structkd train` or `structkd distill`"
        )
    return path


def _read(directory: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    path = _model_file(directory)
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # unpickling errors come in many classes
        reason = " ".join(str(error).split())[:300]
        raise ValueError(
            f"{os.fspath(path)!r} cannot be read as a structkd model: {reason}"
        ) from None
    if not isinstance(data, dict) or set(data) != _KEYS:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{os.fspath(path)!r} is not a structkd model file (found {found})")
    if data["format"] != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{os.fspath(path)!r} has format {data['format']!r}; this structkd reads format "
            f"{CHECKPOINT_FORMAT}"
        )
    return path, data


def _info(path: Path, data: dict[str, Any]) -> ModelInfo:
    try:
        config = TaggerConfig.from_dict(dict(data["config"]))
        vocab = TaggingVocab.from_dict(data["vocab"])
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{os.fspath(path)!r} has a malformed config or vocabulary: {error}"
        ) from None
    return ModelInfo(
        directory=path.parent,
        task=str(data["task"]),
        arch=str(data["arch"]),
        config=config,
        vocab=vocab,
        tag_scheme=str(data["tag_scheme"]),
        file_hash=file_sha256(path),
    )


def model_info(directory: str | os.PathLike[str]) -> ModelInfo:
    """The metadata of the model in ``directory`` (``ValueError`` with a one-line reason if the
    directory is missing or holds no readable model)."""
    path, data = _read(directory)
    return _info(path, data)


def load_tagger(
    directory: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[Tagger, ModelInfo]:
    """The tagger of ``directory`` in eval mode on ``device``, and its metadata.

    Loads ``model.pt`` with ``weights_only=True``. A frozen transformer is not in the file: it is
    read from its package when first used (see ``structkd.models.transformer``).
    """
    path, data = _read(directory)
    info = _info(path, data)
    tagger = Tagger(info.config, info.vocab, load_pretrained=False)
    try:
        tagger.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"{os.fspath(path)!r} does not match its own config: {reason}") from None
    tagger.to(device)
    tagger.eval()
    return tagger, info


def model_task(model_dir: str | os.PathLike[str]) -> str:
    """``"ner"`` or ``"dep"``: the task of a model directory, read from its ``config.json`` (no
    model is loaded, so a command can choose its task before importing that task's code)."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("task", "ner"))
    except (OSError, ValueError):
        return "ner"
