"""Dependency parsing as sequence labeling: encodings, the label vocabulary, batched label -> head
maps, decoding and tree repair."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.data.conllu_io import tree_problem
from structkd.data.dep_encodings import (
    ENCODINGS,
    PROBLEMS,
    ROOT_CODE,
    DepLabel,
    DepLabelScheme,
    decode_heads,
    encode_heads,
    encode_tree,
    head_of,
    repair_tree,
)
from structkd.structures.base import NumericalError

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
    """Valid trees decode exactly, from label indices and from (one-hot) label scores."""
    scheme = DepLabelScheme.from_sentences(batch, encoding=encoding)
    assert scheme.coverage(batch) == 1.0
    lengths = torch.tensor([len(tree.heads) for tree in batch])
    upos_ids = scheme.upos_ids([tree.upos for tree in batch])
    label_ids = _pad([scheme.encode(t.heads, t.relations, t.upos) for t in batch])
    scores = torch.nn.functional.one_hot(label_ids.clamp(min=0), scheme.n_labels).double() * 5.0
    for predictions in (label_ids, scores):
        decoded = scheme.decode(predictions, lengths, upos_ids)
        for tree, result in zip(batch, decoded, strict=True):
            assert list(result.heads) == tree.heads
            assert list(result.relations) == tree.relations
            assert result.well_formed and result.problems == ()


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
    for b, tags in enumerate(sentences):
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


def test_sentence_label_heads_and_decode_sentence():
    tree = Tree([2, 0, 2], ["nsubj", "root", "obj"], ["NOUN", "VERB", "NOUN"])
    scheme = DepLabelScheme.from_sentences([tree], encoding="pos")
    table = scheme.sentence_label_heads(3, tree.upos)
    assert table.shape == (3, scheme.n_labels)
    ids = torch.tensor(scheme.encode(tree.heads, tree.relations, tree.upos))
    assert table.gather(1, ids[:, None]).squeeze(1).tolist() == tree.heads
    result = scheme.decode_sentence(ids, tree.upos)
    assert list(result.heads) == tree.heads and result.well_formed


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


# ----------------------------------------------------------------------------- repair


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(-2, 10), min_size=1, max_size=9), st.data())
def test_repair_always_gives_a_tree(heads, data):
    n_words = len(heads)
    use_scores = data.draw(st.booleans())
    scores = st.lists(st.floats(-1e4, 1e4), min_size=n_words, max_size=n_words)
    confidence = data.draw(scores) if use_scores else None
    root_scores = data.draw(scores) if use_scores else None
    fixed, problems = repair_tree(heads, confidence=confidence, root_scores=root_scores)
    assert tree_problem(fixed) is None
    assert set(problems) <= set(PROBLEMS)
    was_tree = tree_problem(heads) is None
    assert (problems == ()) == was_tree
    if was_tree:
        assert fixed == heads
    if problems == ("invalid head",):  # one root, no cycle: only the invalid heads change
        for word, (before, after) in enumerate(zip(heads, fixed, strict=True), start=1):
            if 0 <= before <= n_words and before != word:
                assert after == before


def test_repair_heuristics():
    # several roots: keep the first, the others attach to it
    assert repair_tree([0, 0, 2]) == ([0, 1, 2], ("multiple roots",))
    # ... or the most confident one
    assert repair_tree([0, 0, 2], confidence=[0.1, 0.9, 0.5]) == ([2, 0, 2], ("multiple roots",))
    # invalid heads attach to the root word
    assert repair_tree([2, 0, 7]) == ([2, 0, 2], ("invalid head",))
    # no root: the first word with an invalid head becomes the root
    assert repair_tree([2, 3, -1]) == ([2, 3, 0], ("invalid head", "no root"))
    # no root and no invalid head: the first word on a cycle becomes the root
    assert repair_tree([2, 3, 2]) == ([2, 0, 2], ("no root",))
    # no root, with root scores: the best root candidate
    assert repair_tree([2, 3, 1], root_scores=[0.0, 0.0, 3.0]) == ([2, 3, 0], ("no root",))
    # a cycle: its lowest-numbered word attaches to the root word
    assert repair_tree([0, 3, 2, 3]) == ([0, 1, 2, 3], ("cycle",))
    # a self-loop is an invalid head
    assert repair_tree([0, 2]) == ([0, 1], ("invalid head",))
    with pytest.raises(ValueError, match="at least one word"):
        repair_tree([])


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=40, deadline=None)
@given(batch=st.lists(trees(max_words=8), min_size=1, max_size=4), data=st.data())
def test_decode_random_labels_always_gives_trees(encoding, batch, data):
    """Random label indices and random scores (|s| up to 1e4) always decode into trees; the
    well-formed flag says whether the best labels formed a tree before repair."""
    scheme = DepLabelScheme.from_sentences(batch, encoding=encoding)
    lengths = torch.tensor([len(tree.heads) for tree in batch])
    upos_ids = scheme.upos_ids([tree.upos for tree in batch])
    max_len = int(lengths.max())
    label_ids = torch.tensor(
        data.draw(
            st.lists(
                st.lists(st.integers(0, scheme.n_labels - 1), min_size=max_len, max_size=max_len),
                min_size=len(batch),
                max_size=len(batch),
            )
        )
    )
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    scale = data.draw(st.sampled_from((1.0, 1e4)))
    scores = torch.randn(len(batch), max_len, scheme.n_labels, generator=generator) * scale
    for predictions in (label_ids, scores):
        decoded = scheme.decode(predictions, lengths, upos_ids)
        best = predictions if predictions.dim() == 2 else predictions.argmax(-1)
        for b, (tree, result) in enumerate(zip(batch, decoded, strict=True)):
            n_words = len(tree.heads)
            assert len(result.heads) == len(result.relations) == n_words
            assert tree_problem(list(result.heads)) is None
            assert set(result.relations) <= set(scheme.relations)
            raw = [
                head_of(scheme.labels[label].head_code, word, n_words, tree.upos, encoding=encoding)
                for word, label in enumerate(best[b, :n_words].tolist(), start=1)
            ]
            assert result.well_formed == (tree_problem(raw) is None)
            if result.well_formed:
                assert list(result.heads) == raw


def test_decode_with_scores_uses_next_best_valid_label():
    tree = Tree([2, 0, 2], ["nsubj", "root", "obj"], ["NOUN", "VERB", "NOUN"])
    scheme = DepLabelScheme.from_sentences([tree], encoding="offset")
    invalid_for_word_3 = scheme.index(DepLabel(1, None, "nsubj"))  # word 3 + 1 is outside
    scores = torch.full((1, 3, scheme.n_labels), -5.0)
    gold = scheme.encode(tree.heads, tree.relations)
    scores[0, torch.arange(3), torch.tensor(gold)] = 1.0
    scores[0, 2, invalid_for_word_3] = 9.0
    result = scheme.decode(scores, torch.tensor([3]))[0]
    assert list(result.heads) == tree.heads and list(result.relations) == tree.relations
    assert result.problems == ("invalid head",) and not result.well_formed


def test_decode_repaired_root_gets_root_relation():
    tree = Tree([2, 0], ["nsubj", "root"], ["NOUN", "VERB"])
    scheme = DepLabelScheme.from_sentences(
        [tree, Tree([0, 1], ["root", "obj"], ["NOUN", "VERB"])], encoding="offset"
    )
    # both words point at each other: no root; the first word on the cycle becomes the root
    ids = torch.tensor(
        [[scheme.index(DepLabel(1, None, "nsubj")), scheme.index(DepLabel(-1, None, "obj"))]]
    )
    result = scheme.decode(ids, torch.tensor([2]))[0]
    assert result.heads == (0, 1) and result.relations == ("root", "obj")
    assert result.problems == ("no root",)
    # with scores, the root is the word with the best root label, re-attached words take the best
    # label that denotes their new head
    scores = torch.full((1, 2, scheme.n_labels), -10.0)
    scores[0, 0, scheme.index(DepLabel(1, None, "nsubj"))] = 5.0
    scores[0, 1, scheme.index(DepLabel(-1, None, "obj"))] = 5.0
    scores[0, 1, scheme.index(DepLabel(0, None, "root"))] = 1.0
    result = scheme.decode(scores, torch.tensor([2]))[0]
    assert result.heads == (2, 0) and result.relations == ("nsubj", "root")


def test_decode_validates():
    tree = Tree([2, 0], ["nsubj", "root"], ["NOUN", "VERB"])
    scheme = DepLabelScheme.from_sentences([tree], encoding="pos")
    lengths = torch.tensor([2])
    upos_ids = scheme.upos_ids([tree.upos])
    with pytest.raises(ValueError, match="label indices must lie in"):
        scheme.decode(torch.tensor([[0, 7]]), lengths, upos_ids)
    with pytest.raises(ValueError, match="n_labels=2"):
        scheme.decode(torch.zeros(1, 2, 3), lengths, upos_ids)
    with pytest.raises(ValueError, match="predictions must be"):
        scheme.decode(torch.zeros(1, 2), lengths, upos_ids)
    with pytest.raises(NumericalError, match="NaN"):
        scheme.decode(torch.full((1, 2, 2), float("nan")), lengths, upos_ids)
    with pytest.raises(ValueError, match="needs upos_ids"):
        scheme.label_heads(lengths)
    with pytest.raises(ValueError, match="lengths"):
        scheme.decode(torch.zeros(1, 2, dtype=torch.long), torch.tensor([3]), upos_ids)
    # padding may hold anything, e.g. -1
    assert scheme.decode(torch.tensor([[0, 1, -1]]), lengths, scheme.upos_ids([tree.upos], 3))


# ----------------------------------------------------------------------- the real treebank


def _turkish_treebank_installed() -> bool:
    try:
        importlib.metadata.distribution("turkish-treebanks")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _turkish_treebank_installed(), reason="turkish-treebanks is not installed")
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_turkish_dev_trees_decode_exactly(encoding):
    from structkd.data.conllu_io import load_turkish_treebank

    scheme = DepLabelScheme.from_sentences(load_turkish_treebank("train"), encoding=encoding)
    dev = [s for s in load_turkish_treebank("dev") if scheme.coverage([s]) == 1.0]
    assert len(dev) > 400
    dev.sort(key=len)  # length-sorted batches: little padding
    for start in range(0, len(dev), 64):
        batch = dev[start : start + 64]
        lengths = torch.tensor([len(s) for s in batch])
        upos_ids = scheme.upos_ids([s.upos for s in batch])
        label_ids = _pad([scheme.encode(s.heads, s.relations, s.upos) for s in batch])
        for sentence, result in zip(
            batch, scheme.decode(label_ids, lengths, upos_ids), strict=True
        ):
            assert result.heads == sentence.heads and result.relations == sentence.relations
            assert result.well_formed
