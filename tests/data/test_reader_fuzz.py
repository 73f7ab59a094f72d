"""Fuzzing the readers (issue 10): random bytes, random column counts and random blank-line
patterns given to the column-file readers, the NER format guessing and the CoNLL-U reader. Every
input is either read or refused with a ``DataError`` that names the file and a line of it; no
other exception ever escapes."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from structkd.data.conll import (
    DataError,
    InferredIOB1Warning,
    read_conll,
    read_text_lines,
    read_tokenized,
    read_unlabeled,
)
from structkd.data.conllu_io import read_conllu
from structkd.data.formats import guess_text_format
from structkd.tasks.ner.data import load_labeled, load_text

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _column_readers() -> dict[str, Callable[[Path], Any]]:
    readers: dict[str, Callable[[Path], Any]] = {
        "read_tokenized": read_tokenized,
        "read_unlabeled conll": lambda path: read_unlabeled(path, "conll"),
        "read_conll unlabeled": lambda path: read_conll(path, labeled=False),
        "guess_text_format": guess_text_format,
        "load_text": lambda path: load_text(str(path)),
        "load_text untagged": lambda path: load_text(str(path), keep_tags=False),
        "load_text conll": lambda path: load_text(str(path), file_format="conll"),
        "load_labeled": lambda path: load_labeled(str(path)),
    }
    for scheme in ("auto", "iob1", "iob2", "bioes"):
        readers[f"read_conll {scheme}"] = lambda path, s=scheme: read_conll(
            path, scheme=s, target_scheme="bioes"
        )
    return readers


COLUMN_READERS = _column_readers()
CONLLU_READERS: dict[str, Callable[[Path], Any]] = {
    "read_conllu": read_conllu,
    "read_conllu unparsed": lambda path: read_conllu(path, require_trees=False),
    "read_conllu several roots": lambda path: read_conllu(path, single_root=False),
}


def _read_or_refuse(readers: dict[str, Callable[[Path], Any]], path: Path, data: bytes) -> None:
    """Each reader reads ``path`` or raises a ``DataError`` naming it and one of its lines."""
    path.write_bytes(data)
    n_lines = data.count(b"\n") + 1
    for name, read in readers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InferredIOB1Warning)
                read(path)
        except DataError as error:
            assert error.path == str(path), (name, error)
            assert 1 <= error.line <= n_lines, (name, error, n_lines)
            assert str(error).startswith(f"{path}, line {error.line}: "), (name, error)
        except Exception as error:  # pragma: no cover - the failure being looked for
            pytest.fail(f"{name} raised {type(error).__name__}: {error} on {data!r}")


# --------------------------------------------------------------------------------- random bytes


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    _read_or_refuse(COLUMN_READERS, tmp_path / "bytes.conll", data)
    _read_or_refuse(CONLLU_READERS, tmp_path / "bytes.conllu", data)


# ------------------------------------------------------------------------- column files

FIELDS = ["O", "B-PER", "I-PER", "I-LOC", "E-LOC", "S-ORG", "B-", "PER", "o", "#", "#Paris",
          "-DOCSTART-", "_", ".", "Zürich", "x\x0by", "\ufeff"]  # fmt: skip
SEPARATORS = [" ", "\t", "  ", " \t", "\u00a0"]
BLANKS = ["", " ", "\t", "\r", " \t\r"]


@st.composite
def column_files(draw) -> bytes:
    """Lines of 1 to 6 fields (word first, tag-like or not last), any separators, blank lines in
    any pattern, LF or CRLF, with or without a byte-order mark and a final newline."""
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.integers(0, 3)) == 0:
            lines.append(draw(st.sampled_from(BLANKS)))
            continue
        fields = draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=6))
        separators = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(fields)))
        line = fields[0] + "".join(s + f for s, f in zip(separators, fields[1:], strict=False))
        lines.append(draw(st.sampled_from(["", " "])) + line)
    end = draw(st.sampled_from(["\n", "\r\n"]))
    text = end.join(lines) + draw(st.sampled_from(["", end]))
    return (draw(st.sampled_from(["", "\ufeff"])) + text).encode("utf-8")


@FUZZ
@given(column_files())
def test_random_column_files(tmp_path: Path, data: bytes) -> None:
    _read_or_refuse(COLUMN_READERS, tmp_path / "columns.conll", data)


# ------------------------------------------------------------------------------- CoNLL-U

IDS = ["1", "2", "3", "4", "1-2", "2-3", "3-4", "1-1", "0.1", "1.1", "2.1", "9-10", "x", "_", "0"]
HEADS = ["0", "1", "2", "3", "_", "-1", "x", "01"]
RELATIONS = ["root", "dep", "_", ""]


@st.composite
def conllu_files(draw) -> bytes:
    """Sentences of comment and token lines, token lines with 10 columns (sometimes another
    count), IDs, heads and relations drawn from valid and invalid values, blank lines between
    (one, several, lines of spaces, none at the end), LF or CRLF, with or without a byte-order
    mark."""
    lines = []
    for _ in range(draw(st.integers(0, 3))):
        for _ in range(draw(st.integers(0, 6))):
            kind = draw(st.integers(0, 9))
            if kind == 0:
                lines.append(draw(st.sampled_from(["#", "# sent_id = s1", "# = x", "# text"])))
                continue
            columns = [
                draw(st.sampled_from(IDS)), "w", "w", "X", "_", "_",
                draw(st.sampled_from(HEADS)), draw(st.sampled_from(RELATIONS)), "_", "_",
            ]  # fmt: skip
            if kind == 1:
                columns = columns[: draw(st.integers(1, 9))] or ["1"]
            elif kind == 2:
                columns.append("_")
            lines.append("\t".join(columns))
        for _ in range(draw(st.integers(0, 2))):
            lines.append(draw(st.sampled_from(["", " ", "\t"])))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    text = end.join(lines) + draw(st.sampled_from(["", end]))
    return (draw(st.sampled_from(["", "\ufeff"])) + text).encode("utf-8")


@FUZZ
@given(conllu_files())
def test_random_conllu_files(tmp_path: Path, data: bytes) -> None:
    _read_or_refuse(CONLLU_READERS, tmp_path / "random.conllu", data)
    _read_or_refuse(COLUMN_READERS, tmp_path / "random.conll", data)  # a treebank given to NER


@FUZZ
@given(conllu_files(), st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_conllu_files_with_bad_bytes(tmp_path: Path, data: bytes, at: int, bad: bytes) -> None:
    at = min(at, len(data))
    _read_or_refuse(CONLLU_READERS, tmp_path / "damaged.conllu", data[:at] + bad + data[at:])


# ------------------------------------------------------------------------------- documents


def _starts_a_document(line: str) -> bool:
    content = line.strip(" \t\r")
    return bool(content) and re.split(r"[ \t]+", content)[0] == "-DOCSTART-"


@FUZZ
@given(column_files())
def test_documents_of_random_files(tmp_path: Path, data: bytes) -> None:
    """Whatever a reader reads, each sentence's document is the number of earlier document
    boundaries with a sentence before them: a ``-DOCSTART-`` line (column files) or a blank line
    (tokenized text) between two sentences starts a new one; documents count from 0."""
    path = tmp_path / "documents.conll"
    path.write_bytes(data)
    try:
        lines = read_text_lines(path)
    except DataError:
        return
    readers = {
        "read_conll": (lambda: read_conll(path, labeled=False), _starts_a_document),
        "read_tokenized": (lambda: read_tokenized(path), lambda line: not line.strip(" \t\r")),
    }
    for name, (read, is_boundary) in readers.items():
        try:
            sentences = read()
        except DataError:
            continue
        expected, previous = [], None
        for sentence in sentences:
            if previous is None:
                expected.append(0)
            else:
                between = lines[previous.start_line : sentence.start_line - 1]
                expected.append(expected[-1] + any(map(is_boundary, between)))
            previous = sentence
        assert [s.document for s in sentences] == expected, (name, data)
