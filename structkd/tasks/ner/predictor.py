"""What the NER predictors of both backends share (no torch here): ``NerLabels``, one sentence's
result, and ``NerPredictor``, which writes it into a ``Document`` (token tags and entities with
character offsets)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from structkd.serve.predictor import Predictor
from structkd.serve.results import Document, Entity, Sentence
from structkd.serve.text import TokenizedSentence

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
    context_size = 0
    """Subwords of document context the model reads on each side of a sentence (0: none; a
    torch predictor of a tagger with ``transformer_context`` sets it)."""

    def __init__(self, model_dir: Any, *, scheme: str = "bioes", **options: Any):
        super().__init__(model_dir, **options)
        if scheme not in OUTPUT_SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(OUTPUT_SCHEMES)}; got {scheme!r}")
        self.scheme = scheme

    def label_sentences(
        self, sentences: Sequence[TokenizedSentence], documents: Sequence[int] | None = None
    ) -> list[NerLabels]:
        """``label_batch`` over length-sorted batches; a model with document context
        (``context_size > 0``) reads each sentence with the sentences of its document around it
        (``documents``: the input document of each sentence; ``None``: each sentence alone),
        through ``context_collator`` and ``label_collated``."""
        if self.context_size == 0 or documents is None or not sentences:
            return super().label_sentences(sentences)
        from structkd.data.conll import Sentence as Record
        from structkd.data.documents import DocumentContext
        from structkd.serve.predictor import length_sorted_batches

        if len(documents) != len(sentences):
            raise ValueError(
                f"documents must name one document per sentence; got {len(documents)} for "
                f"{len(sentences)} sentences"
            )
        records = [
            Record(list(s.tokens), document=int(d))
            for s, d in zip(sentences, documents, strict=True)
        ]
        collator = self.context_collator(DocumentContext(records, self.context_size))
        results: list[Any] = [None] * len(sentences)
        lengths = [len(sentence) for sentence in sentences]
        for indices in length_sorted_batches(lengths, self.batch_size):
            batch = collator([(index, records[index]) for index in indices])
            for index, result in zip(indices, self.label_collated(batch), strict=True):
                results[index] = result
        return results

    def context_collator(self, context: Any) -> Any:
        """A collator of ``(sentence_id, Sentence)`` items that reads ``context`` (a
        ``DocumentContext``); needed where ``context_size > 0``."""
        raise NotImplementedError(f"{type(self).__name__} reads no document context")

    def label_collated(self, batch: Any) -> list[NerLabels]:
        """``NerLabels`` of each sentence of one batch of ``context_collator``, in its order."""
        raise NotImplementedError(f"{type(self).__name__} reads no document context")

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
