"""Dependency parsing as sequence labeling (Strzyz, Vilares and Gómez-Rodríguez, NAACL 2019).

Word ``i`` (1-based) of an ``n``-word sentence gets one label ``(head code, relation)``; the head
code names its head ``h`` relative to ``i``:

* ``"offset"`` (relative offset): the code is ``h - i``.
* ``"pos"`` (relative PoS-based): the code is ``(+k, p)`` when ``h`` is the ``k``-th word to the
  right of ``i`` whose UPOS is ``p``, ``(-k, p)`` when it is the ``k``-th to the left.

The root's head is encoded by the distinguished code ``0`` (:data:`ROOT_CODE`, shown ``root``) in
both encodings, so root labels do not depend on the position. A code denotes exactly one head of a
given sentence, or none (an offset outside the sentence, fewer than ``k`` words tagged ``p``); and
two codes never denote the same head of the same word. Hence a teacher's ``P(head_i = h)`` maps onto
the labels: ``P(label_i = (c, r)) = P(head_i = head(c, i)) * P(r | i, head)``, with
:meth:`DepLabelScheme.label_heads` giving ``head(c, i)`` for every word and label at once (heads no
code of the vocabulary reaches have no label: that teacher mass has no student label).

Decoding predicted labels into trees (each word's best label, repaired into one root, no cycle,
every word attached, after Strzyz et al. 2019) is ``structkd.serve.trees`` (numpy, batched), shared
by the torch student (``SequenceLabelingParser.decode``) and the exported one.

The models' inputs are here too (:class:`WordEncoder`, :class:`WordLayout`: words, characters and
UPOS tags to padded index arrays), shared by the collator and an exported model's predictor. This
module imports numpy, not torch (an exported model's predictor reads its scheme and encodes its
inputs without torch); the methods that return tensors import torch when called.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from structkd.data.vocab import Vocabulary

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "ENCODINGS",
    "ROOT_CODE",
    "DepLabel",
    "DepLabelScheme",
    "EncodedWords",
    "SchemeArrays",
    "WordEncoder",
    "WordLayout",
    "check_length_array",
    "decode_heads",
    "encode_heads",
    "encode_tree",
    "head_of",
]

Encoding = Literal["offset", "pos"]
ENCODINGS: tuple[str, ...] = ("offset", "pos")

HeadCode = tuple[int, str | None]
"""``(offset, head_upos)``: ``(h - i, None)`` (offset encoding), ``(+-k, p)`` (PoS-based encoding),
``(0, None)`` for the root in both."""

ROOT_CODE: HeadCode = (0, None)


class DepLabel(NamedTuple):
    """A word's label: head code ``(offset, head_upos)`` and the relation of its arc.

    ``str(label)``: ``root|root``, ``+2|nsubj`` (offset), ``-1@NOUN|amod`` (PoS-based).
    """

    offset: int
    head_upos: str | None
    relation: str

    @property
    def head_code(self) -> HeadCode:
        return (self.offset, self.head_upos)

    @property
    def is_root(self) -> bool:
        return self.offset == 0

    def __str__(self) -> str:
        return f"{_code_text(self.head_code)}|{self.relation}"


def _code_text(code: HeadCode) -> str:
    offset, head_upos = code
    if offset == 0:
        return "root"
    return f"{offset:+d}" if head_upos is None else f"{offset:+d}@{head_upos}"


def _check_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    return encoding


# --------------------------------------------------------------------------------------------------
# one sentence, pure Python


def encode_heads(
    heads: Sequence[int], upos: Sequence[str] | None = None, *, encoding: Encoding = "offset"
) -> list[HeadCode]:
    """Head code of every word: ``heads[i - 1]`` is the head of word ``i`` (0 = root).

    ``upos`` ``[n_words]`` is needed by the ``"pos"`` encoding (the UPOS of the head names it).
    """
    _check_encoding(encoding)
    n_words = len(heads)
    if encoding == "pos" and (upos is None or len(upos) != n_words):
        raise ValueError("the 'pos' encoding needs upos with one tag per word")
    codes: list[HeadCode] = []
    for word, head in enumerate(heads, start=1):
        if not 0 <= head <= n_words or head == word:
            raise ValueError(
                f"heads[{word - 1}] = {head} is not a head of word {word} (0..{n_words})"
            )
        if head == 0:
            codes.append(ROOT_CODE)
        elif encoding == "offset":
            codes.append((head - word, None))
        else:
            assert upos is not None
            tag = upos[head - 1]
            if head > word:
                rank = sum(1 for other in range(word + 1, head + 1) if upos[other - 1] == tag)
            else:
                rank = -sum(1 for other in range(head, word) if upos[other - 1] == tag)
            codes.append((rank, tag))
    return codes


def head_of(
    code: HeadCode,
    word: int,
    n_words: int,
    upos: Sequence[str] | None = None,
    *,
    encoding: Encoding = "offset",
) -> int:
    """The head that ``code`` denotes for ``word`` (1-based) of an ``n_words`` sentence, ``-1`` if
    none (outside the sentence, or fewer than ``k`` words tagged ``p`` on that side)."""
    offset, head_upos = code
    if offset == 0:
        return 0
    if encoding == "offset":
        head = word + offset
        return head if 1 <= head <= n_words else -1
    if upos is None:
        raise ValueError("the 'pos' encoding needs upos")
    step = 1 if offset > 0 else -1
    remaining = abs(offset)
    other = word + step
    while 1 <= other <= n_words:
        if upos[other - 1] == head_upos:
            remaining -= 1
            if remaining == 0:
                return other
        other += step
    return -1


def decode_heads(
    codes: Sequence[HeadCode], upos: Sequence[str] | None = None, *, encoding: Encoding = "offset"
) -> list[int]:
    """Heads denoted by ``codes`` (one per word), ``-1`` where a code denotes none; no repair."""
    _check_encoding(encoding)
    return [
        head_of(code, word, len(codes), upos, encoding=encoding)
        for word, code in enumerate(codes, start=1)
    ]


def encode_tree(
    heads: Sequence[int],
    relations: Sequence[str],
    upos: Sequence[str] | None = None,
    *,
    encoding: Encoding = "offset",
) -> list[DepLabel]:
    """Labels ``(head code, relation)`` of every word of a tree."""
    if len(relations) != len(heads):
        raise ValueError(f"relations must have {len(heads)} entries, got {len(relations)}")
    codes = encode_heads(heads, upos, encoding=encoding)
    return [DepLabel(offset, tag, rel) for (offset, tag), rel in zip(codes, relations, strict=True)]


# --------------------------------------------------------------------------------------------------
# the label vocabulary, batched


class SchemeArrays(NamedTuple):
    """The tables of a :class:`DepLabelScheme` as numpy int64/bool arrays (what decoding reads,
    with or without torch): ``label_code`` ``[L]`` and ``label_relation`` ``[L]`` (each label's
    head code and relation index), ``root_labels`` ``[L]`` bool, ``code_offset`` ``[C]`` (each
    code's signed offset or rank, ``0`` for the root code) and ``code_tag`` ``[C]`` (the index in
    ``pos_tags`` of the UPOS a code names; ``len(pos_tags)`` for the root code and every code of
    the ``"offset"`` encoding)."""

    label_code: np.ndarray
    label_relation: np.ndarray
    root_labels: np.ndarray
    code_offset: np.ndarray
    code_tag: np.ndarray


class DepLabelScheme:
    """A label vocabulary for one encoding, with batched label -> head maps.

    ``labels[l]`` is a :class:`DepLabel`; ``head_codes[c]`` the distinct head codes,
    ``relations[r]`` the distinct relations, ``pos_tags`` the UPOS tags that head codes name
    (``"pos"`` encoding; words with another tag are never a head). ``arrays``
    (:class:`SchemeArrays`) holds the index tables in numpy; ``label_code``, ``label_relation``,
    ``root_labels``, ``code_offset`` and ``code_tag`` are the same as torch tensors (built on
    first use: this module imports no torch, so an exported model's predictor reads a scheme
    without it).

    The label -> head maps are computed per head *code* (``C`` codes, far fewer than the ``L``
    labels: a label's head is its code's): :meth:`code_head_array` (numpy, batched),
    :meth:`sentence_code_heads` (one sentence), :meth:`code_heads` and :meth:`label_heads`
    (torch). Decoding labels into trees is ``structkd.serve.trees.decode_scores`` (numpy, batched;
    ``SequenceLabelingParser.decode`` calls it).

    Examples::

        scheme = DepLabelScheme.from_sentences(train_sentences, encoding="pos")
        label_ids = scheme.encode(sentence.heads, sentence.relations, sentence.upos)
        upos_ids = scheme.upos_ids([sentence.upos])                 # [1, n_words]
        heads_of = scheme.label_heads(torch.tensor([len(sentence)]), upos_ids)  # [1, n, n_labels]
        table = scheme.sentence_code_heads(len(sentence), sentence.upos)  # [n_words, n_codes]
    """

    def __init__(
        self,
        labels: Sequence[DepLabel],
        *,
        encoding: Encoding,
        root_relation: str | None = None,
    ):
        self.encoding = _check_encoding(encoding)
        labels = tuple(DepLabel(*label) for label in labels)
        if not labels:
            raise ValueError("labels must not be empty")
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be distinct")
        for label in labels:
            offset, head_upos, relation = label
            if not isinstance(offset, int) or not isinstance(relation, str) or not relation:
                raise ValueError(f"label {label!r}: offset must be an int and relation a string")
            expects_tag = encoding == "pos" and offset != 0
            if expects_tag != isinstance(head_upos, str):
                raise ValueError(
                    f"label {label!r}: the {encoding!r} encoding needs head_upos "
                    f"{'a UPOS string' if expects_tag else 'None'} here"
                )
        self.labels: tuple[DepLabel, ...] = labels
        self._label_index = {label: index for index, label in enumerate(labels)}
        self.head_codes: tuple[HeadCode, ...] = tuple(
            dict.fromkeys(lab.head_code for lab in labels)
        )
        self.relations: tuple[str, ...] = tuple(dict.fromkeys(lab.relation for lab in labels))
        self.pos_tags: tuple[str, ...] = tuple(
            dict.fromkeys(tag for _, tag in self.head_codes if tag is not None)
        )
        code_index = {code: index for index, code in enumerate(self.head_codes)}
        relation_index = {rel: index for index, rel in enumerate(self.relations)}
        self._tag_index = {tag: index for index, tag in enumerate(self.pos_tags)}
        # tag index of each code; root codes (and all codes of "offset") point at a never-used tag
        self.arrays = SchemeArrays(
            label_code=np.array([code_index[lab.head_code] for lab in labels], dtype=np.int64),
            label_relation=np.array(
                [relation_index[lab.relation] for lab in labels], dtype=np.int64
            ),
            root_labels=np.array([lab.is_root for lab in labels], dtype=bool),
            code_offset=np.array([offset for offset, _ in self.head_codes], dtype=np.int64),
            code_tag=np.array(
                [self._tag_index.get(tag, len(self.pos_tags)) for _, tag in self.head_codes],
                dtype=np.int64,
            ),
        )
        if root_relation is None:
            root_relation = next((lab.relation for lab in labels if lab.is_root), None)
        self.root_relation = root_relation

    @classmethod
    def from_sentences(
        cls, sentences: Iterable[Any], *, encoding: Encoding, min_count: int = 1
    ) -> DepLabelScheme:
        """The labels of training trees (objects with ``heads``, ``relations``, ``upos``), most
        frequent first (ties: first seen), keeping those seen at least ``min_count`` times.
        ``root_relation`` is the most frequent relation of root labels."""
        counts: Counter[DepLabel] = Counter()
        for sentence in sentences:
            counts.update(
                encode_tree(sentence.heads, sentence.relations, sentence.upos, encoding=encoding)
            )
        labels = [label for label, count in counts.most_common() if count >= min_count]
        root_counts = Counter({lab.relation: c for lab, c in counts.items() if lab.is_root})
        root_relation = root_counts.most_common(1)[0][0] if root_counts else None
        return cls(labels, encoding=encoding, root_relation=root_relation)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (its labels in order, encoding, root relation)."""
        return {
            "encoding": self.encoding,
            "root_relation": self.root_relation,
            "labels": [[label.offset, label.head_upos, label.relation] for label in self.labels],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DepLabelScheme:
        """The inverse of :meth:`to_dict`; ``ValueError`` if ``data`` is malformed."""
        try:
            labels = [
                DepLabel(int(offset), upos, relation) for offset, upos, relation in data["labels"]
            ]
            encoding = data["encoding"]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed label scheme: {error!r}") from None
        return cls(labels, encoding=encoding, root_relation=data.get("root_relation"))

    # ---------------------------------------------------------------------------------- lookups

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    @property
    def n_codes(self) -> int:
        return len(self.head_codes)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: object) -> bool:
        return label in self._label_index

    def index(self, label: DepLabel) -> int:
        """Index of ``label``; ``ValueError`` if it is not in the vocabulary."""
        try:
            return self._label_index[DepLabel(*label)]
        except (KeyError, TypeError):
            raise ValueError(f"label {label!r} is not in the vocabulary") from None

    def encode(
        self, heads: Sequence[int], relations: Sequence[str], upos: Sequence[str] | None = None
    ) -> list[int]:
        """Label index of every word of a tree; ``ValueError`` names a label not in the
        vocabulary."""
        labels = encode_tree(heads, relations, upos, encoding=self.encoding)
        indices = []
        for word, label in enumerate(labels, start=1):
            if label not in self._label_index:
                raise ValueError(f"label {label} of word {word} is not in the vocabulary")
            indices.append(self._label_index[label])
        return indices

    def known_labels(
        self, heads: Sequence[int], relations: Sequence[str], upos: Sequence[str] | None = None
    ) -> list[int]:
        """Label index of every word of a tree, ``-1`` for a label outside the vocabulary."""
        labels = encode_tree(heads, relations, upos, encoding=self.encoding)
        return [self._label_index.get(label, -1) for label in labels]

    def coverage(self, sentences: Iterable[Any]) -> float:
        """Fraction of the words of ``sentences`` whose gold label is in the vocabulary."""
        known = total = 0
        for sentence in sentences:
            labels = encode_tree(
                sentence.heads, sentence.relations, sentence.upos, encoding=self.encoding
            )
            known += sum(label in self._label_index for label in labels)
            total += len(labels)
        return known / total if total else 1.0

    def tag_indices(self, upos: Sequence[str]) -> np.ndarray:
        """``[n_words]`` int64 index of each tag in ``pos_tags``, ``-1`` for a tag no head code
        names."""
        index = self._tag_index
        return np.array([index.get(tag, -1) for tag in upos], dtype=np.int64)

    def upos_array(self, upos: Sequence[Sequence[str]], max_len: int | None = None) -> np.ndarray:
        """``[batch, max_len]`` int64 :meth:`tag_indices` of each sentence, ``-1`` at padding."""
        width = max((len(tags) for tags in upos), default=0) if max_len is None else max_len
        if any(len(tags) > width for tags in upos):
            raise ValueError(f"a sentence is longer than max_len={width}")
        rows = np.full((len(upos), width), -1, dtype=np.int64)
        for row, tags in enumerate(upos):
            rows[row, : len(tags)] = self.tag_indices(tags)
        return rows

    def upos_ids(self, upos: Sequence[Sequence[str]], max_len: int | None = None) -> Tensor:
        """:meth:`upos_array` as a torch tensor ``[batch, max_len]``."""
        import torch

        return torch.from_numpy(self.upos_array(upos, max_len))

    # ---------------------------------------------------------------------- label -> head, batched

    def code_head_array(
        self, lengths: Any, upos_ids: Any | None = None, *, max_len: int | None = None
    ) -> np.ndarray:
        """``[batch, max_len, n_codes]`` int64 (numpy): the head (0 = root, words 1-based) that
        head code ``c`` denotes for word ``i + 1`` at ``[b, i, c]``, ``-1`` if none, ``-1`` on
        padding rows: :meth:`word_code_heads` padded.

        ``lengths`` ``[batch]``; ``upos_ids`` ``[batch, max_len]`` (:meth:`upos_array`), needed
        by the ``"pos"`` encoding (array-likes: numpy arrays, lists, CPU tensors).
        """
        if upos_ids is not None:
            upos_ids = np.asarray(upos_ids)
            if upos_ids.ndim != 2:
                raise ValueError(
                    f"upos_ids must have shape [batch, max_len], got {list(upos_ids.shape)}"
                )
            if max_len is not None and max_len != upos_ids.shape[1]:
                raise ValueError(
                    f"max_len={max_len} disagrees with upos_ids {list(upos_ids.shape)}"
                )
            max_len = upos_ids.shape[1]
        lengths = np.asarray(lengths)
        if max_len is None:
            max_len = int(lengths.max()) if lengths.size else 0
        lengths = check_length_array(lengths, len(lengths), max_len)
        word_mask = np.arange(max_len) < lengths[:, None]  # [batch, max_len]
        if self.encoding == "pos" and upos_ids is None:
            raise ValueError("the 'pos' encoding needs upos_ids [batch, max_len]")
        tags = None if upos_ids is None else upos_ids[word_mask]
        table = np.full((len(lengths), max_len, self.n_codes), -1, dtype=np.int64)
        table[word_mask] = self.word_code_heads(lengths, tags)
        return table

    def word_code_heads(self, lengths: Any, tags: Any | None = None) -> np.ndarray:
        """``[n_words, n_codes]`` int64 (numpy): the head (0 = root, words numbered from 1 in
        their sentence) that code ``c`` denotes for each word of a batch of sentences, the words
        of all sentences one after the other; ``-1`` if none.

        ``lengths`` ``[batch]`` (each >= 1); ``tags`` ``[n_words]`` each word's index in
        ``pos_tags`` (``-1``: a tag no code names), needed by the ``"pos"`` encoding. Offset: word
        ``i`` and code ``k``: ``head = i + k`` if in ``1..len``. PoS: with ``before[p]`` /
        ``through[p]`` the number of ``p``-tagged words of the sentence before word ``i`` / up to
        it, code ``(+k, p)`` denotes the ``p``-word of rank ``through[p] + k - 1`` (0-based) and
        ``(-k, p)`` that of rank ``before[p] - k``, if the rank is in ``0..count(p) - 1``.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        sentence = np.repeat(np.arange(lengths.size), lengths)  # [W] each word's sentence
        starts = np.cumsum(lengths) - lengths
        position = np.arange(sentence.size) - starts[sentence] + 1  # [W] word numbers
        offsets = self.arrays.code_offset
        if self.encoding == "offset":
            heads = position[:, None] + offsets  # [W, C]
            valid = (heads >= 1) & (heads <= lengths[sentence][:, None])
        else:
            if tags is None:
                raise ValueError("the 'pos' encoding needs each word's tag index")
            tags = np.asarray(tags, dtype=np.int64)
            if tags.shape != sentence.shape:
                raise ValueError(f"tags must have shape [{sentence.size}], got {list(tags.shape)}")
            heads, valid = self._pos_word_heads(lengths, tags, sentence, starts, position)
        heads = np.where(valid, heads, -1)
        return np.where(offsets == 0, 0, heads)

    def _pos_word_heads(
        self,
        lengths: np.ndarray,
        tags: np.ndarray,
        sentence: np.ndarray,
        starts: np.ndarray,
        position: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Heads ``[W, C]`` and validity of the PoS-based codes (roots ignored)."""
        n_words = sentence.size
        n_tags = len(self.pos_tags) + 1  # the last tag is never worn by a word: roots point there
        tags = np.where(tags >= 0, tags, n_tags - 1)
        wears = np.zeros((n_words, n_tags), dtype=np.int64)
        wears[np.arange(n_words), tags] = 1
        wears[:, n_tags - 1] = 0
        total = wears.cumsum(0)  # [W, P] p-words among all words up to this one
        before_sentence = total[starts] - wears[starts]  # [B, P] ... before each sentence
        through = total - before_sentence[sentence]  # p-words of the sentence up to the word
        count = total[starts + lengths - 1] - before_sentence  # [B, P]
        stacked = np.concatenate([through - wears, through], axis=1)  # [W, 2P]: before, through
        code_tag = self.arrays.code_tag
        offsets = self.arrays.code_offset
        right = offsets > 0
        rank = stacked[:, code_tag + n_tags * right] + offsets - right  # [W, C], 0-based rank
        valid = (rank >= 0) & (rank < count[sentence][:, code_tag])
        # the words wearing a tag, grouped by (sentence, tag), in sentence order: the r-th
        # p-word of sentence b is the word at group_start[b, p] + r
        key = sentence * n_tags + tags
        worn = tags < n_tags - 1
        order = np.flatnonzero(worn)[np.argsort(key[worn], kind="stable")]
        sizes = np.bincount(key[worn], minlength=lengths.size * n_tags)
        group_start = np.cumsum(sizes) - sizes
        if order.size == 0:
            return np.zeros_like(rank), np.zeros_like(valid)
        index = group_start[sentence[:, None] * n_tags + code_tag] + rank
        heads = position[order[np.clip(index, 0, order.size - 1)]]
        return heads, valid

    def sentence_code_heads(self, n_words: int, upos: Sequence[str] | None = None) -> np.ndarray:
        """``[n_words, n_codes]`` int64 :meth:`code_head_array` of one sentence (``upos``: its
        tags, for the ``"pos"`` encoding)."""
        upos_ids = None
        if self.encoding == "pos":
            if upos is None:
                raise ValueError("the 'pos' encoding needs the sentence's upos")
            upos_ids = self.tag_indices(upos)
        return self.word_code_heads(np.array([n_words]), upos_ids)

    def code_heads(
        self, lengths: Tensor, upos_ids: Tensor | None = None, *, max_len: int | None = None
    ) -> Tensor:
        """:meth:`code_head_array` as a torch tensor ``[batch, max_len, n_codes]`` on the device
        of ``lengths``."""
        import torch

        device = lengths.device if isinstance(lengths, torch.Tensor) else torch.device("cpu")
        table = self.code_head_array(
            _host(lengths), None if upos_ids is None else _host(upos_ids), max_len=max_len
        )
        return torch.from_numpy(np.ascontiguousarray(table)).to(device)

    def label_heads(
        self, lengths: Tensor, upos_ids: Tensor | None = None, *, max_len: int | None = None
    ) -> Tensor:
        """``[batch, max_len, n_labels]`` int64: the head label ``l`` denotes for word ``i + 1`` at
        ``[b, i, l]`` (0 = root), ``-1`` if none or on padding rows (arguments as
        :meth:`code_heads`).

        A teacher's arc marginals ``P(head_d = h)`` ``[batch, N+1, N+1]`` (``[head, dependent]``)
        map onto labels as
        ``P(label_i = l) = P(head_{i+1} = label_heads[b, i, l]) * P(rel_l | ...)``, with ``0``
        where ``label_heads`` is ``-1``."""
        code_heads = self.code_heads(lengths, upos_ids, max_len=max_len)
        return code_heads[:, :, self.label_code.to(code_heads.device)]

    def sentence_label_heads(self, n_words: int, upos: Sequence[str] | None = None) -> Tensor:
        """``[n_words, n_labels]`` :meth:`label_heads` of one sentence."""
        import torch

        table = self.sentence_code_heads(n_words, upos)[:, self.arrays.label_code]
        return torch.from_numpy(np.ascontiguousarray(table))

    # ---------------------------------------------------------------------- the tables in torch

    @functools.cached_property
    def label_code(self) -> Tensor:
        """``[n_labels]`` int64: each label's head code (``arrays.label_code``)."""
        return _tensor(self.arrays.label_code)

    @functools.cached_property
    def label_relation(self) -> Tensor:
        """``[n_labels]`` int64: each label's relation index in ``relations``."""
        return _tensor(self.arrays.label_relation)

    @functools.cached_property
    def root_labels(self) -> Tensor:
        """``[n_labels]`` bool: the labels with the root code."""
        return _tensor(self.arrays.root_labels)

    @functools.cached_property
    def code_offset(self) -> Tensor:
        """``[n_codes]`` int64: each code's signed offset (rank), 0 for the root."""
        return _tensor(self.arrays.code_offset)

    @functools.cached_property
    def code_tag(self) -> Tensor:
        """``[n_codes]`` int64: see :class:`SchemeArrays`."""
        return _tensor(self.arrays.code_tag)

    def __repr__(self) -> str:
        return (
            f"DepLabelScheme(encoding={self.encoding!r}, n_labels={self.n_labels}, "
            f"n_codes={len(self.head_codes)}, n_relations={len(self.relations)})"
        )


# --------------------------------------------------------------------------------------------------
# the models' inputs


class EncodedWords(NamedTuple):
    """One sentence's inputs as vocabulary indices (``n`` words, ``c`` characters kept in all):
    ``word_ids`` ``[n]`` (lowercased forms), ``upos_ids`` ``[n]``, ``punct`` ``[n]`` bool (UPOS
    ``PUNCT``), ``char_ids`` ``[c]`` (each word's first ``max_word_chars`` characters, one word
    after the other) and ``char_counts`` ``[n]`` (how many each word kept)."""

    word_ids: np.ndarray
    upos_ids: np.ndarray
    punct: np.ndarray
    char_ids: np.ndarray
    char_counts: np.ndarray


class WordEncoder:
    """Sentences' words and UPOS tags -> ``EncodedWords``, as the dependency models read them
    (the collator of training and evaluation, and an exported model's predictor, which has no
    torch, share it). Unseen items take each vocabulary's unknown index. A sentence without UPOS
    tags (``upos=None``; a tag ``_`` alike) gets the UPOS vocabulary's padding index at every
    word: the embedding's zero row, no part-of-speech information (the ``<unk>`` row was never
    trained, since training data has gold tags, and misleads a model much more: on the Turkish
    Web Treebank test set an offset student kept 47.3 LAS with the zero row, 7.0 with ``<unk>``,
    73.3 with gold tags). Characters are looked up for a whole batch at once, as code points in
    the sorted code points of the character vocabulary."""

    def __init__(
        self, words: Vocabulary, chars: Vocabulary, upos: Vocabulary, *, max_word_chars: int = 30
    ):
        self.max_word_chars = max_word_chars
        self._words = ({item: index for index, item in enumerate(words.items)}, words.unk_index)
        self._upos = ({item: index for index, item in enumerate(upos.items)}, upos.unk_index)
        self._no_upos = upos.pad_index if upos.pad_index is not None else upos.unk_index
        singles = sorted(
            (ord(item), index) for index, item in enumerate(chars.items) if len(item) == 1
        )
        self._char_codes = np.array([code for code, _ in singles], dtype=np.int64)
        self._char_ids = np.array([index for _, index in singles], dtype=np.int64)
        self._char_unk = chars.unk_index

    def __call__(self, words: Sequence[str], upos: Sequence[str] | None = None) -> EncodedWords:
        """One sentence (``encode`` of one)."""
        return self.encode([words], [upos])[0]

    def encode(
        self, words: Sequence[Sequence[str]], upos: Sequence[Sequence[str] | None]
    ) -> list[EncodedWords]:
        """``EncodedWords`` of each sentence: ``words[b]`` its words, ``upos[b]`` their tags or
        ``None``."""
        word_index, word_unk = self._words
        upos_index, upos_unk = self._upos
        lengths = np.array([len(sentence) for sentence in words], dtype=np.int64)
        flat_words = [word for sentence in words for word in sentence]
        if any(t is not None and len(t) != len(w) for w, t in zip(words, upos, strict=True)):
            raise ValueError("upos must have one tag per word")
        tags = [
            tag
            for sentence, sentence_tags in zip(words, upos, strict=True)
            for tag in (sentence_tags if sentence_tags is not None else [None] * len(sentence))
        ]
        lookup = {"_": self._no_upos, **upos_index, None: self._no_upos}  # "_": CoNLL-U's none
        cut = [word[: self.max_word_chars] for word in flat_words]
        counts = np.array([len(word) for word in cut], dtype=np.int64)
        codes = np.frombuffer(
            "".join(cut).encode("utf-32-le", errors="surrogatepass"), dtype="<u4"
        ).astype(np.int64)
        if self._char_codes.size:
            place = np.searchsorted(self._char_codes, codes).clip(max=self._char_codes.size - 1)
            found = self._char_codes[place] == codes
            char_ids = np.where(found, self._char_ids[place], self._char_unk)
        else:
            char_ids = np.full(codes.size, self._char_unk, dtype=np.int64)
        word_ends = np.cumsum(lengths)
        char_ends = np.concatenate([[0], np.cumsum(counts)])[word_ends]
        splits, char_splits = word_ends[:-1], char_ends[:-1]
        columns = {
            "word_ids": np.array(
                [word_index.get(word.lower(), word_unk) for word in flat_words], dtype=np.int64
            ),
            "upos_ids": np.array([lookup.get(tag, upos_unk) for tag in tags], dtype=np.int64),
            "punct": np.array([tag == "PUNCT" for tag in tags], dtype=bool),
            "char_counts": counts,
        }
        per_sentence = {name: _split(values, splits) for name, values in columns.items()}
        per_sentence["char_ids"] = _split(char_ids.astype(np.int64), char_splits)
        return [
            EncodedWords(**{name: values[b] for name, values in per_sentence.items()})
            for b in range(len(words))
        ]


class WordLayout:
    """Where the words of ``B`` sentences of ``lengths`` go in padded ``[B, N]`` arrays
    (``N = max(lengths)``): word ``i`` of sentence ``b`` at ``(rows, columns)[k]`` for its
    position ``k`` among all words, the sentences one after the other."""

    def __init__(self, lengths: np.ndarray):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch = self.lengths.size
        self.max_len = int(self.lengths.max()) if self.batch else 0
        self.rows = np.repeat(np.arange(self.batch), self.lengths)
        starts = np.cumsum(self.lengths) - self.lengths
        self.columns = np.arange(self.rows.size) - np.repeat(starts, self.lengths)

    def pad(
        self, values: Sequence[np.ndarray], fill: Any, *, shift: int = 0, dtype: Any = np.int64
    ) -> np.ndarray:
        """``[B, N + shift, ...]``: each sentence's ``values`` (``[n_b, ...]``) from column
        ``shift`` on, ``fill`` elsewhere."""
        flat = np.concatenate(values)
        out = np.full((self.batch, self.max_len + shift, *flat.shape[1:]), fill, dtype=dtype)
        out[self.rows, self.columns + shift] = flat
        return out

    def pad_words(self, encoded: Sequence[EncodedWords]) -> dict[str, np.ndarray]:
        """The padded inputs of ``encoded`` (one per sentence): ``word_ids`` ``[B, N]``,
        ``char_ids`` ``[B, N, C]`` (``C`` the most characters a word kept, at least 1),
        ``upos_ids`` ``[B, N]`` (0 at padding), ``punct_mask`` ``[B, N + 1]`` (column 0 the root,
        False) and ``lengths`` ``[B]``."""
        counts = np.concatenate([item.char_counts for item in encoded])  # [words]
        width = max(1, int(counts.max()) if counts.size else 0)
        char_ids = np.zeros((self.batch, self.max_len, width), dtype=np.int64)
        char_word = np.repeat(np.arange(counts.size), counts)
        char_position = np.arange(char_word.size) - np.repeat(np.cumsum(counts) - counts, counts)
        char_ids[self.rows[char_word], self.columns[char_word], char_position] = np.concatenate(
            [item.char_ids for item in encoded]
        )
        return {
            "word_ids": self.pad([item.word_ids for item in encoded], 0),
            "char_ids": char_ids,
            "upos_ids": self.pad([item.upos_ids for item in encoded], 0),
            "punct_mask": self.pad([item.punct for item in encoded], False, shift=1, dtype=bool),
            "lengths": self.lengths,
        }


def check_length_array(lengths: Any, batch_size: int, max_len: int) -> np.ndarray:
    """Per-sentence lengths ``[batch]`` checked against a padded width ``max_len`` (numpy
    int64); ``ValueError`` naming the problem (wrong shape, not integers, a length < 1 or >
    ``max_len``)."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.shape[0] != batch_size:
        raise ValueError(
            f"lengths must have shape [batch]=[{batch_size}], got {list(lengths.shape)}"
        )
    if lengths.size and lengths.dtype.kind not in "iu":
        raise ValueError(f"lengths must be integers, got {lengths.dtype}")
    lengths = lengths.astype(np.int64)
    if batch_size and int(lengths.min()) < 1:
        raise ValueError(f"lengths must be >= 1, got min {int(lengths.min())}")
    if batch_size and int(lengths.max()) > max_len:
        raise ValueError(
            f"lengths must be <= the padded length {max_len}, got max {int(lengths.max())}"
        )
    return lengths


def _split(values: np.ndarray, splits: np.ndarray) -> list[np.ndarray]:
    """``np.split(values, splits)`` (views), without its per-piece overhead."""
    bounds = [0, *splits.tolist(), len(values)]
    return [values[start:stop] for start, stop in itertools.pairwise(bounds)]


def _host(values: Any) -> np.ndarray:
    """A CPU numpy view of a tensor (or any array-like)."""
    if hasattr(values, "detach"):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _tensor(array: np.ndarray) -> Tensor:
    import torch

    return torch.from_numpy(array.copy())
