"""The commands of the NER task (``structkd.tasks.ner.NerTask`` imports this module when one
runs); prediction and export are in ``structkd.tasks.ner.serving``."""

from __future__ import annotations

from structkd.tasks.ner.data import load_labeled
from structkd.tasks.ner.evaluation import evaluate
from structkd.tasks.ner.training import prepare_distill, prepare_train

__all__ = ["count_sentences", "evaluate", "prepare_distill", "prepare_train"]


def count_sentences(data: str, *, max_sentences: int | None = None) -> int:
    """The number of labeled sentences of ``data``, at most ``max_sentences``."""
    return len(load_labeled(data, role="train", max_sentences=max_sentences))
