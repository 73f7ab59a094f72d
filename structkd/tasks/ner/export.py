"""Export a NER student to ONNX, for serving with numpy and onnxruntime only
(``structkd.tasks.ner.onnx_serving``).

    export_onnx("models/student", "models/student-onnx")  ->  the manifest (export.json)

The exported directory holds:

* ``model.onnx``: ``(word_ids [B, N], chars [T], char_index [U, C], word_chars [B, N],
  lengths [B])`` int64 -> ``emissions [B, N, L] float32``, the head's scores (CRF emissions or
  softmax logits), with dynamic ``B``, ``N``, ``T``, ``U`` and ``C``; the characters in the flat
  layout of ``structkd.serve.chars`` (the manifest's ``char_context`` zeros around each word);
* ``vocab.json``: the word and character indices of the tagger's ``TaggingVocab`` (words are
  looked up lowercased, anything unseen maps to ``<unk>``; characters as written, each word's
  first ``max_word_chars``), the BIOES label names and the entity types;
* ``crf.npz`` (CRF head only): ``transitions [L, L]``, ``start [L]``, ``end [L]`` as trained and
  the constraint masks ``allowed_transitions [L, L]``, ``allowed_start [L]``, ``allowed_end
  [L]`` (all True for an unconstrained CRF): a forbidden entry scores ``-inf``;
* ``export.json``: the manifest (``structkd.serve.manifest``).

Only taggers without a transformer and with a CRF or softmax head (the students: GloVe or trained
word vectors, character CNN, BiLSTM) can be exported.

**The BiLSTM and the character CNN.** The tagger runs its BiLSTM on a packed sequence
(``pack_padded_sequence``), which ONNX cannot express, and its character CNN on words padded to
the longest. ``EmissionGraph`` computes the same function with ``structkd.models.export``'s
pieces: one bidirectional ONNX ``LSTM`` node given the sentence lengths (``ExportBiLSTM``) and the
character CNN on the distinct words of a batch in the flat layout (``flat_char_features``).

**The exporter.** ``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter): it keeps the
batch, sequence and character axes dynamic and exports ``ExportBiLSTM``'s ``symbolic``. The
``torch.export``-based exporter (``dynamo=True``) specializes the sequence length of an
``nn.LSTM`` to the example's (``torch.export`` reports the constraint violation; the ONNX exporter
then falls back to a graph whose shapes are fixed to the example), and it takes about 10 times
longer. The TorchScript exporter's deprecation warning is silenced here; every export is checked
against the torch tagger (below), so a change of behaviour in a later torch cannot go unnoticed.

**Checks.** The directory is built next to ``out`` and renamed into place at the end (a failed
export leaves nothing); an existing non-empty ``out`` is refused. Before the rename, onnxruntime
runs the model on a few random batches (random lengths, batch sizes from 1) and its emissions are
compared with the torch tagger's at every real token: a difference beyond ``1e-4`` raises
``RuntimeError``.
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
from structkd.data.batching import TaggingBatch, TaggingCollator
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
from structkd.models.heads import CRFHead, SoftmaxHead
from structkd.models.tagger import Tagger
from structkd.serve.chars import flat_chars_from_padded
from structkd.serve.manifest import read_manifest, write_manifest
from structkd.tasks.ner.model import ModelInfo, load_tagger

__all__ = [
    "CRF_FILE",
    "EMISSIONS",
    "EXPORT_TOLERANCE",
    "INPUTS",
    "MODEL_FILE",
    "OPSET",
    "VOCAB_FILE",
    "EmissionGraph",
    "check_exportable",
    "export_onnx",
    "torch_emissions",
]

MODEL_FILE = "model.onnx"
VOCAB_FILE = "vocab.json"
CRF_FILE = "crf.npz"
INPUTS = ("word_ids", "chars", "char_index", "word_chars", "lengths")
EMISSIONS = "emissions"
OPSET = 17
EXPORT_TOLERANCE = 1e-4
"""The largest absolute difference between onnxruntime's and torch's emissions an export
accepts."""
VOCAB_FORMAT = 1
# (batch size, padded length, characters per word) of the batches an export is checked on
_CHECK_SHAPES = ((1, 1, 1), (3, 6, 5), (8, 23, 12), (5, 40, 30))


def check_exportable(info: ModelInfo) -> None:
    """``ValueError`` unless the model of ``info`` can be exported (no transformer; a CRF or
    softmax head)."""
    where = os.fspath(info.directory)
    if info.config.transformer is not None:
        raise ValueError(
            f"exporting {where} is not supported: its tagger reads transformer features "
            f"({info.config.transformer!r}); export a student without a transformer (word "
            "vectors, character CNN and BiLSTM under a CRF or softmax head)"
        )
    if info.config.head not in ("crf", "softmax"):
        raise ValueError(
            f"exporting {where} is not supported: its {info.config.head!r} head decodes with the "
            "semi-Markov span distribution, which has no numpy implementation; export a tagger "
            "with a CRF or softmax head"
        )


class EmissionGraph(nn.Module):
    """Export-only copy of a tagger's emission scores without packed sequences: ``(word_ids
    [B, N], chars [T], char_index [U, C], word_chars [B, N], lengths [B])`` -> ``emissions
    [B, N, L]``, equal to ``tagger.scores(batch)`` (eval mode) at every real token (see the
    module docstring); ``char_context``: the flat layout's zeros around a word (0 without a
    character CNN).""

    ``word_vectors [n_words, D]`` merges ``WordEmbedding``'s frozen and trained rows
    (``frozen_vectors[w] + trainable.weight[trainable_row[w]]``, one of the two 0).
    """

    def __init__(self, tagger: Tagger):
        super().__init__()
        if tagger.uses_transformer:
            raise ValueError("EmissionGraph needs a tagger without a transformer")
        if not isinstance(tagger.head, CRFHead | SoftmaxHead):
            raise ValueError(
                f"EmissionGraph needs a CRF or softmax head; got {type(tagger.head).__name__}"
            )
        encoder = tagger.encoder
        words = encoder.word_embedding
        with torch.no_grad():
            table = words.frozen_vectors + words.trainable.weight[words.trainable_row]
        self.register_buffer("word_vectors", table.detach().float().clone())
        char_cnn = encoder.char_cnn
        self.char_embedding = None if char_cnn is None else char_cnn.embedding
        self.char_conv = None if char_cnn is None else char_cnn.conv
        self.char_context = 0 if char_cnn is None else char_context(char_cnn.conv)
        self.bilstm = ExportBiLSTM(encoder.lstm)
        self.projection = tagger.head.projection

    def forward(
        self,
        word_ids: Tensor,
        chars: Tensor,
        char_index: Tensor,
        word_chars: Tensor,
        lengths: Tensor,
    ) -> Tensor:
        """``emissions [B, N, L]`` (at padding: what the projection makes of the padding's
        features; only real tokens are read)."""
        inputs = [nn.functional.embedding(word_ids, self.word_vectors)]
        if self.char_conv is not None:
            assert self.char_embedding is not None
            words = flat_char_features(self.char_embedding, self.char_conv, chars, char_index)
            inputs.append(nn.functional.embedding(word_chars, words))
        hidden = self.bilstm(torch.cat(inputs, dim=-1), lengths)
        return self.projection(hidden)


# ---------------------------------------------------------------------------------------------
# Random batches (the checks)


def _random_batch(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    n_words: int,
    n_chars: int,
    context: int,
) -> dict[str, np.ndarray]:
    """A batch of random ids laid out as ``TaggingCollator`` lays out sentences: ``lengths``
    (the first at the padded length), word ids (``<unk>`` included), and per word 1..C
    characters, 0 beyond (``char_ids``); and the same characters in the flat layout with
    ``context`` zeros around each word (``chars``, ``char_index``, ``word_chars``)."""
    batch_size, seq_len, width = shape
    lengths = rng.integers(1, seq_len + 1, size=batch_size)
    lengths[0] = seq_len
    inside = np.arange(seq_len) < lengths[:, None]
    word_ids = np.where(inside, rng.integers(1, max(n_words, 2), size=(batch_size, seq_len)), 0)
    word_lengths = rng.integers(1, width + 1, size=(batch_size, seq_len))
    word_lengths[0, 0] = width
    has_char = (np.arange(width) < word_lengths[..., None]) & inside[..., None]
    char_ids = np.where(has_char, rng.integers(1, max(n_chars, 2), size=has_char.shape), 0)
    return {
        "word_ids": word_ids.astype(np.int64),
        "char_ids": char_ids.astype(np.int64),
        "lengths": lengths.astype(np.int64),
        **flat_chars_from_padded(char_ids.astype(np.int64), lengths, context),
    }


def torch_emissions(tagger: Tagger, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """``tagger.scores`` ``[B, N, L]`` (float32) of a batch given as the ONNX inputs."""
    batch = TaggingBatch(
        word_ids=torch.from_numpy(arrays["word_ids"]),
        char_ids=torch.from_numpy(arrays["char_ids"]),
        lengths=torch.from_numpy(arrays["lengths"]),
        sentence_ids=torch.arange(len(arrays["lengths"])),
    )
    with torch.no_grad():
        return tagger.scores(batch).float().numpy()


def _check_onnx(path: Path, tagger: Tagger, context: int) -> dict[str, Any]:
    """Run ``path`` with onnxruntime on random batches and compare with ``tagger``; returns the
    check's summary (and the model's input names), ``RuntimeError`` beyond
    ``EXPORT_TOLERANCE``."""
    vocab = tagger.vocab
    rng = np.random.default_rng(0)
    batches = (
        _random_batch(rng, shape, len(vocab.words), len(vocab.chars), context)
        for shape in _CHECK_SHAPES
    )
    return check_against_torch(
        path,
        EMISSIONS,
        batches,
        lambda arrays: torch_emissions(tagger, arrays),
        tolerance=EXPORT_TOLERANCE,
        what="emissions",
        model="tagger",
    )


# ---------------------------------------------------------------------------------------------
# Files


def _write_onnx(graph: EmissionGraph, path: Path) -> None:
    example = _random_batch(np.random.default_rng(1), (2, 3, 4), 2, 2, graph.char_context)
    arguments = tuple(torch.from_numpy(example[name]) for name in INPUTS)
    axes = batch_axes(INPUTS, EMISSIONS)
    write_onnx(
        graph,
        arguments,
        path,
        input_names=INPUTS,
        output_names=[EMISSIONS],
        dynamic_axes=axes,
        opset=OPSET,
    )


def _vocab_data(tagger: Tagger, max_word_chars: int | None) -> dict[str, Any]:
    vocab = tagger.vocab
    return {
        "format": VOCAB_FORMAT,
        "words": list(vocab.words.items),
        "word_unk": vocab.words.unk_index,
        "lowercase_words": True,
        "chars": list(vocab.chars.items),
        "char_unk": vocab.chars.unk_index,
        "max_word_chars": max_word_chars,
        "labels": list(vocab.labels),
        "types": list(vocab.types),
    }


def _write_crf(head: CRFHead, path: Path) -> None:
    """``crf.npz``: the scores as trained (float32) and the constraint masks (all True for an
    unconstrained CRF)."""
    arrays = {}
    for name in ("transitions", "start", "end"):
        scores = getattr(head, name).detach().float().cpu().numpy()
        allowed = getattr(head, f"allowed_{name}")
        arrays[name] = scores
        arrays[f"allowed_{name}"] = (
            np.ones(scores.shape, dtype=bool) if allowed is None else allowed.cpu().numpy()
        )
    np.savez(path, **arrays)


def export_onnx(model_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Export the NER model of ``model_dir`` to the new directory ``out`` (see the module
    docstring); returns the manifest written to ``out/export.json``.

    ``ValueError``: ``model_dir`` holds no complete NER model, a model that cannot be exported (a
    transformer, a span head), or ``out`` is a file or a non-empty directory. ``RuntimeError``:
    the exported model does not compute the tagger's emissions (to ``1e-4``).
    """
    out = Path(out)
    check_destination(out)
    tagger, info = load_tagger(model_dir)
    check_exportable(info)
    tagger.eval()
    graph = EmissionGraph(tagger).eval()
    max_word_chars = TaggingCollator(info.vocab).max_word_chars

    with export_directory(out) as scratch:
        files = {"model": MODEL_FILE, "vocab": VOCAB_FILE}
        _write_onnx(graph, scratch / MODEL_FILE)
        vocab_text = json.dumps(_vocab_data(tagger, max_word_chars), ensure_ascii=False)
        (scratch / VOCAB_FILE).write_text(vocab_text + "\n", encoding="utf-8")
        if isinstance(tagger.head, CRFHead):
            _write_crf(tagger.head, scratch / CRF_FILE)
            files["crf"] = CRF_FILE
        check = _check_onnx(scratch / MODEL_FILE, tagger, graph.char_context)
        inputs = check.pop("inputs")
        manifest = {
            "task": info.task,
            "format": "onnx",
            "files": files,
            "head": info.config.head,
            "crf_constraints": info.config.crf_constraints if info.config.head == "crf" else None,
            "labels": list(info.vocab.labels),
            "types": list(info.types),
            "inputs": inputs,
            "output": EMISSIONS,
            "opset": OPSET,
            "char_context": graph.char_context,
            "source": {
                "model_dir": os.fspath(Path(info.directory).resolve()),
                "sha256": info.file_hash,
                "arch": info.arch,
                "tag_scheme": info.tag_scheme,
            },
            "structkd_version": structkd.__version__,
            "torch_version": torch.__version__,
            "check": check,
        }
        write_manifest(scratch, manifest)
    return read_manifest(out)
