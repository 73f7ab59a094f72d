"""The commands of the NER task (``structkd.tasks.ner.NerTask`` imports this module when one
runs); prediction and export are in ``structkd.tasks.ner.serving``. A fold-teacher directory
(``train --folds``) is evaluated as the mixture of its fold taggers
(``structkd.tasks.ner.folds``)."""

from __future__ import annotations

import os
from typing import Any

from structkd.tasks.ner import evaluation
from structkd.tasks.ner.data import load_labeled
from structkd.tasks.ner.folds import evaluate_folds
from structkd.tasks.ner.training import prepare_distill, prepare_train, train_folds
from structkd.train.folds import is_fold_directory

__all__ = ["count_sentences", "evaluate", "prepare_distill", "prepare_train", "train_folds"]


def count_sentences(data: str, *, max_sentences: int | None = None) -> int:
    """The number of labeled sentences of ``data``, at most ``max_sentences``."""
    return len(load_labeled(data, role="train", max_sentences=max_sentences))


def evaluate(model_dir: str | os.PathLike[str], data: str, **options: Any) -> dict[str, Any]:
    """``structkd.tasks.ner.evaluation.evaluate``; for a fold-teacher directory, the scores of
    the mixture of its fold taggers (``evaluate_folds``)."""
    if is_fold_directory(model_dir):
        return evaluate_folds(model_dir, data, **options)
    return evaluation.evaluate(model_dir, data, **options)
