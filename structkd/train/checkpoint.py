"""Model directories: a trained model as plain tensors and dicts, its config and its metrics,
the same format for every task.

A model directory written by ``structkd train`` or ``structkd distill`` holds:

* ``model.pt``: ``{"format", "task", "arch", "config", "vocab", "label_scheme", "state_dict"}``,
  only tensors, strings, numbers, lists and dicts, so it loads with ``torch.load(path,
  weights_only=True)`` (no pickled classes, nothing executed on load). ``task`` names the task
  plug-in that reads the rest: ``config`` and ``vocab`` are that task's dicts, ``label_scheme``
  its label layout (NER: the scheme of the training tags, ``iob2``...; dependency students: the
  head encoding, ``offset``/``pos``; parsers: ``""``);
* ``config.json``: the metadata without the weights, for people (and ``model_task``);
* ``metrics.json``: dev (and test) scores, best epoch, sizes and timings (``structkd.train.fit``).

Migration: format 1 (structkd 0.1) named ``label_scheme`` ``tag_scheme``; it is read as format 2.
A frozen transformer's weights are not in ``model.pt``: they are the unchanged public checkpoint,
reloaded from its package.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "ModelFile",
    "file_sha256",
    "model_task",
    "read_model",
    "restore_weights",
    "save_model",
    "write_json",
]

CHECKPOINT_FORMAT = 2
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
_KEYS = {"format", "task", "arch", "config", "vocab", "label_scheme", "state_dict"}
_FORMAT_1_KEYS = (_KEYS - {"label_scheme"}) | {"tag_scheme"}


@dataclass(frozen=True)
class ModelFile:
    """A read ``model.pt``: ``task``, ``arch``, the task's ``config`` and ``vocab`` dicts, its
    ``label_scheme``, the ``state_dict`` and ``file_hash`` (SHA-256 of the file's bytes; keys the
    caches of the model's outputs)."""

    path: Path
    task: str
    arch: str
    config: dict[str, Any]
    vocab: dict[str, Any]
    label_scheme: str
    state_dict: dict[str, Any]
    file_hash: str

    @property
    def directory(self) -> Path:
        return self.path.parent


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (a temporary file, then a rename)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def save_model(
    directory: str | os.PathLike[str],
    model: Any,
    *,
    task: str,
    arch: str,
    config: dict[str, Any],
    vocab: dict[str, Any],
    label_scheme: str,
    view: dict[str, Any],
) -> Path:
    """Write ``model``'s weights and metadata to ``directory/model.pt`` (atomically) and ``view``
    (with ``task`` and ``arch`` first) to ``config.json``; returns the path of ``model.pt``.
    Creates ``directory`` if needed."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "task": task,
        "arch": arch,
        "config": config,
        "vocab": vocab,
        "label_scheme": label_scheme,
    }
    state = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
    path = directory / MODEL_FILE
    temporary = directory / f".{MODEL_FILE}.{os.getpid()}.tmp"
    torch.save({**metadata, "state_dict": state}, temporary)
    os.replace(temporary, path)
    write_json(directory / CONFIG_FILE, {"task": task, "arch": arch, **view})
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


def _model_path(directory: str | os.PathLike[str]) -> Path:
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


def read_model(directory: str | os.PathLike[str], *, task: str | None = None) -> ModelFile:
    """The ``model.pt`` of ``directory`` (``ValueError`` with a one-line reason when the
    directory is missing, holds no readable model, or, given ``task``, a model of another
    task)."""
    import torch

    path = _model_path(directory)
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # unpickling errors come in many classes
        reason = " ".join(str(error).split())[:300]
        raise ValueError(
            f"{os.fspath(path)!r} cannot be read as a structkd model: {reason}"
        ) from None
    if isinstance(data, dict) and data.get("format") == 1 and set(data) == _FORMAT_1_KEYS:
        data = {**data, "format": CHECKPOINT_FORMAT, "label_scheme": data.pop("tag_scheme")}
    if not isinstance(data, dict) or set(data) != _KEYS:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{os.fspath(path)!r} is not a structkd model file (found {found})")
    if data["format"] != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{os.fspath(path)!r} has format {data['format']!r}; this structkd reads formats 1 "
            f"and {CHECKPOINT_FORMAT}"
        )
    if task is not None and data["task"] != task:
        raise ValueError(
            f"{os.fspath(directory)!r} holds a {data['task']!r} model, not a {task!r} model"
        )
    return ModelFile(
        path=path,
        task=str(data["task"]),
        arch=str(data["arch"]),
        config=dict(data["config"]),
        vocab=data["vocab"],
        label_scheme=str(data["label_scheme"]),
        state_dict=data["state_dict"],
        file_hash=file_sha256(path),
    )


def restore_weights(model: Any, model_file: ModelFile, device: Any = "cpu") -> Any:
    """``model`` with the weights of ``model_file`` (strict), in eval mode on ``device``
    (``ValueError`` when they do not match the model its config builds)."""
    try:
        model.load_state_dict(model_file.state_dict, strict=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:300]
        raise ValueError(
            f"{os.fspath(model_file.path)!r} does not match its own config: {reason}"
        ) from None
    model.to(device)
    model.eval()
    return model


def model_task(model_dir: str | os.PathLike[str]) -> str:
    """The task of a model directory, read from its ``config.json`` without loading the weights
    (so a command can choose its task before importing that task's code); from ``model.pt`` when
    ``config.json`` is missing or unreadable. ``ValueError`` when there is no model."""
    _model_path(model_dir)
    try:
        task = json.loads((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8"))["task"]
        if isinstance(task, str):
            return task
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return read_model(model_dir).task
