"""The dependency collator against a per-sentence reference (the collation the project had
before: one sentence, one word at a time), its per-sentence cache and its options."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import pickle
import random

import pytest
import torch

from structkd.data.conllu_io import parse_conllu
from structkd.data.dep_batching import DepCollator, DepVocab
from structkd.data.dep_encodings import ENCODINGS, DepLabelScheme

TAGS = ["NOUN", "VERB", "ADJ", "PUNCT"]
FORMS = ["Ev", "kedi", "Okudu", "büyük", ".", "ş", "çokçokçokuzunbirkelimeeeeeeeeeeeee"]


def _random_treebank(n_sentences: int, seed: int) -> str:
    rng = random.Random(seed)
    blocks = []
    for _ in range(n_sentences):
        n_words = rng.randint(1, 9)
        order = list(range(1, n_words + 1))
        rng.shuffle(order)
        heads = [0] * n_words
        for rank, word in enumerate(order[1:], start=1):
            heads[word - 1] = order[rng.randrange(rank)]
        lines = []
        for word, head in enumerate(heads, start=1):
            relation = "root" if head == 0 else rng.choice(["nsubj", "obj", "amod"])
            form = rng.choice(FORMS)
            lines.append(f"{word}\t{form}\t_\t{rng.choice(TAGS)}\t_\t_\t{head}\t{relation}\t_\t_")
        blocks.append("\n".join(lines) + "\n\n")
    return "".join(blocks)


def reference_collate(vocab, scheme, items, *, labeled=True, max_word_chars=30):
    """``DepBatch`` fields of ``items``, one sentence and one word at a time."""
    sentences = [sentence for _, sentence in items]
    batch, max_len = len(sentences), max(len(s) for s in sentences)
    width = max(1, min(max_word_chars, max(len(w) for s in sentences for w in s.words)))
    fields = {
        "word_ids": torch.zeros(batch, max_len, dtype=torch.long),
        "char_ids": torch.zeros(batch, max_len, width, dtype=torch.long),
        "upos_ids": torch.zeros(batch, max_len, dtype=torch.long),
        "punct_mask": torch.zeros(batch, max_len + 1, dtype=torch.bool),
        "lengths": torch.tensor([len(s) for s in sentences]),
        "sentence_ids": torch.tensor([index for index, _ in items]),
    }
    if labeled:
        fields["heads"] = torch.full((batch, max_len + 1), -1)
        fields["rel_ids"] = torch.full((batch, max_len + 1), -1)
    if scheme is not None:
        fields["scheme_upos_ids"] = scheme.upos_ids([s.upos for s in sentences], max_len)
        if labeled:
            fields["label_ids"] = torch.full((batch, max_len), -1)
        code_heads = torch.full((batch, max_len, scheme.n_codes), -1)
    for row, sentence in enumerate(sentences):
        n = len(sentence)
        fields["word_ids"][row, :n] = torch.tensor(
            vocab.words.encode(w.lower() for w in sentence.words)
        )
        fields["upos_ids"][row, :n] = torch.tensor(vocab.upos.encode(sentence.upos))
        fields["punct_mask"][row, 1 : n + 1] = torch.tensor([t == "PUNCT" for t in sentence.upos])
        for column, word in enumerate(sentence.words):
            chars = vocab.chars.encode(word[:max_word_chars])
            fields["char_ids"][row, column, : len(chars)] = torch.tensor(chars)
        if labeled:
            fields["heads"][row, 1 : n + 1] = torch.tensor(sentence.heads)
            fields["rel_ids"][row, 1 : n + 1] = torch.tensor(
                vocab.relation_ids(sentence.relations, unknown=-1)
            )
        if scheme is not None:
            if labeled:
                fields["label_ids"][row, :n] = torch.tensor(
                    [
                        scheme.index(label) if label in scheme else -1
                        for label in _labels(scheme, sentence)
                    ]
                )
            code_heads[row, :n] = torch.from_numpy(scheme.sentence_code_heads(n, sentence.upos))
    if scheme is not None:
        fields["code_heads"] = code_heads
        fields["label_heads"] = code_heads[:, :, scheme.label_code]
    return fields


def _labels(scheme, sentence):
    from structkd.data.dep_encodings import encode_tree

    return encode_tree(sentence.heads, sentence.relations, sentence.upos, encoding=scheme.encoding)


def _assert_fields(batch, expected):
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        if field.name not in expected:
            assert value is None, field.name
            continue
        assert value.dtype == expected[field.name].dtype, field.name
        assert torch.equal(value, expected[field.name]), field.name


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("labeled", [True, False])
def test_collation_equals_the_reference(encoding, labeled):
    train = parse_conllu(_random_treebank(30, seed=1))
    other = parse_conllu(_random_treebank(40, seed=2))  # unseen labels and relations too
    vocab = DepVocab.build(train)
    scheme = DepLabelScheme.from_sentences(train, encoding=encoding)
    collate = DepCollator(
        vocab, scheme, labeled=labeled, strict_relations=False, max_word_chars=6, cache=True
    )
    for start in range(0, len(other), 7):
        items = list(enumerate(other[start : start + 7], start))
        expected = reference_collate(vocab, scheme, items, labeled=labeled, max_word_chars=6)
        _assert_fields(collate(items), expected)
        _assert_fields(collate(items), expected)  # from the cache
    # overlapping batches: some sentences cached, some not
    items = list(enumerate(other[3:20], 3))
    _assert_fields(
        collate(items), reference_collate(vocab, scheme, items, labeled=labeled, max_word_chars=6)
    )


def test_collator_options_and_pickling():
    train = parse_conllu(_random_treebank(12, seed=3))
    vocab = DepVocab.build(train)
    scheme = DepLabelScheme.from_sentences(train, encoding="pos")
    items = list(enumerate(train))
    plain = DepCollator(vocab)(items)
    assert plain.label_ids is plain.code_heads is plain.label_heads is plain.scheme_upos_ids is None
    lean = DepCollator(vocab, scheme, label_ids=False, label_heads=False, code_heads=False)(items)
    assert lean.label_ids is lean.label_heads is lean.code_heads is None
    assert lean.heads is not None and lean.scheme_upos_ids is not None
    decoding = DepCollator(vocab, scheme, labeled=False, label_heads=False)(items)
    assert decoding.code_heads is not None and decoding.label_heads is None
    assert decoding.heads is None and decoding.label_ids is None
    uncached = DepCollator(vocab, scheme)
    _assert_fields(uncached(items), reference_collate(vocab, scheme, items))
    assert len(uncached._cache) == 0
    collate = DepCollator(vocab, scheme, cache=True)
    collate(items)
    assert len(collate._cache) == len(items)
    again = pickle.loads(pickle.dumps(collate))  # the cache is not pickled
    fields = dataclasses.asdict(collate(items))
    _assert_fields(again(items), {name: v for name, v in fields.items() if v is not None})
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def test_strict_relations_name_the_file_and_line():
    train = parse_conllu(_random_treebank(5, seed=4))
    vocab = DepVocab.build(train)
    text = "1\tEv\t_\tNOUN\t_\t_\t0\tremnant\t_\t_\n\n"
    other = parse_conllu(text, source="other.conllu")
    with pytest.raises(ValueError, match=r"other\.conllu:1: relation 'remnant'"):
        DepCollator(vocab)(list(enumerate(other)))


def _turkish_treebank_installed() -> bool:
    try:
        importlib.metadata.distribution("turkish-treebanks")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _turkish_treebank_installed(), reason="turkish-treebanks is not installed")
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_turkish_dev_collates_as_the_reference(encoding):
    from structkd.data.conllu_io import load_turkish_treebank

    train = load_turkish_treebank("train")
    dev = sorted(load_turkish_treebank("dev"), key=len)
    vocab = DepVocab.build(train)
    scheme = DepLabelScheme.from_sentences(train, encoding=encoding)
    collate = DepCollator(vocab, scheme, strict_relations=False, cache=True)
    for start in range(0, len(dev), 97):
        items = list(enumerate(dev[start : start + 97], start))
        _assert_fields(collate(items), reference_collate(vocab, scheme, items))
