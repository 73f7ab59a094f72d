"""What the teacher's cached label distributions carry beyond the gold trees, per training part:
recorded in a dependency distillation's ``metrics.json`` (``target_diagnostics``, the same keys
as NER's, ``structkd.tasks.ner.diagnostics``; the split by target kind of a fold teacher is
``structkd.train.diagnostics.part_diagnostics``).

For each part, over its real words that have a target, from the (mixed) label distribution
``q_i`` the student is trained on (``DepTargetReader``: the teacher's tempered label
distribution renormalized over the labels that express its heads):

* ``mean_entropy``: mean ``H(q_i)`` in nats; ``mean_max_probability``: mean ``max_l q_i(l)``;
* labeled parts: ``mean_gold_probability``, mean ``q_i(gold_i)`` where ``gold_i`` is the
  student's label that encodes the word's gold head and relation, and ``argmax_error``, the
  share of words whose most probable label is not ``gold_i``; both over the words whose gold
  label the student's scheme encodes (the collator's ``label_ids``: ``-1`` for a label outside
  the scheme's vocabulary). The others are excluded from both and counted (``n_unencodable``).

``n_words``: the words the means are over; ``n_without_target``: real words no teacher gives a
target (all their mass on heads no label expresses), excluded from every mean; ``n_scored``
(labeled): the words of ``mean_gold_probability`` and ``argmax_error``. Computed batched, a batch
of sentences at a time, with the run's collator and target reader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from structkd.structures.base import probabilities_within_roundoff

__all__ = ["dep_target_diagnostics"]


def dep_target_diagnostics(
    items: Sequence[tuple[int, Any]],
    collate: Callable[[list[tuple[int, Any]]], Any],
    read_targets: Callable[[Any, Any], Any],
    *,
    labeled: bool,
    batch_size: int = 256,
) -> dict[str, Any]:
    """The diagnostics of one part: ``items`` ``[(sentence_id, sentence)]``, collated by the
    student's ``collate`` (for the lengths and the gold label ids, ``DepBatch.label_ids``) and
    read by the part's ``read_targets`` (``DepTargetReader``: ``DepTargets``). Raises
    ``NumericalError`` for a target probability below 0 beyond roundoff, or NaN."""
    sums = {"entropy": 0.0, "max": 0.0, "gold": 0.0, "errors": 0.0}
    counts = {"words": 0, "without": 0, "scored": 0, "unencodable": 0}
    for start in range(0, len(items), batch_size):
        batch = collate(list(items[start : start + batch_size]))
        targets = read_targets(batch.sentence_ids, batch.lengths)
        # [B, N, L]; roundoff below 0 (matrix-tree marginals in a cache written before structkd
        # zeroed it) counts as 0
        table = probabilities_within_roundoff(
            targets.probs.double(), "a cached teacher label probability", at_most_one=False
        )
        width = table.shape[1]
        real = torch.arange(width)[None, :] < batch.lengths[:, None]
        has = targets.has_target.bool() & real
        entropy = -torch.special.xlogy(table, table).sum(-1)
        sums["entropy"] += float(entropy[has].sum())
        sums["max"] += float(table.max(-1).values[has].sum())
        counts["words"] += int(has.sum())
        counts["without"] += int((real & ~has).sum())
        if labeled:
            gold = batch.label_ids[:, :width]
            encodable = gold >= 0
            counts["unencodable"] += int((real & ~encodable).sum())
            scored = has & encodable
            gold_probability = table.gather(-1, gold.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            sums["gold"] += float(gold_probability[scored].sum())
            sums["errors"] += float((table.argmax(-1) != gold)[scored].sum())
            counts["scored"] += int(scored.sum())
    words = counts["words"]
    found: dict[str, Any] = {
        "n_words": words,
        "n_without_target": counts["without"],
        "mean_entropy": sums["entropy"] / max(1, words),
        "mean_max_probability": sums["max"] / max(1, words),
    }
    if labeled:
        scored = counts["scored"]
        found["n_scored"] = scored
        found["n_unencodable"] = counts["unencodable"]
        found["mean_gold_probability"] = sums["gold"] / max(1, scored)
        found["argmax_error"] = sums["errors"] / max(1, scored)
    return found
