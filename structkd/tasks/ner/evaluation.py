"""NER evaluation: entity-level seqeval scores and speed (prediction is in
``structkd.tasks.ner.serving``)."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from structkd.data.tag_schemes import convert_tags, label_indices_to_tags
from structkd.tasks.ner.data import load_labeled
from structkd.tasks.ner.features import make_collator
from structkd.tasks.ner.metrics import seqeval_scores
from structkd.tasks.ner.model import check_types, load_tagger
from structkd.train.inference import sorted_batches, speed
from structkd.train.runtime import default_cache_dir

__all__ = ["evaluate", "evaluate_tagger"]


def evaluate_tagger(
    tagger: Any,
    source: Any,
    collator: Any,
    *,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, Any]:
    """Entity scores of ``tagger`` on the labeled ``source`` (seqeval, strict, BIOES; gold converted
    exactly from its own scheme) and its speed: ``sentences_per_second`` over collation, forward
    and decoding of length-sorted batches of ``batch_size``."""
    check_types(source, tagger.vocab.types, "the model")
    sentences = source.sentences
    unlabeled = [sentence.without_tags() for sentence in sentences]
    predictions: list[list[int]] = [[] for _ in sentences]
    was_training = tagger.training
    tagger.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for indices, batch in sorted_batches(unlabeled, collator, batch_size, device):
            predicted = tagger.decode(batch).cpu().tolist()
            for row, index in zip(predicted, indices, strict=True):
                predictions[index] = row[: len(sentences[index])]
    seconds = time.perf_counter() - started
    tagger.train(was_training)
    types = list(tagger.vocab.types)
    gold = [convert_tags(s.tags, source.scheme, "bioes") for s in sentences]
    predicted_tags = [label_indices_to_tags(row, types, "bioes") for row in predictions]
    scores = seqeval_scores(gold, predicted_tags, types)
    return {**scores, **speed(source.lengths, seconds)}


def evaluate(
    model_dir: str | os.PathLike[str],
    data: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    max_sentences: int | None = None,
    include_punct: bool = False,
    scheme: str = "auto",
) -> dict[str, Any]:
    """Entity-level ``precision``, ``recall``, ``f1`` and ``per_type`` scores of the NER model in
    ``model_dir`` on the labeled ``data`` (a data set name or a CoNLL file, its tags in
    ``scheme``: ``auto``, ``iob1``, ``iob2`` or ``bioes``), with ``sentences_per_second``
    (transformer features computed on the fly, as in real use). ``include_punct`` is the
    dependency scores' option: entities are scored whatever their words."""
    tagger, info = load_tagger(model_dir, device=device)
    source = load_labeled(data, role="evaluation", max_sentences=max_sentences, scheme=scheme)
    collator = make_collator(
        info.config,
        tagger,
        info.vocab,
        source.sentences,
        source.fingerprint,
        default_cache_dir(),
        device=device,
        cached_features=False,
    )
    scores = evaluate_tagger(tagger, source, collator, batch_size=batch_size, device=device)
    return {"model": os.fspath(model_dir), "data": data, **scores}
