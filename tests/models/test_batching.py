"""Batching for the taggers: vocabularies, the collator, subword windows, length-sorted batches."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.data.batching import (
    SubwordTokenizer,
    TaggingBatch,
    TaggingCollator,
    TaggingVocab,
    length_sorted_batches,
)
from structkd.data.conll import Sentence
from structkd.data.tag_schemes import convert_tags, label_indices_to_tags

TRAIN = [
    Sentence(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
    Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    Sentence(
        ["The", "European", "Commission", "said", "on", "Thursday"],
        ["O", "B-ORG", "I-ORG", "I-ORG", "O", "O"],
    ),
]


def make_vocab() -> TaggingVocab:
    return TaggingVocab.build(TRAIN)


def test_vocab_lowercases_words_keeps_char_case_and_sorts_types() -> None:
    vocab = make_vocab()
    assert vocab.types == ("MISC", "ORG", "PER")
    assert "eu" in vocab.words and "EU" not in vocab.words
    assert "E" in vocab.chars and "e" in vocab.chars
    assert vocab.word_index("German") == vocab.word_index("GERMAN") == vocab.words.index("german")
    assert vocab.word_index("unseen") == vocab.words.unk_index == 1
    assert vocab.labels[:5] == ["O", "B-MISC", "I-MISC", "E-MISC", "S-MISC"]
    assert vocab.n_labels == 13


def test_vocab_known_words_and_extra_words() -> None:
    known = {"eu", "german", "call", "paris", "the"}
    vocab = TaggingVocab.build(TRAIN, known_words=known, extra_words=["Paris", "Zzqx", "the"])
    assert set(vocab.words.items[2:]) == {"eu", "german", "call", "the", "paris"}
    assert vocab.word_index("rejects") == vocab.words.unk_index
    with pytest.raises(ValueError, match="extra_words needs known_words"):
        TaggingVocab.build(TRAIN, extra_words=["Paris"])
    with pytest.raises(ValueError, match="no sentence is labeled"):
        TaggingVocab.build([sentence.without_tags() for sentence in TRAIN])
    unlabeled = TaggingVocab.build([s.without_tags() for s in TRAIN], types=["LOC", "PER"])
    assert unlabeled.types == ("LOC", "PER")
    with pytest.raises(ValueError, match="sorted"):
        TaggingVocab.build(TRAIN, types=["PER", "LOC"])


def test_vocab_json_round_trip() -> None:
    vocab = make_vocab()
    restored = TaggingVocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored == vocab
    with pytest.raises(ValueError, match="exactly the keys"):
        TaggingVocab.from_dict({"words": {}})


def test_collator_shapes_padding_and_round_trip() -> None:
    vocab = make_vocab()
    batch = TaggingCollator(vocab)([(7, TRAIN[0]), (3, TRAIN[1]), (11, TRAIN[2])])
    assert isinstance(batch, TaggingBatch)
    assert batch.lengths.tolist() == [4, 2, 6]
    assert batch.sentence_ids.tolist() == [7, 3, 11]
    assert batch.word_ids.shape == (3, 6)
    assert batch.char_ids.shape == (3, 6, len("Commission"))
    assert (batch.word_ids[1, 2:] == 0).all() and (batch.char_ids[1, 2:] == 0).all()
    assert (batch.label_ids[1, 2:] == -1).all()
    assert batch.word_features is None and not batch.has_subwords
    assert batch.mask.sum().item() == 12
    for row, sentence in enumerate((TRAIN[0], TRAIN[1], TRAIN[2])):
        n = len(sentence)
        words = vocab.words.decode(batch.word_ids[row, :n].tolist())
        assert words == [token.lower() for token in sentence.tokens]
        chars = vocab.chars.decode(batch.char_ids[row, 0, : len(sentence.tokens[0])].tolist())
        assert "".join(chars) == sentence.tokens[0]
        tags = label_indices_to_tags(batch.label_ids[row, :n].tolist(), vocab.types)
        assert tags == convert_tags(sentence.tags, "iob2", "bioes")


def test_collator_converts_every_scheme_to_bioes() -> None:
    vocab = make_vocab()
    iob1 = Sentence(["a", "b", "c", "d"], ["I-PER", "I-PER", "B-PER", "O"])
    bioes = Sentence(["a", "b", "c"], ["B-ORG", "E-ORG", "S-PER"])
    batch = TaggingCollator(vocab)([(0, iob1), (1, bioes)])
    assert label_indices_to_tags(batch.label_ids[0].tolist(), vocab.types) == [
        "B-PER",
        "E-PER",
        "S-PER",
        "O",
    ]
    assert label_indices_to_tags(batch.label_ids[1, :3].tolist(), vocab.types) == [
        "B-ORG",
        "E-ORG",
        "S-PER",
    ]
    with pytest.raises(ValueError, match="sentence 5: tag 'S-LOC' has an entity type not in"):
        TaggingCollator(vocab)([(5, Sentence(["Paris"], ["B-LOC"]))])
    with pytest.raises(ValueError, match=r"sentence 0: tags\[1\]"):
        TaggingCollator(vocab, tag_scheme="iob2")([(0, Sentence(["a", "b"], ["O", "I-PER"]))])


def test_collator_labeled_unlabeled_and_bad_items() -> None:
    vocab = make_vocab()
    collate = TaggingCollator(vocab)
    unlabeled = collate([(0, TRAIN[0].without_tags()), (1, TRAIN[1].without_tags())])
    assert unlabeled.label_ids is None
    with pytest.raises(ValueError, match="1 of 2 sentences in the batch have tags"):
        collate([(0, TRAIN[0]), (1, TRAIN[1].without_tags())])
    with pytest.raises(ValueError, match="at least one"):
        collate([])
    with pytest.raises(ValueError, match=r"items\[0\]\[1\] must be a Sentence"):
        collate([(0, "EU rejects")])
    with pytest.raises(ValueError, match=r"items\[0\]\[0\] = -1 must be >= 0"):
        collate([(-1, TRAIN[0])])


def test_collator_long_words_keep_their_first_characters() -> None:
    vocab = make_vocab()
    batch = TaggingCollator(vocab, max_word_chars=3)([(0, TRAIN[2])])
    assert batch.char_ids.shape == (1, 6, 3)
    assert vocab.chars.decode(batch.char_ids[0, 2].tolist()) == ["C", "o", "m"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.text(alphabet="abcXYZ.é", min_size=1, max_size=9), min_size=1, max_size=6),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from([None, 1, 4]),
)
def test_collator_char_ids_are_each_words_characters(sentences_words, limit) -> None:
    """The scattered ``char_ids`` equal each word's own (cut) character ids, zero-padded, also
    when a collator is reused (its memo of words)."""
    vocab = TaggingVocab.build([Sentence(["abc", "XY"], ["O", "O"])], types=[])
    collator = TaggingCollator(vocab, max_word_chars=limit)
    sentences = [Sentence(words) for words in sentences_words]
    for _ in range(2):
        batch = collator(list(enumerate(sentences)))
        longest = max(len(w[:limit]) for words in sentences_words for w in words)
        max_len = max(len(words) for words in sentences_words)
        assert batch.char_ids.shape == (len(sentences), max_len, longest)
        expected = torch.zeros_like(batch.char_ids)
        for row, words in enumerate(sentences_words):
            for column, word in enumerate(words):
                ids = vocab.chars.encode(word[:limit])
                expected[row, column, : len(ids)] = torch.tensor(ids)
        assert torch.equal(batch.char_ids, expected)


def test_collator_pads_cached_features() -> None:
    vocab = make_vocab()
    features = [torch.randn(len(sentence), 5) for sentence in TRAIN]
    batch = TaggingCollator(vocab, features=features)([(2, TRAIN[2]), (1, TRAIN[1])])
    assert batch.word_features.shape == (2, 6, 5)
    assert torch.equal(batch.word_features[0], features[2])
    assert torch.equal(batch.word_features[1, :2], features[1])
    assert (batch.word_features[1, 2:] == 0).all()
    with pytest.raises(ValueError, match=r"features\[0\] has shape \[4, 5\], expected \[2, D\]"):
        TaggingCollator(vocab, features=features)([(0, TRAIN[1])])
    with pytest.raises(ValueError, match="no entry for sentence id 9"):
        TaggingCollator(vocab, features=features)([(9, TRAIN[1])])


def test_batch_to_device_keeps_fields() -> None:
    batch = TaggingCollator(make_vocab())([(0, TRAIN[0])])
    moved = batch.to("cpu")
    assert torch.equal(moved.word_ids, batch.word_ids) and moved.word_features is None
    moved64 = batch._map(lambda tensor: tensor.clone())
    assert torch.equal(moved64.label_ids, batch.label_ids)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
def test_batch_pin_memory() -> None:
    batch = TaggingCollator(make_vocab())([(0, TRAIN[0])]).pin_memory()
    assert batch.word_ids.is_pinned()


@given(st.lists(st.integers(1, 50), max_size=40), st.integers(1, 7))
@settings(max_examples=40, deadline=None)
def test_length_sorted_batches_cover_each_index_once(lengths: list[int], size: int) -> None:
    batches = length_sorted_batches(lengths, size)
    flat = [index for batch in batches for index in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(batch) <= size for batch in batches)
    ordered = [lengths[index] for index in flat]
    assert ordered == sorted(ordered, reverse=True)
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches(lengths, 0)


# -- subword windows with a fake tokenizer -------------------------------------------------------


class FakeTokenizer:
    """Splits a word into pieces of two characters (ids 10 + ord); no piece for "~"."""

    cls_token_id, sep_token_id, pad_token_id, unk_token_id = 1, 2, 0, 3

    def __call__(self, words, is_split_into_words, add_special_tokens):
        assert is_split_into_words and not add_special_tokens and len(words) == 1
        word = words[0].replace("~", "")
        return {"input_ids": [10 + ord(word[k]) for k in range(0, len(word), 2)]}


words_strategy = st.lists(st.text("abcdefgh~", min_size=1, max_size=9), min_size=1, max_size=12)


@given(st.lists(words_strategy, min_size=1, max_size=3), st.integers(4, 12))
@settings(max_examples=60, deadline=None)
def test_subword_windows_pool_every_word_once(sentences_words, max_length) -> None:
    tokenizer = SubwordTokenizer(FakeTokenizer(), max_length=max_length)
    sentences = [Sentence(words) for words in sentences_words]
    inputs = tokenizer.encode(sentences)
    n_windows, width = inputs.subword_ids.shape
    max_len = max(len(s) for s in sentences)
    assert width <= max_length and n_windows >= len(sentences)
    assert inputs.word_first_subword.shape == (len(sentences), max_len)
    budget = max_length - 2
    for index, sentence in enumerate(sentences):
        for word, token in enumerate(sentence.tokens):
            pieces = tokenizer.word_pieces(token)[:budget]
            owned = (inputs.subword_words == index * max_len + word).nonzero()
            # pooled from exactly one window, all of its pieces, in order
            assert len(set(owned[:, 0].tolist())) == 1
            window, positions = int(owned[0, 0]), owned[:, 1]
            assert inputs.subword_ids[window, positions].tolist() == pieces
            assert int(inputs.word_first_subword[index, word]) == window * width + int(positions[0])
        assert (inputs.word_first_subword[index, len(sentence) :] == -1).all()
    real = inputs.subword_mask
    starts = inputs.subword_ids[:, 0]
    assert (starts == 1).all()
    ends = inputs.subword_ids.gather(1, (real.sum(1, keepdim=True) - 1))
    assert (ends == 2).all()
    assert (inputs.subword_words[~real] == -1).all()


def test_subword_windows_add_context_to_long_sentences() -> None:
    tokenizer = SubwordTokenizer(FakeTokenizer(), max_length=8)  # budget 6, cores of 3
    sentence = Sentence(["ab"] * 10)  # one piece per word
    windows = tokenizer.windows([sentence])
    assert len(windows.windows) == 4  # cores: words 0-2, 3-5, 6-8, 9
    assert all(len(window) == 8 for window in windows.windows)  # full context on every window
    assert windows.owner[1] == [-1, -1, 3, 4, 5, -1, -1, -1]  # words 2..7 read, 3..5 pooled
    assert windows.owner[3] == [-1, -1, -1, -1, -1, -1, 9, -1]  # words 4..9 read, 9 pooled
    assert tokenizer.word_pieces("~") == [3]  # a word without pieces gets the unknown id
    with pytest.raises(ValueError, match="max_length"):
        SubwordTokenizer(FakeTokenizer(), max_length=3)
