"""The commands of the dependency task (``structkd.tasks.dep.DepTask`` imports this module when
one runs); prediction and export are in ``structkd.tasks.dep.serving``. A fold-teacher directory
(``train --folds``) is evaluated as the mixture of its fold parsers
(``structkd.tasks.dep.folds``)."""

from __future__ import annotations

import os
from typing import Any

from structkd.tasks.dep.data import load_dep_source
from structkd.tasks.dep.evaluation import evaluate_dep
from structkd.tasks.dep.folds import evaluate_folds
from structkd.tasks.dep.training import prepare_distill, prepare_train, train_folds
from structkd.train.folds import is_fold_directory

__all__ = ["count_sentences", "evaluate", "prepare_distill", "prepare_train", "train_folds"]


def count_sentences(data: str, *, max_sentences: int | None = None) -> int:
    """The number of trees of ``data``, at most ``max_sentences``."""
    return len(load_dep_source(data, role="train", max_sentences=max_sentences))


def evaluate(model_dir: str | os.PathLike[str], data: str, **options: Any) -> dict[str, Any]:
    """``structkd.tasks.dep.evaluation.evaluate_dep``; for a fold-teacher directory, the scores
    of the mixture of its fold parsers (``evaluate_folds``)."""
    if is_fold_directory(model_dir):
        return evaluate_folds(model_dir, data, **options)
    return evaluate_dep(model_dir, data, **options)
