"""Dependency-annotated sentences to tensors: the parsers' vocabulary, batches and collator.

``DepVocab`` holds what a parser or a sequence-labeling student indexes: lowercased word forms
(casing reaches the model through the characters), cased characters, UPOS tags and the relations
(sorted). ``DepCollator`` turns ``(sentence_id, DepSentence)`` pairs into a ``DepBatch`` of padded
tensors in the conventions of ``structkd.structures``: head vectors ``[B, N + 1]`` with position 0
the root (``-1`` there and at padding). Given a ``DepLabelScheme`` it also lays out the student's
labels and, for every word and label, the head the label denotes (``DepLabelScheme.label_heads``),
which the distillation bridge needs.

Word, character and UPOS indices come from ``dep_encodings.WordEncoder`` (torch-free, shared with
an exported model's predictor). This module imports torch (the rest of ``structkd.data`` readers
do not need it); import it directly, as ``structkd.data.dep_batching``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from structkd.data.batching import PaddedBatch
from structkd.data.conllu_io import DepSentence
from structkd.data.dep_encodings import DepLabelScheme, EncodedWords, WordEncoder, WordLayout
from structkd.data.vocab import Vocabulary

__all__ = ["DepBatch", "DepCollator", "DepVocab", "scheme_from_dict", "scheme_to_dict"]


def scheme_to_dict(scheme: DepLabelScheme) -> dict[str, Any]:
    """A JSON-ready description of ``scheme`` (``DepLabelScheme.to_dict``)."""
    return scheme.to_dict()


def scheme_from_dict(data: Mapping[str, Any]) -> DepLabelScheme:
    """The inverse of :func:`scheme_to_dict` (``DepLabelScheme.from_dict``)."""
    return DepLabelScheme.from_dict(data)


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
        relations: Iterable[str] | None = None,
    ) -> DepVocab:
        """Vocabularies of the training ``sentences``; a word seen fewer than ``min_count`` times
        maps to ``<unk>``; ``extra_words`` (e.g. of unlabeled text) are added whatever their count.
        ``relations``: the relations (sorted here); ``None``: those of ``sentences`` (pass the
        relations of the gold trees when ``sentences`` also hold unparsed text).
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
        if relations is None:
            relations = (rel for sentence in sentences for rel in sentence.relations)
        return cls(words=words, chars=chars, upos=upos, relations=tuple(sorted(set(relations))))

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

    @functools.cached_property
    def relation_index(self) -> dict[str, int]:
        """``{relation: index}`` of ``relations``."""
        return {relation: position for position, relation in enumerate(self.relations)}

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
        index = self.relation_index
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
            none); or ``None`` (no scheme, or not asked for: the teacher-target cache needs it).
        scheme_upos_ids: ``[B, N]`` int64 UPOS indices in ``scheme.pos_tags``, ``-1`` elsewhere;
            or ``None``.
        punct_mask: ``[B, N + 1]`` bool, True at words whose UPOS is ``PUNCT``.
        code_heads: ``[B, N, K]`` int64 the head each of the scheme's ``K`` head codes denotes
            for word ``i + 1`` (``-1``: none; ``label_heads = code_heads[..., label_code]``), what
            decoding reads; or ``None``.
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
    code_heads: Tensor | None = None

    @property
    def labeled(self) -> bool:
        return self.heads is not None

    def without_labels(self) -> DepBatch:
        """The same batch without gold trees or labels (a batch of unlabeled text)."""
        return replace(self, heads=None, rel_ids=None, label_ids=None)


class _Encoded(NamedTuple):
    """One sentence's arrays (``n`` words)."""

    words: EncodedWords
    heads: np.ndarray | None  # [n]
    rel_ids: np.ndarray | None  # [n]
    label_ids: np.ndarray | None  # [n]
    scheme_upos: np.ndarray | None  # [n]
    code_heads: np.ndarray | None  # [n, K]


class DepCollator:
    """``[(sentence_id, DepSentence), ...]`` -> ``DepBatch``.

    A sentence is any object with ``words`` and ``upos`` (and, labeled, ``heads`` and
    ``relations``; a ``DepSentence``); ``upos=None``: the sentence has no tags (``WordEncoder``
    says what the model then reads). Words and label -> head tables are encoded batched over the
    sentences of a batch. With ``cache``, each sentence is encoded once (indices, gold labels, its
    label -> head table) and kept, keyed by the sentence object, while the sentence lives: an
    epoch's second pass over a data set only pads the cached arrays into the batch.

    Args:
        vocab: the model's ``DepVocab``.
        scheme: the student's label scheme (adds ``label_ids``, ``scheme_upos_ids``,
            ``code_heads`` and ``label_heads``), or ``None``.
        labeled: put the gold trees in the batch (``heads``, ``rel_ids``, ``label_ids``).
        strict_relations: a gold relation the vocabulary lacks is an error (training); with
            ``False`` it gets ``rel_ids = -1``, which no prediction matches (evaluation).
        max_word_chars: characters kept per word (longer words are cut).
        label_ids: with ``labeled``, add the gold labels ``label_ids`` (a student's gold loss
            needs them; evaluation does not).
        label_heads: add ``label_heads`` ``[B, N, L]`` (the teacher-target cache needs it;
            training and decoding do not).
        code_heads: add ``code_heads`` ``[B, N, K]`` (what decoding reads).
        cache: keep each sentence's arrays for the next batch that holds it: for data sets read
            again and again (training epochs, dev evaluations); a pass that sees each sentence
            once (evaluation, prediction, teacher targets) needs no cache.
    """

    def __init__(
        self,
        vocab: DepVocab,
        scheme: DepLabelScheme | None = None,
        *,
        labeled: bool = True,
        strict_relations: bool = True,
        max_word_chars: int = 30,
        label_ids: bool = True,
        label_heads: bool = True,
        code_heads: bool = True,
        cache: bool = False,
    ):
        self.vocab = vocab
        self.scheme = scheme
        self.labeled = labeled
        self.strict_relations = strict_relations
        self.max_word_chars = max_word_chars
        self.label_ids = label_ids and labeled and scheme is not None
        self.label_heads = label_heads and scheme is not None
        self.code_heads = (code_heads or label_heads) and scheme is not None
        self.encoder = WordEncoder(
            vocab.words, vocab.chars, vocab.upos, max_word_chars=max_word_chars
        )
        self.cache = cache
        self._cache: weakref.WeakKeyDictionary[Any, _Encoded] = weakref.WeakKeyDictionary()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None  # the cache stays in its process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = weakref.WeakKeyDictionary()

    def __call__(self, items: Sequence[tuple[int, Any]]) -> DepBatch:
        if not items:
            raise ValueError("cannot collate an empty batch")
        encoded = self._encoded([sentence for _, sentence in items])
        layout = WordLayout(np.array([len(e.words.word_ids) for e in encoded], dtype=np.int64))
        result: dict[str, Tensor] = {
            name: torch.from_numpy(array)
            for name, array in layout.pad_words([e.words for e in encoded]).items()
        }
        result["sentence_ids"] = torch.tensor([sentence_id for sentence_id, _ in items])

        def pad(values: list[Any], fill: int, *, shift: int = 0) -> Tensor:
            return torch.from_numpy(layout.pad(values, fill, shift=shift))

        if self.labeled:
            result["heads"] = pad([e.heads for e in encoded], -1, shift=1)
            result["rel_ids"] = pad([e.rel_ids for e in encoded], -1, shift=1)
        scheme = self.scheme
        if scheme is not None:
            result["scheme_upos_ids"] = pad([e.scheme_upos for e in encoded], -1)
            if self.label_ids:
                result["label_ids"] = pad([e.label_ids for e in encoded], -1)
            if self.code_heads:
                table = layout.pad([e.code_heads for e in encoded], -1)  # [B, N, K]
                result["code_heads"] = torch.from_numpy(table)
                if self.label_heads:
                    label_code = scheme.arrays.label_code
                    result["label_heads"] = torch.from_numpy(table[:, :, label_code])
        return DepBatch(**result)

    def _encoded(self, sentences: Sequence[Any]) -> list[_Encoded]:
        """Each sentence's arrays, from the cache or encoded now (label -> head tables batched
        over the sentences not seen before)."""
        cache = self._cache
        found: list[_Encoded | None] = [None] * len(sentences)
        if self.cache:
            with contextlib.suppress(TypeError):  # a sentence that takes no weak reference
                found = [cache.get(sentence) for sentence in sentences]
        missing = [index for index, entry in enumerate(found) if entry is None]
        if missing:
            new = [sentences[index] for index in missing]
            tables = self._code_head_tables(new)
            inputs = self.encoder.encode(
                [sentence.words for sentence in new], [sentence.upos for sentence in new]
            )
            for index, sentence, words, table in zip(missing, new, inputs, tables, strict=True):
                entry = self._encode(sentence, words, table)
                found[index] = entry
                if self.cache:
                    with contextlib.suppress(TypeError):  # no weak reference to it: not kept
                        cache[sentence] = entry
        return found  # type: ignore[return-value]

    def _code_head_tables(self, sentences: Sequence[Any]) -> list[np.ndarray | None]:
        """``[n_words, K]`` label -> head table of each sentence (``None`` without a scheme),
        computed in one batched call."""
        scheme = self.scheme
        if scheme is None or not self.code_heads:
            return [None] * len(sentences)
        lengths = np.array([len(sentence.words) for sentence in sentences], dtype=np.int64)
        tags = None
        if scheme.encoding == "pos":
            tags = np.concatenate([self._scheme_tags(sentence) for sentence in sentences])
        table = scheme.word_code_heads(lengths, tags).astype(np.int32)  # [words, K]
        bounds = [0, *np.cumsum(lengths).tolist()]
        return [table[start:stop] for start, stop in itertools.pairwise(bounds)]

    def _scheme_tags(self, sentence: Any) -> np.ndarray:
        """``[n]`` each word's index in ``scheme.pos_tags`` (``-1``: none; every word of a
        sentence without UPOS tags, ``upos=None``)."""
        assert self.scheme is not None
        if sentence.upos is None:
            return np.full(len(sentence.words), -1, dtype=np.int64)
        return self.scheme.tag_indices(sentence.upos)

    def _encode(
        self, sentence: Any, words: EncodedWords, code_heads: np.ndarray | None
    ) -> _Encoded:
        vocab, scheme = self.vocab, self.scheme
        heads = rel_ids = label_ids = scheme_upos = None
        if self.labeled:
            heads = np.array(sentence.heads, dtype=np.int64)
            rel_ids = np.array(
                vocab.relation_ids(
                    sentence.relations, sentence, unknown=None if self.strict_relations else -1
                ),
                dtype=np.int64,
            )
        if scheme is not None:
            scheme_upos = self._scheme_tags(sentence)
            if self.label_ids:
                label_ids = np.array(
                    scheme.known_labels(sentence.heads, sentence.relations, sentence.upos),
                    dtype=np.int64,
                )
        return _Encoded(
            words=words,
            heads=heads,
            rel_ids=rel_ids,
            label_ids=label_ids,
            scheme_upos=scheme_upos,
            code_heads=code_heads,
        )
