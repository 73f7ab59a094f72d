"""What a predictor returns: a ``Document`` per input text, its ``Sentence``s and ``Token``s with
character offsets, and for NER its ``Entity`` spans; ``to_dict`` is the JSON form (``structkd
predict --format json`` writes one document per line)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

__all__ = ["Document", "Entity", "Sentence", "Token", "write_json_lines"]


@dataclass(slots=True)
class Token:
    """A token: ``text`` and its ``[start, end)`` character offsets into the document.

    Filled by the task that labeled it: NER ``tag`` (BIOES or IOB2) and ``tag_score`` (the tag's
    marginal probability); dependency parsing ``head`` (1-based index of the head token in the
    sentence, 0 for the root), ``deprel`` and ``head_score`` (the marginal probability of that
    head under the model), and the ``upos`` it was given, if any."""

    text: str
    start: int
    end: int
    tag: str | None = None
    tag_score: float | None = None
    head: int | None = None
    deprel: str | None = None
    head_score: float | None = None
    upos: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set."""
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(slots=True)
class Entity:
    """A named entity: its ``text`` (the document's slice), ``label`` (type), ``[start, end)``
    character offsets, ``score`` (the probability under the model that exactly this span is an
    entity of this type), the ``sentence`` it is in and its tokens ``[token_start, token_end)``
    in that sentence."""

    text: str
    label: str
    start: int
    end: int
    score: float
    sentence: int
    token_start: int
    token_end: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Sentence:
    """A sentence of a document: its tokens; ``start``/``end`` span them in the document."""

    tokens: list[Token]

    @property
    def start(self) -> int:
        return self.tokens[0].start if self.tokens else 0

    @property
    def end(self) -> int:
        return self.tokens[-1].end if self.tokens else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "tokens": [token.to_dict() for token in self.tokens],
        }


@dataclass(slots=True)
class Document:
    """One input text as a predictor returns it: the ``text``, its ``sentences`` and, for NER,
    its ``entities`` in text order."""

    text: str
    sentences: list[Sentence]
    entities: list[Entity] = field(default_factory=list)

    @property
    def tokens(self) -> list[Token]:
        """Every token, in order."""
        return [token for sentence in self.sentences for token in sentence.tokens]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "text": self.text,
            "sentences": [sentence.to_dict() for sentence in self.sentences],
        }
        if any(token.tag is not None for token in self.tokens):
            data["entities"] = [entity.to_dict() for entity in self.entities]
        return data


def write_json_lines(stream: TextIO, documents: Iterable[Document]) -> int:
    """One JSON object per document and line (``Document.to_dict``); returns how many."""
    count = 0
    for document in documents:
        stream.write(json.dumps(document.to_dict(), ensure_ascii=False) + "\n")
        count += 1
    return count
