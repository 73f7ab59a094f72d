"""The commands as functions, for programs: ``train``, ``distill``, ``evaluate``, ``predict``,
dispatched to the task plug-in (``structkd.tasks.TASKS``) named by the options or by the model
directory.

    train(TrainOptions(train="conll03-en:train", dev="conll03-en:dev", out="models/teacher"))
    distill(DistillOptions(train=..., dev=..., out=..., teachers=["models/teacher"]))
    evaluate("models/student", "conll03-en:test")  ->  {"precision", "recall", "f1", ...}
    predict("models/student", "sentences.txt", "tagged.conll")
    load("models/student").predict("EU rejects German call.")   ->  Document (entities, offsets)
    export("models/student", "models/student-onnx")   # served by load() without torch

Importing this module is cheap (no torch, no Lightning).
"""

from __future__ import annotations

import os
from typing import Any, TextIO

from structkd.data.tag_schemes import SCHEMES
from structkd.tasks import get_task
from structkd.train.options import DistillOptions, TrainOptions, positive_int

__all__ = [
    "DistillOptions",
    "TrainOptions",
    "distill",
    "evaluate",
    "export",
    "load",
    "predict",
    "train",
]


def train(options: TrainOptions) -> dict[str, Any]:
    """Train a model on gold labels; model selection on the task's dev metric. Writes
    ``options.out`` and returns the metrics written to ``metrics.json`` (plus ``model_dir``)."""
    return get_task(options.task).train(options)


def distill(options: DistillOptions) -> dict[str, Any]:
    """Train a student from one teacher or an ensemble (see ``DistillOptions``). Teacher outputs
    are computed once per (teacher, data, method options) and cached under ``cache_dir``."""
    return get_task(options.task).distill(options)


def _task_of_model(model_dir: str | os.PathLike[str]) -> Any:
    from structkd.serve.manifest import is_exported, read_manifest

    if is_exported(model_dir):
        return get_task(read_manifest(model_dir)["task"])
    from structkd.train.checkpoint import model_task

    return get_task(model_task(model_dir))


def load(
    model_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    num_threads: int | None = None,
    device: str = "cpu",
) -> Any:
    """A predictor for the model in ``model_dir`` (any task; a trained model directory, or an
    exported one, which is served with numpy and onnxruntime only, without importing torch):
    ``load(dir).predict(texts)`` takes raw strings or token lists and returns
    ``structkd.serve.results.Document``s (``structkd.serve.predictor.Predictor``).
    ``num_threads``: the threads of the backend (``None``: its default)."""
    positive_int(batch_size, "batch_size")
    positive_int(num_threads, "num_threads", allow_none=True)
    return _task_of_model(model_dir).load_predictor(
        model_dir, batch_size=batch_size, num_threads=num_threads, device=device
    )


def export(
    model_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, format: str = "onnx"
) -> dict[str, Any]:
    """Export the model in ``model_dir`` to the directory ``out`` (``format``: ``"onnx"``) for
    serving without torch (``load(out)``); returns the manifest written."""
    from structkd.serve.manifest import EXPORT_FORMATS

    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}; got {format!r}")
    return _task_of_model(model_dir).export(model_dir, out, format=format)


def evaluate(
    model_dir: str | os.PathLike[str],
    data: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    num_threads: int | None = None,
    max_sentences: int | None = None,
    include_punct: bool = False,
    scheme: str = "auto",
) -> dict[str, Any]:
    """The scores of the model in ``model_dir`` on the labeled ``data`` (the task is read from
    the model directory): NER precision, recall, F1 per type; dependency UAS, LAS
    (punctuation excluded unless ``include_punct``) and the well-formed rate; and the speed.
    ``scheme``: the tag scheme of tagged data (``auto``: detected, IOB1 with a warning; or
    ``iob1``, ``iob2``, ``bioes``: checked)."""
    positive_int(batch_size, "batch_size")
    positive_int(num_threads, "num_threads", allow_none=True)
    if scheme not in ("auto", *SCHEMES):
        raise ValueError(f"scheme must be one of auto, {', '.join(SCHEMES)}; got {scheme!r}")
    if num_threads is not None:
        import torch

        torch.set_num_threads(num_threads)
    return _task_of_model(model_dir).evaluate(
        model_dir,
        data,
        batch_size=batch_size,
        device=device,
        max_sentences=max_sentences,
        include_punct=include_punct,
        scheme=scheme,
    )


def predict(
    model_dir: str | os.PathLike[str],
    input: str | os.PathLike[str],
    output: str | os.PathLike[str] | TextIO | None = None,
    *,
    input_format: str = "auto",
    scheme: str = "bioes",
    batch_size: int = 64,
    device: str = "cpu",
) -> int:
    """Label ``input`` with the model in ``model_dir`` and write to ``output`` (a path, a
    stream, or standard output for ``None``/``"-"``); returns the number of sentences written.
    NER writes CoNLL with each tag's marginal probability (``scheme``: ``bioes`` or ``iob2``);
    dependency parsing writes CoNLL-U."""
    positive_int(batch_size, "batch_size")
    if scheme not in ("bioes", "iob2"):
        raise ValueError(f"scheme must be 'bioes' or 'iob2'; got {scheme!r}")
    return _task_of_model(model_dir).predict(
        model_dir,
        input,
        output,
        input_format=input_format,
        scheme=scheme,
        batch_size=batch_size,
        device=device,
    )
