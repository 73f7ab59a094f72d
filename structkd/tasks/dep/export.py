"""Export a dependency student (dependency parsing as sequence labeling) to ONNX, for serving
with numpy and onnxruntime only (``structkd.tasks.dep.onnx_serving``).

    export_onnx("models/student", "models/student-onnx")  ->  the manifest (export.json)

The exported directory holds:

* ``model.onnx``: ``(word_ids [B, N], chars [T], char_index [U, C], word_chars [B, N], upos_ids
  [B, N], lengths [B])`` int64 -> ``log_probs [B, N, L]`` float32, each word's log-softmax over
  the student's ``L`` labels, with dynamic ``B``, ``N``, ``T``, ``U`` and ``C``; the characters
  in the flat layout of ``structkd.serve.chars`` (the manifest's ``char_context`` zeros around
  each word). Inputs a model does not read (the characters without a character CNN) are left
  out of the graph: the manifest lists its ``inputs``;
* ``vocab.json``: ``DepVocab.to_dict()`` (word, character and UPOS vocabularies, relations) and
  ``max_word_chars``: the indices ``DepCollator`` gives (``WordEncoder``);
* ``scheme.json``: the label scheme (``DepLabelScheme.to_dict``), from which the predictor
  builds the label -> head tables and decodes trees (``structkd.serve.trees``, the function the
  torch student decodes with);
* ``export.json``: the manifest (``structkd.serve.manifest``): task ``dep``, format ``onnx``, the
  files, the encoding, whether decoding needs UPOS tags, and the check below.

Only the students export: a biaffine parser decodes trees with torch (Eisner, Chu-Liu-Edmonds,
the matrix-tree theorem for its head probabilities); serve it with the torch backend.

**The BiLSTM and the character CNN.** The student's encoder runs its BiLSTM on a packed sequence
(``pack_padded_sequence``), which ONNX cannot express, and its character CNN on words padded to
the longest. ``LabelGraph`` computes the same function with ``structkd.models.export``'s pieces:
one bidirectional ONNX ``LSTM`` node per layer given the sentence lengths (``ExportBiLSTM``) and
the character CNN on the flat layout (``flat_char_features``). Dropout is the identity at
inference.

**The exporter.** ``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter): it keeps
the batch, sequence and character axes dynamic, where the ``torch.export``-based one specializes
the sequence length to the example's. Its deprecation
warning is silenced; every export is checked against the torch student (below), so a change of
behaviour in a later torch cannot go unnoticed.

**Checks.** The directory is built next to ``out`` and renamed into place at the end (a failed
export leaves nothing); an existing non-empty ``out`` is refused. Before the rename, onnxruntime
runs the model on random batches (random lengths from 1, words, characters and UPOS tags, unknown
ones included) and its log-probabilities are compared with the torch student's at every real word:
a difference beyond ``1e-4`` raises ``RuntimeError``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import structkd
from structkd.data.dep_batching import DepBatch, DepCollator
from structkd.models.dep_tagger import SequenceLabelingParser
from structkd.models.export import (
    ExportBiLSTM,
    batch_axes,
    char_context,
    check_against_torch,
    check_destination,
    export_directory,
    flat_char_features,
    write_onnx,
)
from structkd.serve.chars import flat_chars_from_padded
from structkd.serve.manifest import read_manifest, write_manifest
from structkd.tasks.dep.model import TASK, load_dep_model

__all__ = [
    "EXPORT_TOLERANCE",
    "INPUTS",
    "MODEL_FILE",
    "OPSET",
    "OUTPUT",
    "SCHEME_FILE",
    "VOCAB_FILE",
    "LabelGraph",
    "export_onnx",
    "torch_log_probs",
]

MODEL_FILE = "model.onnx"
VOCAB_FILE = "vocab.json"
SCHEME_FILE = "scheme.json"
INPUTS = ("word_ids", "chars", "char_index", "word_chars", "upos_ids", "lengths")
OUTPUT = "log_probs"
OPSET = 17
EXPORT_TOLERANCE = 1e-4
"""The largest absolute difference between onnxruntime's and torch's log-probabilities an export
accepts."""
VOCAB_FORMAT = 1
# (batch size, padded length, characters per word) of the batches an export is checked on
_CHECK_SHAPES = ((1, 1, 1), (3, 6, 5), (8, 23, 12), (5, 40, 30))


class LabelGraph(nn.Module):
    """Export-only copy of a student's label log-probabilities without packed sequences:
    ``(word_ids [B, N], chars [T], char_index [U, C], word_chars [B, N], upos_ids [B, N],
    lengths [B])`` -> ``log_softmax(student(batch)) [B, N, L]``, equal at every real word (eval
    mode; see the module docstring); ``char_context``: the flat layout's zeros around a word (0
    without a character CNN)."""

    def __init__(self, student: SequenceLabelingParser):
        super().__init__()
        if not isinstance(student, SequenceLabelingParser):
            raise ValueError(f"LabelGraph needs a SequenceLabelingParser; got {type(student)}")
        encoder = student.encoder
        self.word_embedding = encoder.word_embedding
        char_cnn = encoder.char_cnn
        self.char_embedding = None if char_cnn is None else char_cnn.embedding
        self.char_conv = None if char_cnn is None else char_cnn.conv
        self.char_context = 0 if char_cnn is None else char_context(char_cnn.conv)
        self.upos_embedding = encoder.upos_embedding
        self.bilstm = ExportBiLSTM(encoder.lstm)
        self.hidden = student.hidden
        self.output = student.output

    def forward(
        self,
        word_ids: Tensor,
        chars: Tensor,
        char_index: Tensor,
        word_chars: Tensor,
        upos_ids: Tensor,
        lengths: Tensor,
    ) -> Tensor:
        """``log_probs [B, N, L]`` (at padding: what the layers make of the padding's features;
        only real words are read)."""
        inputs = [self.word_embedding(word_ids)]
        if self.char_conv is not None:
            assert self.char_embedding is not None
            words = flat_char_features(self.char_embedding, self.char_conv, chars, char_index)
            inputs.append(nn.functional.embedding(word_chars, words))
        if self.upos_embedding is not None:
            inputs.append(self.upos_embedding(upos_ids))
        hidden = self.bilstm(torch.cat(inputs, dim=-1), lengths)
        return torch.log_softmax(self.output(self.hidden(hidden)), dim=-1)


# ---------------------------------------------------------------------------------------------
# Random batches (the checks)


def _random_batch(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    sizes: tuple[int, int, int],
    context: int,
) -> dict[str, np.ndarray]:
    """A batch of random ids laid out as ``DepCollator`` lays out sentences: ``lengths`` (the
    first at the padded length), word and UPOS ids (``<unk>`` included; 0 at padding), and per
    word 1..C characters, 0 beyond (``char_ids``); and the same characters in the flat layout with
    ``context`` zeros around each word (``chars``, ``char_index``, ``word_chars``). ``sizes``:
    the word, character and UPOS vocabulary sizes."""
    batch_size, seq_len, width = shape
    n_words, n_chars, n_upos = sizes
    lengths = rng.integers(1, seq_len + 1, size=batch_size)
    lengths[0] = seq_len
    inside = np.arange(seq_len) < lengths[:, None]
    word_ids = np.where(inside, rng.integers(1, max(n_words, 2), size=inside.shape), 0)
    upos_ids = np.where(inside, rng.integers(1, max(n_upos, 2), size=inside.shape), 0)
    word_lengths = rng.integers(1, width + 1, size=(batch_size, seq_len))
    word_lengths[0, 0] = width
    has_char = (np.arange(width) < word_lengths[..., None]) & inside[..., None]
    char_ids = np.where(has_char, rng.integers(1, max(n_chars, 2), size=has_char.shape), 0)
    return {
        "word_ids": word_ids.astype(np.int64),
        "char_ids": char_ids.astype(np.int64),
        "upos_ids": upos_ids.astype(np.int64),
        "lengths": lengths.astype(np.int64),
        **flat_chars_from_padded(char_ids.astype(np.int64), lengths, context),
    }


def torch_log_probs(student: SequenceLabelingParser, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """``log_softmax(student(batch))`` ``[B, N, L]`` (float32) of a batch given as the ONNX
    inputs (``INPUTS``)."""
    batch = DepBatch(
        word_ids=torch.from_numpy(arrays["word_ids"]),
        char_ids=torch.from_numpy(arrays["char_ids"]),
        upos_ids=torch.from_numpy(arrays["upos_ids"]),
        lengths=torch.from_numpy(arrays["lengths"]),
        sentence_ids=torch.arange(len(arrays["lengths"])),
        punct_mask=torch.zeros(arrays["word_ids"].shape[0], arrays["word_ids"].shape[1] + 1),
    )
    with torch.no_grad():
        return torch.log_softmax(student(batch).float(), dim=-1).numpy()


def _check_onnx(path: Path, student: SequenceLabelingParser, context: int) -> dict[str, Any]:
    """Run ``path`` with onnxruntime on random batches and compare with ``student``; returns the
    check's summary (and the model's input names), ``RuntimeError`` beyond
    ``EXPORT_TOLERANCE``."""
    vocab = student.vocab
    sizes = (len(vocab.words), len(vocab.chars), len(vocab.upos))
    rng = np.random.default_rng(0)
    batches = (_random_batch(rng, shape, sizes, context) for shape in _CHECK_SHAPES)
    return check_against_torch(
        path,
        OUTPUT,
        batches,
        lambda arrays: torch_log_probs(student, arrays),
        tolerance=EXPORT_TOLERANCE,
        what="log-probabilities",
        model="student",
    )


# ---------------------------------------------------------------------------------------------
# Files


def _write_onnx(graph: LabelGraph, path: Path) -> None:
    example = _random_batch(np.random.default_rng(1), (2, 3, 4), (2, 2, 2), graph.char_context)
    arguments = tuple(torch.from_numpy(example[name]) for name in INPUTS)
    axes = batch_axes(INPUTS, OUTPUT)
    write_onnx(
        graph,
        arguments,
        path,
        input_names=INPUTS,
        output_names=[OUTPUT],
        dynamic_axes=axes,
        opset=OPSET,
    )


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")


def export_onnx(model_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Export the dependency student of ``model_dir`` to the new directory ``out`` (see the
    module docstring); returns the manifest written to ``out/export.json``.

    ``ValueError``: ``model_dir`` holds no complete dependency model, or a parser (teachers do
    not export), or ``out`` is a file or a non-empty directory. ``RuntimeError``: the exported
    model does not compute the student's log-probabilities (to ``1e-4``).
    """
    out = Path(out)
    check_destination(out)
    student, info = load_dep_model(model_dir)
    if info.kind != "student" or not isinstance(student, SequenceLabelingParser):
        raise ValueError(
            f"exporting {os.fspath(model_dir)} is not supported: it holds a {info.arch!r} parser, "
            "which decodes trees in torch (Eisner, Chu-Liu-Edmonds) and has no numpy decoder; "
            "only the sequence-labeling students (student-dep-*) export. Serve a parser with the "
            "torch backend (structkd.load on its model directory)"
        )
    student.eval()
    graph = LabelGraph(student).eval()
    max_word_chars = DepCollator(info.vocab).max_word_chars
    scheme = info.scheme
    assert scheme is not None

    with export_directory(out) as scratch:
        files = {"model": MODEL_FILE, "vocab": VOCAB_FILE, "scheme": SCHEME_FILE}
        _write_onnx(graph, scratch / MODEL_FILE)
        vocab_data = {
            "format": VOCAB_FORMAT,
            **info.vocab.to_dict(),
            "max_word_chars": max_word_chars,
        }
        _write_json(scratch / VOCAB_FILE, vocab_data)
        _write_json(scratch / SCHEME_FILE, scheme.to_dict())
        check = _check_onnx(scratch / MODEL_FILE, student, graph.char_context)
        inputs = check.pop("inputs")
        manifest = {
            "task": TASK,
            "format": "onnx",
            "files": files,
            "encoding": scheme.encoding,
            "n_labels": scheme.n_labels,
            "needs_upos": scheme.encoding == "pos",
            "reads_upos": info.config.encoder.upos_dim > 0,
            "inputs": inputs,
            "output": OUTPUT,
            "opset": OPSET,
            "char_context": graph.char_context,
            "source": {
                "model_dir": os.fspath(Path(info.directory).resolve()),
                "sha256": info.file_hash,
                "arch": info.arch,
            },
            "structkd_version": structkd.__version__,
            "torch_version": torch.__version__,
            "check": check,
        }
        write_manifest(scratch, manifest)
    return read_manifest(out)
