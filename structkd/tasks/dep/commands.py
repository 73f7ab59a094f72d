"""The commands of the dependency task (``structkd.tasks.dep.DepTask`` imports this module when
one runs); prediction and export are in ``structkd.tasks.dep.serving``."""

from __future__ import annotations

from structkd.tasks.dep.data import load_dep_source
from structkd.tasks.dep.evaluation import evaluate_dep as evaluate
from structkd.tasks.dep.training import prepare_distill, prepare_train

__all__ = ["count_sentences", "evaluate", "prepare_distill", "prepare_train"]


def count_sentences(data: str, *, max_sentences: int | None = None) -> int:
    """The number of trees of ``data``, at most ``max_sentences``."""
    return len(load_dep_source(data, role="train", max_sentences=max_sentences))
