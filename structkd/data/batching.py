"""Sentences to tensors for the NER taggers: vocabularies, subword windows, the collator, batches.

``TaggingVocab`` holds what a tagger indexes: lowercased words (the key into GloVe, a lowercase
table; casing reaches the model through the characters), cased characters and the sorted entity
types, whose BIOES layout (``label_names(types, "bioes")``: ``0 = O``, ``B-t_r = 1 + 4r``, ...) is
the label layout of ``structkd.structures``. ``TaggingCollator`` turns ``(sentence_id, Sentence)``
pairs into a ``TaggingBatch`` of padded tensors; given a subword tokenizer it also lays out the
subword windows a transformer reads (``SubwordTokenizer``), given cached features it pads them.

This module imports torch (the rest of ``structkd.data`` does not); import it directly, as
``structkd.data.batching``. It never imports a transformer library: a tokenizer is any object with
the Hugging Face tokenizer call signature and special-token ids.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from structkd.data.conll import Sentence
from structkd.data.documents import DocumentContext
from structkd.data.tag_schemes import (
    check_scheme,
    detect_scheme,
    entity_types,
    label_names,
    spans_to_tags,
    tags_to_spans,
)
from structkd.data.vocab import Vocabulary

__all__ = [
    "SubwordInputs",
    "SubwordTokenizer",
    "TaggingBatch",
    "TaggingCollator",
    "TaggingVocab",
    "length_sorted_batches",
]

_VOCAB_FORMAT = 1


# ---------------------------------------------------------------------------------------------
# Vocabularies


@dataclass(frozen=True)
class TaggingVocab:
    """The indices of a tagger: ``words`` (lowercased), ``chars`` (cased) and entity ``types``.

    ``words`` and ``chars`` have padding (index 0) and unknown (index 1) items; ``types`` are sorted
    and unique, and give the BIOES label layout (``labels``, ``1 + 4 * len(types)`` of them).
    """

    words: Vocabulary
    chars: Vocabulary
    types: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("words", "chars"):
            vocabulary = getattr(self, name)
            if not isinstance(vocabulary, Vocabulary):
                raise ValueError(f"{name} must be a Vocabulary; got {type(vocabulary).__name__}")
            if vocabulary.pad_index != 0 or vocabulary.unk is None:
                raise ValueError(f"{name} must have padding at index 0 and an unknown item")
        object.__setattr__(self, "types", tuple(self.types))
        label_names(self.types, "bioes")  # checks that the types are sorted, unique, valid

    @classmethod
    def build(
        cls,
        sentences: Sequence[Sentence],
        *,
        types: Sequence[str] | None = None,
        min_count: int = 1,
        known_words: Container[str] | None = None,
        extra_words: Iterable[str] = (),
    ) -> TaggingVocab:
        """Build the vocabularies of training ``sentences``.

        Args:
            sentences: ``[n_sentences]`` the training sentences.
            types: the entity types; ``None`` takes the sorted types found in the tags of the
                labeled ``sentences`` (then at least one must be labeled).
            min_count: a training word seen fewer times is left out (maps to ``<unk>``).
            known_words: the words of a frozen pretrained table (lowercase), e.g.
                ``structkd.models.embeddings.glove_vocabulary()``: when given, only words it knows
                get an entry, every other word shares the trained ``<unk>`` vector (the tagger
                then learns no per-word vector, and casing and form come from the characters).
            extra_words: words of other text the model will read (unlabeled, dev or test words; no
                label is used), added when ``known_words`` knows them, so that they keep their
                pretrained vector instead of becoming ``<unk>``. Needs ``known_words``.
        """
        if types is None:
            labeled = [sentence.tags for sentence in sentences if sentence.tags is not None]
            if not labeled:
                raise ValueError(
                    "types is None and no sentence is labeled: pass the entity types explicitly"
                )
            types = entity_types(labeled)
        lowered = (token.lower() for sentence in sentences for token in sentence.tokens)
        if known_words is not None:
            lowered = (word for word in lowered if word in known_words)
        words = Vocabulary.build(lowered, min_count=min_count)
        extra_words = list(extra_words)
        if extra_words:
            if known_words is None:
                raise ValueError(
                    "extra_words needs known_words: a word outside the training data is only "
                    "worth an entry if a pretrained table knows it (else it is never trained)"
                )
            seen = set(words.items)
            extra = sorted({w.lower() for w in extra_words if w.lower() in known_words} - seen)
            if extra:
                words = Vocabulary([*words.to_dict()["items"], *extra])
        chars = Vocabulary.build(
            char for sentence in sentences for token in sentence.tokens for char in token
        )
        return cls(words, chars, tuple(types))

    @property
    def labels(self) -> list[str]:
        """``[1 + 4R]`` the tag of each label index, BIOES layout (``label_names(types)``)."""
        return label_names(self.types, "bioes")

    @property
    def n_labels(self) -> int:
        """``1 + 4R``: the number of BIOES labels."""
        return 1 + 4 * len(self.types)

    def word_index(self, word: str) -> int:
        """The index of ``word`` (lowercased) in ``words``; ``<unk>`` when unseen."""
        return self.words.index(word.lower())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``from_dict`` reads it back)."""
        return {
            "format": _VOCAB_FORMAT,
            "words": self.words.to_dict(),
            "chars": self.chars.to_dict(),
            "types": list(self.types),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaggingVocab:
        """Rebuild from ``to_dict``'s output; ``ValueError`` if it is malformed."""
        expected = {"format", "words", "chars", "types"}
        if not isinstance(data, Mapping) or set(data) != expected:
            raise ValueError(
                f"data must be a dict with exactly the keys {sorted(expected)}; got "
                f"{sorted(data) if isinstance(data, Mapping) else type(data).__name__}"
            )
        if data["format"] != _VOCAB_FORMAT:
            raise ValueError(f"data['format'] must be {_VOCAB_FORMAT}; got {data['format']!r}")
        return cls(
            Vocabulary.from_dict(data["words"]),
            Vocabulary.from_dict(data["chars"]),
            tuple(data["types"]),
        )


# ---------------------------------------------------------------------------------------------
# Subword windows for a transformer


class HuggingFaceTokenizer(Protocol):
    """What ``SubwordTokenizer`` needs of a tokenizer (a Hugging Face ``PreTrainedTokenizer``)."""

    cls_token_id: int
    sep_token_id: int
    pad_token_id: int
    unk_token_id: int

    def __call__(self, text: Any, **options: Any) -> Any: ...


@dataclass(frozen=True)
class SubwordWindows:
    """The subword windows of a list of sentences (Python lists; the collator makes tensors).

    ``windows[w]`` the subword ids of window ``w`` (specials included); ``window_sentence[w]``
    the sentence it belongs to; ``owner[w][s]`` the word of that sentence whose feature subword
    ``s`` contributes to (``-1`` for specials and context subwords); ``first[k][i]`` ``(w, s)`` of
    the first subword of word ``i`` of sentence ``k``, in the window where the word is pooled.
    """

    windows: list[list[int]]
    window_sentence: list[int]
    owner: list[list[int]]
    first: list[list[tuple[int, int]]]


class SubwordTokenizer:
    """Splits sentences into subword windows a transformer can read, without losing a word.

    Each word is tokenized alone (cached; for WordPiece this is exactly what tokenizing the whole
    sentence gives, since WordPiece pre-splits on whitespace); a word with no subword (a control
    character, a zero-width space) becomes the unknown subword, so every word gets a feature.
    A sentence whose subwords fit in ``max_length - 2`` is one window ``[CLS] ... [SEP]``. A longer
    one is cut at word boundaries into consecutive *cores* of at most half that budget; each core's
    window adds whole context words on both sides up to the budget, and a word's feature comes only
    from its core (so every word is pooled once, with context on both sides). A single word with
    more subwords than the budget keeps its first ``max_length - 2`` subwords.

    *Document context* (``contexts`` and ``context_size`` of ``windows`` / ``encode``): each
    sentence's words are extended by the whole words of its document just before and after it,
    at most ``context_size`` subwords on each side (the words nearest the sentence first); the
    windows are then laid out as above over the extended words, the cores covering the
    sentence's words only, so the context words fill the room a window has left (half before,
    half after, as for a long sentence) and are never pooled. Without context (``None`` or
    ``context_size=0``) the windows are exactly the sentence's own.

    Args:
        tokenizer: a Hugging Face tokenizer (or anything with its call signature and
            ``cls_token_id``, ``sep_token_id``, ``pad_token_id``, ``unk_token_id``).
        max_length: the most subwords a window may hold, specials included (at least 4); e.g. the
            model's ``max_position_embeddings``.
    """

    def __init__(self, tokenizer: HuggingFaceTokenizer, max_length: int):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 4:
            raise ValueError(f"max_length must be an integer >= 4; got {max_length!r}")
        for name in ("cls_token_id", "sep_token_id", "pad_token_id", "unk_token_id"):
            if not isinstance(getattr(tokenizer, name, None), int):
                raise ValueError(f"tokenizer must have an integer {name}; it has none")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.cls_id = tokenizer.cls_token_id
        self.sep_id = tokenizer.sep_token_id
        self.pad_id = tokenizer.pad_token_id
        self.unk_id = tokenizer.unk_token_id
        self._cache: dict[str, list[int]] = {}

    def __repr__(self) -> str:
        return f"SubwordTokenizer({type(self.tokenizer).__name__}, max_length={self.max_length})"

    def word_pieces(self, word: str) -> list[int]:
        """The subword ids of ``word`` (at least one: the unknown id if it has none)."""
        pieces = self._cache.get(word)
        if pieces is None:
            encoded = self.tokenizer([word], is_split_into_words=True, add_special_tokens=False)
            pieces = list(encoded["input_ids"]) or [self.unk_id]
            self._cache[word] = pieces
        return pieces

    def context_pieces(
        self, before: Sequence[str], after: Sequence[str], size: int
    ) -> tuple[list[list[int]], list[list[int]]]:
        """The subwords of the context words kept: of ``before`` (text order, nearest last) and
        of ``after`` (nearest first), the whole words nearest the sentence whose subwords add up
        to at most ``size`` on each side (a word that would pass it ends that side)."""
        budget = self.max_length - 2
        kept_before: list[list[int]] = []
        room = size
        for word in reversed(before):
            pieces = self.word_pieces(word)[:budget]
            if len(pieces) > room:
                break
            kept_before.append(pieces)
            room -= len(pieces)
        kept_before.reverse()
        kept_after: list[list[int]] = []
        room = size
        for word in after:
            pieces = self.word_pieces(word)[:budget]
            if len(pieces) > room:
                break
            kept_after.append(pieces)
            room -= len(pieces)
        return kept_before, kept_after

    def windows(
        self,
        sentences: Sequence[Sentence],
        contexts: Sequence[tuple[Sequence[str], Sequence[str]]] | None = None,
        context_size: int = 0,
    ) -> SubwordWindows:
        """The windows of ``sentences`` (see the class docstring). ``contexts``: for each sentence
        the words of its document before it (text order) and after it, e.g. from
        ``structkd.data.documents.DocumentContext.around``; ``context_size``: the most subwords of
        context kept on each side."""
        if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 0:
            raise ValueError(f"context_size must be an integer >= 0; got {context_size!r}")
        if contexts is not None and len(contexts) != len(sentences):
            raise ValueError(
                f"contexts must have one entry per sentence; got {len(contexts)} for "
                f"{len(sentences)} sentences"
            )
        use_context = contexts is not None and context_size > 0
        budget = self.max_length - 2
        result = SubwordWindows([], [], [], [])
        for index, sentence in enumerate(sentences):
            pieces = [self.word_pieces(token)[:budget] for token in sentence.tokens]
            offset = 0
            if use_context:
                before, after = self.context_pieces(*contexts[index], context_size)
                offset = len(before)
                pieces = before + pieces + after
            sizes = [len(word) for word in pieces]
            first: list[tuple[int, int]] = []
            for core_start, core_end in _cores(sizes[offset : offset + len(sentence)], budget):
                core_start, core_end = core_start + offset, core_end + offset
                left, right = _context(sizes, core_start, core_end, budget)
                window, owner = [self.cls_id], [-1]
                for word in range(left, right):
                    pooled = core_start <= word < core_end
                    if pooled:
                        first.append((len(result.windows), len(window)))
                    window.extend(pieces[word])
                    owner.extend([word - offset if pooled else -1] * sizes[word])
                window.append(self.sep_id)
                owner.append(-1)
                result.windows.append(window)
                result.window_sentence.append(index)
                result.owner.append(owner)
            result.first.append(first)
        return result

    def encode(
        self,
        sentences: Sequence[Sentence],
        max_len: int | None = None,
        *,
        contexts: Sequence[tuple[Sequence[str], Sequence[str]]] | None = None,
        context_size: int = 0,
    ) -> SubwordInputs:
        """Tensors of the windows of ``sentences`` ``[B]``, words padded to ``max_len`` ``N``
        (default: the longest sentence), with document context when ``contexts`` and
        ``context_size`` are given (see ``windows``); see ``SubwordInputs``."""
        lengths = [len(sentence) for sentence in sentences]
        if not lengths:
            raise ValueError("sentences must hold at least one sentence")
        max_len = max(lengths) if max_len is None else max_len
        if max_len < max(lengths):
            raise ValueError(f"max_len = {max_len} is shorter than a sentence ({max(lengths)})")
        windows = self.windows(sentences, contexts, context_size)
        width = max(len(window) for window in windows.windows)
        owners = [
            [-1 if word < 0 else sentence * max_len + word for word in owner]
            for owner, sentence in zip(windows.owner, windows.window_sentence, strict=True)
        ]
        firsts = [[window * width + position for window, position in f] for f in windows.first]
        return SubwordInputs(
            subword_ids=_pad_int(windows.windows, width, self.pad_id),
            subword_mask=_pad_int([[1] * len(w) for w in windows.windows], width, 0).bool(),
            subword_words=_pad_int(owners, width, -1),
            word_first_subword=_pad_int(firsts, max_len, -1),
        )


@dataclass
class SubwordInputs:
    """What a transformer word encoder reads for ``B`` sentences of at most ``N`` words.

    ``subword_ids`` ``[W, S]`` int64 windows (``[CLS] ... [SEP]``, the pad id beyond);
    ``subword_mask`` ``[W, S]`` bool, True on real subwords; ``subword_words`` ``[W, S]`` int64, the
    word each subword is pooled into as a flat index ``b * N + i`` (``-1``: special, context or
    padding); ``word_first_subword`` ``[B, N]`` int64, each word's first pooled subword as a flat
    index ``w * S + s`` (``-1`` at padding).
    """

    subword_ids: Tensor
    subword_mask: Tensor
    subword_words: Tensor
    word_first_subword: Tensor

    def to(self, device: torch.device | str) -> SubwordInputs:
        """The same inputs on ``device``."""
        return SubwordInputs(*(getattr(self, f.name).to(device) for f in fields(self)))


def _cores(sizes: list[int], budget: int) -> list[tuple[int, int]]:
    """Word ranges ``[start, end)`` of the cores: the whole sentence if its ``sizes`` (subwords
    per word) fit in ``budget``, else greedy runs of at most ``budget // 2`` subwords (at least one
    word)."""
    if sum(sizes) <= budget:
        return [(0, len(sizes))]
    core_budget = max(1, budget // 2)
    cores, start, used = [], 0, 0
    for word, size in enumerate(sizes):
        if word > start and used + size > core_budget:
            cores.append((start, word))
            start, used = word, 0
        used += size
    cores.append((start, len(sizes)))
    return cores


def _context(sizes: list[int], core_start: int, core_end: int, budget: int) -> tuple[int, int]:
    """The window ``[left, right)`` around a core: whole context words, half of the room left
    before the core (more if the right side runs out), the rest after it."""
    room = budget - sum(sizes[core_start:core_end])
    left, right = core_start, core_end
    left_room = room // 2
    while left > 0 and sizes[left - 1] <= left_room:
        left -= 1
        left_room -= sizes[left]
        room -= sizes[left]
    while right < len(sizes) and sizes[right] <= room:
        room -= sizes[right]
        right += 1
    while left > 0 and sizes[left - 1] <= room:
        left -= 1
        room -= sizes[left]
    return left, right


# ---------------------------------------------------------------------------------------------
# Batches


class PaddedBatch:
    """What every batch of padded sentences has (a dataclass with ``word_ids`` ``[B, N]`` and
    ``lengths`` ``[B]``): its sizes, its mask, and copies of it with every tensor moved."""

    word_ids: Tensor
    lengths: Tensor

    @property
    def batch_size(self) -> int:
        """``B``."""
        return self.word_ids.shape[0]

    @property
    def max_len(self) -> int:
        """``N``, the padded number of words."""
        return self.word_ids.shape[1]

    @property
    def mask(self) -> Tensor:
        """``[B, N]`` bool, True on real words."""
        return torch.arange(self.max_len, device=self.lengths.device) < self.lengths.unsqueeze(-1)

    def _map(self, function: Callable[[Tensor], Tensor]) -> Any:
        changes = {
            field.name: function(value)
            for field in fields(self)
            if isinstance(value := getattr(self, field.name), Tensor)
        }
        return replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Any:
        """The same batch with every tensor on ``device``."""
        return self._map(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Any:
        """The same batch with every tensor in pinned memory (a DataLoader calls this)."""
        return self._map(lambda tensor: tensor.pin_memory())


@dataclass
class TaggingBatch(PaddedBatch):
    """A padded batch of ``B`` sentences of at most ``N`` words (``C`` characters per word).

    Attributes:
        word_ids: ``[B, N]`` int64 indices in ``vocab.words`` (lowercased words), 0 at padding.
        char_ids: ``[B, N, C]`` int64 indices in ``vocab.chars``, 0 at padding.
        lengths: ``[B]`` int64 words per sentence.
        sentence_ids: ``[B]`` int64 index of each sentence in its data set (to look up cached
            teacher outputs or features).
        label_ids: ``[B, N]`` int64 BIOES label indices (``vocab.labels``), ``-1`` at padding; or
            ``None`` for unlabeled sentences.
        word_features: ``[B, N, D]`` float precomputed (frozen transformer) word features, 0 at
            padding; or ``None``.
        subword_ids: ``[W, S]`` int64 subword windows (``W >= B`` windows of ``S`` subwords; see
            ``SubwordTokenizer``), the tokenizer's padding id beyond each window; or ``None``.
        subword_mask: ``[W, S]`` bool, True on real subwords (specials included); or ``None``.
        subword_words: ``[W, S]`` int64: the word a subword is pooled into, as a flat index
            ``b * N + i`` into ``[B, N]``; ``-1`` for specials, context and padding; or ``None``.
        word_first_subword: ``[B, N]`` int64: the first subword of each word (in the window where
            it is pooled) as a flat index ``w * S + s`` into ``[W, S]``; ``-1`` at padding; or None.
    """

    word_ids: Tensor
    char_ids: Tensor
    lengths: Tensor
    sentence_ids: Tensor
    label_ids: Tensor | None = None
    word_features: Tensor | None = None
    subword_ids: Tensor | None = None
    subword_mask: Tensor | None = None
    subword_words: Tensor | None = None
    word_first_subword: Tensor | None = None

    @property
    def has_subwords(self) -> bool:
        """Whether the batch carries subword windows for a transformer."""
        return self.subword_ids is not None

    def without_labels(self) -> TaggingBatch:
        """The same batch without gold labels (a batch of unlabeled text)."""
        return replace(self, label_ids=None)


def _pad_int(rows: Sequence[Sequence[int]], width: int, fill: int) -> Tensor:
    """``[len(rows), width]`` int64 tensor of ``rows``, padded with ``fill``."""
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            out[index, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def _bioes_label_ids(tags: Sequence[str], scheme: str, index_of: Mapping[str, int]) -> list[int]:
    """Label indices of ``tags`` in the BIOES layout (tags in ``scheme``, or detected)."""
    source = detect_scheme([tags]) if scheme == "auto" else scheme
    bioes = spans_to_tags(tags_to_spans(tags, source), len(tags), "bioes")
    try:
        return [index_of[tag] for tag in bioes]
    except KeyError as error:
        raise ValueError(
            f"tag {error.args[0]!r} has an entity type not in the vocabulary's types "
            f"{sorted({name[2:] for name in index_of if name != 'O'})}"
        ) from None


_WORD_CHARS_MEMO = 500_000
"""Distinct tokens whose character ids a ``TaggingCollator`` keeps (about 100 bytes each)."""


class TaggingCollator:
    """Turns ``[(sentence_id, Sentence), ...]`` into a ``TaggingBatch`` (a DataLoader collate_fn).

    Args:
        vocab: the tagger's ``TaggingVocab``.
        tokenizer: a ``SubwordTokenizer`` (or a Hugging Face tokenizer, wrapped with
            ``max_length=512``) to add subword windows, for a transformer run on the fly; or None.
        features: cached word features, indexed by sentence id: ``features[sentence_id]`` is
            ``[n_words, D]`` (a list from ``compute_word_features`` or ``load_features``); or None.
        tag_scheme: the scheme of the sentences' tags (``"iob1"``, ``"iob2"``, ``"bioes"``), or
            ``"auto"`` to detect it per sentence (exact for tags valid in their scheme: IOB2 and
            IOB1 differ only where an ``I-`` opens a span, which the detection sees). Tags are
            converted to the BIOES layout of ``vocab``.
        max_word_chars: characters kept per word for the character features (the first ones);
            ``None`` keeps all. Words are never dropped, only the characters of very long tokens.
        context: with ``tokenizer``, the document context of the data set the sentence ids index
            (``structkd.data.documents.DocumentContext``): each window then holds up to
            ``context.size`` subwords of the sentence's document on each side (see
            ``SubwordTokenizer``); ``None``: each sentence alone.
    """

    def __init__(
        self,
        vocab: TaggingVocab,
        tokenizer: SubwordTokenizer | HuggingFaceTokenizer | None = None,
        features: Sequence[Tensor] | Mapping[int, Tensor] | None = None,
        *,
        tag_scheme: str = "auto",
        max_word_chars: int | None = 50,
        context: DocumentContext | None = None,
    ):
        if not isinstance(vocab, TaggingVocab):
            raise ValueError(f"vocab must be a TaggingVocab; got {type(vocab).__name__}")
        if tag_scheme != "auto":
            check_scheme(tag_scheme, name="tag_scheme")
        if max_word_chars is not None and (
            not isinstance(max_word_chars, int) or max_word_chars < 1
        ):
            raise ValueError(f"max_word_chars must be None or an int >= 1; got {max_word_chars!r}")
        if tokenizer is not None and not isinstance(tokenizer, SubwordTokenizer):
            tokenizer = SubwordTokenizer(tokenizer, max_length=512)
        if context is not None:
            if not isinstance(context, DocumentContext):
                raise ValueError(f"context must be a DocumentContext; got {type(context).__name__}")
            if tokenizer is None:
                raise ValueError(
                    "context needs a tokenizer: document context shapes the subword windows "
                    "(cached features hold their context already)"
                )
        self.context = context
        self.vocab = vocab
        self.tokenizer = tokenizer
        self.features = features
        self.tag_scheme = tag_scheme
        self.max_word_chars = max_word_chars
        self._label_index = {name: index for index, name in enumerate(vocab.labels)}
        self._word_chars: dict[str, tuple[int, ...]] = {}  # token -> its character ids

    def __call__(self, items: Sequence[tuple[int, Sentence]]) -> TaggingBatch:
        if len(items) == 0:
            raise ValueError("items must hold at least one (sentence_id, Sentence) pair")
        sentence_ids, sentences = [], []
        for position, item in enumerate(items):
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise ValueError(f"items[{position}] must be a (sentence_id, Sentence) pair")
            sentence_id, sentence = item
            if not isinstance(sentence, Sentence):
                raise ValueError(
                    f"items[{position}][1] must be a Sentence; got {type(sentence).__name__}"
                )
            if isinstance(sentence_id, bool) or not isinstance(sentence_id, int | torch.Tensor):
                raise ValueError(f"items[{position}][0] must be an int sentence id")
            if int(sentence_id) < 0:
                raise ValueError(f"items[{position}][0] = {int(sentence_id)} must be >= 0")
            sentence_ids.append(int(sentence_id))
            sentences.append(sentence)
        lengths = [len(sentence) for sentence in sentences]
        max_len = max(lengths)
        word_ids = _pad_int(
            [[self.vocab.word_index(token) for token in s.tokens] for s in sentences], max_len, 0
        )
        char_ids = self._char_ids(sentences, max_len)
        batch = TaggingBatch(
            word_ids=word_ids,
            char_ids=char_ids,
            lengths=torch.tensor(lengths, dtype=torch.long),
            sentence_ids=torch.tensor(sentence_ids, dtype=torch.long),
            label_ids=self._label_ids(sentences, sentence_ids, max_len),
        )
        if self.features is not None:
            batch.word_features = self._word_features(sentence_ids, lengths, max_len)
        if self.tokenizer is not None:
            self._add_subwords(batch, sentences, sentence_ids, max_len)
        return batch

    def with_context(self, context: DocumentContext | None) -> TaggingCollator:
        """A copy of this collator reading ``context`` (e.g. the documents of one call of a
        predictor) instead of its own."""
        return TaggingCollator(
            self.vocab,
            self.tokenizer,
            self.features,
            tag_scheme=self.tag_scheme,
            max_word_chars=self.max_word_chars,
            context=context,
        )

    def _char_ids(self, sentences: Sequence[Sentence], max_len: int) -> Tensor:
        """``[B, max_len, C]`` the character ids of each word (its first ``max_word_chars``), 0
        at padding; ``C`` the longest word of the batch. One scatter: word ``j`` of sentence
        ``b`` fills flat slots ``((b * max_len + j) * C) + [0, len)``."""
        encoded = [self._chars_of(token) for s in sentences for token in s.tokens]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        width = int(lengths.max())
        slots = np.concatenate(
            [np.arange(len(s), dtype=np.int64) + b * max_len for b, s in enumerate(sentences)]
        )
        total = int(lengths.sum())
        starts = np.cumsum(lengths) - lengths
        positions = np.repeat(slots * width - starts, lengths) + np.arange(total, dtype=np.int64)
        out = np.zeros(len(sentences) * max_len * width, dtype=np.int64)
        out[positions] = np.fromiter(itertools.chain.from_iterable(encoded), np.int64, total)
        return torch.from_numpy(out.reshape(len(sentences), max_len, width))

    def _chars_of(self, token: str) -> tuple[int, ...]:
        """The character ids of ``token`` (its first ``max_word_chars``), memoized per token (the
        vocabulary is fixed; the memo is cleared past ``_WORD_CHARS_MEMO`` distinct tokens)."""
        found = self._word_chars.get(token)
        if found is None:
            if len(self._word_chars) >= _WORD_CHARS_MEMO:
                self._word_chars.clear()
            found = tuple(self.vocab.chars.encode(token[: self.max_word_chars]))
            self._word_chars[token] = found
        return found

    def _label_ids(
        self, sentences: Sequence[Sentence], sentence_ids: list[int], max_len: int
    ) -> Tensor | None:
        n_labeled = sum(sentence.tags is not None for sentence in sentences)
        if n_labeled == 0:
            return None
        if n_labeled < len(sentences):
            raise ValueError(
                f"{n_labeled} of {len(sentences)} sentences in the batch have tags; a batch must "
                "be all labeled or all unlabeled (batch labeled and unlabeled data separately)"
            )
        rows = []
        for sentence, sentence_id in zip(sentences, sentence_ids, strict=True):
            try:
                rows.append(_bioes_label_ids(sentence.tags, self.tag_scheme, self._label_index))
            except ValueError as error:
                raise ValueError(f"sentence {sentence_id}: {error}") from None
        return _pad_int(rows, max_len, -1)

    def _word_features(self, sentence_ids: list[int], lengths: list[int], max_len: int) -> Tensor:
        rows = []
        for sentence_id, length in zip(sentence_ids, lengths, strict=True):
            try:
                row = self.features[sentence_id]
            except (IndexError, KeyError):
                raise ValueError(
                    f"features has no entry for sentence id {sentence_id} (are the features "
                    "those of this data set?)"
                ) from None
            if row.dim() != 2 or row.shape[0] != length:
                raise ValueError(
                    f"features[{sentence_id}] has shape {list(row.shape)}, expected "
                    f"[{length}, D] for a sentence of {length} words (stale feature cache?)"
                )
            rows.append(row)
        dims = {row.shape[1] for row in rows}
        if len(dims) != 1:
            raise ValueError(f"features have different dimensions {sorted(dims)}")
        out = rows[0].new_zeros((len(rows), max_len, rows[0].shape[1]))
        for index, row in enumerate(rows):
            out[index, : row.shape[0]] = row
        return out

    def _add_subwords(
        self,
        batch: TaggingBatch,
        sentences: list[Sentence],
        sentence_ids: list[int],
        max_len: int,
    ) -> None:
        if self.context is None or self.context.size == 0:
            inputs = self.tokenizer.encode(sentences, max_len)
        else:
            contexts = [
                self.context.around(sentence_id, sentence)
                for sentence_id, sentence in zip(sentence_ids, sentences, strict=True)
            ]
            inputs = self.tokenizer.encode(
                sentences, max_len, contexts=contexts, context_size=self.context.size
            )
        batch.subword_ids = inputs.subword_ids
        batch.subword_mask = inputs.subword_mask
        batch.subword_words = inputs.subword_words
        batch.word_first_subword = inputs.word_first_subword


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices ``[n_batches][<= batch_size]`` of sentences grouped by length, longest first.

    Sorting by length before batching minimizes padding (a transformer on unsorted, padded batches
    runs several times slower). Ties keep the original order; every index appears exactly once.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda index: -int(lengths[index]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
