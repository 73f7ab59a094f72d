"""Target diagnostics per training part, task-agnostic: what each task's distillation records in
``metrics.json`` (``target_diagnostics``) about the teacher targets its student is trained on.

A task computes the diagnostics of a list of ``(sentence_id, sentence)`` items of one part
(``structkd.tasks.ner.diagnostics``, ``structkd.tasks.dep.diagnostics``); ``part_diagnostics``
runs it on every training part, named ``"<source> (labeled)"`` / ``"<source> (unlabeled)"``, and
with a fold teacher also splits each part by the kind of targets its sentences get
(``by_targets``): the sentences some fold teacher trained on (``"out-of-fold"`` or ``"in-fold"``
targets, the ``--teacher-targets`` mode) and the others (``"unseen"``: the mixture in either
mode). ``seen_by_folds`` says which sentences a fold teacher trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from structkd.train.data import Part
from structkd.train.folds import FoldModel

__all__ = ["part_diagnostics", "seen_by_folds"]


def seen_by_folds(
    token_lists: Iterable[Iterable[str]], fold_models: Sequence[FoldModel | None]
) -> np.ndarray:
    """``[n]`` bool: whether some fold teacher of ``fold_models`` (``None``: not a fold teacher)
    trained on each sentence (its tokens: what the fold assignment keys on)."""
    token_lists = [list(tokens) for tokens in token_lists]
    seen = np.zeros(len(token_lists), dtype=bool)
    for model in fold_models:
        if model is not None:
            seen |= model.assignment.fold_index(token_lists) >= 0
    return seen


def part_diagnostics(
    parts: Sequence[Part],
    diagnose: Callable[[Part, Sequence[tuple[int, Any]]], dict[str, Any] | None],
    seen: Mapping[str, np.ndarray] | None = None,
    mode: str = "in-fold",
) -> dict[str, Any]:
    """``{part name: diagnose(part, part.items)}`` for every training part (``None`` where the
    targets give none); with ``seen`` (per source, ``seen_by_folds`` of its sentences, indexed by
    sentence id) each part's also gets ``by_targets``: ``{mode: ..., "unseen": ...}``, the
    diagnostics of its seen and unseen sentences with their ``n_sentences`` (a group without
    sentences is left out)."""
    found: dict[str, Any] = {}
    for part in parts:
        name = f"{part.source} ({'labeled' if part.labeled else 'unlabeled'})"
        found[name] = diagnose(part, part.items)
        if seen is None or found[name] is None:
            continue
        flags = seen[part.source]
        groups = {
            mode: [item for item in part.items if flags[item[0]]],
            "unseen": [item for item in part.items if not flags[item[0]]],
        }
        found[name]["by_targets"] = {
            group: {"n_sentences": len(items), **(diagnose(part, items) or {})}
            for group, items in groups.items()
            if items
        }
    return found
