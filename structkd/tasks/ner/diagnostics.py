"""What the teacher's cached targets carry beyond the gold tags, per training part: recorded in a
distillation's ``metrics.json`` (``target_diagnostics``) so that a result can be explained.

For each part (the labeled sentences; the unlabeled rest or text), over its tokens, from the
teacher's (mixed, tempered) token distribution ``q_i`` of each token:

* ``mean_gold_probability``: mean ``q_i(gold_i)`` (labeled parts): near 1, the targets are
  nearly the gold tags and distillation adds little;
* ``argmax_error``: the share of tokens whose most probable label is not the gold one (labeled);
* ``mean_entropy``: mean ``H(q_i)`` in nats;
* ``mean_max_probability``: mean ``max_l q_i(l)``.

The token distribution is the cached ``marginals`` (structural and posterior KD) or the softmax
of the cached emissions divided by ``T`` (Token KD); k-best targets have none (no diagnostics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["target_diagnostics", "token_distribution"]


def token_distribution(
    per_teacher: Sequence[dict[str, Tensor]], weights: Tensor, temperature: float
) -> Tensor | None:
    """The teachers' mixed token distribution ``[B, N, L]`` (``None`` for k-best targets)."""
    tables = []
    for targets in per_teacher:
        if "marginals" in targets:
            tables.append(targets["marginals"].double())
        elif "emissions" in targets:
            tables.append(torch.softmax(targets["emissions"].double() / temperature, dim=-1))
        else:
            return None
    weights = weights.double()
    return sum(w * table for w, table in zip(weights, tables, strict=True))


def target_diagnostics(
    items: Sequence[tuple[int, Any]],
    collate: Callable[[list[tuple[int, Any]]], Any],
    read_targets: Callable[[Tensor, Tensor], Any],
    *,
    labeled: bool,
    temperature: float,
    batch_size: int = 256,
) -> dict[str, float] | None:
    """The diagnostics of one part: ``items`` ``[(sentence_id, sentence)]``, collated by the
    student's ``collate`` (for the gold label ids) and read by the part's target reader."""
    sums = {"gold": 0.0, "errors": 0.0, "entropy": 0.0, "max": 0.0}
    tokens = 0
    for start in range(0, len(items), batch_size):
        batch = collate(list(items[start : start + batch_size]))
        targets = read_targets(batch.sentence_ids, batch.lengths)
        table = token_distribution(targets.per_teacher, targets.weights, temperature)
        if table is None:
            return None
        mask = batch.mask
        safe = table.clamp_min(1e-300)
        entropy = -(table * safe.log()).sum(-1)
        sums["entropy"] += float(entropy[mask].sum())
        sums["max"] += float(table.max(-1).values[mask].sum())
        if labeled:
            gold = batch.label_ids.clamp_min(0)
            gold_probability = table.gather(-1, gold.unsqueeze(-1)).squeeze(-1)
            sums["gold"] += float(gold_probability[mask].sum())
            sums["errors"] += float((table.argmax(-1) != gold)[mask].sum())
        tokens += int(mask.sum())
    found = {
        "n_tokens": tokens,
        "mean_entropy": sums["entropy"] / max(1, tokens),
        "mean_max_probability": sums["max"] / max(1, tokens),
    }
    if labeled:
        found["mean_gold_probability"] = sums["gold"] / max(1, tokens)
        found["argmax_error"] = sums["errors"] / max(1, tokens)
    return found
