"""Dependency parsing as sequence labeling: encodings, the label vocabulary, batched label -> head
maps, and the models' input encoding (decoding and tree repair: ``tests/serve/test_trees.py``)."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.data.dep_encodings import (
    ENCODINGS,
    ROOT_CODE,
    DepLabel,
    DepLabelScheme,
    WordEncoder,
    WordLayout,
    decode_heads,
    encode_heads,
    encode_tree,
    head_of,
)
from structkd.data.vocab import Vocabulary

TAGS = ("NOUN", "VERB", "ADJ")
RELATIONS = ("nsubj", "obj", "amod")


@dataclass
class Tree:
    heads: list[int]
    relations: list[str]
    upos: list[str]


@st.composite
def trees(draw, min_words: int = 1, max_words: int = 9) -> Tree:
    """A random dependency tree (projective or not, one root), with random tags and relations:
    words are attached in a random order, each to the root or to a word attached before it."""
    n_words = draw(st.integers(min_words, max_words))
    order = draw(st.permutations(range(1, n_words + 1)))
    heads = [0] * n_words
    for rank, word in enumerate(order):
        if rank > 0:
            heads[word - 1] = order[draw(st.integers(0, rank - 1))]
    upos = draw(st.lists(st.sampled_from(TAGS), min_size=n_words, max_size=n_words))
    relations = ["root" if head == 0 else draw(st.sampled_from(RELATIONS)) for head in heads]
    return Tree(heads, relations, upos)


def _pad(rows: list[list[int]], value: int = -1) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


# ---------------------------------------------------------------------------- pure Python


def test_encode_examples():
    heads = [2, 0, 2, 3]
    upos = ["NOUN", "VERB", "NOUN", "ADJ"]
    assert encode_heads(heads, encoding="offset") == [(1, None), ROOT_CODE, (-1, None), (-1, None)]
    assert encode_heads(heads, upos, encoding="pos") == [
        (1, "VERB"),
        ROOT_CODE,
        (-1, "VERB"),
        (-1, "NOUN"),
    ]
    # the 2nd NOUN to the right of word 1
    assert encode_heads([3, 3, 0], ["NOUN", "NOUN", "NOUN"], encoding="pos")[0] == (2, "NOUN")
    labels = encode_tree(heads, ["nsubj", "root", "obj", "amod"], upos, encoding="pos")
    assert [str(label) for label in labels] == [
        "+1@VERB|nsubj",
        "root|root",
        "-1@VERB|obj",
        "-1@NOUN|amod",
    ]
    assert str(DepLabel(-3, None, "dep")) == "-3|dep"


def test_head_of_points_nowhere():
    upos = ["NOUN", "VERB"]
    assert head_of((2, None), 1, 2, encoding="offset") == -1
    assert head_of((-1, None), 1, 2, encoding="offset") == -1
    assert head_of((1, "ADJ"), 1, 2, upos, encoding="pos") == -1
    assert head_of((2, "VERB"), 1, 2, upos, encoding="pos") == -1
    assert head_of((1, "VERB"), 1, 2, upos, encoding="pos") == 2
    assert head_of(ROOT_CODE, 2, 2, upos, encoding="pos") == 0


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=150, deadline=None)
@given(tree=trees())
def test_pure_round_trip(encoding, tree):
    codes = encode_heads(tree.heads, tree.upos, encoding=encoding)
    assert decode_heads(codes, tree.upos, encoding=encoding) == tree.heads


def test_bad_inputs():
    with pytest.raises(ValueError, match="encoding must be one of"):
        encode_heads([0], encoding="relative")
    with pytest.raises(ValueError, match="needs upos"):
        encode_heads([0], encoding="pos")
    with pytest.raises(ValueError, match="is not a head of word 2"):
        encode_heads([0, 2], encoding="offset")
    with pytest.raises(ValueError, match="distinct"):
        DepLabelScheme([DepLabel(0, None, "root")] * 2, encoding="offset")
    with pytest.raises(ValueError, match="head_upos"):
        DepLabelScheme([DepLabel(1, None, "dep")], encoding="pos")
    with pytest.raises(ValueError, match="head_upos"):
        DepLabelScheme([DepLabel(1, "NOUN", "dep")], encoding="offset")


# ------------------------------------------------------------------------- the scheme


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=40, deadline=None)
@given(batch=st.lists(trees(), min_size=1, max_size=5))
def test_scheme_round_trip_batched(encoding, batch):
    """The gold labels of valid trees denote their heads in the batched map; the scheme survives
    ``to_dict``/``from_dict``."""
    scheme = DepLabelScheme.from_sentences(batch, encoding=encoding)
    assert scheme.coverage(batch) == 1.0
    lengths = torch.tensor([len(tree.heads) for tree in batch])
    upos_ids = scheme.upos_ids([tree.upos for tree in batch])
    label_ids = _pad([scheme.encode(t.heads, t.relations, t.upos) for t in batch], 0)
    label_heads = scheme.label_heads(lengths, upos_ids)
    heads = label_heads.gather(2, label_ids[..., None]).squeeze(2)
    for b, tree in enumerate(batch):
        assert heads[b, : len(tree.heads)].tolist() == tree.heads
        relations = scheme.label_relation[label_ids[b, : len(tree.heads)]]
        assert [scheme.relations[r] for r in relations] == tree.relations
    again = DepLabelScheme.from_dict(scheme.to_dict())
    assert again.labels == scheme.labels and again.root_relation == scheme.root_relation
    assert torch.equal(again.label_heads(lengths, upos_ids), label_heads)


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=40, deadline=None)
@given(
    batch=st.lists(trees(max_words=7), min_size=1, max_size=4),
    sentences=st.lists(
        st.lists(st.sampled_from((*TAGS, "PUNCT")), min_size=1, max_size=8), min_size=1, max_size=4
    ),
)
def test_label_heads_matches_pure_python(encoding, batch, sentences):
    """The batched map agrees with ``head_of`` for every word and label, on sentences with mixed
    lengths and tags (PUNCT: a tag no code names), and each word's valid labels of one relation
    denote distinct heads."""
    scheme = DepLabelScheme.from_sentences(batch, encoding=encoding)
    lengths = torch.tensor([len(tags) for tags in sentences])
    max_len = int(lengths.max()) + 1  # one extra padding column for every sentence
    upos_ids = scheme.upos_ids(sentences, max_len=max_len)
    label_heads = scheme.label_heads(lengths, upos_ids)
    assert label_heads.shape == (len(sentences), max_len, scheme.n_labels)
    code_heads = scheme.code_heads(lengths, upos_ids)
    # the flat map of the words of all sentences, and one sentence's, are rows of the same
    flat = scheme.word_code_heads(
        lengths.numpy(), scheme.tag_indices([tag for tags in sentences for tag in tags])
    )
    assert flat.tolist() == code_heads[torch.arange(max_len) < lengths[:, None]].tolist()
    for b, tags in enumerate(sentences):
        assert torch.equal(
            scheme.sentence_label_heads(len(tags), tags), label_heads[b, : len(tags)]
        )
        n_words = len(tags)
        assert (label_heads[b, n_words:] == -1).all()
        for word in range(1, n_words + 1):
            expected = [
                head_of(label.head_code, word, n_words, tags, encoding=encoding)
                for label in scheme.labels
            ]
            assert label_heads[b, word - 1].tolist() == expected
            valid = [h for h in code_heads[b, word - 1].tolist() if h >= 0]
            assert len(valid) == len(set(valid))  # a head has at most one code
            assert word not in valid


def test_sentence_label_heads():
    tree = Tree([2, 0, 2], ["nsubj", "root", "obj"], ["NOUN", "VERB", "NOUN"])
    scheme = DepLabelScheme.from_sentences([tree], encoding="pos")
    table = scheme.sentence_label_heads(3, tree.upos)
    assert table.shape == (3, scheme.n_labels)
    ids = torch.tensor(scheme.encode(tree.heads, tree.relations, tree.upos))
    assert table.gather(1, ids[:, None]).squeeze(1).tolist() == tree.heads
    assert scheme.known_labels([0, 1, 1], ["root", "obj", "obj"], tree.upos)[1:] == [-1, -1]


def test_encode_unknown_label_and_index():
    tree = Tree([2, 0], ["nsubj", "root"], ["NOUN", "VERB"])
    scheme = DepLabelScheme.from_sentences([tree], encoding="offset")
    assert len(scheme) == 2 and DepLabel(1, None, "nsubj") in scheme
    assert scheme.index(DepLabel(0, None, "root")) == scheme.labels.index(DepLabel(0, None, "root"))
    with pytest.raises(ValueError, match="not in the vocabulary"):
        scheme.encode([0, 1], ["root", "obj"])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        scheme.index(DepLabel(5, None, "x"))
    assert scheme.coverage([Tree([0, 1], ["root", "obj"], ["NOUN", "VERB"])]) == 0.5
    assert scheme.root_relation == "root"
    assert "offset" in repr(scheme)


def test_from_sentences_orders_by_frequency_and_min_count():
    batch = [Tree([2, 0], ["nsubj", "root"], ["NOUN", "VERB"])] * 3 + [
        Tree([0, 1], ["root", "obj"], ["NOUN", "VERB"])
    ]
    scheme = DepLabelScheme.from_sentences(batch, encoding="offset")
    assert [str(label) for label in scheme.labels] == ["root|root", "+1|nsubj", "-1|obj"]
    assert len(DepLabelScheme.from_sentences(batch, encoding="offset", min_count=2)) == 2


def test_label_heads_validates():
    tree = Tree([2, 0], ["nsubj", "root"], ["NOUN", "VERB"])
    scheme = DepLabelScheme.from_sentences([tree], encoding="pos")
    lengths = torch.tensor([2])
    with pytest.raises(ValueError, match="needs upos_ids"):
        scheme.label_heads(lengths)
    with pytest.raises(ValueError, match="lengths must be <= the padded length 2"):
        scheme.label_heads(torch.tensor([3]), scheme.upos_ids([tree.upos]))
    with pytest.raises(ValueError, match="upos_ids must have shape"):
        scheme.label_heads(lengths, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="malformed label scheme"):
        DepLabelScheme.from_dict({"labels": [[0, None]], "encoding": "pos"})


def test_scheme_and_word_encoding_import_no_torch():
    """An exported model's predictor reads its scheme and encodes its words without torch."""
    import subprocess
    import sys

    code = (
        "import sys; from structkd.data.dep_encodings import DepLabelScheme, DepLabel, "
        "WordEncoder; s = DepLabelScheme([DepLabel(0, None, 'root')], encoding='offset'); "
        "s.word_code_heads([2]); assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------ word encoding


def test_word_encoder_and_layout():
    words = Vocabulary(["ev", "kedi"])  # ev 2, kedi 3
    chars = Vocabulary(["e", "v", "K", "d", "i", "ş"])  # e 2, v 3, K 4, d 5, i 6, ş 7
    upos = Vocabulary(["NOUN", "PUNCT"])  # NOUN 2, PUNCT 3
    encoder = WordEncoder(words, chars, upos, max_word_chars=3)
    first, second = encoder.encode([["Ev", "Kedi", "."], ["şu"]], [["NOUN", "NOUN", "PUNCT"], None])
    unk = chars.unk_index
    assert first.word_ids.tolist() == [2, 3, 1]  # lowercased; "." unseen
    assert first.char_counts.tolist() == [2, 3, 1]  # "Kedi" cut to 3 characters
    assert first.char_ids.tolist() == [unk, 3, 4, 2, 5, unk]  # cased: "E" unseen
    assert first.upos_ids.tolist() == [2, 2, 3] and first.punct.tolist() == [False, False, True]
    assert second.upos_ids.tolist() == [upos.pad_index] and not second.punct.any()  # no UPOS
    assert second.char_ids.tolist() == [7, unk]
    assert encoder(["Ev"], ["NOUN"]).word_ids.tolist() == [2]
    assert encoder(["Ev", "!"], ["_", "INTJ"]).upos_ids.tolist() == [upos.pad_index, upos.unk_index]
    layout = WordLayout(np.array([3, 1]))
    padded = layout.pad_words([first, second])
    assert padded["word_ids"].tolist() == [[2, 3, 1], [1, 0, 0]]
    assert padded["char_ids"].shape == (2, 3, 3)
    assert padded["char_ids"][0, 1].tolist() == [4, 2, 5]
    assert padded["char_ids"][1].tolist() == [[7, unk, 0], [0, 0, 0], [0, 0, 0]]
    assert padded["punct_mask"].tolist() == [[False, False, False, True], [False] * 4]
    with pytest.raises(ValueError, match="one tag per word"):
        encoder.encode([["a", "b"]], [["NOUN"]])


# ----------------------------------------------------------------------- the real treebank


def _turkish_treebank_installed() -> bool:
    try:
        importlib.metadata.distribution("turkish-treebanks")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _turkish_treebank_installed(), reason="turkish-treebanks is not installed")
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_turkish_dev_gold_labels_denote_the_gold_heads(encoding):
    from structkd.data.conllu_io import load_turkish_treebank

    scheme = DepLabelScheme.from_sentences(load_turkish_treebank("train"), encoding=encoding)
    dev = [s for s in load_turkish_treebank("dev") if scheme.coverage([s]) == 1.0]
    assert len(dev) > 400
    dev.sort(key=len)  # length-sorted batches: little padding
    for start in range(0, len(dev), 64):
        batch = dev[start : start + 64]
        lengths = torch.tensor([len(s) for s in batch])
        upos_ids = scheme.upos_ids([s.upos for s in batch])
        label_ids = _pad([scheme.encode(s.heads, s.relations, s.upos) for s in batch], 0)
        heads = scheme.label_heads(lengths, upos_ids).gather(2, label_ids[..., None]).squeeze(2)
        for row, sentence in enumerate(batch):
            assert tuple(heads[row, : len(sentence)].tolist()) == sentence.heads
