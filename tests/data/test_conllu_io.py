"""CoNLL-U reading, validation, writing back, projectivity, and the Turkish Web Treebank."""

from __future__ import annotations

import importlib.metadata
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.data import conllu_io
from structkd.data.conll import DataError
from structkd.data.conllu_io import (
    DepSentence,
    format_conllu,
    is_projective,
    parse_conllu,
    projective_subset,
    read_conllu,
    tree_problem,
    treebank_statistics,
    with_predictions,
    write_conllu,
)
from structkd.data.datasets import MissingDataPackageError

# A sentence with a multiword token (2-3), an empty node (3.1), comments with and without "=",
# repeated FEATS keys (kept as written), then a plain second sentence.
FIXTURE = (
    "# newdoc id = doc1\n"
    "# sent_id = s1\n"
    "# text = Vámonos al mar\n"
    "# a free comment\n"
    "1\tVámonos\tir\tVERB\t_\tMood=Imp|Person=1|Person=2\t0\troot\t_\t_\n"
    "2-3\tal\t_\t_\t_\t_\t_\t_\t_\tSpaceAfter=No\n"
    "2\ta\ta\tADP\t_\t_\t4\tcase\t_\t_\n"
    "3\tel\tel\tDET\t_\tDefinite=Def\t4\tdet\t_\t_\n"
    "3.1\tva\tir\tVERB\t_\t_\t_\t_\t1:conj\t_\n"
    "4\tmar\tmar\tNOUN\t_\t_\t1\tobl\t4:obl\t_\n"
    "\n"
    "# sent_id = s2\n"
    "1\tHi\thi\tINTJ\t_\t_\t0\troot\t_\t_\n"
    "2\t!\t!\tPUNCT\t_\t_\t1\tpunct\t_\t_\n"
    "\n"
)


@pytest.fixture
def fixture_file(tmp_path):
    path = tmp_path / "fixture.conllu"
    path.write_text(FIXTURE, encoding="utf-8")
    return path


def test_read_words_exclude_multiword_tokens_and_empty_nodes(fixture_file):
    first, second = read_conllu(fixture_file)
    assert first.words == ("Vámonos", "a", "el", "mar")
    assert first.upos == ("VERB", "ADP", "DET", "NOUN")
    assert first.heads == (0, 4, 4, 1)
    assert first.relations == ("root", "case", "det", "obl")
    assert first.source == str(fixture_file)
    assert first.start_line == 1
    assert first.word_lines == (5, 7, 8, 10)
    assert first.sent_id == "s1"
    assert len(first) == 4 and len(first.tokens) == 6  # the MWT and the empty node stay in tokens
    assert second.words == ("Hi", "!") and second.start_line == 12 and second.word_lines == (13, 14)


def test_round_trip_is_exact(fixture_file, tmp_path):
    sentences = read_conllu(fixture_file)
    assert format_conllu(sentences) == FIXTURE
    out = tmp_path / "out.conllu"
    write_conllu(out, sentences)
    assert out.read_text(encoding="utf-8") == FIXTURE
    again = read_conllu(out)
    for old, new in zip(sentences, again, strict=True):
        assert (old.words, old.upos, old.heads, old.relations) == (
            new.words,
            new.upos,
            new.heads,
            new.relations,
        )
        assert old.tokens == new.tokens


def test_parse_handles_crlf_and_missing_final_blank_line():
    sentences = parse_conllu(FIXTURE.replace("\n", "\r\n").rstrip())
    assert [s.words for s in sentences] == [("Vámonos", "a", "el", "mar"), ("Hi", "!")]
    assert format_conllu(sentences) == FIXTURE


def test_write_predictions_replaces_only_head_and_deprel(fixture_file, tmp_path):
    sentences = read_conllu(fixture_file)
    heads = [[0, 1, 2, 3], [2, 0]]
    relations = [["root", "x", "y", "z"], ["dep", "root"]]
    out = tmp_path / "pred.conllu"
    write_conllu(out, sentences, heads, relations)
    written = out.read_text(encoding="utf-8").split("\n")
    original = FIXTURE.split("\n")
    assert len(written) == len(original)
    for old, new in zip(original, written, strict=True):
        old_cols, new_cols = old.split("\t"), new.split("\t")
        if len(old_cols) == 10 and old_cols[0].isdigit():
            assert old_cols[:6] + old_cols[8:] == new_cols[:6] + new_cols[8:]
        else:  # comments, blank lines, multiword tokens, empty nodes: untouched
            assert old == new
    predicted = read_conllu(out)
    assert [s.heads for s in predicted] == [(0, 1, 2, 3), (2, 0)]
    assert [list(s.relations) for s in predicted] == relations
    # the originals were not modified
    assert sentences[0].tokens[2]["head"] == 4


def test_write_predictions_from_padded_tensor(fixture_file):
    sentences = read_conllu(fixture_file)
    heads = torch.tensor([[-1, 0, 1, 2, 3], [-1, 2, 0, -1, -1]])  # [batch, max_len + 1]
    text = format_conllu(sentences, heads)
    assert [s.heads for s in parse_conllu(text)] == [(0, 1, 2, 3), (2, 0)]


@pytest.mark.parametrize(
    ("heads", "relations", "message"),
    [
        ([[0, 1, 2]], None, "one entry per sentence"),
        ([[0, 1, 2], [2, 0]], None, "4 entries"),
        ([[0, 1, 2, 9], [2, 0]], None, "0..4"),
        (None, [["a"] * 4, ["b"]], "2 entries"),
        (None, [["a"] * 4, ["b", "c\td"]], "tabs"),
    ],
)
def test_write_predictions_validates(fixture_file, heads, relations, message):
    sentences = read_conllu(fixture_file)
    with pytest.raises(ValueError, match=message):
        format_conllu(sentences, heads, relations)


def _sentence(rows: list[str]) -> str:
    return "".join(row + "\n" for row in rows) + "\n"


ROOT_ROW = "1\ta\ta\tX\t_\t_\t0\troot\t_\t_"
GOOD = [ROOT_ROW, "2\tb\tb\tX\t_\t_\t1\tdep\t_\t_"]


@pytest.mark.parametrize(
    ("rows", "bad_line", "problem"),
    [
        (["1\ta\ta\tX\t_\t_\t0\troot\t_"], 4, "expected 10 tab-separated columns, found 9"),
        (["1 a a X _ _ 0 root _ _"], 4, "found 1"),
        (["1\ta\ta\tX\t_\t_\t0\troot\t_\t_\t_"], 4, "found 11"),
        ([ROOT_ROW, "2\tb\tb\tX\t_\t_\t3\tdep\t_\t_"], 5, "out of range"),
        ([ROOT_ROW, "2\tb\tb\tX\t_\t_\t-1\tdep\t_\t_"], 5, "out of range"),
        (["1\ta\ta\tX\t_\t_\t2\tdep\t_\t_", "2\tb\tb\tX\t_\t_\t1\tdep\t_\t_"], 4, "no root"),
        (
            [
                ROOT_ROW,
                "2\tb\tb\tX\t_\t_\t3\tdep\t_\t_",
                "3\tc\tc\tX\t_\t_\t2\tdep\t_\t_",
            ],
            5,
            "cycle through words [2, 3]",
        ),
        ([ROOT_ROW, "2\tb\tb\tX\t_\t_\t2\tdep\t_\t_"], 5, "own head"),
        (
            [ROOT_ROW, "2\tb\tb\tX\t_\t_\t0\troot\t_\t_"],
            5,
            "several roots",
        ),
        (
            [ROOT_ROW, "3\tb\tb\tX\t_\t_\t1\tdep\t_\t_"],
            5,
            "out of sequence",
        ),
        ([ROOT_ROW, "x\tb\tb\tX\t_\t_\t1\tdep\t_\t_"], 5, "invalid ID"),
        ([ROOT_ROW, "2\tb\tb\tX\t_\t_\t_\tdep\t_\t_"], 5, "no HEAD"),
        ([ROOT_ROW, "2\tb\tb\tX\t_\t_\tz\tdep\t_\t_"], 5, "invalid HEAD"),
        ([ROOT_ROW, "2\tb\tb\tX\t_\t_\t1\t_\t_\t_"], 5, "no DEPREL"),
        (["1-2\tab\t_\t_\t_\t_\t_\t_\t_\t_"], 4, "no words"),
    ],
)
def test_malformed_sentence_names_file_line_and_problem(tmp_path, rows, bad_line, problem):
    # a good sentence first (lines 1-2, blank line 3), then the bad one from line 4
    text = _sentence(GOOD) + _sentence(rows)
    path = tmp_path / "bad.conllu"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_conllu(path)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.path == str(path)
    assert error.line == bad_line
    assert problem in error.problem
    assert str(path) in str(error) and f"line {bad_line}" in str(error)


def test_several_roots_allowed_on_request():
    text = _sentence(["1\ta\ta\tX\t_\t_\t0\troot\t_\t_", "2\tb\tb\tX\t_\t_\t0\troot\t_\t_"])
    assert parse_conllu(text, single_root=False)[0].heads == (0, 0)
    with pytest.raises(DataError, match="several roots"):
        parse_conllu(text)


# --------------------------------------------------------------------------------- tree checks


def _reaches_root(heads: list[int], word: int) -> bool:
    for _ in range(len(heads) + 1):
        if word == 0:
            return True
        word = heads[word - 1]
    return word == 0


def _is_tree_brute(heads: list[int]) -> bool:
    n = len(heads)
    if any(not 0 <= head <= n for head in heads):
        return False
    return sum(head == 0 for head in heads) == 1 and all(
        _reaches_root(heads, word) for word in range(1, n + 1)
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-1, 7), min_size=1, max_size=6))
def test_tree_problem_agrees_with_brute_force(heads):
    assert (tree_problem(heads) is None) == _is_tree_brute(heads)


def _dominates(heads: list[int], ancestor: int, word: int) -> bool:
    while word != 0:
        if word == ancestor:
            return True
        word = heads[word - 1]
    return ancestor == 0


def _is_projective_brute(heads: list[int]) -> bool:
    """Classic definition: every arc's head dominates every word strictly between its ends."""
    for dep, head in enumerate(heads, start=1):
        low, high = sorted((head, dep))
        if not all(_dominates(heads, head, word) for word in range(low + 1, high)):
            return False
    return True


def test_is_projective_agrees_with_dominance_definition_on_all_small_trees():
    checked = non_projective = 0
    for n in range(1, 6):
        for heads in itertools.product(range(n + 1), repeat=n):
            if _is_tree_brute(list(heads)):
                checked += 1
                expected = _is_projective_brute(list(heads))
                non_projective += not expected
                assert is_projective(heads) == expected, heads
    assert checked == 1 + 2 + 9 + 64 + 625  # n^(n-1) single-root trees
    assert non_projective > 0


def test_is_projective_examples_and_subset(fixture_file):
    assert is_projective([2, 0, 2])
    assert not is_projective([3, 4, 0, 3])  # 1<-3 crosses 2<-4
    assert not is_projective([0, 4, 1, 1])  # 1->3 crosses 4->2
    assert not is_projective([3, 0, 2])  # 1<-3 crosses the root arc of word 2
    sentences = read_conllu(fixture_file)
    assert projective_subset(sentences) == sentences
    assert all(s.is_projective for s in sentences)


# ------------------------------------------------------------------ the Turkish Web Treebank


def _turkish_treebank_installed() -> bool:
    try:
        importlib.metadata.distribution("turkish-treebanks")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


requires_twt = pytest.mark.skipif(
    not _turkish_treebank_installed(), reason="turkish-treebanks==1.0.0 is not installed"
)


@requires_twt
def test_turkish_treebank_splits_and_statistics():
    splits = {split: conllu_io.load_turkish_treebank(split) for split in ("train", "dev", "test")}
    assert {split: len(s) for split, s in splits.items()} == {
        "train": 3881,
        "dev": 485,
        "test": 485,
    }
    every = splits["train"] + splits["dev"] + splits["test"]
    stats = treebank_statistics(every)
    assert stats["sentences"] == 4851
    assert stats["words"] == 81370
    assert stats["upos"] == 14
    assert stats["relations"] == 44
    assert stats["non_projective"] == 315  # 6.5%
    assert stats["multiword_tokens"] == 0 and stats["empty_nodes"] == 0
    assert [len(s) for s in splits.values()] == [3881, 485, 485]
    # the split rule: web file first, then wiki; sentence i of a file -> train if i % 10 < 8
    web = read_conllu(conllu_io.turkish_treebank_paths()[0])
    assert splits["dev"][0].tokens == web[8].tokens
    assert splits["test"][0].tokens == web[9].tokens
    assert splits["train"][8].tokens == web[10].tokens
    assert isinstance(every[0], DepSentence)
    assert len(projective_subset(splits["train"])) == 3881 - 251


@requires_twt
def test_turkish_treebank_round_trips_exactly():
    for path in conllu_io.turkish_treebank_paths():
        text = path.read_text(encoding="utf-8")
        assert format_conllu(read_conllu(path)).rstrip("\n") == text.rstrip("\n")


def test_turkish_treebank_missing_package_gives_pip_command(monkeypatch):
    monkeypatch.setattr(conllu_io, "TURKISH_TREEBANK_PACKAGE", "no-such-treebank-package")
    with pytest.raises(MissingDataPackageError, match="pip install --no-deps"):
        conllu_io.load_turkish_treebank("train")


def test_turkish_treebank_bad_split():
    with pytest.raises(ValueError, match="split must be one of"):
        conllu_io.load_turkish_treebank("validation")


def test_with_predictions_keeps_original(fixture_file):
    sentence = read_conllu(fixture_file)[1]
    copied = with_predictions(sentence, [2, 0], ["dep", "root"])
    assert [t["head"] for t in copied] == [2, 0]
    assert sentence.heads == (0, 1) and [t["head"] for t in sentence.tokens] == [0, 1]


@requires_twt
def test_turkish_treebank_named_data_sets():
    from structkd.data.datasets import load_dataset

    dev = load_dataset("twt-tr:dev")
    assert len(dev) == 485
    assert dev == conllu_io.load_turkish_treebank("dev")


# ------------------------------------------------------------- issue 10: encodings, ranges, `_`


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.conllu"
    path.write_bytes(b"\xef\xbb\xbf" + FIXTURE.encode("utf-8"))
    sentences = read_conllu(path)
    assert [s.words for s in sentences] == [s.words for s in parse_conllu(FIXTURE)]
    assert parse_conllu("\ufeff" + FIXTURE)[0].tokens.metadata["newdoc id"] == "doc1"


def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path):
    path = tmp_path / "latin1.conllu"
    latin1 = "1\tMünchen\tx\tX\t_\t_\t0\troot\t_\t_\n".encode("latin-1")
    path.write_bytes(_sentence(GOOD).encode() + latin1)
    with pytest.raises(DataError) as caught:
        read_conllu(path)
    assert (caught.value.path, caught.value.line) == (str(path), 4)
    assert "not valid UTF-8" in caught.value.problem


def _row(token_id: str, head: str = "_", relation: str = "_") -> str:
    return f"{token_id}\tw{token_id}\t_\tX\t_\t_\t{head}\t{relation}\t_\t_"


WORD_2 = _row("2", "1", "dep")
MWT = _row("2-3")


@pytest.mark.parametrize(
    ("rows", "bad_line", "problem"),
    [
        # a multiword token past the last word, or not where its first word is
        ([ROOT_ROW, _row("2-3"), WORD_2], 5, "reaches past the last word, 2"),
        ([ROOT_ROW, _row("2-9"), WORD_2], 5, "reaches past the last word, 2"),
        ([ROOT_ROW, _row("5-6"), WORD_2], 5, "from the next word, 2"),
        ([_row("1-2"), ROOT_ROW, WORD_2, _row("2-3")], 7, "from the next word, 3"),
        ([_row("1-1"), ROOT_ROW], 4, "two or more words"),
        # an empty node after a word the sentence does not have (yet)
        ([ROOT_ROW, _row("7.1")], 5, "must follow word 7"),
        ([_row("1.1"), ROOT_ROW], 4, "must follow word 1"),
    ],
)
def test_ranges_and_empty_nodes_outside_the_sentence_are_refused(rows, bad_line, problem):
    text = _sentence(GOOD) + _sentence(rows)
    with pytest.raises(DataError) as caught:
        parse_conllu(text, source="x.conllu")
    assert caught.value.line == bad_line and problem in caught.value.problem, caught.value


def test_empty_node_before_the_first_word_and_ranges_inside_are_fine():
    rows = [_row("0.1"), _row("1-2"), *GOOD, _row("2.1"), _row("2.2")]
    sentence = parse_conllu(_sentence(rows))[0]
    assert sentence.words == ("a", "b") and sentence.heads == (0, 1)


UNPARSED = [_row("1"), MWT, _row("2"), _row("3")]


def test_unparsed_conllu_is_read_for_prediction_only():
    text = _sentence(GOOD) + _sentence(UNPARSED)
    with pytest.raises(DataError) as caught:
        parse_conllu(text)
    assert caught.value.line == 4 and "no HEAD" in caught.value.problem
    assert "training and evaluation data need gold trees" in caught.value.problem
    parsed, unparsed = parse_conllu(text, require_trees=False)
    assert parsed.has_tree and parsed.heads == (0, 1)
    assert not unparsed.has_tree
    assert unparsed.words == ("w1", "w2", "w3") and unparsed.heads == (-1, -1, -1)
    assert unparsed.relations == ("_", "_", "_")
    # written back as read, or with predictions in place of the `_`
    assert format_conllu([unparsed]) == _sentence(UNPARSED)
    predicted = parse_conllu(format_conllu([unparsed], [[0, 1, 1]], [["root", "dep", "dep"]]))[0]
    assert predicted.heads == (0, 1, 1) and predicted.has_tree
    # the heads a partly parsed sentence has are still checked
    partly = [_row("1"), _row("2", "5", "dep")]
    with pytest.raises(DataError, match="head 5 of word 2 is out of range"):
        parse_conllu(_sentence(partly), require_trees=False)
