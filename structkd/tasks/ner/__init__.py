"""Named-entity recognition on CoNLL column files (``--task ner``): the ``NerTask`` plug-in.

Taggers (``structkd.models.tagger``: CRF, softmax and span heads over GloVe, char-CNN, BiLSTM and
transformer features), entity-level seqeval scores, all six KD methods, unlabeled text.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from structkd.distill.methods import METHOD_NAMES, TEMPERATURE_MODES
from structkd.tasks.base import CaseSpec, ModuleTask

__all__ = ["NerTask"]


class NerTask(ModuleTask):
    """NER: BIOES taggers scored by entity F1 (seqeval, strict)."""

    name = "ner"
    commands_module = "structkd.tasks.ner.commands"
    serving_module = "structkd.tasks.ner.serving"
    output_formats = ("conll", "json")
    title = "NER"
    scores = ("precision", "recall", "f1")
    primary_metric = "f1"
    report_scores = ("f1",)
    score_titles: ClassVar[Mapping[str, str]] = {"precision": "P", "recall": "R", "f1": "F1"}
    kd_methods = METHOD_NAMES
    temperature_modes = TEMPERATURE_MODES
    learns_from_unlabeled = True
    fold_teachers = True
    cases: ClassVar[Mapping[str, CaseSpec]] = {
        "1a": CaseSpec("crf", "crf", "CRF teacher -> CRF student"),
        "2a": CaseSpec("crf", "softmax", "CRF teacher -> softmax student"),
        "3": CaseSpec(
            "softmax", "crf-unconstrained", "softmax teacher -> unconstrained CRF student"
        ),
        "4": CaseSpec("span", "softmax", "span teacher -> softmax student"),
    }
    default_archs: ClassVar[Mapping[str, str]] = {"train": "teacher-crf", "distill": "student-crf"}
    report_intro = (
        "Test and dev F1 in percent: mean ± sample standard deviation over seeds (n = number of "
        "seeds). Δ: mean test F1 minus that of the no-KD student of the same case and labeled "
        "fraction. Speed: test sentences per second at inference."
    )

    def architectures(self) -> tuple[str, ...]:
        from structkd.models.tagger import ARCHITECTURES

        return tuple(ARCHITECTURES)

    def override_fields(self, kind: str) -> tuple[str, frozenset[str]]:
        from structkd.models.tagger import TaggerConfig

        return "TaggerConfig", frozenset(f.name for f in dataclasses.fields(TaggerConfig))

    def load_predictor(
        self,
        model_dir: str | os.PathLike[str],
        *,
        batch_size: int = 64,
        num_threads: int | None = None,
        device: str = "cpu",
        scheme: str = "bioes",
    ) -> Any:
        """A fold-teacher directory (``train --folds``) is served as the mixture of its fold
        taggers (``structkd.tasks.ner.folds.FoldNerPredictor``); any other by ``serving``."""
        from structkd.train.folds import is_fold_directory

        if is_fold_directory(model_dir):
            from structkd.tasks.ner.folds import FoldNerPredictor

            return FoldNerPredictor(
                model_dir,
                batch_size=batch_size,
                num_threads=num_threads,
                device=device,
                scheme=scheme,
            )
        return super().load_predictor(
            model_dir, batch_size=batch_size, num_threads=num_threads, device=device, scheme=scheme
        )

    # -- printing -------------------------------------------------------------------------------

    def score_line(self, name: str, scores: Mapping[str, Any]) -> str:
        line = (
            f"{name:<4} F1 {100 * scores['f1']:.2f}  P {100 * scores['precision']:.2f}  "
            f"R {100 * scores['recall']:.2f}"
        )
        if "sentences_per_second" in scores and name != "test":
            line += f"  ({scores['sentences_per_second']:.0f} sentences/s)"
        return line

    def format_scores(self, result: Mapping[str, Any]) -> str:
        lines = [
            f"data: {result['data']} ({result['n_sentences']} sentences, "
            f"{result['n_tokens']} tokens)",
            f"{'type':<10} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}",
        ]
        for entity_type, row in result["per_type"].items():
            lines.append(
                f"{entity_type:<10} {100 * row['precision']:9.2f} {100 * row['recall']:9.2f} "
                f"{100 * row['f1']:9.2f} {row['support']:8d}"
            )
        lines.append(
            f"{'all':<10} {100 * result['precision']:9.2f} {100 * result['recall']:9.2f} "
            f"{100 * result['f1']:9.2f}"
        )
        lines.append(f"speed: {result['sentences_per_second']:.0f} sentences/s")
        return "\n".join(lines)

    def result_scores(self, split: Mapping[str, Any]) -> dict[str, Any]:
        found = super().result_scores(split)
        if "per_type" in split:
            found["per_type"] = split["per_type"]
        return found
