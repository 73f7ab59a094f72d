"""The flat character layout of exported models (numpy only): the characters of a batch's words
in one row, each word between ``context`` zeros, so that one convolution over the row computes
every word's character convolution without padding the words to the longest one.

A character CNN of width ``2 * context + 1`` zero-pads each word by ``context`` characters at
both ends (``CharCNN``); with ``context`` zeros (the padding index, whose embedding is 0) between
consecutive words and at both ends of the row, the convolution at a word's character sees exactly
what it sees in the padded layout. Then ``char_index [U, C]`` gathers each word's characters
(``T``, one past the row, where a word is shorter than ``C``: the exported graph puts ``-inf``
there) for the max-pooling, and ``word_chars [B, N]`` picks each token's word.

    chars:      [0, a, b, 0, c, 0]            two words "ab" and "c", context 1
    char_index: [[1, 2], [4, 6]]              (6 = T: no character)

The row costs ``sum(len(word) + context)`` positions, against ``B * N * C`` for the padded layout
(on CoNLL-2003 test in chunks of 32 sentences, about 4.5 times fewer).
"""

from __future__ import annotations

import numpy as np

__all__ = ["flat_chars", "flat_chars_from_padded"]


def flat_chars(
    codes: np.ndarray, word_lengths: np.ndarray, context: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(chars [T] int64, char_index [U, C] int64)`` of ``U`` words whose character ids, word
    after word, are ``codes [sum(word_lengths)]``; ``word_lengths [U]`` (each >= 1); ``C`` the
    longest word; ``T = sum(word_lengths) + context * (U + 1)``."""
    word_lengths = np.asarray(word_lengths, dtype=np.int64)
    if word_lengths.ndim != 1 or len(word_lengths) == 0 or word_lengths.min() < 1:
        raise ValueError("flat_chars needs at least one word, each of at least one character")
    if not (isinstance(context, int) and context >= 0):
        raise ValueError(f"context must be an integer >= 0; got {context!r}")
    total = int(word_lengths.sum())
    if len(codes) != total:
        raise ValueError(f"{len(codes)} character codes for words of {total} characters")
    n_words = len(word_lengths)
    size = total + context * (n_words + 1)
    # character j of word u sits after u + 1 separators and the words before it
    positions = np.arange(total) + np.repeat(context * np.arange(1, n_words + 1), word_lengths)
    chars = np.zeros(size, dtype=np.int64)
    chars[positions] = codes
    width = int(word_lengths.max())
    char_index = np.full((n_words, width), size, dtype=np.int64)
    char_index[np.arange(width) < word_lengths[:, None]] = positions
    return chars, char_index


def flat_chars_from_padded(
    char_ids: np.ndarray, lengths: np.ndarray, context: int
) -> dict[str, np.ndarray]:
    """The flat layout of a padded batch (``char_ids [B, N, C]``, 0 = padding, each real word with
    at least one character; ``lengths [B]``): ``chars [T]``, ``char_index [U, C]`` (one entry per
    real token, in row-major order) and ``word_chars [B, N]`` (each real token's row of
    ``char_index``; 0 at padding)."""
    char_ids = np.asarray(char_ids)
    if char_ids.ndim != 3:
        raise ValueError(f"char_ids must have shape [B, N, C]; got {list(char_ids.shape)}")
    inside = np.arange(char_ids.shape[1]) < np.asarray(lengths)[:, None]
    words = char_ids[inside]  # [U, C]
    real = words != 0
    chars, char_index = flat_chars(words[real], real.sum(-1), context)
    word_chars = np.zeros(inside.shape, dtype=np.int64)
    word_chars[inside] = np.arange(len(words))
    return {"chars": chars, "char_index": char_index, "word_chars": word_chars}
