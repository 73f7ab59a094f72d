"""Dependency parsing on CoNLL-U treebanks (``--task dep``): the ``DepTask`` plug-in.

Teachers are biaffine parsers (head selection, projective and non-projective tree CRFs,
second-order mean-field and exact siblings); students label each word with its head (relative
offset or relative PoS encoding) and relation. Scores: UAS and LAS (punctuation excluded unless
asked) and, for students, the rate of well-formed trees before repair. Serving
(``structkd.tasks.dep.serving``): a torch predictor for every model (head, relation and the head's
probability per token), and the students' ONNX export, served with numpy and onnxruntime only.
Fold teachers (``train --arch parser-* --folds K``): ``structkd.tasks.dep.folds``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from structkd.tasks.base import ModuleTask

__all__ = ["DepTask"]


class DepTask(ModuleTask):
    """Dependency parsing: parsers and sequence-labeling students scored by UAS/LAS."""

    name = "dep"
    commands_module = "structkd.tasks.dep.commands"
    serving_module = "structkd.tasks.dep.serving"
    output_formats = ("conllu", "json")
    title = "dependency parsing"
    scores = ("uas", "las")
    optional_scores = ("well_formed_rate",)
    primary_metric = "las"
    report_scores = ("las", "uas", "well_formed_rate")
    score_titles: ClassVar[Mapping[str, str]] = {
        "uas": "UAS",
        "las": "LAS",
        "well_formed_rate": "well-formed",
    }
    secondary_metric = "uas"
    teacher_margin = ("uas", 2.0)
    kd_methods = ("none", "token", "struct")
    temperature_modes = ("global",)
    learns_from_unlabeled = True
    fold_teachers = True
    default_archs: ClassVar[Mapping[str, str]] = {
        "train": "parser-head-selection",
        "distill": "student-dep-offset",
    }
    report_intro = (
        "Dependency parsing: test UAS, test LAS and dev LAS in percent (punctuation excluded): "
        "mean ± sample standard deviation over seeds (n = number of seeds). Well-formed: the "
        "percentage of test sentences whose predicted labels form a tree before repair (the "
        "parsers decode trees: 100). Δ: mean test LAS minus that of the no-KD student of the "
        "same case. Speed: test sentences per second at inference."
    )

    def architectures(self) -> tuple[str, ...]:
        from structkd.tasks.dep.model import DEP_ARCHITECTURES

        return tuple(DEP_ARCHITECTURES)

    def override_fields(self, kind: str) -> tuple[str, frozenset[str]]:
        """The word encoder's (``DepEncoderConfig``) fields, plus ``ParserConfig`` fields for a
        teacher or ``DepTaggerConfig`` fields for a student; for ``"both"`` (an experiment's
        ``[defaults]``, which reach every model) the encoder's only."""
        from structkd.models.dep_encoder import DepEncoderConfig

        encoder = frozenset(f.name for f in dataclasses.fields(DepEncoderConfig))
        if kind == "teacher":
            from structkd.models.parser import ParserConfig

            top = {f.name for f in dataclasses.fields(ParserConfig)} - {"mode", "encoder"}
            return "ParserConfig or DepEncoderConfig", encoder | top
        if kind == "student":
            from structkd.models.dep_tagger import DepTaggerConfig

            top = {f.name for f in dataclasses.fields(DepTaggerConfig)} - {"encoder"}
            return "DepTaggerConfig or DepEncoderConfig", encoder | top
        return "DepEncoderConfig (the [defaults] reach teachers and students)", encoder

    # -- printing -------------------------------------------------------------------------------

    def score_line(self, name: str, scores: Mapping[str, Any]) -> str:
        return (
            f"{name:<4} UAS {100 * scores['uas']:.2f}  LAS {100 * scores['las']:.2f}  well-formed "
            f"{100 * scores.get('well_formed_rate', float('nan')):.1f}%  "
            f"({scores['sentences_per_second']:.0f} sentences/s)"
        )

    def format_scores(self, result: Mapping[str, Any]) -> str:
        punct = "included" if result.get("include_punct") else "excluded"
        return "\n".join(
            [
                f"data: {result['data']} ({result['n_sentences']} sentences, "
                f"{result['n_tokens']} words; punctuation {punct})",
                self.score_line("all", result),
            ]
        )
