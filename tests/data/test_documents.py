"""Document boundaries: what the readers record (``Sentence.document``), the words around a
sentence in its document (``DocumentContext``) and the fingerprint of a document structure."""

from __future__ import annotations

from pathlib import Path

import pytest

from structkd.data.conll import Sentence, read_conll, read_tokenized, read_unlabeled
from structkd.data.documents import DocumentContext, document_fingerprint, same_document
from tests.data.test_conll import CONLL_FIXTURE, write_file


def documents(sentences: list[Sentence]) -> list[int | None]:
    return [sentence.document for sentence in sentences]


# --- the readers ----------------------------------------------------------------------------------


def test_conll_documents_are_runs_between_docstart_lines(tmp_path: Path) -> None:
    path = write_file(tmp_path, CONLL_FIXTURE)  # three -DOCSTART- lines, a sentence after each
    assert documents(read_conll(path)) == [0, 1, 2]
    assert documents(read_conll(path, labeled=False)) == [0, 1, 2]
    assert documents(read_unlabeled(path, "conll")) == [0, 1, 2]
    assert documents(read_conll(path, target_scheme="bioes")) == [0, 1, 2]


def test_conll_without_docstart_is_one_document(tmp_path: Path) -> None:
    path = write_file(tmp_path, "A B-PER\nb O\n\nc O\n\n\nd O\n")
    assert documents(read_conll(path)) == [0, 0, 0]
    # docstart=None: no line is a boundary (the -DOCSTART- line is a word)
    marked = write_file(tmp_path, "-DOCSTART- O\n\nA O\n\n-DOCSTART- O\n\nb O\n", "marked.txt")
    assert documents(read_conll(marked, docstart=None)) == [0, 0, 0, 0]
    assert documents(read_conll(marked)) == [0, 1]


def test_conll_documents_before_the_first_and_between_repeated_docstarts(tmp_path: Path) -> None:
    text = (
        "a O\n\n"  # before any -DOCSTART-: document 0
        "-DOCSTART- -X- O\n-DOCSTART- -X- O\n\n"  # repeated: no empty document
        "b O\nc O\n\nd O\n"  # document 1
        "-DOCSTART- -X- O\n"  # ends a sentence without a blank line
        "e O\n\n"
        "-DOCSTART- -X- O\n\n"  # a last document without sentences: none
    )
    sentences = read_conll(write_file(tmp_path, text))
    assert [s.tokens for s in sentences] == [["a"], ["b", "c"], ["d"], ["e"]]
    assert documents(sentences) == [0, 1, 1, 2]
    assert [s.start_line for s in sentences] == [1, 6, 9, 11]


def test_tokenized_text_documents_are_runs_between_blank_lines(tmp_path: Path) -> None:
    path = write_file(tmp_path, "\n  \nA b\nc d\n\n \t\ne\n\nf\ng\n")
    sentences = read_tokenized(path)
    assert [s.tokens for s in sentences] == [["A", "b"], ["c", "d"], ["e"], ["f"], ["g"]]
    assert documents(sentences) == [0, 0, 1, 2, 2]
    assert documents(read_tokenized(write_file(tmp_path, "a\nb\nc", "one.txt"))) == [0, 0, 0]


def test_sentence_document_field() -> None:
    assert Sentence(["a"]).document is None
    assert Sentence(["a"], None, "f", 1, 3).document == 3
    assert Sentence(["a"], ["O"], document=2).without_tags().document == 2
    assert Sentence(["a"], document=2).with_tags(["O"]).document == 2
    for bad in (-1, True, 1.0, "0"):
        with pytest.raises(ValueError, match="document must be None or an integer >= 0"):
            Sentence(["a"], document=bad)


# --- the words around a sentence ------------------------------------------------------------------


def _doc(words: str, document: int | None, source: str | None = "f") -> Sentence:
    return Sentence(words.split(), None, source, None, document)


def test_context_stays_in_the_document_and_within_size() -> None:
    sentences = [
        _doc("a b c", 0),
        _doc("d e", 0),
        _doc("f g h i", 0),
        _doc("x y", 1),
        _doc("z", None),
        _doc("p q", 2),
        _doc("r", 2, source="other"),  # same index, other file: another document
    ]
    wide = DocumentContext(sentences, 100)
    assert wide.around(0) == ([], ["d", "e", "f", "g", "h", "i"])
    assert wide.around(1) == (["a", "b", "c"], ["f", "g", "h", "i"])
    assert wide.around(2) == (["a", "b", "c", "d", "e"], [])
    assert wide.around(3) == ([], [])  # alone in its document
    assert wide.around(4) == ([], [])  # no document
    assert wide.around(5) == ([], [])
    assert wide.around(6) == ([], [])
    narrow = DocumentContext(sentences, 2)  # the nearest words on each side
    assert narrow.around(1) == (["b", "c"], ["f", "g"])
    assert narrow.around(2) == (["d", "e"], [])
    assert DocumentContext(sentences, 0).around(1) == ([], [])
    assert not same_document(sentences[5], sentences[6])
    assert same_document(sentences[0], sentences[2]) and not same_document(
        sentences[4], sentences[4]
    )


def test_context_checks_the_sentence_it_is_asked_about() -> None:
    context = DocumentContext([_doc("a b", 0), _doc("c", 0)], 4)
    assert context.around(1, _doc("c", 7)) == (["a", "b"], [])  # the context's document counts
    with pytest.raises(ValueError, match="not the sentence of that id"):
        context.around(1, _doc("a b", 0))
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        context.around(2)
    with pytest.raises(ValueError, match="size must be an integer >= 0"):
        DocumentContext([], -1)


def test_document_fingerprint_follows_the_structure_only() -> None:
    base = [_doc("a", 0), _doc("b", 0), _doc("c", 1)]
    renumbered = [_doc("x", 4, "g"), _doc("y", 4, "g"), _doc("z", 9, "g")]
    assert document_fingerprint(base) == document_fingerprint(renumbered)  # words not included
    merged = [_doc("a", 0), _doc("b", 0), _doc("c", 0)]
    alone = [_doc("a", None), _doc("b", None), _doc("c", None)]
    fingerprints = {document_fingerprint(s) for s in (base, merged, alone)}
    assert len(fingerprints) == 3
