"""Batched tree decoding and repair in numpy (``structkd.serve.trees``) against a simple
per-sentence reference: the implementation the project had before (one sentence at a time, a
Python cycle search), kept here as the specification."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.data.conllu_io import tree_problem
from structkd.data.dep_encodings import ENCODINGS, DepLabel, DepLabelScheme, head_of
from structkd.serve.trees import (
    PROBLEMS,
    decode_scores,
    head_probabilities,
    is_tree_batch,
    log_softmax,
    problem_names,
    repair_trees,
)

TAGS = ("NOUN", "VERB", "ADJ")
RELATIONS = ("nsubj", "obj", "amod")


# ------------------------------------------------------------------------------- the reference


def _cycle_words(heads: list[int]) -> list[int]:
    """Words of one cycle of ``heads`` (entries in ``0..n``, ``0`` = root), or ``[]``."""
    state = [0] * (len(heads) + 1)  # 0 unvisited, 1 on the current walk, 2 known to reach 0
    state[0] = 2
    for start in range(1, len(heads) + 1):
        walk = []
        word = start
        while state[word] == 0:
            state[word] = 1
            walk.append(word)
            word = heads[word - 1]
        if state[word] == 1:
            return walk[walk.index(word) :]
        for visited in walk:
            state[visited] = 2
    return []


def reference_repair(heads, confidence=None, root_scores=None) -> tuple[list[int], tuple]:
    """One sentence: the rules of ``structkd.serve.trees`` as a sequential algorithm."""
    n_words = len(heads)
    fixed = [h if 0 <= h <= n_words and h != word else -1 for word, h in enumerate(heads, 1)]
    problems = []
    invalid = [word for word, head in enumerate(fixed, start=1) if head < 0]
    if invalid:
        problems.append("invalid head")
    roots = [word for word, head in enumerate(fixed, start=1) if head == 0]
    if len(roots) > 1:
        problems.append("multiple roots")
        if confidence is not None:
            root = max(roots, key=lambda word: (confidence[word - 1], -word))
        else:
            root = roots[0]
    elif roots:
        root = roots[0]
    else:
        problems.append("no root")
        if root_scores is not None:
            root = max(range(1, n_words + 1), key=lambda word: (root_scores[word - 1], -word))
        elif invalid:
            root = invalid[0]
        else:
            root = min(_cycle_words(fixed))
    for word in range(1, n_words + 1):
        if word == root:
            fixed[word - 1] = 0
        elif fixed[word - 1] <= 0:
            fixed[word - 1] = root
    cycle = _cycle_words(fixed)
    if cycle:
        problems.append("cycle")
    while cycle:
        fixed[min(cycle) - 1] = root
        cycle = _cycle_words(fixed)
    return fixed, tuple(problems)


def reference_decode(scheme: DepLabelScheme, scores: np.ndarray, label_heads: np.ndarray):
    """One sentence: ``scores`` ``[n, L]``, ``label_heads`` ``[n, L]`` -> ``(heads, relation
    names, problems)``, word by word."""
    arrays = scheme.arrays
    chosen = []
    for word_scores, word_heads in zip(scores, label_heads, strict=True):
        top = int(np.argmax(word_scores))
        if word_heads[top] >= 0 or not (word_heads >= 0).any():
            chosen.append(top)
        else:
            chosen.append(int(np.argmax(np.where(word_heads >= 0, word_scores, -np.inf))))
    invalid_top = any(label_heads[i, int(np.argmax(s))] < 0 for i, s in enumerate(scores))
    heads = [int(label_heads[i, label]) for i, label in enumerate(chosen)]
    confidence = [float(scores[i, label]) for i, label in enumerate(chosen)]
    root_scores = None
    if arrays.root_labels.any():
        root_scores = [float(s[arrays.root_labels].max()) for s in scores]
    fixed, problems = reference_repair(heads, confidence, root_scores)
    if invalid_top and "invalid head" not in problems:
        problems = ("invalid head", *problems)
    relations = [scheme.relations[arrays.label_relation[label]] for label in chosen]
    for word, (before, after) in enumerate(zip(heads, fixed, strict=True)):
        if before != after:
            candidates = label_heads[word] == after
            if not candidates.any():
                candidates = arrays.root_labels if after == 0 else ~arrays.root_labels
            if not candidates.any():
                candidates = np.ones_like(candidates)
            best = int(np.argmax(np.where(candidates, scores[word], -np.inf)))
            relations[word] = scheme.labels[best].relation
    return fixed, relations, problems


# ------------------------------------------------------------------------------- helpers


def _decode(scheme: DepLabelScheme, scores: np.ndarray, lengths, upos_ids=None):
    code_heads = scheme.code_head_array(lengths, upos_ids, max_len=scores.shape[1])
    arrays = scheme.arrays
    return decode_scores(
        scores,
        code_heads,
        lengths,
        label_code=arrays.label_code,
        label_relation=arrays.label_relation,
        root_labels=arrays.root_labels,
    )


def _padded(rows: list[list[float]], fill: float) -> np.ndarray:
    width = max(len(row) for row in rows)
    return np.array([list(row) + [fill] * (width - len(row)) for row in rows])


@st.composite
def trees(draw, min_words: int = 1, max_words: int = 9):
    """A random tree ``(heads, relations, upos)``: words attached in a random order, each to the
    root or to a word attached before it."""
    n_words = draw(st.integers(min_words, max_words))
    order = draw(st.permutations(range(1, n_words + 1)))
    heads = [0] * n_words
    for rank, word in enumerate(order):
        if rank > 0:
            heads[word - 1] = order[draw(st.integers(0, rank - 1))]
    upos = draw(st.lists(st.sampled_from(TAGS), min_size=n_words, max_size=n_words))
    relations = ["root" if head == 0 else draw(st.sampled_from(RELATIONS)) for head in heads]
    return _Tree(heads, relations, upos)


class _Tree:
    def __init__(self, heads, relations, upos):
        self.heads, self.relations, self.upos = heads, relations, upos


head_lists = st.lists(st.lists(st.integers(-2, 10), min_size=1, max_size=9), min_size=1, max_size=6)


# ------------------------------------------------------------------------------- repair


@settings(max_examples=300, deadline=None)
@given(rows=head_lists, data=st.data())
def test_repair_equals_the_reference_and_gives_trees(rows, data):
    """Random head lists (invalid heads, several roots, none, cycles), with or without scores:
    the batch is repaired exactly as the reference repairs each sentence."""
    lengths = np.array([len(row) for row in rows])
    heads = _padded(rows, -1).astype(np.int64)
    use_scores = data.draw(st.booleans())
    confidence = root_scores = None
    if use_scores:
        value = st.floats(-1e4, 1e4) | st.sampled_from([0.0, 1.0, -np.inf])
        confidence = _padded(
            [data.draw(st.lists(value, min_size=len(row), max_size=len(row))) for row in rows], 0.0
        )
        root_scores = _padded(
            [data.draw(st.lists(value, min_size=len(row), max_size=len(row))) for row in rows], 0.0
        )
    fixed, problems = repair_trees(heads, lengths, confidence=confidence, root_scores=root_scores)
    names = problem_names(problems)
    for b, row in enumerate(rows):
        n = len(row)
        expected = reference_repair(
            row,
            None if confidence is None else confidence[b, :n].tolist(),
            None if root_scores is None else root_scores[b, :n].tolist(),
        )
        assert (fixed[b, :n].tolist(), names[b]) == expected
        assert (fixed[b, n:] == -1).all()
        assert tree_problem(fixed[b, :n].tolist()) is None
        assert (names[b] == ()) == (tree_problem(row) is None)
    assert is_tree_batch(fixed, lengths).all()
    assert is_tree_batch(heads, lengths).tolist() == [tree_problem(row) is None for row in rows]


def test_repair_heuristics():
    def repair(row, **scores):
        scores = {key: np.array([value]) for key, value in scores.items()}
        fixed, problems = repair_trees(np.array([row]), [len(row)], **scores)
        return fixed[0].tolist(), problem_names(problems)[0]

    # several roots: keep the first, the others attach to it; or the most confident one
    assert repair([0, 0, 2]) == ([0, 1, 2], ("multiple roots",))
    assert repair([0, 0, 2], confidence=[0.1, 0.9, 0.5]) == ([2, 0, 2], ("multiple roots",))
    # invalid heads attach to the root word
    assert repair([2, 0, 7]) == ([2, 0, 2], ("invalid head",))
    # no root: the first word with an invalid head becomes the root
    assert repair([2, 3, -1]) == ([2, 3, 0], ("invalid head", "no root"))
    # no root and no invalid head: the lowest word of the cycle word 1 leads into
    assert repair([2, 3, 2]) == ([2, 0, 2], ("no root",))
    assert repair([3, 1, 4, 3]) == ([3, 1, 0, 3], ("no root",))
    # no root, with root scores: the best root candidate
    assert repair([2, 3, 1], root_scores=[0.0, 0.0, 3.0]) == ([2, 3, 0], ("no root",))
    # a cycle: its lowest word attaches to the root word; two cycles at once
    assert repair([0, 3, 2, 3]) == ([0, 1, 2, 3], ("cycle",))
    assert repair([0, 3, 2, 5, 4]) == ([0, 1, 2, 1, 4], ("cycle",))
    # a self-loop is an invalid head
    assert repair([0, 2]) == ([0, 1], ("invalid head",))


def test_repair_validates():
    with pytest.raises(ValueError, match=r"lengths must lie in 1\.\.2"):
        repair_trees(np.array([[0, 1]]), [3])
    with pytest.raises(ValueError, match="integers"):
        repair_trees(np.array([[0.0, 1.0]]), [2])
    with pytest.raises(ValueError, match="confidence must have shape"):
        repair_trees(np.array([[0, 1]]), [2], confidence=np.zeros((1, 3)))


# ------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=60, deadline=None)
@given(batch=st.lists(trees(max_words=8), min_size=1, max_size=4), data=st.data())
def test_decode_equals_the_reference(encoding, batch, data):
    """Random label scores (scales 1 and 1e4, -inf entries, favoured root labels) decode exactly
    as the reference decodes each sentence: heads, relations and problems; the trees are trees
    and the flag says whether the best labels formed one."""
    scheme = DepLabelScheme.from_sentences(batch, encoding=encoding)
    lengths = np.array([len(tree.heads) for tree in batch])
    max_len = int(lengths.max()) + data.draw(st.integers(0, 1))  # maybe a padding column
    upos_ids = scheme.upos_array([tree.upos for tree in batch], max_len)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    scores = rng.normal(size=(len(batch), max_len, scheme.n_labels))
    scores *= data.draw(st.sampled_from((1.0, 1e4)))
    if data.draw(st.booleans()):
        scores[..., scheme.arrays.root_labels] += 3.0
    if data.draw(st.booleans()):
        scores[rng.random(scores.shape) < 0.2] = -np.inf
    decoded = _decode(scheme, scores, lengths, upos_ids if encoding == "pos" else None)
    names = problem_names(decoded.problems)
    best = scores.argmax(-1)
    for b, tree in enumerate(batch):
        n = len(tree.heads)
        label_heads = np.array(
            [
                [
                    head_of(label.head_code, word, n, tree.upos, encoding=encoding)
                    for label in scheme.labels
                ]
                for word in range(1, n + 1)
            ]
        )
        heads, relations, problems = reference_decode(scheme, scores[b, :n], label_heads)
        assert decoded.heads[b, :n].tolist() == heads
        assert [scheme.relations[r] for r in decoded.relations[b, :n]] == relations
        assert names[b] == problems
        assert (decoded.heads[b, n:] == -1).all() and (decoded.relations[b, n:] == -1).all()
        assert tree_problem(heads) is None
        raw = [int(label_heads[i, best[b, i]]) for i in range(n)]
        assert decoded.well_formed[b] == (tree_problem(raw) is None)


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=40, deadline=None)
@given(batch=st.lists(trees(), min_size=1, max_size=5))
def test_gold_labels_decode_exactly(encoding, batch):
    scheme = DepLabelScheme.from_sentences(batch, encoding=encoding)
    lengths = np.array([len(tree.heads) for tree in batch])
    gold = _padded([scheme.encode(t.heads, t.relations, t.upos) for t in batch], 0).astype(int)
    scores = np.where(np.arange(scheme.n_labels) == gold[..., None], 5.0, 0.0)
    upos_ids = scheme.upos_array([tree.upos for tree in batch])
    decoded = _decode(scheme, scores, lengths, upos_ids if encoding == "pos" else None)
    assert decoded.well_formed.all() and not decoded.problems.any()
    for b, tree in enumerate(batch):
        n = len(tree.heads)
        assert decoded.heads[b, :n].tolist() == tree.heads
        assert [scheme.relations[r] for r in decoded.relations[b, :n]] == tree.relations


def test_decode_uses_the_next_best_valid_label():
    tree = _Tree([2, 0, 2], ["nsubj", "root", "obj"], ["NOUN", "VERB", "NOUN"])
    scheme = DepLabelScheme.from_sentences([tree], encoding="offset")
    scores = np.full((1, 3, scheme.n_labels), -5.0)
    scores[0, np.arange(3), scheme.encode(tree.heads, tree.relations)] = 1.0
    scores[0, 2, scheme.index(DepLabel(1, None, "nsubj"))] = 9.0  # word 3 + 1 is outside
    decoded = _decode(scheme, scores, [3])
    assert decoded.heads[0].tolist() == tree.heads
    assert [scheme.relations[r] for r in decoded.relations[0]] == tree.relations
    assert problem_names(decoded.problems) == [("invalid head",)]
    assert not decoded.well_formed[0]


def test_decode_repaired_words_take_the_best_label_of_their_new_head():
    scheme = DepLabelScheme.from_sentences(
        [_Tree([2, 0], ["nsubj", "root"], ["NOUN", "VERB"]), _Tree([0, 1], ["root", "obj"], [])],
        encoding="offset",
    )
    # the words point at each other: no root; the best root label is word 2's
    scores = np.full((1, 2, scheme.n_labels), -10.0)
    scores[0, 0, scheme.index(DepLabel(1, None, "nsubj"))] = 5.0
    scores[0, 1, scheme.index(DepLabel(-1, None, "obj"))] = 5.0
    scores[0, 1, scheme.index(DepLabel(0, None, "root"))] = 1.0
    decoded = _decode(scheme, scores, [2])
    assert decoded.heads[0].tolist() == [2, 0]
    assert [scheme.relations[r] for r in decoded.relations[0]] == ["nsubj", "root"]
    assert problem_names(decoded.problems) == [("no root",)]


def test_decode_validates():
    scheme = DepLabelScheme.from_sentences(
        [_Tree([2, 0], ["nsubj", "root"], [])], encoding="offset"
    )
    arrays = scheme.arrays
    tables = {
        "label_code": arrays.label_code,
        "label_relation": arrays.label_relation,
        "root_labels": arrays.root_labels,
    }
    code_heads = scheme.code_head_array([2], max_len=2)
    with pytest.raises(ValueError, match="NaN"):
        decode_scores(np.full((1, 2, 2), np.nan), code_heads, [2], **tables)
    with pytest.raises(ValueError, match=r"label_code must have shape \[n_labels=3\]"):
        decode_scores(np.zeros((1, 2, 3)), code_heads, [2], **tables)
    with pytest.raises(ValueError, match="code_heads must have shape"):
        decode_scores(np.zeros((1, 2, 2)), code_heads[:, :1], [2], **tables)
    with pytest.raises(ValueError, match="lengths"):
        decode_scores(np.zeros((1, 2, 2)), code_heads, [3], **tables)
    # NaN at padding is not read
    scores = np.zeros((1, 3, 2))
    scores[0, 2] = np.nan
    assert decode_scores(scores, scheme.code_head_array([2], max_len=3), [2], **tables)


def test_head_probabilities_sum_the_labels_of_the_head():
    scheme = DepLabelScheme(
        [
            DepLabel(0, None, "root"),
            DepLabel(1, None, "a"),
            DepLabel(1, None, "b"),
            DepLabel(-1, None, "a"),
        ],
        encoding="offset",
    )
    probabilities = np.array([[[0.1, 0.5, 0.3, 0.1], [0.2, 0.3, 0.3, 0.2], [0.4, 0.1, 0.1, 0.4]]])
    code_heads = scheme.code_head_array([2], max_len=3)
    heads = np.array([[2, 0, -1]])  # word 1 -> 2 (labels 1, 2), word 2 -> root (label 0)
    found = head_probabilities(
        np.log(probabilities), code_heads, heads, label_code=scheme.arrays.label_code
    )
    assert found[0].tolist() == pytest.approx([0.8, 0.2, 0.0])
    # a head no label denotes (word 2 -> word 2 + 2) has probability 0
    assert head_probabilities(
        np.log(probabilities[:, :2]),
        code_heads[:, :2],
        np.array([[0, 4]]),
        label_code=scheme.arrays.label_code,
    )[0].tolist() == pytest.approx([0.1, 0.0])


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=30, deadline=None)
@given(batch=st.lists(trees(max_words=7), min_size=1, max_size=4), data=st.data())
def test_head_probabilities_equal_the_sum_over_labels(encoding, batch, data):
    scheme = DepLabelScheme.from_sentences(batch, encoding=encoding)
    lengths = np.array([len(tree.heads) for tree in batch])
    upos_ids = scheme.upos_array([tree.upos for tree in batch])
    code_heads = scheme.code_head_array(lengths, upos_ids if encoding == "pos" else None)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    log_probs = log_softmax(rng.normal(size=(*code_heads.shape[:2], scheme.n_labels)) * 3)
    heads = np.where(
        np.arange(code_heads.shape[1]) < lengths[:, None],
        rng.integers(-1, lengths.max() + 2, size=code_heads.shape[:2]),
        -1,
    )
    found = head_probabilities(log_probs, code_heads, heads, label_code=scheme.arrays.label_code)
    label_heads = code_heads[:, :, scheme.arrays.label_code]
    expected = np.where(
        (label_heads == heads[:, :, None]) & (heads[:, :, None] >= 0), np.exp(log_probs), 0.0
    ).sum(2)
    assert np.allclose(found, expected, atol=1e-12)


def test_problem_names_and_log_softmax():
    flags = np.array([[False] * 4, [True, False, False, True], [False, True, False, False]])
    assert problem_names(flags) == [(), ("invalid head", "cycle"), ("no root",)]
    assert len(PROBLEMS) == 4
    scores = np.array([[1.0, 2.0, -np.inf], [1000.0, 1000.0, 0.0]])
    assert np.exp(log_softmax(scores)).sum(-1) == pytest.approx([1.0, 1.0])


# ----------------------------------------------------------------------- the real treebank


def _turkish_treebank_installed() -> bool:
    try:
        importlib.metadata.distribution("turkish-treebanks")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _turkish_treebank_installed(), reason="turkish-treebanks is not installed")
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_turkish_predictions_decode_as_the_reference(encoding):
    """Noisy gold label scores on every TWT dev and test sentence (most are ill-formed before
    repair at the larger noise): the batched decoding equals the reference on each."""
    from structkd.data.conllu_io import load_turkish_treebank

    scheme = DepLabelScheme.from_sentences(load_turkish_treebank("train"), encoding=encoding)
    sentences = sorted(load_turkish_treebank("dev") + load_turkish_treebank("test"), key=len)
    rng = np.random.default_rng(0)
    ill_formed = 0
    for start in range(0, len(sentences), 64):
        batch = sentences[start : start + 64]
        lengths = np.array([len(s) for s in batch])
        upos_ids = scheme.upos_array([s.upos for s in batch])
        code_heads = scheme.code_head_array(lengths, upos_ids if encoding == "pos" else None)
        gold = _padded([scheme.known_labels(s.heads, s.relations, s.upos) for s in batch], -1)
        noise = (0.5, 2.0, 4.0)[start // 64 % 3]
        scores = rng.normal(size=(len(batch), int(lengths.max()), scheme.n_labels)) * noise
        scores += 4.0 * (np.arange(scheme.n_labels) == gold[..., None])
        scores = log_softmax(scores)
        decoded = _decode(scheme, scores, lengths, upos_ids if encoding == "pos" else None)
        names = problem_names(decoded.problems)
        label_heads = code_heads[:, :, scheme.arrays.label_code]
        for b, sentence in enumerate(batch):
            n = len(sentence)
            heads, relations, problems = reference_decode(scheme, scores[b, :n], label_heads[b, :n])
            assert decoded.heads[b, :n].tolist() == heads
            assert [scheme.relations[r] for r in decoded.relations[b, :n]] == relations
            assert names[b] == problems
        ill_formed += int((~decoded.well_formed).sum())
    assert ill_formed > 300  # the repair was exercised
