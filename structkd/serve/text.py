"""Tokenization and sentence splitting with character offsets, by syntok.

syntok (the successor of segtok, which flair uses) is a small, pure-Python, rule-based tokenizer
and segmenter for English and other European languages that keeps every token's character offset
into the input; it needs no model download and no torch. Its tokens follow Penn Treebank habits
close to CoNLL-2003's (``didn't`` -> ``did`` ``n't``; punctuation split off), with one difference:
an abbreviation that ends a sentence loses its final period to the sentence (``U.S.`` -> ``U.S``
``.``).

    split_text("Peter went to Paris. He liked it.")
    -> [TokenizedSentence(tokens=("Peter", "went", "to", "Paris", "."), starts=(0, 6, 11, 14, 19),
                          ends=(5, 10, 13, 19, 20)), TokenizedSentence(...)]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["TokenizedSentence", "from_tokens", "split_text"]


@dataclass(frozen=True)
class TokenizedSentence:
    """One sentence: its tokens and each token's ``[start, end)`` character offsets into the
    text it came from; ``upos``: the universal PoS tag of each token where the input gave them
    (CoNLL-U), which a parser reads; ``document``: the document of the input file it was read
    from (``structkd.data.conll``: runs between ``-DOCSTART-`` lines in a column file, between
    blank lines in tokenized text), whose sentences a model reading document context reads
    together, or ``None`` (a document of its own)."""

    tokens: tuple[str, ...]
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    upos: tuple[str, ...] | None = None
    document: int | None = None

    def __len__(self) -> int:
        return len(self.tokens)


def split_text(text: str) -> list[TokenizedSentence]:
    """The sentences of the raw ``text`` (paragraphs and sentences split by syntok), each token
    with its offsets; ``text[start:end]`` is the token. Empty for blank text."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string; got {type(text).__name__}")
    from syntok import segmenter

    sentences = []
    for paragraph in segmenter.analyze(text):
        for sentence in paragraph:
            tokens = [token for token in sentence if token.value]
            if not tokens:
                continue
            starts = tuple(token.offset for token in tokens)
            ends = tuple(token.offset + len(token.value) for token in tokens)
            # A token is always the slice of the input it spans (syntok may normalize a value,
            # e.g. a word hyphenated across a line break; the slice keeps the offsets true).
            words = tuple(text[start:end] for start, end in zip(starts, ends, strict=True))
            sentences.append(TokenizedSentence(tokens=words, starts=starts, ends=ends))
    return sentences


def from_tokens(tokens: Sequence[str]) -> tuple[str, TokenizedSentence]:
    """A pre-tokenized sentence as ``(text, sentence)``: the text is the tokens joined by single
    spaces, the offsets point into it. ``ValueError`` for an empty token or one with whitespace.

    The check is one ``str.split`` of the joined text: it gives back exactly the tokens iff each
    is a non-empty string without whitespace (``str.split`` and ``str.isspace`` agree on what
    whitespace is); only a failing sentence is walked token by token, to name the token."""
    if isinstance(tokens, str):
        raise TypeError("a pre-tokenized sentence is a list of strings, not one string")
    tokens = tuple(tokens)
    try:
        text = " ".join(tokens)
    except TypeError:
        text = None
    if text is None or text.split() != list(tokens):
        for index, token in enumerate(tokens):
            if not isinstance(token, str):
                raise TypeError(f"token {index} must be a string; got {type(token).__name__}")
            if not token or any(character.isspace() for character in token):
                raise ValueError(f"token {index} ({token!r}) is empty or contains whitespace")
        raise AssertionError("unreachable: the split differs, so some token is invalid")
    ends = tuple(itertools.accumulate(map(len, tokens), lambda end, size: end + 1 + size))
    starts = (0, *map((1).__add__, ends[:-1])) if tokens else ()
    return text, TokenizedSentence(tokens, starts, ends)
