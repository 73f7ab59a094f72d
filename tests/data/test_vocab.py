"""Vocabularies: ordering, specials, unknown items, JSON round trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.data.conll import Sentence
from structkd.data.vocab import (
    PAD,
    UNK,
    Vocabulary,
    char_vocabulary,
    label_vocabulary,
    word_vocabulary,
)


def test_build_orders_by_count_then_alphabet() -> None:
    vocab = Vocabulary.build(["b", "c", "a", "c", "b", "c", "d"])
    assert vocab.items == (PAD, UNK, "c", "b", "a", "d")
    assert (vocab.pad_index, vocab.unk_index) == (0, 1)
    frequent = Vocabulary.build(["b", "c", "a", "c", "b", "c", "d"], min_count=2)
    assert frequent.items[2:] == ("c", "b")
    assert Vocabulary.build(["b", "c", "a", "c"], max_size=2).items[2:] == ("c", "a")


def test_lookup_unknown_and_decode() -> None:
    vocab = Vocabulary.build(["Paris", "paris", "Paris"])
    assert vocab.encode(["Paris", "paris", "PARIS"]) == [2, 3, 1]  # case is kept
    assert vocab.decode([0, 2, 1]) == [PAD, "Paris", UNK]
    assert "Paris" in vocab and "PARIS" not in vocab
    with pytest.raises(ValueError, match=r"indices\[1\] = 4 is outside 0..3"):
        vocab.decode([0, 4])
    strict = Vocabulary(["x"], pad=None, unk=None)
    assert (strict.pad_index, strict.unk_index, strict.index("x")) == (None, None, 0)
    with pytest.raises(KeyError, match="has no unknown item"):
        strict.index("y")


def test_constructor_rejects_duplicates_and_clashing_specials() -> None:
    with pytest.raises(ValueError, match=r"items\[2\] = 'a' is a duplicate"):
        Vocabulary(["a", "b", "a"])
    with pytest.raises(ValueError, match=r"items\[1\] = '<unk>' is a special item"):
        Vocabulary(["a", UNK])
    with pytest.raises(ValueError, match="pad and unk must differ"):
        Vocabulary(["a"], pad="<x>", unk="<x>")
    with pytest.raises(ValueError, match="min_count must be at least 1"):
        Vocabulary.build([], min_count=0)


def test_build_skips_special_items_in_the_data() -> None:
    assert Vocabulary.build([PAD, "a", UNK]).items == (PAD, UNK, "a")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(max_size=4), max_size=20),
    st.sampled_from([PAD, None]),
    st.sampled_from([UNK, None]),
)
def test_json_round_trip(items: list[str], pad: str | None, unk: str | None) -> None:
    vocab = Vocabulary.build(items, pad=pad, unk=unk)
    restored = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored == vocab
    assert restored.items == vocab.items and len(restored) == len(vocab)
    assert (restored.pad_index, restored.unk_index) == (vocab.pad_index, vocab.unk_index)


def test_from_dict_rejects_malformed_data() -> None:
    with pytest.raises(ValueError, match="exactly the keys 'items', 'pad', 'unk'"):
        Vocabulary.from_dict({"items": []})
    with pytest.raises(ValueError, match=r"data\['items'\] must be a list"):
        Vocabulary.from_dict({"items": "abc", "pad": None, "unk": None})


def test_word_char_and_label_vocabularies() -> None:
    sentences = [Sentence(["EU", "rejects"], ["B-ORG", "O"]), Sentence(["EU"])]
    assert word_vocabulary(sentences).items == (PAD, UNK, "EU", "rejects")
    chars = char_vocabulary(sentences)
    assert chars.items[:4] == (PAD, UNK, "E", "U") and len(chars) == 2 + 2 + 6
    labels = label_vocabulary(["LOC", "PER"])
    assert labels.items == (
        "O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-PER", "I-PER", "E-PER", "S-PER",
    )  # fmt: skip
    assert labels.pad_index is None and labels.unk_index is None
    assert labels.index("S-PER") == 4 + 4 * 1
    iob2_labels = label_vocabulary(["LOC", "PER"], "iob2")
    assert iob2_labels.items == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
