"""Guessing what a text file holds: a CoNLL column file (word first, tag last) or tokenized text
(one sentence per line), and telling a CoNLL-U treebank apart.

``guess_text_format`` never turns tags into words: a file most of whose lines end with a tag is a
column file (its malformed lines then stop with file and line), one where almost none does is
tokenized text, and anything between is refused, naming ``--format``."""

from __future__ import annotations

import os
import re

from structkd.data.conll import DOCSTART, DataError, read_text_lines
from structkd.data.tag_schemes import split_tag

__all__ = ["NOT_CONLLU", "conllu_line", "guess_text_format", "is_tag"]

_COLUMNS = re.compile(r"[ \t]+")
_CONLLU_ID = re.compile(r"[0-9]+(?:[-.][0-9]+)?")
NOT_CONLLU = (
    "this looks like CoNLL-U (10 tab-separated columns, a word ID first): a dependency treebank, "
    "which a NER model does not read"
)
"""The problem reported for a CoNLL-U file where a CoNLL column file or text was expected."""


def is_tag(text: str) -> bool:
    """Whether ``text`` is a tag of some scheme (``O``, ``B-PER``, ``S-LOC``...)."""
    try:
        split_tag(text)
    except ValueError:
        return False
    return True


def conllu_line(lines: list[str]) -> int | None:
    """The first word line of a file that looks like CoNLL-U (at least half of its lines, not
    counting blank and ``#`` lines, have 10 tab-separated columns and a word ID first)."""
    rows = [
        (number, line.rstrip("\r").split("\t"))
        for number, line in enumerate(lines, start=1)
        if line.strip() and not line.startswith("#")
    ]
    hits = [
        number
        for number, columns in rows
        if len(columns) == 10 and _CONLLU_ID.fullmatch(columns[0])
    ]
    return hits[0] if hits and 2 * len(hits) >= len(rows) else None


def guess_text_format(path: str | os.PathLike[str]) -> str:
    """``"conll"`` or ``"tokens"`` for a file of sentences; never a guess that turns tags into
    words or words into tags.

    A line *ends with a tag* when it has at least two columns and its last one is a tag (``O``,
    ``B-PER``). The file is CoNLL when it has ``-DOCSTART-`` lines, or when at least half of its
    lines end with a tag (the reader then stops at a malformed line, with its file and line); it
    is also CoNLL when every line is one word and blank lines separate groups of them (a column
    file without tags). It is tokenized text (one sentence per line) when no line, or at most one
    line in ten, ends with a tag. Anything else is ambiguous: ``DataError`` naming ``--format``;
    so is a file that looks like CoNLL-U (a treebank). Raises ``DataError`` (file and line) for an
    empty or non-UTF-8 file.
    """
    lines = read_text_lines(path)
    conllu = conllu_line(lines)
    if conllu is not None:
        raise DataError(path, conllu, f"{NOT_CONLLU}; pass --format to read it anyway")
    rows = []
    for number, line in enumerate(lines, start=1):
        content = line.strip(" \t\r")
        if content:
            rows.append((number, _COLUMNS.split(content)))
    if not rows:
        return "tokens"  # the reader names the problem (no sentences)
    if any(fields[0] == DOCSTART for _, fields in rows):
        return "conll"
    ends = {number: len(fields) >= 2 and is_tag(fields[-1]) for number, fields in rows}
    tagged = [number for number, _ in rows if ends[number]]
    untagged = [number for number, _ in rows if not ends[number]]
    first, last = rows[0][0], rows[-1][0]
    breaks = any(not lines[number - 1].strip(" \t\r") for number in range(first, last + 1))
    widths = {len(fields) for _, fields in rows}
    if not tagged:
        if widths == {1} and breaks:
            return "conll"  # one word per line, sentences between blank lines: no tags
        if len(widths) == 1 and breaks and len(rows) > 1:
            raise DataError(
                path,
                first,
                f"every line has {widths.pop()} columns and blank lines separate them, but no "
                "line ends with a tag: cannot tell a column file without tags from tokenized "
                "text in paragraphs; pass --format conll (the first column is the word) or "
                "--format tokens (one sentence per line)",
            )
        return "tokens"
    if len(tagged) >= len(untagged):
        return "conll"
    if len(tagged) * 10 <= len(rows):
        return "tokens"
    raise DataError(
        path,
        tagged[0],
        f"this line ends with a tag, as {len(tagged)} of the {len(rows)} lines do, but line "
        f"{untagged[0]} and the others do not: cannot tell a CoNLL column file (word first, tag "
        "last) from tokenized text (one sentence per line); pass --format conll or --format "
        "tokens",
    )
