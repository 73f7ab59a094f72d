"""NER data: labeled sources (a named data set or a CoNLL column file, any tag scheme) and
text to tag or distill on (a data set, a CoNLL file or tokenized text, one sentence per line).

Formats are guessed by ``structkd.data.formats.guess_text_format``, which never turns tags into
words."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from structkd.data.conll import (
    DOCSTART,
    DataError,
    InferredIOB1Warning,
    Sentence,
    read_conll,
    read_text_lines,
    read_tokenized,
)
from structkd.data.datasets import dataset_names, is_dataset_name, load_dataset
from structkd.data.formats import NOT_CONLLU, conllu_line, guess_text_format, is_tag
from structkd.data.tag_schemes import (
    SCHEMES,
    detect_scheme,
    entity_types,
    find_scheme_violation,
)

__all__ = ["INPUT_SCHEMES", "DataSource", "load_labeled", "load_text"]

INPUT_SCHEMES: tuple[str, ...] = ("auto", *SCHEMES)
"""The values of ``--scheme`` for labeled input: ``auto`` (detected; IOB1 warns) or a scheme."""

_COLUMNS = re.compile(r"[ \t]+")


@dataclass(frozen=True, eq=False)
class DataSource:
    """Sentences read from a named data set or a file.

    ``name``: the spec as given (``"conll03-en:dev"`` or a path); ``sentences`` ``[n]``;
    ``scheme``: the tag scheme of labeled sentences (``"iob1"``, ``"iob2"``, ``"bioes"``), ``None``
    for unlabeled text.
    """

    name: str
    sentences: list[Sentence]
    scheme: str | None

    def __len__(self) -> int:
        return len(self.sentences)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the tokens (not the tags) of every sentence, in order: what a teacher reads,
        so it keys the caches of teacher outputs and features."""
        digest = hashlib.sha256()
        for sentence in self.sentences:
            digest.update("\x1f".join(sentence.tokens).encode("utf-8"))
            digest.update(b"\x1e")
        return digest.hexdigest()

    @property
    def lengths(self) -> list[int]:
        """``[n]`` tokens per sentence."""
        return [len(sentence) for sentence in self.sentences]

    @property
    def types(self) -> list[str]:
        """The sorted entity types of the labeled sentences."""
        return entity_types(s.tags for s in self.sentences if s.tags is not None)

    def head(self, max_sentences: int | None) -> DataSource:
        """The first ``max_sentences`` sentences (all of them for ``None``)."""
        if max_sentences is None or max_sentences >= len(self.sentences):
            return self
        if max_sentences < 1:
            raise ValueError(f"max_sentences must be >= 1 or None; got {max_sentences}")
        return replace(self, sentences=self.sentences[:max_sentences])


def _missing(spec: str, role: str) -> ValueError:
    return ValueError(
        f"{role} data {spec!r} is neither a known data set ({', '.join(dataset_names())}) "
        "nor an existing file"
    )


def _named(spec: str, role: str) -> list[Sentence]:
    records = load_dataset(spec)
    if records and not isinstance(records[0], Sentence):
        raise ValueError(
            f"{role} data {spec!r} is not a NER data set (its records are "
            f"{type(records[0]).__name__}, not tagged sentences)"
        )
    return records


def _check_input_scheme(scheme: str) -> None:
    if scheme not in INPUT_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(INPUT_SCHEMES)}; got {scheme!r}")


def load_labeled(
    spec: str,
    *,
    role: str = "train",
    max_sentences: int | None = None,
    scheme: str = "auto",
) -> DataSource:
    """A labeled NER source: a registered data set name, or a CoNLL column file.

    ``scheme``: ``"auto"`` detects the file's scheme (IOB1, IOB2 or BIOES; an IOB1 result warns
    with ``InferredIOB1Warning``, naming the file); ``"iob1"``, ``"iob2"`` or ``"bioes"`` is the
    scheme the data must be in (a tag that breaks it is a ``DataError`` with file and line).
    Raises ``ValueError``/``DataError`` with a one-line reason (unknown name, missing file, a
    file that does not parse)."""
    spec = os.fspath(spec)
    _check_input_scheme(scheme)
    if is_dataset_name(spec):
        sentences = _named(spec, role)
    elif Path(spec).is_file():
        try:
            sentences = read_conll(spec, scheme=scheme)  # checked line by line
        except DataError as error:
            if conllu_line(read_text_lines(spec)) is None:
                raise
            raise DataError(spec, error.line, f"{error.problem}; {NOT_CONLLU}") from None
    else:
        raise _missing(spec, role)
    unlabeled = sum(sentence.tags is None for sentence in sentences)
    if unlabeled:
        raise ValueError(f"{role} data {spec!r} has {unlabeled} sentences without tags")
    if scheme == "auto":
        scheme = detect_scheme(sentence.tags for sentence in sentences)
    elif is_dataset_name(spec):
        for index, sentence in enumerate(sentences):
            violation = find_scheme_violation(sentence.tags, scheme)
            if violation is not None:
                raise ValueError(
                    f"{role} data {spec!r}, sentence {index + 1}: {violation[1]} [scheme {scheme}]"
                )
    return DataSource(spec, sentences, scheme).head(max_sentences)


def load_text(
    spec: str | os.PathLike[str],
    *,
    role: str = "input",
    file_format: str = "auto",
    keep_tags: bool = True,
) -> DataSource:
    """Sentences to tag or to distill on: a registered data set, a CoNLL file (its tags kept when
    ``keep_tags`` and it has a tag column) or tokenized text (one sentence per line).

    ``file_format``: ``"auto"`` (``guess_text_format``), ``"conll"`` or ``"tokens"``; ``"-"`` reads
    standard input.
    """
    spec = os.fspath(spec)
    if file_format not in ("auto", "conll", "tokens"):
        raise ValueError(f"file_format must be 'auto', 'conll' or 'tokens'; got {file_format!r}")
    if spec != "-" and is_dataset_name(spec):
        sentences = _named(spec, role)
        if not keep_tags:
            sentences = [sentence.without_tags() for sentence in sentences]
        scheme = detect_scheme(s.tags for s in sentences) if keep_tags else None
        return DataSource(spec, sentences, scheme)
    if spec != "-" and not Path(spec).is_file():
        raise _missing(spec, role)
    path = spec
    if spec == "-":
        import sys
        import tempfile

        text = sys.stdin.read()
        handle = tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", suffix=".txt", delete=False
        )  # the readers take paths
        with handle:
            handle.write(text)
        path = handle.name
    try:
        chosen = guess_text_format(path) if file_format == "auto" else file_format
        if chosen == "tokens":
            sentences, scheme = read_tokenized(path), None
        else:
            sentences = _read_conll_any(path, keep_tags)
            labeled = [s.tags for s in sentences if s.tags is not None]
            scheme = detect_scheme(labeled) if labeled else None
    except DataError as error:
        if spec == "-":
            raise DataError("<stdin>", error.line, error.problem) from None
        raise
    finally:
        if spec == "-":
            os.unlink(path)
    return DataSource(spec, sentences, scheme)


def _read_conll_any(path: str, keep_tags: bool) -> list[Sentence]:
    """A CoNLL file with tags (when ``keep_tags`` and a line ends with a tag) or without (its
    first column only: a tag is never read as a word)."""
    if keep_tags:
        for line in read_text_lines(path):
            fields = _COLUMNS.split(line.strip(" \t\r"))
            if len(fields) >= 2 and fields[0] != DOCSTART and is_tag(fields[-1]):
                with warnings.catch_warnings():  # text to tag: its gold tags are only copied
                    warnings.simplefilter("ignore", InferredIOB1Warning)
                    return read_conll(path, scheme="auto")
    return read_conll(path, labeled=False)
