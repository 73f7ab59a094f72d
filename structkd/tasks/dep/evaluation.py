"""Dependency evaluation: UAS, LAS, the well-formed rate and the speed (prediction is
``structkd.tasks.dep.serving``)."""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import Tensor

from structkd.data.dep_batching import DepBatch, DepCollator
from structkd.models.dep_tagger import SequenceLabelingParser
from structkd.tasks.dep.data import DepSource, load_dep_source
from structkd.tasks.dep.metrics import attachment_counts, attachment_scores, scored_word_mask
from structkd.tasks.dep.model import load_dep_model, scheme_of
from structkd.train.inference import sorted_batches, speed

__all__ = ["batch_counts", "evaluate_dep", "evaluate_dep_model", "predict_batch"]


def predict_batch(model: torch.nn.Module, batch: DepBatch) -> tuple[Tensor, Tensor, Tensor]:
    """Heads ``[B, N+1]``, relation ids ``[B, N+1]`` (in ``model.vocab.relations``) and
    well-formed-before-repair flags ``[B]`` (always True for the parsers, which decode trees)."""
    scores = model(batch)
    if isinstance(model, SequenceLabelingParser):
        prediction = model.decode(batch, scores)
        return prediction.heads, prediction.rel_ids, prediction.well_formed
    heads, rel_ids = model.decode(batch, scores)
    return heads, rel_ids, torch.ones(batch.batch_size, dtype=torch.bool, device=heads.device)


def batch_counts(model: torch.nn.Module, batch: DepBatch, *, include_punct: bool) -> Tensor:
    """``[5]`` counts of one batch: scored words, words with the right head, words with the right
    head and relation (``attachment_counts``), trees well-formed before repair, trees."""
    heads, rel_ids, formed = predict_batch(model, batch)
    counts = attachment_counts(
        heads,
        rel_ids,
        batch.heads,
        batch.rel_ids,
        batch.lengths,
        scored_word_mask(
            batch.lengths, batch.max_len + 1, batch.punct_mask, include_punct=include_punct
        ),
    )
    trees = torch.tensor([int(formed.sum()), batch.batch_size], device=counts.device)
    return torch.cat([counts, trees])


def evaluate_dep_model(
    model: torch.nn.Module,
    source: DepSource,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    include_punct: bool = False,
    collator: Any = None,
) -> dict[str, Any]:
    """UAS, LAS (fractions in ``[0, 1]``; punctuation excluded unless ``include_punct``), the rate
    of well-formed trees before repair, and ``sentences_per_second`` over collation, scoring,
    decoding and counting of length-sorted batches. ``collator``: what collates the batches
    (``None``: a ``DepCollator`` of the model's vocabulary; a fold mixture collates once per
    fold parser)."""
    if collator is None:
        collator = DepCollator(
            model.vocab,
            scheme_of(model),
            labeled=True,
            strict_relations=False,
            label_ids=False,
            label_heads=False,
        )
    counts = torch.zeros(3, dtype=torch.long)
    well_formed = 0
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    # no_grad, not inference_mode: a fold mixture of exact sibling CRFs decodes their arc
    # marginals, gradients of log Z (autograd through the inside pass)
    with torch.no_grad():
        for _, batch in sorted_batches(source.sentences, collator, batch_size, device):
            found = batch_counts(model, batch, include_punct=include_punct).cpu()
            counts += found[:3]
            well_formed += int(found[3])
    seconds = time.perf_counter() - started
    model.train(was_training)
    scores = attachment_scores(counts, well_formed=well_formed, n_trees=len(source))
    return {**scores, "include_punct": include_punct, **speed(source.lengths, seconds)}


def evaluate_dep(
    model_dir: str | os.PathLike[str],
    data: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    include_punct: bool = False,
    max_sentences: int | None = None,
    scheme: str = "auto",
) -> dict[str, Any]:
    """``structkd evaluate`` of a dependency model: UAS, LAS, well-formed rate, speed.
    ``scheme`` is the NER option (the tag scheme of labeled data): a treebank has none."""
    if scheme != "auto":
        raise ValueError(f"--scheme {scheme} is for tagged NER data; a treebank has no tag scheme")
    model, _ = load_dep_model(model_dir, device=device)
    source = load_dep_source(data, role="evaluation", max_sentences=max_sentences)
    scores = evaluate_dep_model(
        model, source, batch_size=batch_size, device=device, include_punct=include_punct
    )
    return {"model": os.fspath(model_dir), "data": data, **scores}
