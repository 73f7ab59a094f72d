"""Batched inference, the one loop every task's evaluation, prediction and teacher-target cache
runs: sentences in length-sorted batches (little padding), collated, moved to the device."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from structkd.data.batching import length_sorted_batches

__all__ = ["sorted_batches", "speed"]


def sorted_batches(
    sentences: Sequence[Any],
    collate: Callable[[list[tuple[int, Any]]], Any],
    batch_size: int,
    device: Any = "cpu",
) -> Iterator[tuple[list[int], Any]]:
    """``(indices, batch)`` over ``sentences`` in length-sorted batches of ``batch_size``:
    ``indices`` index ``sentences``; ``batch`` is ``collate([(index, sentence), ...])`` moved to
    ``device``. Every sentence is in exactly one batch."""
    lengths = [len(sentence) for sentence in sentences]
    for indices in length_sorted_batches(lengths, batch_size):
        yield indices, collate([(index, sentences[index]) for index in indices]).to(device)


def speed(lengths: Sequence[int], seconds: float) -> dict[str, Any]:
    """What an evaluation reports of its speed: ``n_sentences``, ``n_tokens`` (from the
    sentences' ``lengths``), ``seconds`` and ``sentences_per_second``."""
    return {
        "n_sentences": len(lengths),
        "n_tokens": sum(lengths),
        "seconds": seconds,
        "sentences_per_second": len(lengths) / seconds if seconds > 0 else float("inf"),
    }
