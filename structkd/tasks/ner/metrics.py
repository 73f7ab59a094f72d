"""Entity-level precision, recall and F1 of BIOES taggers (strict, as seqeval's strict mode).

A predicted entity counts only if it is a well-formed BIOES chunk, ``S-x`` alone or ``B-x I-x*
E-x``: the semantics of ``seqeval.metrics`` with ``mode="strict", scheme=IOBES``. A softmax tagger
may predict broken chunks (``I-x`` after ``O``); strict decoding drops them rather than repairing
them. Gold tags, valid in their own scheme (IOB1, IOB2 or BIOES), are converted to BIOES exactly
(the same spans) before comparing.

Scores of a data set are sums of per-type counts ``[n_types, 3]`` (gold, predicted, correct), so
they add across batches and across processes (DDP): ``precision = correct / predicted``,
``recall = correct / gold``, ``F1 = 2 P R / (P + R)`` (0 where undefined), micro-averaged over
types. :func:`seqeval_scores` computes the same numbers with seqeval itself (the evaluation
command uses it; a test checks that both agree).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "COUNT_COLUMNS",
    "entity_counts",
    "label_spans",
    "scores_from_counts",
    "seqeval_scores",
]

COUNT_COLUMNS = ("gold", "predicted", "correct")
_PREFIXES = "BIES"


def label_spans(label_ids: Sequence[int], n_types: int) -> list[tuple[int, int, int]]:
    """Strictly decoded entities ``[(start, end, type_index), ...]`` (``end`` inclusive) of one
    sentence's BIOES label ids ``[seq_len]`` (``0 = O``, ``B-r = 1 + 4r``, ``I-r = 2 + 4r``,
    ``E-r = 3 + 4r``, ``S-r = 4 + 4r``; no padding).

    A chunk opens at ``B-r`` or ``S-r`` and extends while ``B-r``/``I-r`` is followed by ``I-r`` or
    ``E-r``; it is an entity iff its last label is ``E-r`` or ``S-r`` (seqeval strict IOBES).
    """
    labels = [int(label) for label in label_ids]
    for position, label in enumerate(labels):
        if not 0 <= label <= 4 * n_types:
            raise ValueError(
                f"label_ids[{position}] = {label} is outside 0..{4 * n_types} "
                f"(the BIOES layout of {n_types} types)"
            )
    prefixes = ["O" if label == 0 else _PREFIXES[(label - 1) % 4] for label in labels]
    types = [-1 if label == 0 else (label - 1) // 4 for label in labels]
    spans = []
    position = 0
    while position < len(labels):
        if prefixes[position] not in "BS":
            position += 1
            continue
        start, entity_type = position, types[position]
        position += 1
        while (
            position < len(labels)
            and prefixes[position - 1] in "BI"
            and prefixes[position] in "IE"
            and types[position] == entity_type
        ):
            position += 1
        if prefixes[position - 1] in "ES":
            spans.append((start, position - 1, entity_type))
    return spans


def entity_counts(predicted: Tensor, gold: Tensor, lengths: Tensor, n_types: int) -> Tensor:
    """Per-type entity counts ``[n_types, 3]`` int64: gold, predicted and correct entities.

    Args:
        predicted: ``[batch, seq_len]`` predicted BIOES label ids (``-1`` or anything at padding).
        gold: ``[batch, seq_len]`` gold BIOES label ids (well-formed; ``-1`` at padding).
        lengths: ``[batch]`` tokens per sentence.
        n_types: ``R``, the number of entity types (``1 + 4R`` labels).
    """
    if predicted.shape != gold.shape or predicted.dim() != 2:
        raise ValueError(
            f"predicted and gold must both have shape [batch, seq_len]; got "
            f"{list(predicted.shape)} and {list(gold.shape)}"
        )
    counts = torch.zeros(n_types, 3, dtype=torch.long)
    predicted_rows = predicted.detach().cpu().tolist()
    gold_rows = gold.detach().cpu().tolist()
    for predicted_row, gold_row, length in zip(
        predicted_rows, gold_rows, lengths.detach().cpu().tolist(), strict=True
    ):
        gold_spans = set(label_spans(gold_row[:length], n_types))
        predicted_spans = set(label_spans(predicted_row[:length], n_types))
        for column, spans in enumerate((gold_spans, predicted_spans, gold_spans & predicted_spans)):
            for _, _, entity_type in spans:
                counts[entity_type, column] += 1
    return counts


def _precision_recall_f1(gold: int, predicted: int, correct: int) -> dict[str, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def scores_from_counts(counts: Tensor, types: Sequence[str]) -> dict[str, Any]:
    """Micro-averaged ``precision``, ``recall``, ``f1`` and ``per_type`` scores (each type:
    ``precision``, ``recall``, ``f1``, ``support`` = gold entities) from counts ``[n_types, 3]``;
    also the totals ``gold``, ``predicted``, ``correct``."""
    if counts.shape != (len(types), 3):
        raise ValueError(
            f"counts must have shape [{len(types)}, 3] for types {list(types)}; got "
            f"{list(counts.shape)}"
        )
    rows = counts.detach().cpu().long().tolist()
    per_type = {}
    for entity_type, (gold, predicted, correct) in zip(types, rows, strict=True):
        per_type[entity_type] = {**_precision_recall_f1(gold, predicted, correct), "support": gold}
    gold, predicted, correct = (int(value) for value in counts.sum(0).tolist())
    return {
        **_precision_recall_f1(gold, predicted, correct),
        "per_type": per_type,
        "gold": gold,
        "predicted": predicted,
        "correct": correct,
    }


def seqeval_scores(
    gold_tags: Sequence[Sequence[str]],
    predicted_tags: Sequence[Sequence[str]],
    types: Sequence[str],
) -> dict[str, Any]:
    """The scores of :func:`scores_from_counts` computed by seqeval (strict mode, IOBES scheme).

    ``gold_tags`` and ``predicted_tags`` ``[n_sentences][seq_len]`` are BIOES tag strings (gold
    converted from its own scheme); ``types`` lists every type to report (a type absent from both
    gets zeros).
    """
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOBES

    with warnings.catch_warnings():  # its averages of no entity at all warn
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(
            [list(tags) for tags in gold_tags],
            [list(tags) for tags in predicted_tags],
            mode="strict",
            scheme=IOBES,
            output_dict=True,
            zero_division=0,
        )
    per_type = {}
    for entity_type in types:
        row = report.get(entity_type)
        if row is None:
            per_type[entity_type] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        else:
            per_type[entity_type] = {
                "precision": float(row["precision"]),
                "recall": float(row["recall"]),
                "f1": float(row["f1-score"]),
                "support": int(row["support"]),
            }
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "per_type": per_type,
    }
