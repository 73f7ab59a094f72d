"""The exported model directory: ``export.json`` names the task, the format and the files, so
that ``structkd.load`` serves it without torch.

    {"format_version": 2, "task": "ner", "format": "onnx", "files": {...},
     "source": {"model_dir": ..., "sha256": ...}, ...task fields...}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "EXPORT_FILE",
    "EXPORT_FORMATS",
    "EXPORT_FORMAT_VERSION",
    "is_exported",
    "read_manifest",
    "write_manifest",
]

EXPORT_FILE = "export.json"
EXPORT_FORMAT_VERSION = 2
EXPORT_FORMATS = ("onnx",)


def is_exported(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds an exported model (an ``export.json``)."""
    return (Path(directory) / EXPORT_FILE).is_file()


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``export.json`` of ``directory``, checked (``ValueError`` naming the file and the
    problem)."""
    path = Path(directory) / EXPORT_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        message = f"{directory}: not an exported model directory (no {EXPORT_FILE})"
        raise ValueError(message) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: must hold a JSON object")
    version = manifest.get("format_version")
    if version != EXPORT_FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {version!r} is not {EXPORT_FORMAT_VERSION} (exported by "
            "another structkd version: export the model again)"
        )
    for key in ("task", "format", "files"):
        if key not in manifest:
            raise ValueError(f"{path}: missing {key!r}")
    if manifest["format"] not in EXPORT_FORMATS:
        raise ValueError(f"{path}: unknown format {manifest['format']!r}")
    for name in manifest["files"].values():
        if not (Path(directory) / name).is_file():
            raise ValueError(f"{path}: names {name!r}, which is missing from {directory}")
    return manifest


def write_manifest(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Write ``export.json`` (with ``format_version``) into ``directory``; its path."""
    path = Path(directory) / EXPORT_FILE
    data = {"format_version": EXPORT_FORMAT_VERSION, **manifest}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
