"""The flat character layout (structkd.serve.chars): a convolution over the flat row, max-pooled
over each word's characters, equals the padded layout's (CharCNN's) for any words and context."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.serve.chars import flat_chars, flat_chars_from_padded


def test_the_documented_example() -> None:
    chars, char_index = flat_chars(np.array([5, 6, 7]), np.array([2, 1]), 1)
    np.testing.assert_array_equal(chars, [0, 5, 6, 0, 7, 0])
    np.testing.assert_array_equal(char_index, [[1, 2], [4, 6]])
    assert chars.dtype == char_index.dtype == np.int64


def conv_same(embedded: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``[L, E]`` -> ``[L, F]``: a width-``2c+1`` convolution with ``c`` zeros at both ends."""
    context = kernel.shape[0] // 2
    padded = np.pad(embedded, ((context, context), (0, 0)))
    return np.stack(
        [
            np.einsum("ke,kef->f", padded[i : i + kernel.shape[0]], kernel)
            for i in range(len(embedded))
        ]
    )


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=7), min_size=1, max_size=6),
    context=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_flat_convolution_equals_each_words_own(words, context, seed) -> None:
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(10, 3))
    table[0] = 0.0  # the padding index embeds to 0
    kernel = rng.normal(size=(2 * context + 1, 3, 4))
    codes = np.array([code for word in words for code in word])
    chars, char_index = flat_chars(codes, np.array([len(word) for word in words]), context)
    assert len(chars) == sum(map(len, words)) + context * (len(words) + 1)
    convolved = np.concatenate([conv_same(table[chars], kernel), np.full((1, 4), -np.inf)])
    pooled = convolved[char_index].max(1)  # [U, F]
    for word, row in zip(words, pooled, strict=True):
        expected = conv_same(table[np.array(word)], kernel).max(0)
        np.testing.assert_allclose(row, expected, rtol=1e-12, atol=1e-12)


def test_from_padded_keeps_every_real_token_in_order() -> None:
    char_ids = np.array([[[3, 4, 0], [5, 0, 0]], [[6, 6, 6], [0, 0, 0]]])
    arrays = flat_chars_from_padded(char_ids, np.array([2, 1]), 1)
    np.testing.assert_array_equal(arrays["word_chars"], [[0, 1], [2, 0]])
    chars = np.append(arrays["chars"], 0)  # index T: no character
    np.testing.assert_array_equal(chars[arrays["char_index"]], [[3, 4, 0], [5, 0, 0], [6, 6, 6]])


@pytest.mark.parametrize(
    ("codes", "lengths", "context", "message"),
    [
        ([1], [], 1, "at least one word"),
        ([1], [0, 1], 1, "at least one character"),
        ([1, 2], [1], 1, "2 character codes for words of 1"),
        ([1], [1], -1, "context must be an integer >= 0"),
    ],
)
def test_bad_layouts_are_refused(codes, lengths, context, message) -> None:
    with pytest.raises(ValueError, match=message):
        flat_chars(np.array(codes), np.array(lengths, dtype=np.int64), context)
