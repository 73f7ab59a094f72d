"""What the NER predictors of both backends share (no torch here): ``NerLabels``, one sentence's
result, and ``NerPredictor``, which writes it into a ``Document`` (token tags and entities with
character offsets)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from structkd.serve.predictor import Predictor
from structkd.serve.results import Document, Entity, Sentence

__all__ = ["OUTPUT_SCHEMES", "NerLabels", "NerPredictor"]

OUTPUT_SCHEMES = ("bioes", "iob2")
"""The tag schemes a predictor writes token tags in."""


@dataclass(frozen=True)
class NerLabels:
    """One sentence's predictions.

    ``tags``: the predicted tag of each token in the predictor's ``scheme`` (the decoded best
    structure: Viterbi for a CRF); ``tag_scores``: each tag's marginal probability under the
    model (for IOB2, the sum of the marginals of the BIOES labels with that IOB2 tag);
    ``spans``: the entities of the best structure, ``(token_start, token_end, type, score)``
    with ``token_end`` exclusive and ``score`` the marginal probability that exactly this span is
    an entity of this type."""

    tags: tuple[str, ...]
    tag_scores: tuple[float, ...]
    spans: tuple[tuple[int, int, str, float], ...]


class NerPredictor(Predictor):
    """A NER predictor (either backend): ``label_batch`` returns ``NerLabels``; the tokens get
    their ``tag``/``tag_score`` (``token_fields``) and ``annotate`` fills the document's
    ``entities``. ``scheme``: the tag scheme of the token tags (``"bioes"`` or ``"iob2"``)."""

    task = "ner"

    def __init__(self, model_dir: Any, *, scheme: str = "bioes", **options: Any):
        super().__init__(model_dir, **options)
        if scheme not in OUTPUT_SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(OUTPUT_SCHEMES)}; got {scheme!r}")
        self.scheme = scheme

    def token_fields(self, result: NerLabels) -> dict[str, Sequence[Any]]:
        """The tokens' ``tag`` and ``tag_score``."""
        return {"tag": result.tags, "tag_score": result.tag_scores}

    def annotate(
        self, document: Document, sentence_index: int, sentence: Sentence, result: NerLabels
    ) -> None:
        """The document's entities (the tokens' tags come from ``token_fields``)."""
        tokens, entities = sentence.tokens, document.entities
        for token_start, token_end, label, score in result.spans:
            start = tokens[token_start].start
            end = tokens[token_end - 1].end
            entities.append(
                Entity(
                    text=document.text[start:end],
                    label=label,
                    start=start,
                    end=end,
                    score=score,
                    sentence=sentence_index,
                    token_start=token_start,
                    token_end=token_end,
                )
            )
