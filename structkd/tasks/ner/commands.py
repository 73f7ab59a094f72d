"""The commands of the NER task (``structkd.tasks.ner.NerTask`` imports this module when one
runs)."""

from __future__ import annotations

from structkd.tasks.ner.data import load_labeled
from structkd.tasks.ner.evaluation import evaluate, predict
from structkd.tasks.ner.training import prepare_distill, prepare_train

__all__ = ["count_sentences", "evaluate", "predict", "prepare_distill", "prepare_train"]


def count_sentences(data: str, *, max_sentences: int | None = None) -> int:
    """The number of labeled sentences of ``data``, at most ``max_sentences``."""
    return len(load_labeled(data, role="train", max_sentences=max_sentences))
