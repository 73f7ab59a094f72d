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

Decoding always returns a tree (one root, no cycle, every word attached); the repair
heuristics (:func:`repair_tree`) follow Strzyz et al. 2019 and each :class:`DecodedTree` says what
was repaired, so the evaluation can report the rate of well-formed predictions before repair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from structkd.structures.base import NumericalError, check_lengths

__all__ = [
    "ENCODINGS",
    "ROOT_CODE",
    "DecodedTree",
    "DepLabel",
    "DepLabelScheme",
    "decode_heads",
    "encode_heads",
    "encode_tree",
    "head_of",
    "repair_tree",
]

Encoding = Literal["offset", "pos"]
ENCODINGS: tuple[str, ...] = ("offset", "pos")

HeadCode = tuple[int, str | None]
"""``(offset, head_upos)``: ``(h - i, None)`` (offset encoding), ``(+-k, p)`` (PoS-based encoding),
``(0, None)`` for the root in both."""

ROOT_CODE: HeadCode = (0, None)

PROBLEMS: tuple[str, ...] = ("invalid head", "no root", "multiple roots", "cycle")
"""What :func:`repair_tree` (and :meth:`DepLabelScheme.decode`) may report, in this order."""


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
# repair


def repair_tree(
    heads: Sequence[int],
    *,
    confidence: Sequence[float] | None = None,
    root_scores: Sequence[float] | None = None,
) -> tuple[list[int], tuple[str, ...]]:
    """Turn any head sequence into a tree (one root, no cycle, every word attached).

    ``heads[i - 1]`` is the predicted head of word ``i``: ``0`` (root), ``1..n``, or anything else
    (e.g. ``-1``) for no valid head. Heuristics after Strzyz et al. 2019, applied in order:

    1. invalid head (outside ``0..n``, or the word itself): the word is attached to the root word;
    2. the root word: with several roots, the one of highest ``confidence`` (else the first), the
       other roots attach to it; with no root, the word of highest ``root_scores`` (else the first
       word with an invalid head, else the first word lying on a cycle: one exists);
    3. each cycle left is broken by attaching its first (lowest-numbered) word to the root word.

    ``confidence`` ``[n_words]``: score of each word's predicted label; ``root_scores``
    ``[n_words]``: each word's best score for a root label. Returns ``(heads, problems)`` with
    ``problems`` the names (in :data:`PROBLEMS`) of what was repaired, empty for a tree.
    """
    n_words = len(heads)
    if n_words == 0:
        raise ValueError("heads must have at least one word")
    fixed = [
        head if 0 <= head <= n_words and head != word else -1
        for word, head in enumerate(heads, start=1)
    ]
    problems: list[str] = []
    invalid = [word for word, head in enumerate(fixed, start=1) if head < 0]
    if invalid:
        problems.append("invalid head")
    roots = [word for word, head in enumerate(fixed, start=1) if head == 0]
    if len(roots) > 1:
        problems.append("multiple roots")
        if confidence is not None:
            root = max(roots, key=lambda word: (confidence[word - 1], -word))
        else:
            root = roots[0]
    elif roots:
        root = roots[0]
    else:
        problems.append("no root")
        if root_scores is not None:
            root = max(range(1, n_words + 1), key=lambda word: (root_scores[word - 1], -word))
        elif invalid:
            root = invalid[0]
        else:  # every word has a head in 1..n: the head graph has a cycle
            root = min(_cycle_words(fixed))
    for word in range(1, n_words + 1):
        if word == root:
            fixed[word - 1] = 0
        elif fixed[word - 1] <= 0:
            fixed[word - 1] = root
    cycle = _cycle_words(fixed)
    if cycle:
        problems.append("cycle")
    while cycle:
        fixed[min(cycle) - 1] = root
        cycle = _cycle_words(fixed)
    return fixed, tuple(problems)


def _cycle_words(heads: Sequence[int]) -> list[int]:
    """Words of one cycle of ``heads`` (entries in ``0..n``, ``0`` = root), or ``[]`` if none."""
    state = [0] * (len(heads) + 1)  # 0 unvisited, 1 on the current walk, 2 known to reach 0
    state[0] = 2
    for start in range(1, len(heads) + 1):
        walk = []
        word = start
        while state[word] == 0:
            state[word] = 1
            walk.append(word)
            word = heads[word - 1]
        if state[word] == 1:
            return walk[walk.index(word) :]
        for visited in walk:
            state[visited] = 2
    return []


@dataclass(frozen=True)
class DecodedTree:
    """A decoded sentence: ``heads`` ``[n_words]`` (0 = root; always a tree) and ``relations``
    ``[n_words]``; ``problems`` names what the repair fixed (empty when the predicted labels already
    formed a tree; see :data:`PROBLEMS`)."""

    heads: tuple[int, ...]
    relations: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def well_formed(self) -> bool:
        """True when the prediction was a tree before any repair."""
        return not self.problems


# --------------------------------------------------------------------------------------------------
# the label vocabulary, batched


class DepLabelScheme:
    """A label vocabulary for one encoding, with batched label -> head maps and decoding.

    ``labels[l]`` is a :class:`DepLabel`; ``head_codes[c]`` the distinct head codes,
    ``relations[r]`` the distinct relations, ``label_code`` ``[n_labels]`` and ``label_relation``
    ``[n_labels]`` (int64) the code and relation index of each label, ``pos_tags`` the UPOS tags
    that head codes name (``"pos"`` encoding; words with another tag are never a head).

    Examples::

        scheme = DepLabelScheme.from_sentences(train_sentences, encoding="pos")
        label_ids = scheme.encode(sentence.heads, sentence.relations, sentence.upos)
        upos_ids = scheme.upos_ids([sentence.upos])                 # [1, n_words]
        heads_of = scheme.label_heads(torch.tensor([len(sentence)]), upos_ids)  # [1, n, n_labels]
        tree = scheme.decode(label_scores, lengths, upos_ids)[0]    # a DecodedTree
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
        self.label_code = torch.tensor([code_index[lab.head_code] for lab in labels])
        self.label_relation = torch.tensor([relation_index[lab.relation] for lab in labels])
        self.root_labels = torch.tensor([lab.is_root for lab in labels])
        self.code_offset = torch.tensor([offset for offset, _ in self.head_codes])
        # tag index of each code; root codes (and all codes of "offset") point at a never-used tag
        self.code_tag = torch.tensor(
            [self._tag_index.get(tag, len(self.pos_tags)) for _, tag in self.head_codes]
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

    # ---------------------------------------------------------------------------------- lookups

    @property
    def n_labels(self) -> int:
        return len(self.labels)

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

    def upos_ids(self, upos: Sequence[Sequence[str]], max_len: int | None = None) -> Tensor:
        """``[batch, max_len]`` int64 index of each word's UPOS in ``pos_tags``; ``-1`` for a tag no
        head code names, and for padding."""
        width = max((len(tags) for tags in upos), default=0) if max_len is None else max_len
        rows = [
            [self._tag_index.get(tag, -1) for tag in tags] + [-1] * (width - len(tags))
            for tags in upos
        ]
        if any(len(row) != width for row in rows):
            raise ValueError(f"a sentence is longer than max_len={width}")
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), width)

    # ---------------------------------------------------------------------- label -> head, batched

    def code_heads(
        self, lengths: Tensor, upos_ids: Tensor | None = None, *, max_len: int | None = None
    ) -> Tensor:
        """``[batch, max_len, n_codes]`` int64: the head (0 = root, words 1-based) that head code
        ``c`` denotes for word ``i + 1`` at ``[b, i, c]``, ``-1`` if none, ``-1`` on padding rows.

        ``lengths`` ``[batch]``; ``upos_ids`` ``[batch, max_len]`` (from :meth:`upos_ids`), needed
        by the ``"pos"`` encoding. Offset: ``head = i + offset`` if in ``1..len``. PoS: with
        ``before[p]`` / ``through[p]`` the number of ``p``-tagged words before word ``i`` / up to
        it, code ``(+k, p)`` denotes the ``p``-word of rank ``through[p] + k - 1`` (0-based) and
        ``(-k, p)`` that of rank ``before[p] - k``, if the rank is in ``0..count(p) - 1``.
        """
        if upos_ids is not None:
            if upos_ids.dim() != 2:
                raise ValueError(
                    f"upos_ids must have shape [batch, max_len], got {list(upos_ids.shape)}"
                )
            if max_len is not None and max_len != upos_ids.shape[1]:
                raise ValueError(
                    f"max_len={max_len} disagrees with upos_ids {list(upos_ids.shape)}"
                )
            max_len = upos_ids.shape[1]
        if max_len is None:
            max_len = int(torch.as_tensor(lengths).max()) if len(lengths) else 0
        lengths = check_lengths(lengths, len(lengths), max_len)
        device = lengths.device
        batch = lengths.shape[0]
        positions = torch.arange(1, max_len + 1, device=device)  # word numbers 1..max_len
        word_mask = positions <= lengths[:, None]  # [batch, max_len]
        offsets = self.code_offset.to(device)
        is_root = offsets == 0
        if self.encoding == "offset":
            heads = (positions[:, None] + offsets[None, :]).expand(batch, max_len, -1)
            valid = (heads >= 1) & (heads <= lengths[:, None, None])
        else:
            if upos_ids is None:
                raise ValueError("the 'pos' encoding needs upos_ids [batch, max_len]")
            heads, valid = self._pos_code_heads(upos_ids.to(device).long(), word_mask, positions)
        heads = torch.where(valid, heads, -1)
        heads = torch.where(is_root, 0, heads)
        return heads.masked_fill(~word_mask[:, :, None], -1)

    def _pos_code_heads(
        self, upos_ids: Tensor, word_mask: Tensor, positions: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Heads ``[batch, max_len, n_codes]`` and validity of the PoS-based codes (roots
        ignored)."""
        batch, max_len = upos_ids.shape
        n_tags = len(self.pos_tags) + 1  # the last tag is never worn by a word: roots point there
        tags = torch.where(word_mask & (upos_ids >= 0), upos_ids, n_tags - 1)
        wears = torch.nn.functional.one_hot(tags, n_tags) * word_mask[:, :, None]  # [B, N, P]
        wears[:, :, n_tags - 1] = 0
        through = wears.cumsum(1)  # p-words among words 1..i
        before = through - wears  # p-words among words 1..i-1
        count = through[:, -1, :]  # [batch, P]
        # table[b, p * max_len + r]: word number of the r-th (0-based) p-word; a spare last slot
        table = torch.full((batch, n_tags * max_len + 1), -1, dtype=torch.long, device=tags.device)
        rank_of_word = through.gather(2, tags[:, :, None]).squeeze(2) - 1
        slot = torch.where(
            wears.any(2), tags * max_len + rank_of_word, torch.full_like(tags, n_tags * max_len)
        )
        table.scatter_(1, slot, positions.expand(batch, -1).contiguous())
        code_tag = self.code_tag.to(tags.device)
        offsets = self.code_offset.to(tags.device)
        rank = torch.where(
            offsets > 0,
            through[:, :, code_tag] + offsets - 1,
            before[:, :, code_tag] + offsets,
        )  # [batch, max_len, n_codes]
        valid = (rank >= 0) & (rank < count[:, None, code_tag])
        index = code_tag * max_len + rank.clamp(0, max(max_len - 1, 0))
        heads = table.gather(1, index.reshape(batch, -1)).reshape(rank.shape)
        return heads, valid

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
        upos_ids = self.upos_ids([upos]) if self.encoding == "pos" and upos is not None else None
        lengths = torch.tensor([n_words])
        return self.label_heads(lengths, upos_ids, max_len=n_words)[0]

    # ---------------------------------------------------------------------------------- decoding

    def decode(
        self, predictions: Tensor, lengths: Tensor, upos_ids: Tensor | None = None
    ) -> list[DecodedTree]:
        """Trees from predicted labels, repaired into well-formed trees (:func:`repair_tree`).

        ``predictions``: label indices ``[batch, max_len]`` (int; padding ignored) or label scores
        ``[batch, max_len, n_labels]`` (float, higher is better: logits or log-probabilities).
        With scores, each word takes its best label; if that label denotes no head, its best label
        that does ("invalid head" is reported), and words re-attached by the repair take their best
        label denoting the new head (else their best label of the same kind, root or not). With
        indices, a word without a valid head attaches to the root word, the root word chosen by the
        repair takes ``root_relation``, and other relations stay as predicted. The label -> head map
        is batched; the repair (a cycle search) runs per sentence in Python.
        """
        if not isinstance(predictions, Tensor):
            raise TypeError(f"predictions must be a Tensor, got {type(predictions).__name__}")
        with_scores = predictions.dtype.is_floating_point
        if predictions.dim() != (3 if with_scores else 2):
            raise ValueError(
                "predictions must be label indices [batch, max_len] or label scores "
                f"[batch, max_len, n_labels={self.n_labels}], got {list(predictions.shape)} "
                f"({predictions.dtype})"
            )
        if with_scores and predictions.shape[2] != self.n_labels:
            raise ValueError(
                f"label scores must have n_labels={self.n_labels} in the last dimension, "
                f"got {list(predictions.shape)}"
            )
        batch, max_len = predictions.shape[:2]
        lengths = check_lengths(torch.as_tensor(lengths, device=predictions.device), batch, max_len)
        code_heads = self.code_heads(lengths, upos_ids, max_len=max_len)  # [B, N, n_codes]
        label_code = self.label_code.to(code_heads.device)
        word_mask = torch.arange(max_len, device=lengths.device) < lengths[:, None]
        if with_scores:
            if torch.isnan(predictions).any():
                raise NumericalError("label scores contain NaN")
            return self._decode_scores(predictions, code_heads, word_mask, lengths)
        bad = word_mask & ((predictions < 0) | (predictions >= self.n_labels))
        if bad.any():
            value = int(predictions[bad][0])
            raise ValueError(f"label indices must lie in 0..{self.n_labels - 1}, got {value}")
        chosen = predictions.clamp(0, self.n_labels - 1)
        heads = code_heads.gather(2, label_code[chosen][:, :, None]).squeeze(2)
        relations = self.label_relation.to(chosen.device)[chosen]
        results = []
        for row_heads, row_relations, length in zip(
            heads.tolist(), relations.tolist(), lengths.tolist(), strict=True
        ):
            predicted = row_heads[:length]
            fixed, problems = repair_tree(predicted)
            names = [self.relations[index] for index in row_relations[:length]]
            for word, (before, after) in enumerate(zip(predicted, fixed, strict=True)):
                if after == 0 and before != 0 and self.root_relation is not None:
                    names[word] = self.root_relation
            results.append(DecodedTree(tuple(fixed), tuple(names), problems))
        return results

    def _decode_scores(
        self, scores: Tensor, code_heads: Tensor, word_mask: Tensor, lengths: Tensor
    ) -> list[DecodedTree]:
        label_code = self.label_code.to(code_heads.device)
        has_head = (code_heads >= 0)[:, :, label_code]  # [batch, max_len, n_labels]
        top = scores.argmax(2)  # [batch, max_len]
        top_is_valid = has_head.gather(2, top[:, :, None]).squeeze(2)
        valid_scores = scores.masked_fill(~has_head, float("-inf"))
        best_valid = valid_scores.argmax(2)
        any_valid = has_head.any(2)
        chosen = torch.where(top_is_valid | ~any_valid, top, best_valid)
        heads = code_heads.gather(2, label_code[chosen][:, :, None]).squeeze(2)
        confidence = scores.gather(2, chosen[:, :, None]).squeeze(2)
        root_labels = self.root_labels.to(scores.device)
        root_scores = scores.masked_fill(~root_labels, float("-inf")).amax(2)
        relations = self.label_relation.to(scores.device)[chosen]
        invalid_top = (~top_is_valid & word_mask).any(1).tolist()
        results = []
        for b, length in enumerate(lengths.tolist()):
            predicted = heads[b, :length].tolist()
            fixed, problems = repair_tree(
                predicted,
                confidence=confidence[b, :length].tolist(),
                root_scores=root_scores[b, :length].tolist() if root_labels.any() else None,
            )
            if invalid_top[b] and "invalid head" not in problems:
                problems = ("invalid head", *problems)
            names = [self.relations[index] for index in relations[b, :length].tolist()]
            for word, (before, after) in enumerate(zip(predicted, fixed, strict=True)):
                if before != after:
                    word_label_heads = code_heads[b, word, label_code]  # [n_labels]
                    names[word] = self._best_relation(scores[b, word], word_label_heads, after)
            results.append(DecodedTree(tuple(fixed), tuple(names), problems))
        return results

    def _best_relation(self, word_scores: Tensor, word_label_heads: Tensor, head: int) -> str:
        """Relation of the best label denoting ``head`` (``[n_labels]`` inputs), else of the best
        label of the same kind (root or not)."""
        candidates = word_label_heads == head
        if not candidates.any():
            candidates = self.root_labels.to(word_scores.device)
            if head != 0:
                candidates = ~candidates
        if not candidates.any():
            candidates = torch.ones_like(candidates)
        best = int(word_scores.masked_fill(~candidates, float("-inf")).argmax())
        return self.labels[best].relation

    def decode_sentence(
        self, predictions: Tensor, upos: Sequence[str] | None = None
    ) -> DecodedTree:
        """:meth:`decode` of one sentence: label indices ``[n_words]`` or scores
        ``[n_words, n_labels]``; ``upos`` ``[n_words]`` for the ``"pos"`` encoding."""
        n_words = predictions.shape[0]
        upos_ids = self.upos_ids([upos]) if self.encoding == "pos" and upos is not None else None
        return self.decode(predictions[None], torch.tensor([n_words]), upos_ids)[0]

    def __repr__(self) -> str:
        return (
            f"DepLabelScheme(encoding={self.encoding!r}, n_labels={self.n_labels}, "
            f"n_codes={len(self.head_codes)}, n_relations={len(self.relations)})"
        )
