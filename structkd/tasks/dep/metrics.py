"""Attachment scores of dependency parsers: UAS and LAS, with or without punctuation.

Heads and relations follow the structures convention: ``[batch, seq_len + 1]`` with position 0 the
root (unused, ``-1``), word ``d`` at position ``d``, ``-1`` at padding. A word is scored when
``scored_mask`` is True there; by default that is every word except punctuation (UPOS ``PUNCT``),
the usual practice of graph-based parser evaluations on UD (e.g. SuPar). ``include_punct=True``
scores every word, as the official CoNLL 2018 UD shared task script does (which also compares only
the universal part of relations; here relations are compared as whole labels).

Scores of a data set come from summed counts ``[3]`` = (words scored, heads correct, heads and
relations correct), which add across batches and processes: ``UAS = heads correct / words``,
``LAS = heads and relations correct / words``, fractions in ``[0, 1]`` (0 when no word is scored)
as the NER metrics of ``structkd.tasks.ner.metrics``; ``well_formed_rate`` is the fraction of
predicted trees that needed no repair.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from structkd.structures.base import check_lengths

__all__ = [
    "ATTACHMENT_COLUMNS",
    "PUNCT_TAGS",
    "attachment_counts",
    "attachment_scores",
    "punctuation_mask",
    "punctuation_mask_from_tags",
    "scored_word_mask",
]

ATTACHMENT_COLUMNS = ("words", "heads_correct", "labeled_correct")
"""The entries of :func:`attachment_counts`."""

PUNCT_TAGS: tuple[str, ...] = ("PUNCT",)
"""UPOS tags not scored by default."""


def _check_integer(name: str, tensor: Tensor) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {tensor.dtype}")


def _word_positions(lengths: Tensor, size: int) -> Tensor:
    """``[batch, size]`` bool, True at word positions ``1..length`` (root and padding False)."""
    positions = torch.arange(size, device=lengths.device)
    return (positions >= 1) & (positions <= lengths[:, None])


def punctuation_mask(upos_ids: Tensor, punct_ids: int | Iterable[int]) -> Tensor:
    """Bool tensor of the shape of ``upos_ids`` (any layout), True where the UPOS id is one of
    ``punct_ids`` (e.g. the id of ``"PUNCT"`` in the UPOS vocabulary)."""
    _check_integer("upos_ids", upos_ids)
    ids = [punct_ids] if isinstance(punct_ids, int) else [int(i) for i in punct_ids]
    if not ids:
        raise ValueError("punct_ids must name at least one UPOS id")
    return torch.isin(upos_ids, torch.tensor(ids, dtype=upos_ids.dtype, device=upos_ids.device))


def punctuation_mask_from_tags(
    upos: Sequence[Sequence[str]],
    max_len: int | None = None,
    punct_tags: Iterable[str] = PUNCT_TAGS,
) -> Tensor:
    """``[batch, max_len]`` bool (words only: word ``i`` at column ``i - 1``), True at words whose
    UPOS string is in ``punct_tags``; False at padding."""
    punct_tags = frozenset(punct_tags)
    width = max((len(tags) for tags in upos), default=0) if max_len is None else max_len
    if any(len(tags) > width for tags in upos):
        raise ValueError(f"a sentence is longer than max_len={width}")
    rows = [[tag in punct_tags for tag in tags] + [False] * (width - len(tags)) for tags in upos]
    return torch.tensor(rows, dtype=torch.bool).reshape(len(rows), width)


def scored_word_mask(
    lengths: Tensor, size: int, punct: Tensor | None = None, *, include_punct: bool = False
) -> Tensor:
    """``[batch, size]`` bool: the positions to score, words ``1..length`` except punctuation.

    Args:
        lengths: ``[batch]`` words per sentence.
        size: ``seq_len + 1``, the width of the head tensors (root at 0).
        punct: punctuation flags, either ``[batch, size]`` aligned with the heads (root at 0) or
            ``[batch, size - 1]`` words only (word ``i`` at column ``i - 1``, as
            :func:`punctuation_mask_from_tags` and ``DepLabelScheme.upos_ids`` lay them out);
            ``None``: no word is punctuation.
        include_punct: score punctuation too (``punct`` is then ignored).
    """
    if size < 2:
        raise ValueError(f"size must be seq_len + 1 >= 2, got {size}")
    lengths = check_lengths(torch.as_tensor(lengths), len(lengths), size - 1)
    mask = _word_positions(lengths, size)
    if punct is None or include_punct:
        return mask
    if not isinstance(punct, Tensor) or punct.dtype != torch.bool:
        raise ValueError("punct must be a bool tensor [batch, size] or [batch, size - 1]")
    batch = lengths.shape[0]
    if punct.dim() == 2 and tuple(punct.shape) == (batch, size - 1):
        punct = torch.cat([punct.new_zeros(batch, 1), punct], 1)
    if punct.dim() != 2 or tuple(punct.shape) != (batch, size):
        raise ValueError(
            f"punct must have shape [batch, size]=[{batch}, {size}] (root at 0) or "
            f"[batch, size - 1]=[{batch}, {size - 1}] (words only), got {list(punct.shape)}"
        )
    return mask & ~punct.to(mask.device)


def attachment_counts(
    pred_heads: Tensor,
    pred_rels: Tensor,
    gold_heads: Tensor,
    gold_rels: Tensor,
    lengths: Tensor,
    scored_mask: Tensor | None = None,
) -> Tensor:
    """Counts ``[3]`` int64 (see :data:`ATTACHMENT_COLUMNS`): words scored, words whose predicted
    head is the gold head, and words whose predicted head and relation are both gold.

    Args:
        pred_heads: ``[batch, seq_len + 1]`` predicted head of word ``d`` at ``d`` (anything at the
            root and padding; a head outside ``0..length``, e.g. ``-1``, is simply wrong).
        pred_rels: ``[batch, seq_len + 1]`` predicted relation ids.
        gold_heads: ``[batch, seq_len + 1]`` gold heads, each word's in ``0..length``.
        gold_rels: ``[batch, seq_len + 1]`` gold relation ids.
        lengths: ``[batch]`` words per sentence.
        scored_mask: ``[batch, seq_len + 1]`` bool, the words to score (e.g. from
            :func:`scored_word_mask`); must be False at position 0 and at padding (``ValueError``
            otherwise). ``None``: every word.

    ``UAS`` counts ``pred_heads == gold_heads``, ``LAS`` also ``pred_rels == gold_rels``, over the
    scored words.
    """
    tensors = {
        "pred_heads": pred_heads,
        "pred_rels": pred_rels,
        "gold_heads": gold_heads,
        "gold_rels": gold_rels,
    }
    for name, tensor in tensors.items():
        _check_integer(name, tensor)
        if tensor.dim() != 2 or tensor.shape != gold_heads.shape:
            raise ValueError(
                f"{name} must have shape [batch, seq_len + 1]={list(gold_heads.shape)} like "
                f"gold_heads, got {list(tensor.shape)}"
            )
    batch, size = gold_heads.shape
    if size < 2:
        raise ValueError(
            f"heads must have shape [batch, seq_len + 1] with seq_len >= 1, got {size}"
        )
    lengths = check_lengths(torch.as_tensor(lengths), batch, size - 1).to(gold_heads.device)
    words = _word_positions(lengths, size)
    gold_ok = (gold_heads >= 0) & (gold_heads <= lengths[:, None])
    if not (gold_ok | ~words).all():
        sentence, position = (int(x) for x in torch.nonzero(words & ~gold_ok)[0])
        raise ValueError(
            f"gold_heads[{sentence}, {position}] = {int(gold_heads[sentence, position])} is not a "
            f"head in 0..{int(lengths[sentence])}"
        )
    if scored_mask is None:
        scored = words
    else:
        if not isinstance(scored_mask, Tensor) or scored_mask.dtype != torch.bool:
            raise ValueError("scored_mask must be a bool tensor [batch, seq_len + 1]")
        if scored_mask.shape != gold_heads.shape:
            raise ValueError(
                f"scored_mask must have shape {list(gold_heads.shape)}, got "
                f"{list(scored_mask.shape)}"
            )
        scored = scored_mask.to(gold_heads.device)
        if (scored & ~words).any():
            sentence, position = (int(x) for x in torch.nonzero(scored & ~words)[0])
            raise ValueError(
                f"scored_mask is True at position {position} of sentence {sentence}, which is "
                f"{'the root' if position == 0 else 'padding'} (length {int(lengths[sentence])})"
            )
    head_correct = scored & (pred_heads.to(gold_heads.device) == gold_heads)
    labeled_correct = head_correct & (pred_rels.to(gold_rels.device) == gold_rels)
    return torch.stack([scored.sum(), head_correct.sum(), labeled_correct.sum()]).long().cpu()


def attachment_scores(
    counts: Tensor, well_formed: int | None = None, n_trees: int | None = None
) -> dict[str, float | int]:
    """``{"uas", "las", "words", "heads_correct", "labeled_correct"}`` from counts ``[3]`` (summed
    :func:`attachment_counts`), plus ``"well_formed_rate" = well_formed / n_trees`` when both are
    given (the number of predicted trees that needed no repair, out of ``n_trees``).

    ``uas`` and ``las`` are fractions in ``[0, 1]`` (0 when no word was scored), like
    ``structkd.tasks.ner.metrics``; multiply by 100 to print percentages.
    """
    if not isinstance(counts, Tensor) or tuple(counts.shape) != (3,):
        shape = list(counts.shape) if isinstance(counts, Tensor) else type(counts).__name__
        raise ValueError(f"counts must be a tensor of shape [3] {ATTACHMENT_COLUMNS}, got {shape}")
    words, heads_correct, labeled_correct = (int(x) for x in counts.detach().cpu().tolist())
    if not 0 <= labeled_correct <= heads_correct <= words:
        raise ValueError(
            "counts must satisfy 0 <= labeled_correct <= heads_correct <= words, got "
            f"{[words, heads_correct, labeled_correct]}"
        )
    scores: dict[str, float | int] = {
        "uas": heads_correct / words if words else 0.0,
        "las": labeled_correct / words if words else 0.0,
        "words": words,
        "heads_correct": heads_correct,
        "labeled_correct": labeled_correct,
    }
    if (well_formed is None) != (n_trees is None):
        raise ValueError("give both well_formed and n_trees, or neither")
    if well_formed is not None and n_trees is not None:
        if not 0 <= int(well_formed) <= int(n_trees):
            raise ValueError(f"well_formed must lie in 0..n_trees={n_trees}, got {well_formed}")
        scores["well_formed_rate"] = int(well_formed) / int(n_trees) if n_trees else 0.0
    return scores
