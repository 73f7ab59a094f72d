"""Serving dependency models: ``load_predictor`` (a trained model directory served with torch, or
an exported one served by ``structkd.tasks.dep.onnx_serving`` without torch), ``export`` and
``write_documents`` (CoNLL-U or JSON lines), the three functions ``DepTask`` delegates to.

``TorchDepPredictor`` parses a batch of sentences with one forward pass of any dependency model
and returns, per sentence (``DepParse``), each token's head, relation and the head's probability
under the model:

* a sequence-labeling student (``student-dep-*``): the decoded tree of its best labels
  (``SequenceLabelingParser.decode``: batched decoding and repair, ``structkd.serve.trees``), and
  ``P(head_i = h) = sum_{l : head(l) = h} softmax(logits_i)[l]``;
* a biaffine parser (``parser-*``): its best tree (Eisner, Chu-Liu-Edmonds, ...) and the arc
  marginal ``P(head_i = h)`` of its distribution (``BiaffineParser.arc_marginals``): exact for
  the tree CRFs (matrix-tree theorem, inside-outside, the exact sibling CRF) and head selection,
  the mean-field posterior for the mean-field parser.

Input without UPOS tags: ``structkd.tasks.dep.predictor`` (refused by the PoS-based student,
parsed with unknown tags and a warning by the others). Importing this module loads no torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from structkd.serve.manifest import is_exported
from structkd.serve.text import TokenizedSentence
from structkd.tasks.dep.predictor import (
    OUTPUT_FORMATS,
    DepParse,
    DepPredictor,
    ParserInput,
    check_scheme,
    parses,
    write_documents,
)

__all__ = [
    "OUTPUT_FORMATS",
    "ParserInput",
    "TorchDepPredictor",
    "export",
    "load_predictor",
    "write_documents",
]


def load_predictor(
    model_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    num_threads: int | None = None,
    device: str = "cpu",
    scheme: str | None = None,
) -> DepPredictor:
    """A dependency predictor for ``model_dir``: ``OnnxDepPredictor`` for an exported directory
    (an ``export.json``; numpy and onnxruntime, no torch), else ``TorchDepPredictor`` for a
    trained one (any dependency model: students and parsers), ``FoldDepPredictor`` for a
    fold-teacher directory (``train --folds``: the mixture of its fold parsers,
    ``structkd.tasks.dep.folds``). ``scheme`` is the NER option: a parse has no tag scheme
    (``None`` or ``"bioes"`` only)."""
    check_scheme(scheme)
    options = {"batch_size": batch_size, "num_threads": num_threads, "device": device}
    if is_exported(model_dir):
        from structkd.tasks.dep.onnx_serving import OnnxDepPredictor

        return OnnxDepPredictor(model_dir, **options)
    from structkd.train.folds import is_fold_directory

    if is_fold_directory(model_dir):
        from structkd.tasks.dep.folds import FoldDepPredictor

        return FoldDepPredictor(model_dir, **options)
    return TorchDepPredictor(model_dir, **options)


def export(
    model_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, format: str
) -> dict[str, Any]:
    """Export the sequence-labeling student of ``model_dir`` to the directory ``out``
    (``format``: ``"onnx"``); returns the manifest written. A parser (teacher) is refused:
    its tree decoding runs in torch."""
    if format != "onnx":
        raise ValueError(f"dependency models export to onnx; got format {format!r}")
    from structkd.tasks.dep.export import export_onnx

    return export_onnx(model_dir, out)


class TorchDepPredictor(DepPredictor):
    """A trained dependency model directory served with torch (see the module docstring).

    ``device``: where the model runs; ``num_threads``: torch's CPU threads
    (``torch.set_num_threads``; ``None`` leaves torch's setting)."""

    backend = "torch"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        batch_size: int = 64,
        num_threads: int | None = None,
        device: str = "cpu",
    ):
        super().__init__(model_dir, batch_size=batch_size, num_threads=num_threads)
        import torch

        from structkd.data.dep_batching import DepCollator
        from structkd.tasks.dep.model import load_dep_model

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.device = device
        self.model, self.info = load_dep_model(model_dir, device=device)
        scheme = self.info.scheme
        self.is_student = self.info.kind == "student"
        self.needs_upos = scheme is not None and scheme.encoding == "pos"
        self.reads_upos = self.info.config.encoder.upos_dim > 0
        self.collator = DepCollator(self.info.vocab, scheme, labeled=False, label_heads=False)
        self.relations = np.array([*self.info.vocab.relations, "_"], dtype=object)

    def parse_batch(self, sentences: Sequence[TokenizedSentence]) -> list[DepParse]:
        """``DepParse`` of each sentence of one batch (one forward pass, batched decoding)."""
        import torch

        items = [(i, ParserInput(s.tokens, s.upos)) for i, s in enumerate(sentences)]
        batch = self.collator(items).to(self.device)
        lengths = batch.lengths.tolist()
        # no_grad, not inference_mode: the exact sibling CRF's marginals are gradients of log Z
        with torch.no_grad():
            scores = self.model(batch)
            if self.is_student:
                prediction = self.model.decode(batch, scores, head_probs=True)
                heads, rel_ids = prediction.heads, prediction.rel_ids
                probabilities = prediction.head_probs
            else:
                heads, rel_ids = self.model.decode(batch, scores)
                marginals = self.model.arc_marginals(scores, batch.lengths)  # [B, head, dep]
                probabilities = marginals.gather(1, heads.clamp(min=0).unsqueeze(1)).squeeze(1)
        heads = heads[:, 1:].cpu().numpy()
        rel_ids = rel_ids[:, 1:].cpu().numpy()
        names = self.relations[rel_ids]  # -1: a relation the vocabulary lacks, "_"
        deprels = [names[b, :n].tolist() for b, n in enumerate(lengths)]
        return parses(heads, deprels, probabilities[:, 1:].double().cpu().numpy(), lengths)
