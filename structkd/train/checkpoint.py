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
* ``metrics.json``: dev (and test) scores, best epoch, sizes and timings (``structkd.train.fit``);
* ``complete.json``: the completion marker, written last (atomically) when training has finished:
  the SHA-256 of ``model.pt`` and of ``metrics.json`` (``mark_complete``).

A directory is complete only with a valid marker: ``read_model`` (every evaluation, prediction,
teacher and reuse goes through it) refuses one without it ("training did not finish": the run was
killed, failed or is still running) and a ``model.pt`` or ``metrics.json`` whose bytes differ from
the recorded hashes (corrupted or changed after training). A run starts by removing the outputs of
any earlier run (``clear_outputs``), so an old ``metrics.json`` never outlives it.

Migration: format 1 (structkd 0.1) named ``label_scheme`` ``tag_scheme``; it is read as format 2.
Directories written before the marker existed are refused like unfinished ones: a killed run of
those versions could leave the ``metrics.json`` of an earlier run beside the new ``model.pt``, so
nothing in them tells a finished run from a killed one. Retrain, or, knowing the run finished,
mark it: ``python -m structkd.train.checkpoint mark-complete DIR``.
A frozen transformer's weights are not in ``model.pt``: they are the unchanged public checkpoint,
reloaded from its package.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINT_FORMAT",
    "COMPLETE_FILE",
    "CONFIG_FILE",
    "FOLDS_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "ModelFile",
    "clear_outputs",
    "file_sha256",
    "mark_complete",
    "model_task",
    "read_model",
    "reading_unfinished",
    "restore_weights",
    "save_model",
    "write_json",
]

CHECKPOINT_FORMAT = 2
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
COMPLETE_FILE = "complete.json"
"""The completion marker of a model directory, written last."""
FOLDS_FILE = "folds.json"
"""The index of a fold-teacher directory (``structkd.train.folds``: K model directories acting as
one teacher; it has no ``model.pt`` of its own)."""
_MARKER_FORMAT = 1
_OUTPUTS = (MODEL_FILE, METRICS_FILE, CONFIG_FILE)
_UNFINISHED_READABLE: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "_UNFINISHED_READABLE", default=frozenset()
)
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


def mark_complete(directory: str | os.PathLike[str]) -> Path:
    """Write the completion marker of ``directory`` (the SHA-256 of its ``model.pt`` and
    ``metrics.json``, which must exist), atomically; the last file a finished run writes.
    Returns its path."""
    directory = Path(directory)
    hashes = {}
    for name in (MODEL_FILE, METRICS_FILE):
        if not (directory / name).is_file():
            raise ValueError(f"{os.fspath(directory)!r} has no {name}: it cannot be complete")
        hashes[name] = file_sha256(directory / name)
    path = directory / COMPLETE_FILE
    write_json(path, {"format": _MARKER_FORMAT, "sha256": hashes})
    return path


def clear_outputs(directory: str | os.PathLike[str]) -> None:
    """Remove what an earlier run left in the model directory ``directory``: the marker first
    (so the directory stops being complete), then ``model.pt``, ``metrics.json``,
    ``config.json`` and the temporary files of interrupted writes. Other files are kept."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    (directory / COMPLETE_FILE).unlink(missing_ok=True)
    (directory / FOLDS_FILE).unlink(missing_ok=True)  # no longer a fold-teacher directory
    for name in _OUTPUTS:
        (directory / name).unlink(missing_ok=True)
    for name in (*_OUTPUTS, COMPLETE_FILE):
        for temporary in directory.glob(f".{name}.*.tmp"):
            temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def reading_unfinished(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Within the block, ``read_model`` reads ``directory`` without its completion marker: the
    fit loop reloads its best model to score it before it writes ``metrics.json`` and the
    marker."""
    key = os.fspath(Path(directory).resolve())
    token = _UNFINISHED_READABLE.set(_UNFINISHED_READABLE.get() | {key})
    try:
        yield
    finally:
        _UNFINISHED_READABLE.reset(token)


def _unfinished(directory: Path, why: str) -> ValueError:
    return ValueError(
        f"{os.fspath(directory)!r}: training did not finish ({why}: the run was interrupted, "
        "failed or is still running); train it again"
    )


def _check_complete(directory: Path, path: Path) -> None:
    """``ValueError`` unless ``directory`` has a valid completion marker whose hashes match its
    ``model.pt`` (``path``) and ``metrics.json``."""
    marker = directory / COMPLETE_FILE
    if not marker.is_file():
        why = f"no {COMPLETE_FILE}"
        if (directory / METRICS_FILE).is_file():
            raise ValueError(
                f"{_unfinished(directory, why)}. A model directory of an older structkd (before "
                f"{COMPLETE_FILE}) whose training is known to have finished can be marked with "
                f"`python -m structkd.train.checkpoint mark-complete {os.fspath(directory)}`"
            )
        raise _unfinished(directory, why)
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        hashes = data["sha256"]
        recorded = {name: hashes[name] for name in (MODEL_FILE, METRICS_FILE)}
        if data["format"] != _MARKER_FORMAT or not all(
            isinstance(value, str) for value in recorded.values()
        ):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise _unfinished(directory, f"{COMPLETE_FILE} is unreadable or malformed") from None
    if not (directory / METRICS_FILE).is_file():
        raise _unfinished(directory, f"no {METRICS_FILE}")
    if file_sha256(path) != recorded[MODEL_FILE]:
        raise ValueError(
            f"{os.fspath(path)!r}: {MODEL_FILE} does not match its recorded hash: corrupted or "
            "changed after training"
        )
    if file_sha256(directory / METRICS_FILE) != recorded[METRICS_FILE]:
        raise ValueError(
            f"{os.fspath(directory / METRICS_FILE)!r}: {METRICS_FILE} does not match its "
            "recorded hash: changed after training"
        )


def _model_path(directory: str | os.PathLike[str]) -> Path:
    directory = Path(directory)
    if not directory.exists():
        raise ValueError(f"model directory {os.fspath(directory)!r} does not exist")
    if not directory.is_dir():
        raise ValueError(f"model directory {os.fspath(directory)!r} is not a directory")
    path = directory / MODEL_FILE
    if not path.is_file() and (directory / FOLDS_FILE).is_file():
        raise ValueError(
            f"{os.fspath(directory)!r} holds fold teachers ({FOLDS_FILE}: `structkd train "
            "--folds`), not one model: this command or task reads single model directories"
        )
    if not path.is_file():
        raise ValueError(
            f"{os.fspath(directory)!r} has no {MODEL_FILE}: not a model directory written by "
            "`structkd train` or `structkd distill`"
        )
    return path


def read_model(directory: str | os.PathLike[str], *, task: str | None = None) -> ModelFile:
    """The ``model.pt`` of ``directory`` (``ValueError`` with a one-line reason when the
    directory is missing, holds no readable model, its training did not finish (no valid
    completion marker), its files do not match their recorded hashes, or, given ``task``, it
    holds a model of another task)."""
    import torch

    path = _model_path(directory)
    if os.fspath(path.parent.resolve()) not in _UNFINISHED_READABLE.get():
        _check_complete(path.parent, path)
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
    ``config.json`` is missing or unreadable; for a fold-teacher directory, from its
    ``folds.json``. ``ValueError`` when there is no model."""
    folds = Path(model_dir) / FOLDS_FILE
    if folds.is_file() and not (Path(model_dir) / MODEL_FILE).is_file():
        try:
            task = json.loads(folds.read_text(encoding="utf-8"))["task"]
        except (OSError, ValueError, KeyError, TypeError):
            task = None
        if not isinstance(task, str):
            raise ValueError(f"{os.fspath(folds)!r} is unreadable or malformed (no task)")
        return task
    _model_path(model_dir)
    try:
        task = json.loads((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8"))["task"]
        if isinstance(task, str):
            return task
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return read_model(model_dir).task


def _main(argv: list[str]) -> int:
    """``python -m structkd.train.checkpoint mark-complete DIR``: mark a model directory of an
    older structkd, known to hold a finished run, as complete."""
    if len(argv) != 2 or argv[0] != "mark-complete":
        print("usage: python -m structkd.train.checkpoint mark-complete DIR", file=sys.stderr)
        return 2
    try:
        _model_path(argv[1])
        print(mark_complete(argv[1]))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
