"""Vocabularies: item <-> index maps for words, characters and labels, serializable to JSON.

A ``Vocabulary`` puts its special items first, padding at index 0 and the unknown item next (each
optional), then the ordinary items in the given order (``Vocabulary.build``: by decreasing count,
ties alphabetical, so a vocabulary is reproducible). Items are kept exactly as read: lowercasing
for a lowercase embedding table such as GloVe is the model's business.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from structkd.data.conll import Sentence
from structkd.data.tag_schemes import label_names

PAD = "<pad>"
UNK = "<unk>"


class Vocabulary:
    """An ordered set of string items, each with an index.

    Args:
        items: the ordinary items, in index order (after the specials), without duplicates.
        pad: the padding item (index 0), or ``None`` for no padding index.
        unk: the unknown item (index 1 with padding, else 0) that unseen items map to, or ``None``
            (then looking up an unseen item raises ``KeyError``).

    Example:
        >>> vocab = Vocabulary.build(["b", "a", "b"])
        >>> vocab.items, vocab.encode(["b", "zzz"])
        (('<pad>', '<unk>', 'b', 'a'), [2, 1])
    """

    def __init__(self, items: Iterable[str], *, pad: str | None = PAD, unk: str | None = UNK):
        specials = [special for special in (pad, unk) if special is not None]
        if pad is not None and pad == unk:
            raise ValueError(f"pad and unk must differ; both are {pad!r}")
        all_items = specials + list(items)
        index: dict[str, int] = {}
        for position, item in enumerate(all_items):
            if not isinstance(item, str):
                raise ValueError(f"items must be strings; got {item!r}")
            if item in index:
                what = "a special item (pad or unk)" if item in specials else "a duplicate"
                raise ValueError(f"items[{position - len(specials)}] = {item!r} is {what}")
            index[item] = position
        self._items = tuple(all_items)
        self._index = index
        self.pad = pad
        self.unk = unk

    @classmethod
    def build(
        cls,
        items: Iterable[str],
        *,
        min_count: int = 1,
        max_size: int | None = None,
        pad: str | None = PAD,
        unk: str | None = UNK,
    ) -> Vocabulary:
        """Count ``items`` and keep those seen at least ``min_count`` times, most frequent first.

        Ties are broken alphabetically; ``max_size`` caps the number of ordinary items (specials
        not counted). Special items found among ``items`` are skipped.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1; got {min_count}")
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be non-negative or None; got {max_size}")
        counts = Counter(items)
        for special in (pad, unk):
            counts.pop(special, None)  # type: ignore[arg-type]
        kept = sorted(
            (item for item, count in counts.items() if count >= min_count),
            key=lambda item: (-counts[item], item),
        )
        return cls(kept[:max_size], pad=pad, unk=unk)

    @property
    def items(self) -> tuple[str, ...]:
        """All items in index order, specials included."""
        return self._items

    @property
    def pad_index(self) -> int | None:
        """Index of the padding item (0), or ``None``."""
        return None if self.pad is None else self._index[self.pad]

    @property
    def unk_index(self) -> int | None:
        """Index of the unknown item, or ``None``."""
        return None if self.unk is None else self._index[self.unk]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return (self._items, self.pad, self.unk) == (other._items, other.pad, other.unk)

    def __hash__(self) -> int:
        return hash((self._items, self.pad, self.unk))

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, pad={self.pad!r}, unk={self.unk!r})"

    def index(self, item: str) -> int:
        """The index of ``item``; the unknown index if unseen, ``KeyError`` if there is none."""
        found = self._index.get(item)
        if found is not None:
            return found
        if self.unk is None:
            raise KeyError(f"{item!r} is not in the vocabulary and it has no unknown item")
        return self._index[self.unk]

    def encode(self, items: Iterable[str]) -> list[int]:
        """Indices ``[n]`` of ``items`` ``[n]`` (see ``index``)."""
        return [self.index(item) for item in items]

    def decode(self, indices: Iterable[int]) -> list[str]:
        """Items ``[n]`` of ``indices`` ``[n]``; ``ValueError`` for an index out of range."""
        decoded = []
        for position, index in enumerate(indices):
            index = int(index)
            if not 0 <= index < len(self._items):
                raise ValueError(
                    f"indices[{position}] = {index} is outside 0..{len(self._items) - 1}"
                )
            decoded.append(self._items[index])
        return decoded

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict ``{"items": [...], "pad": ..., "unk": ...}`` (items: no specials)."""
        n_specials = (self.pad is not None) + (self.unk is not None)
        return {"items": list(self._items[n_specials:]), "pad": self.pad, "unk": self.unk}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        """Rebuild a vocabulary from ``to_dict``'s output; ``ValueError`` if it is malformed."""
        if not isinstance(data, Mapping) or set(data) != {"items", "pad", "unk"}:
            raise ValueError(
                "data must be a dict with exactly the keys 'items', 'pad', 'unk'; got "
                f"{sorted(data) if isinstance(data, Mapping) else type(data).__name__}"
            )
        if not isinstance(data["items"], list):
            raise ValueError(f"data['items'] must be a list; got {type(data['items']).__name__}")
        return cls(data["items"], pad=data["pad"], unk=data["unk"])


def word_vocabulary(
    sentences: Sequence[Sentence], *, min_count: int = 1, max_size: int | None = None
) -> Vocabulary:
    """Words of ``sentences`` as written (no lowercasing), with padding and unknown items."""
    return Vocabulary.build(
        (token for sentence in sentences for token in sentence.tokens),
        min_count=min_count,
        max_size=max_size,
    )


def char_vocabulary(sentences: Sequence[Sentence], *, min_count: int = 1) -> Vocabulary:
    """Characters of the words of ``sentences``, with padding and unknown items."""
    return Vocabulary.build(
        (char for sentence in sentences for token in sentence.tokens for char in token),
        min_count=min_count,
    )


def label_vocabulary(types: Sequence[str], scheme: str = "bioes") -> Vocabulary:
    """Labels of sorted entity ``types`` in ``scheme``'s layout (``label_names``), no specials.

    With ``scheme="bioes"`` the indices are the BIOES label layout of ``structkd.structures``
    (``0 = O``, ``B-t_r = 1 + 4r``, ...). Padding is ``-1`` in label tensors, not an index.
    """
    return Vocabulary(label_names(types, scheme), pad=None, unk=None)


__all__ = [
    "PAD",
    "UNK",
    "Vocabulary",
    "char_vocabulary",
    "label_vocabulary",
    "word_vocabulary",
]
