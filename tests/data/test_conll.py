"""CoNLL readers and writer, the sentence record and the labeled-fraction split (tiny fixtures)."""

from __future__ import annotations

import io
import math
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from structkd.data.conll import (
    DataError,
    InferredIOB1Warning,
    Sentence,
    labeled_count,
    read_conll,
    read_tokenized,
    read_unlabeled,
    split_labeled_fraction,
    write_conll,
)
from structkd.data.tag_schemes import spans_to_tags


def write_file(directory: Path, text: str | bytes, name: str = "data.txt") -> Path:
    path = directory / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def expect_data_error(path: Path, line: int, fragment: str, read=read_conll, **options):
    with pytest.raises(DataError) as caught:
        read(path, **options)
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.path, error.line) == (str(path), line)
    assert str(error).startswith(f"{path}, line {line}: ")
    assert fragment in str(error), str(error)
    return error


CONLL_FIXTURE = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German\tJJ\tB-NP\tB-MISC
call NN I-NP O

-DOCSTART- -X- -X- O
Peter NNP B-NP B-PER
Blackburn   NNP I-NP I-PER


-DOCSTART- -X- -X- O
BRUSSELS NNP B-NP B-LOC
"""


# --- reading labeled files ------------------------------------------------------------------------


def test_read_conll_fixture(tmp_path: Path) -> None:
    path = write_file(tmp_path, CONLL_FIXTURE)
    sentences = read_conll(path)
    assert [sentence.tokens for sentence in sentences] == [
        ["EU", "rejects", "German", "call"],
        ["Peter", "Blackburn"],
        ["BRUSSELS"],
    ]
    assert [sentence.tags for sentence in sentences] == [
        ["B-ORG", "O", "B-MISC", "O"],
        ["B-PER", "I-PER"],
        ["B-LOC"],
    ]
    assert [sentence.start_line for sentence in sentences] == [3, 9, 14]
    assert {sentence.source for sentence in sentences} == {str(path)}


def test_read_conll_converts_on_request(tmp_path: Path) -> None:
    path = write_file(tmp_path, CONLL_FIXTURE)
    sentences = read_conll(path, target_scheme="bioes")
    assert [sentence.tags for sentence in sentences] == [
        ["S-ORG", "O", "S-MISC", "O"],
        ["B-PER", "E-PER"],
        ["S-LOC"],
    ]


def test_read_conll_handles_crlf_bom_and_no_final_newline(tmp_path: Path) -> None:
    path = write_file(tmp_path, "\ufeffA B-PER\r\nb I-PER\r\n\r\nc O")
    sentences = read_conll(path)
    assert [(s.tokens, s.tags, s.start_line) for s in sentences] == [
        (["A", "b"], ["B-PER", "I-PER"], 1),
        (["c"], ["O"], 4),
    ]


def test_read_conll_keeps_unicode_and_case(tmp_path: Path) -> None:
    path = write_file(tmp_path, "Zürich B-LOC\n東京 B-LOC\n")
    assert read_conll(path)[0].tokens == ["Zürich", "東京"]


def test_read_conll_iob1_and_auto_detection(tmp_path: Path) -> None:
    path = write_file(tmp_path, "A I-PER\nB I-PER\nC B-PER\nD O\nE I-LOC\n")
    expected = ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert read_conll(path, scheme="iob1", target_scheme="iob2")[0].tags == expected
    with pytest.warns(InferredIOB1Warning):
        assert read_conll(path, scheme="auto", target_scheme="iob2")[0].tags == expected
    bioes = write_file(tmp_path, "A B-PER\nB E-PER\nC O\n", "bioes.txt")
    assert read_conll(bioes, scheme="auto", target_scheme="iob2")[0].tags == ["B-PER", "I-PER", "O"]


def test_hash_tokens_are_words_comment_lines_only_on_request(tmp_path: Path) -> None:
    path = write_file(tmp_path, "# SYM O\nA NN B-PER\n")
    assert read_conll(path)[0].tokens == ["#", "A"]
    assert read_conll(path, comment_prefix="#")[0].tokens == ["A"]


def test_read_conll_unlabeled_ignores_tags(tmp_path: Path) -> None:
    path = write_file(tmp_path, "A NOT-A-VALID-TAG\nB I-PER\n\nC O\n")
    sentences = read_conll(path, labeled=False)
    assert [(s.tokens, s.tags) for s in sentences] == [(["A", "B"], None), (["C"], None)]
    one_column = write_file(tmp_path, "A\nB\n\nC\n", "words.txt")
    assert len(read_conll(one_column, labeled=False)) == 2


def test_read_conll_rejects_bad_scheme_arguments(tmp_path: Path) -> None:
    path = write_file(tmp_path, "A O\n")
    with pytest.raises(ValueError, match="scheme must be one of"):
        read_conll(path, scheme="bio")
    with pytest.raises(ValueError, match="target_scheme must be one of"):
        read_conll(path, target_scheme="iobes")


# --- malformed labeled files: file, line and problem ----------------------------------------------


def test_error_one_column(tmp_path: Path) -> None:
    path = write_file(tmp_path, "A NN O\nB NN O\n\nlonely\n")
    expect_data_error(path, 4, "found 1 column ('lonely'); a labeled CoNLL line needs at least two")


def test_lines_may_differ_in_their_number_of_columns(tmp_path: Path) -> None:
    # only the first (word) and the last (tag) column matter, as in conlleval
    path = write_file(tmp_path, "A NN O\n\nYork NNP I-NP x y B-LOC\nCity B-LOC\n")
    sentences = read_conll(path)
    assert [(s.tokens, s.tags) for s in sentences] == [
        (["A"], ["O"]),
        (["York", "City"], ["B-LOC", "B-LOC"]),
    ]


def test_error_malformed_tag(tmp_path: Path) -> None:
    path = write_file(tmp_path, "-DOCSTART- O\n\nA PER\n")
    expect_data_error(path, 3, "bad tag in the last column: tag 'PER' is neither 'O' nor")


def test_error_tag_breaking_iob2(tmp_path: Path) -> None:
    path = write_file(tmp_path, "A B-PER\nB I-PER\n\n-DOCSTART- O\nC O\nD I-LOC\n")
    expect_data_error(path, 6, "tag 'I-LOC' follows 'O'; IOB2 requires I-LOC to follow B-LOC")


def test_error_tag_breaking_bioes(tmp_path: Path) -> None:
    path = write_file(tmp_path, "A B-PER\nB I-PER\n\nC O\n")
    expect_data_error(path, 2, "ends the sentence; BIOES requires", scheme="bioes")
    prefix = write_file(tmp_path, "A S-PER\n", "prefix.txt")
    expect_data_error(prefix, 1, "prefix 'S', which IOB2 does not use")


def test_error_tag_breaking_detected_scheme(tmp_path: Path) -> None:
    # E- makes the file BIOES; the I- after O then breaks it
    path = write_file(tmp_path, "A B-PER\nB E-PER\n\nC O\nD I-LOC\nE E-LOC\n")
    expect_data_error(path, 5, "[scheme bioes (detected)]", scheme="auto")


def test_error_empty_file(tmp_path: Path) -> None:
    expect_data_error(write_file(tmp_path, b""), 1, "the file is empty")


def test_error_file_without_sentences(tmp_path: Path) -> None:
    path = write_file(tmp_path, "-DOCSTART- -X- O\n\n\n\n")
    expect_data_error(path, 4, "no sentences in the file")


def test_error_not_utf8(tmp_path: Path) -> None:
    path = write_file(tmp_path, "A O\nB O\nM\xfcnchen B-LOC\n".encode("latin-1"))
    expect_data_error(path, 3, "not valid UTF-8 (byte 0xfc at byte 2 of the line")
    expect_data_error(path, 3, "not valid UTF-8", read=read_tokenized)


# --- issue 10: words kept, columns between, schemes said out loud ---------------------------------


def test_tokens_beginning_with_hash_are_words(tmp_path: Path) -> None:
    # they used to be dropped as comment lines: column files have no comments
    path = write_file(tmp_path, "I O\nlove O\n#Paris B-LOC\n# O\n\n#1 O\n")
    sentences = read_conll(path)
    assert [(s.tokens, s.tags) for s in sentences] == [
        (["I", "love", "#Paris", "#"], ["O", "O", "B-LOC", "O"]),
        (["#1"], ["O"]),
    ]
    assert [s.tokens for s in read_conll(path, labeled=False)] == [s.tokens for s in sentences]


def test_feature_columns_may_vary_from_line_to_line(tmp_path: Path) -> None:
    # word first, tag last, 12 or 10 or no columns between: "found 12 columns but line 1 has 10"
    # was an error
    middle = " ".join(f"f{index}" for index in range(8))
    text = f"EU {middle} B-ORG\nrejects {middle} x y O\nGerman B-MISC\n"
    sentences = read_conll(write_file(tmp_path, text))
    assert sentences[0].tokens == ["EU", "rejects", "German"]
    assert sentences[0].tags == ["B-ORG", "O", "B-MISC"]


def test_inferred_iob1_warns_naming_file_line_and_the_option(tmp_path: Path) -> None:
    path = write_file(tmp_path, "A B-PER\nB I-PER\n\nC O\nD I-LOC\n")
    with pytest.warns(InferredIOB1Warning) as caught:
        sentences = read_conll(path, scheme="auto", target_scheme="iob2")
    assert sentences[1].tags == ["O", "B-LOC"]
    message = str(caught[0].message)
    assert message.startswith(f"{path}: ") and "line 5: 'I-LOC' follows 'O'" in message
    assert "pass --scheme iob1 to confirm or --scheme iob2 to refuse" in message
    assert issubclass(InferredIOB1Warning, UserWarning)
    # a scheme given is checked, and says nothing when the data keeps to it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_conll(path, scheme="iob1")[1].tags == ["O", "I-LOC"]
        assert read_conll(write_file(tmp_path, "A B-PER\nB I-PER\n", "iob2.txt"), scheme="auto")
    expect_data_error(path, 5, "IOB2 requires I-LOC to follow B-LOC or I-LOC", scheme="iob2")


def test_a_file_of_only_a_byte_order_mark_has_no_sentences(tmp_path: Path) -> None:
    path = write_file(tmp_path, "\ufeff")
    expect_data_error(path, 1, "no sentences")
    expect_data_error(path, 1, "no sentences", read=read_tokenized)


# --- unlabeled text -------------------------------------------------------------------------------


def test_read_tokenized(tmp_path: Path) -> None:
    path = write_file(tmp_path, "EU rejects German call .\n\n  # hashtag\tfine \r\n")
    sentences = read_tokenized(path)
    assert [(s.tokens, s.tags, s.start_line) for s in sentences] == [
        (["EU", "rejects", "German", "call", "."], None, 1),
        (["#", "hashtag", "fine"], None, 3),
    ]
    assert read_unlabeled(path) == sentences
    expect_data_error(write_file(tmp_path, "\n \n", "blank.txt"), 2, "no sentences", read_tokenized)
    expect_data_error(write_file(tmp_path, b"", "empty.txt"), 1, "empty", read_tokenized)


def test_read_unlabeled_from_conll(tmp_path: Path) -> None:
    path = write_file(tmp_path, CONLL_FIXTURE)
    sentences = read_unlabeled(path, "conll")
    assert [s.tokens for s in sentences] == [s.tokens for s in read_conll(path)]
    assert all(s.tags is None for s in sentences)
    with pytest.raises(ValueError, match="file_format must be 'tokens' or 'conll'"):
        read_unlabeled(path, "conllu")


# --- the sentence record --------------------------------------------------------------------------


def test_sentence_record() -> None:
    sentence = Sentence(["a", "b"], ["B-PER", "I-PER"], "f.txt", 3)
    assert len(sentence) == 2 and sentence.labeled
    assert sentence.without_tags() == Sentence(["a", "b"], None, "f.txt", 3)
    assert not sentence.without_tags().labeled
    assert sentence.with_tags(("O", "O")).tags == ["O", "O"]
    with pytest.raises(ValueError, match="tokens must hold at least one token"):
        Sentence([])
    with pytest.raises(ValueError, match="one tag per token; got 1 tags for 2 tokens"):
        Sentence(["a", "b"], ["O"])


# --- labeled fraction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_sentences", "fraction", "expected"),
    [(10, 0.1, 1), (100, 0.29, 29), (7, 0.5, 3), (3, 0.1, 1), (5, 1.0, 5), (5, 1, 5),
     (14041, 0.1, 1404), (14041, 0.01, 140), (10, np.float32(0.3), 3), (9, Fraction(1, 3), 3)],
)  # fmt: skip
def test_labeled_count_rounds_down_at_least_one(n_sentences, fraction, expected) -> None:
    assert labeled_count(n_sentences, fraction) == expected


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, math.nan, math.inf, True, "0.5"])
def test_labeled_count_rejects_bad_fractions(fraction) -> None:
    with pytest.raises(ValueError, match="fraction must be"):
        labeled_count(10, fraction)


def test_split_labeled_fraction() -> None:
    sentences = [Sentence([f"w{i}"], ["O"], "f", i + 1) for i in range(10)]
    labeled, unlabeled = split_labeled_fraction(sentences, 0.35)
    assert labeled == sentences[:3]
    assert unlabeled == [sentence.without_tags() for sentence in sentences[3:]]
    labeled, unlabeled = split_labeled_fraction(sentences, 1.0)
    assert (labeled, unlabeled) == (sentences, [])
    with pytest.raises(ValueError, match=r"sentences\[1\] has no tags"):
        split_labeled_fraction([sentences[0], sentences[1].without_tags()], 0.5)
    with pytest.raises(ValueError, match="n_sentences must be at least 1"):
        split_labeled_fraction([], 0.5)


# --- writing --------------------------------------------------------------------------------------


def test_write_conll_with_gold_and_probabilities(tmp_path: Path) -> None:
    sentences = [Sentence(["EU", "rejects"], ["B-ORG", "O"]), Sentence(["Peter"], ["B-PER"])]
    predictions = [["B-ORG", "O"], ["B-LOC"]]
    path = tmp_path / "out.conll"
    write_conll(path, sentences, predictions, [[0.98765, 1.0], [0.5]])
    assert path.read_text(encoding="utf-8") == (
        "EU B-ORG B-ORG 0.9877\nrejects O O 1.0000\n\nPeter B-PER B-LOC 0.5000\n"
    )
    stream = io.StringIO()
    write_conll(stream, [s.without_tags() for s in sentences], predictions)
    assert stream.getvalue() == "EU B-ORG\nrejects O\n\nPeter B-LOC\n"


def test_write_conll_errors() -> None:
    sentences = [Sentence(["a", "b"], ["O", "O"])]
    stream = io.StringIO()
    with pytest.raises(ValueError, match="one entry per sentence; got 2 for 1"):
        write_conll(stream, sentences, [["O", "O"], ["O"]])
    with pytest.raises(ValueError, match=r"predictions\[0\] has 1 tags for 2 tokens"):
        write_conll(stream, sentences, [["O"]])
    with pytest.raises(ValueError, match="1 of 2 have gold tags"):
        write_conll(stream, [*sentences, Sentence(["c"])], [["O", "O"], ["O"]])
    with pytest.raises(ValueError, match=r"sentences\[0\]\.tokens\[1\] = 'b c' cannot be"):
        write_conll(stream, [Sentence(["a", "b c"])], [["O", "O"]])
    with pytest.raises(ValueError, match=r"predictions\[0\]\[0\] = '' cannot be"):
        write_conll(stream, sentences, [["", "O"]])
    with pytest.raises(ValueError, match=r"probabilities\[0\]\[1\] = nan is not in \[0, 1\]"):
        write_conll(stream, sentences, [["O", "O"]], [[0.5, math.nan]])
    with pytest.raises(ValueError, match=r"probabilities\[0\] has 1 values for 2 tokens"):
        write_conll(stream, sentences, [["O", "O"]], [[0.5]])
    assert stream.getvalue() == ""


TOKEN = st.text(
    alphabet=st.characters(
        whitelist_categories=("L", "N", "P", "S"), blacklist_characters="#\u0085"
    ),
    min_size=1,
    max_size=6,
).filter(lambda token: token != "-DOCSTART-")


@st.composite
def labeled_sentences(draw: st.DrawFn) -> Sentence:
    tokens = draw(st.lists(TOKEN, min_size=1, max_size=6))
    starts = draw(st.lists(st.integers(0, len(tokens) - 1), max_size=3, unique=True))
    spans = [(start, start, draw(st.sampled_from(["LOC", "PER"]))) for start in sorted(starts)]
    return Sentence(tokens, spans_to_tags(spans, len(tokens), "iob2"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(labeled_sentences(), min_size=1, max_size=4))
def test_write_then_read_round_trips(tmp_path: Path, sentences: list[Sentence]) -> None:
    path = tmp_path / "round_trip.conll"
    write_conll(path, [s.without_tags() for s in sentences], [s.tags for s in sentences])
    read_back = read_conll(path)
    assert [(s.tokens, s.tags) for s in read_back] == [(s.tokens, s.tags) for s in sentences]
