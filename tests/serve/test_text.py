"""Tokenization with character offsets (``structkd.serve.text``): every token is the slice of the
text it spans, offsets increase, pre-tokenized sentences keep their tokens."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.serve.text import TokenizedSentence, from_tokens, split_text


def _check_offsets(text: str, sentences: list[TokenizedSentence]) -> None:
    """Each token is ``text[start:end]``, non-empty; tokens follow each other without overlap,
    across sentences too."""
    previous_end = 0
    for sentence in sentences:
        assert len(sentence) == len(sentence.starts) == len(sentence.ends) > 0
        for token, start, end in zip(sentence.tokens, sentence.starts, sentence.ends, strict=True):
            assert text[start:end] == token
            assert previous_end <= start < end <= len(text)
            previous_end = end


def test_split_text_sentences_and_offsets() -> None:
    text = "Peter went to Paris. He didn't like it.\n\nAcme Inc. (NYSE: ACM) rose 5%."
    sentences = split_text(text)
    assert [sentence.tokens for sentence in sentences] == [
        ("Peter", "went", "to", "Paris", "."),
        ("He", "did", "n't", "like", "it", "."),
        ("Acme", "Inc", ".", "(", "NYSE", ":", "ACM", ")", "rose", "5", "%", "."),
    ]
    assert sentences[0].starts == (0, 6, 11, 14, 19)
    assert sentences[0].ends == (5, 10, 13, 19, 20)
    assert all(sentence.upos is None for sentence in sentences)
    _check_offsets(text, sentences)


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t"])
def test_blank_text_has_no_sentences(text) -> None:
    assert split_text(text) == []


def test_split_text_refuses_what_is_not_a_string() -> None:
    with pytest.raises(TypeError, match="text must be a string"):
        split_text(["Peter", "went"])  # type: ignore[arg-type]


def test_from_tokens_joins_with_single_spaces() -> None:
    text, sentence = from_tokens(["EU", "rejects", "German", "call", "."])
    assert text == "EU rejects German call ."
    assert sentence.starts == (0, 3, 11, 18, 23) and sentence.ends == (2, 10, 17, 22, 24)
    _check_offsets(text, [sentence])
    assert from_tokens([]) == ("", TokenizedSentence((), (), ()))


@pytest.mark.parametrize(
    ("tokens", "error", "message"),
    [
        ("EU rejects", TypeError, "not one string"),
        (["EU", 3], TypeError, "token 1 must be a string"),
        (["EU", ""], ValueError, r"token 1 \(''\) is empty"),
        (["New York"], ValueError, "contains whitespace"),
        (["tab\there"], ValueError, "contains whitespace"),
    ],
)
def test_from_tokens_refuses_bad_tokens(tokens, error, message) -> None:
    with pytest.raises(error, match=message):
        from_tokens(tokens)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_every_token_is_its_slice_of_any_text(text: str) -> None:
    _check_offsets(text, split_text(text))


_WORDS = st.text(
    alphabet=st.characters(blacklist_categories=("Zs", "Zl", "Zp", "Cc", "Cs")), min_size=1
).filter(lambda word: not any(character.isspace() for character in word))


@settings(max_examples=200, deadline=None)
@given(st.lists(_WORDS, max_size=12))
def test_from_tokens_keeps_any_tokens(tokens: list[str]) -> None:
    text, sentence = from_tokens(tokens)
    assert sentence.tokens == tuple(tokens)
    if tokens:
        _check_offsets(text, [sentence])
        assert text.split(" ") == tokens
