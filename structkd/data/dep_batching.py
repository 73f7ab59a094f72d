"""Dependency-annotated sentences to tensors: the parsers' vocabulary, batches and collator.

``DepVocab`` holds what a parser or a sequence-labeling student indexes: lowercased word forms
(casing reaches the model through the characters), cased characters, UPOS tags and the relations
(sorted). ``DepCollator`` turns ``(sentence_id, DepSentence)`` pairs into a ``DepBatch`` of padded
tensors in the conventions of ``structkd.structures``: head vectors ``[B, N + 1]`` with position 0
the root (``-1`` there and at padding). Given a ``DepLabelScheme`` it also lays out the student's
labels and, for every word and label, the head the label denotes (``DepLabelScheme.label_heads``),
which the distillation bridge needs.

This module imports torch (the rest of ``structkd.data`` readers do not need it); import it
directly, as ``structkd.data.dep_batching``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from structkd.data.batching import PaddedBatch
from structkd.data.conllu_io import DepSentence
from structkd.data.dep_encodings import DepLabel, DepLabelScheme, encode_tree
from structkd.data.vocab import Vocabulary

__all__ = ["DepBatch", "DepCollator", "DepVocab", "scheme_from_dict", "scheme_to_dict"]


def scheme_to_dict(scheme: DepLabelScheme) -> dict[str, Any]:
    """A JSON-ready description of ``scheme`` (its labels in order, encoding, root relation)."""
    return {
        "encoding": scheme.encoding,
        "root_relation": scheme.root_relation,
        "labels": [[label.offset, label.head_upos, label.relation] for label in scheme.labels],
    }


def scheme_from_dict(data: Mapping[str, Any]) -> DepLabelScheme:
    """The inverse of :func:`scheme_to_dict`."""
    labels = [DepLabel(int(offset), upos, relation) for offset, upos, relation in data["labels"]]
    return DepLabelScheme(
        labels, encoding=data["encoding"], root_relation=data.get("root_relation")
    )


@dataclass(frozen=True)
class DepVocab:
    """Vocabularies of a dependency model.

    ``words``: lowercased forms (padding 0, unknown 1); ``chars``: cased characters (padding 0,
    unknown 1); ``upos``: UPOS tags (padding 0, unknown 1); ``relations``: the sorted relations of
    the training trees (index ``r`` is relation ``relations[r]``; no specials).
    """

    words: Vocabulary
    chars: Vocabulary
    upos: Vocabulary
    relations: tuple[str, ...]

    @classmethod
    def build(
        cls,
        sentences: Sequence[DepSentence],
        *,
        min_count: int = 1,
        extra_words: Iterable[str] = (),
    ) -> DepVocab:
        """Vocabularies of the training ``sentences``; a word seen fewer than ``min_count`` times
        maps to ``<unk>``; ``extra_words`` (e.g. of unlabeled text) are added whatever their count.
        """
        if not sentences:
            raise ValueError("cannot build a vocabulary from no sentences")
        word_counts = [word.lower() for sentence in sentences for word in sentence.words]
        words = Vocabulary.build(word_counts, min_count=min_count)
        extra = [word.lower() for word in extra_words if word.lower() not in words]
        if extra:
            words = Vocabulary(list(words.items[2:]) + list(dict.fromkeys(extra)))
        chars = Vocabulary.build(
            char for sentence in sentences for w in sentence.words for char in w
        )
        upos = Vocabulary.build(tag for sentence in sentences for tag in sentence.upos)
        relations = tuple(sorted({rel for sentence in sentences for rel in sentence.relations}))
        return cls(words=words, chars=chars, upos=upos, relations=relations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "words": self.words.to_dict(),
            "chars": self.chars.to_dict(),
            "upos": self.upos.to_dict(),
            "relations": list(self.relations),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DepVocab:
        return cls(
            words=Vocabulary.from_dict(data["words"]),
            chars=Vocabulary.from_dict(data["chars"]),
            upos=Vocabulary.from_dict(data["upos"]),
            relations=tuple(data["relations"]),
        )

    def relation_ids(
        self,
        relations: Sequence[str],
        sentence: DepSentence | None = None,
        *,
        unknown: int | None = None,
    ) -> list[int]:
        """Indices of ``relations``. A relation not seen in training gets ``unknown`` if given (an
        index no prediction takes, e.g. ``-1``: evaluation scores it as a wrong label), else is
        an error naming the sentence (a model cannot train on it)."""
        index = {rel: position for position, rel in enumerate(self.relations)}
        ids = []
        for word, rel in enumerate(relations, start=1):
            if rel not in index and unknown is not None:
                ids.append(unknown)
                continue
            if rel not in index:
                where = (
                    ""
                    if sentence is None
                    else f"{sentence.source}:{sentence.word_lines[word - 1]}: "
                )
                raise ValueError(
                    f"{where}relation {rel!r} of word {word} was not seen in the training trees"
                )
            ids.append(index[rel])
        return ids


@dataclass(frozen=True)
class DepBatch(PaddedBatch):
    """A padded batch of ``B`` sentences of at most ``N`` words (``C`` characters per word).

    Attributes:
        word_ids: ``[B, N]`` int64 indices in ``vocab.words`` (lowercased), 0 at padding.
        char_ids: ``[B, N, C]`` int64 indices in ``vocab.chars``, 0 at padding.
        upos_ids: ``[B, N]`` int64 indices in ``vocab.upos``, 0 at padding.
        lengths: ``[B]`` int64 words per sentence.
        sentence_ids: ``[B]`` int64 index of each sentence in its data set.
        heads: ``[B, N + 1]`` int64 gold heads (``heads[:, 0] = -1``, ``-1`` at padding); or
            ``None`` (unlabeled).
        rel_ids: ``[B, N + 1]`` int64 gold relation of the arc into each word (``-1`` at 0 and
            padding); or ``None``.
        label_ids: ``[B, N]`` int64 the student's gold label (``scheme``), ``-1`` at padding and for
            a gold label outside the scheme; or ``None``.
        label_heads: ``[B, N, L]`` int64 the head label ``l`` denotes for word ``i + 1`` (``-1``:
            none); or ``None`` (no scheme).
        scheme_upos_ids: ``[B, N]`` int64 UPOS indices in ``scheme.pos_tags`` (the "pos" encoding's
            decoding needs them), ``-1`` elsewhere; or ``None``.
        punct_mask: ``[B, N + 1]`` bool, True at words whose UPOS is ``PUNCT``.
    """

    word_ids: Tensor
    char_ids: Tensor
    upos_ids: Tensor
    lengths: Tensor
    sentence_ids: Tensor
    punct_mask: Tensor
    heads: Tensor | None = None
    rel_ids: Tensor | None = None
    label_ids: Tensor | None = None
    label_heads: Tensor | None = None
    scheme_upos_ids: Tensor | None = None

    @property
    def labeled(self) -> bool:
        return self.heads is not None


class DepCollator:
    """``[(sentence_id, DepSentence), ...]`` -> ``DepBatch``.

    Args:
        vocab: the model's ``DepVocab``.
        scheme: the student's label scheme (adds ``label_ids``, ``label_heads``,
            ``scheme_upos_ids``), or ``None``.
        labeled: put the gold trees in the batch (``heads``, ``rel_ids``, ``label_ids``).
        strict_relations: a gold relation the vocabulary lacks is an error (training); with
            ``False`` it gets ``rel_ids = -1``, which no prediction matches (evaluation).
        max_word_chars: characters kept per word (longer words are cut).
    """

    def __init__(
        self,
        vocab: DepVocab,
        scheme: DepLabelScheme | None = None,
        *,
        labeled: bool = True,
        strict_relations: bool = True,
        max_word_chars: int = 30,
    ):
        self.vocab = vocab
        self.scheme = scheme
        self.labeled = labeled
        self.strict_relations = strict_relations
        self.max_word_chars = max_word_chars

    def __call__(self, items: Sequence[tuple[int, DepSentence]]) -> DepBatch:
        if not items:
            raise ValueError("cannot collate an empty batch")
        sentences = [sentence for _, sentence in items]
        batch, max_len = len(sentences), max(len(sentence) for sentence in sentences)
        max_chars = min(
            self.max_word_chars, max(len(w) for sentence in sentences for w in sentence.words)
        )
        vocab = self.vocab
        word_ids = torch.zeros(batch, max_len, dtype=torch.long)
        char_ids = torch.zeros(batch, max_len, max(1, max_chars), dtype=torch.long)
        upos_ids = torch.zeros(batch, max_len, dtype=torch.long)
        punct_mask = torch.zeros(batch, max_len + 1, dtype=torch.bool)
        for row, sentence in enumerate(sentences):
            n_words = len(sentence)
            word_ids[row, :n_words] = torch.tensor(
                vocab.words.encode(word.lower() for word in sentence.words)
            )
            upos_ids[row, :n_words] = torch.tensor(vocab.upos.encode(sentence.upos))
            punct_mask[row, 1 : n_words + 1] = torch.tensor(
                [tag == "PUNCT" for tag in sentence.upos]
            )
            for column, word in enumerate(sentence.words):
                chars = vocab.chars.encode(word[: self.max_word_chars])
                char_ids[row, column, : len(chars)] = torch.tensor(chars)
        lengths = torch.tensor([len(sentence) for sentence in sentences], dtype=torch.long)
        result = DepBatch(
            word_ids=word_ids,
            char_ids=char_ids,
            upos_ids=upos_ids,
            lengths=lengths,
            sentence_ids=torch.tensor([sentence_id for sentence_id, _ in items], dtype=torch.long),
            punct_mask=punct_mask,
        )
        if self.labeled:
            heads = torch.full((batch, max_len + 1), -1, dtype=torch.long)
            rel_ids = torch.full((batch, max_len + 1), -1, dtype=torch.long)
            for row, sentence in enumerate(sentences):
                n_words = len(sentence)
                heads[row, 1 : n_words + 1] = torch.tensor(sentence.heads)
                rel_ids[row, 1 : n_words + 1] = torch.tensor(
                    vocab.relation_ids(
                        sentence.relations,
                        sentence,
                        unknown=None if self.strict_relations else -1,
                    )
                )
            result = replace(result, heads=heads, rel_ids=rel_ids)
        if self.scheme is not None:
            result = self._add_labels(result, sentences)
        return result

    def _add_labels(self, batch: DepBatch, sentences: Sequence[DepSentence]) -> DepBatch:
        scheme = self.scheme
        assert scheme is not None
        scheme_upos = scheme.upos_ids([s.upos for s in sentences], max_len=batch.max_len)
        label_heads = scheme.label_heads(
            batch.lengths, scheme_upos if scheme.encoding == "pos" else None, max_len=batch.max_len
        )
        changes: dict[str, Tensor] = {"label_heads": label_heads, "scheme_upos_ids": scheme_upos}
        if self.labeled:
            label_ids = torch.full((batch.batch_size, batch.max_len), -1, dtype=torch.long)
            for row, sentence in enumerate(sentences):
                label_ids[row, : len(sentence)] = torch.tensor(_known_labels(scheme, sentence))
            changes["label_ids"] = label_ids
        return replace(batch, **changes)


def _known_labels(scheme: DepLabelScheme, sentence: DepSentence) -> list[int]:
    """Gold label index of every word, ``-1`` for a label outside the scheme."""
    labels = encode_tree(
        sentence.heads, sentence.relations, sentence.upos, encoding=scheme.encoding
    )
    return [scheme.index(label) if label in scheme else -1 for label in labels]
