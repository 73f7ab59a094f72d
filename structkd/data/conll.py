"""CoNLL column files for NER: the sentence record, readers, the labeled-fraction split, a writer.

Format read: one token per line, the word in the first column and the tag in the last, columns
separated by spaces or tabs, any number of columns between them (lines may differ in their count:
only the first and the last matter, as in conlleval); a blank line ends a sentence; ``-DOCSTART-``
lines are skipped (they start a new document). Column files have no comment lines: a token that
begins with ``#`` (``#Paris``, ``#``) is a word like any other. Files must be UTF-8 (a leading
byte-order mark is ignored). Anything malformed raises ``DataError`` naming the file, the line and
the problem. When the tag scheme is detected (``scheme="auto"``) and comes out IOB1 (an ``I-``
opens a span), the reader warns (``InferredIOB1Warning``): that is more often a mistake in IOB2
data than an IOB1 file.

Documents: every sentence read from a file records ``document``, the 0-based index of its document
in the file. In a column file a document is a run of sentences between ``-DOCSTART-`` lines (a file
without them is one document, ``0``; ``-DOCSTART-`` lines with no sentence between them open no
empty document); in tokenized text (one sentence per line) it is a run of lines between blank lines
(a file without blank lines is one document). A transformer reading document context
(``TaggerConfig.transformer_context``) sees only the sentences of the same document;
``Sentence.document`` is ``None`` for sentences built in memory (no context).

Pure Python (no torch): batching sentences into tensors lives in ``structkd.data.batching``.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from numbers import Real
from pathlib import Path
from typing import Literal, TextIO

from structkd.data.tag_schemes import (
    check_scheme,
    convert_tags,
    detect_scheme,
    find_scheme_violation,
    split_tag,
)

DOCSTART = "-DOCSTART-"
_COLUMN_SEPARATOR = re.compile(r"[ \t]+")
_LINE_EDGES = " \t\r"


class InferredIOB1Warning(UserWarning):
    """A column file read with ``scheme="auto"`` was taken to be IOB1 (an ``I-`` tag opens a span):
    the message names the file and the first such line, and how to confirm or refuse it."""


class DataError(ValueError):
    """Malformed input data; the message reads ``<file>, line <n>: <what is wrong>``.

    Attributes: ``path`` (the file, as given), ``line`` (1-based), ``problem`` (the description).
    """

    def __init__(self, path: str | os.PathLike[str], line: int, problem: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{self.path}, line {line}: {problem}")


@dataclass(frozen=True, slots=True)
class Sentence:
    """One tokenized sentence, with its tags when labeled.

    ``tokens`` ``[seq_len]`` words (at least one); ``tags`` ``[seq_len]`` tag strings, or ``None``
    for unlabeled text; ``source`` the file it came from and ``start_line`` the 1-based line of its
    first token (both ``None`` for sentences built in memory); ``document`` the 0-based index of
    its document in that file (see the module docstring), ``None`` where no document is known.
    Two sentences are in the same document when both have the same ``source`` and the same
    ``document`` (not ``None``); ``structkd.data.documents`` reads the sentences around one.
    """

    tokens: list[str]
    tags: list[str] | None = None
    source: str | None = None
    start_line: int | None = None
    document: int | None = None

    def __post_init__(self) -> None:
        if len(self.tokens) == 0:
            raise ValueError("tokens must hold at least one token; got an empty sentence")
        document = self.document
        if document is not None and (
            isinstance(document, bool) or not isinstance(document, int) or document < 0
        ):
            raise ValueError(f"document must be None or an integer >= 0; got {document!r}")
        if self.tags is not None and len(self.tags) != len(self.tokens):
            raise ValueError(
                f"tags must have one tag per token; got {len(self.tags)} tags for "
                f"{len(self.tokens)} tokens"
            )

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def labeled(self) -> bool:
        """Whether the sentence has tags."""
        return self.tags is not None

    def without_tags(self) -> Sentence:
        """The same sentence with ``tags=None`` (unlabeled text for distillation)."""
        return replace(self, tags=None)

    def with_tags(self, tags: Sequence[str]) -> Sentence:
        """The same sentence with ``tags`` (one per token) in place of its own."""
        return replace(self, tags=list(tags))


def decode_utf8(raw: bytes, path: str | os.PathLike[str]) -> str:
    """``raw`` decoded as UTF-8 without a leading byte-order mark; ``DataError`` naming ``path``,
    the line and the byte when it is not UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataError(
            path,
            line,
            f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at byte {column} of the line: "
            f"{error.reason}); re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`",
        ) from None
    return text.removeprefix("\ufeff")


def read_text_lines(path: str | os.PathLike[str]) -> list[str]:
    """Lines of a UTF-8 file without line ends (split at ``\\n`` only; a byte-order mark
    ignored); ``DataError`` (file and line) for an empty or non-UTF-8 file."""
    raw = Path(path).read_bytes()
    if not raw:
        raise DataError(path, 1, "the file is empty (0 bytes)")
    lines = decode_utf8(raw, path).split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def read_conll(
    path: str | os.PathLike[str],
    *,
    scheme: str = "iob2",
    target_scheme: str | None = None,
    labeled: bool = True,
    comment_prefix: str | None = None,
    docstart: str | None = DOCSTART,
) -> list[Sentence]:
    """Read a CoNLL column file into sentences.

    Args:
        path: the file (UTF-8).
        scheme: the tag scheme of the file, ``"iob1"``, ``"iob2"`` or ``"bioes"``, checked on every
            sentence; or ``"auto"`` to detect it from the whole file (``detect_scheme``) and then
            check it (an IOB1 result warns, ``InferredIOB1Warning``). Pass ``target_scheme`` with
            ``"auto"`` to know which scheme you get.
        target_scheme: convert the tags to this scheme (``None``: keep the file's scheme).
        labeled: ``False`` ignores the tag column entirely (unlabeled text from a labeled file; a
            line then needs only one column) and returns sentences with ``tags=None``.
        comment_prefix: ``None`` (the default): no comment lines, a token beginning with ``#`` is
            a word. A string: lines starting with it are skipped (for files known to carry
            comments; such a file cannot hold a token that begins with it).
        docstart: a line whose first column is this is a document boundary and is skipped.

    Returns:
        ``[n_sentences]`` ``Sentence`` records, in file order, each with its ``document`` (the
        0-based index of its run of sentences between ``docstart`` lines; all ``0`` in a file
        without them).

    Raises:
        DataError: naming the file and line: a line with fewer than two columns (one when
            ``labeled=False``), a malformed tag, a tag that breaks the scheme, an empty file or
            one without sentences, bytes that are not UTF-8. Lines may differ in how many columns
            they have between the word (first) and the tag (last).
    """
    if scheme != "auto":
        check_scheme(scheme)
    if target_scheme is not None:
        check_scheme(target_scheme, name="target_scheme")
    lines = read_text_lines(path)
    source = os.fspath(path)
    min_columns = 2 if labeled else 1

    blocks: list[tuple[list[int], list[str], list[str]]] = []  # (line numbers, tokens, tags)
    documents: list[int] = []  # the document of each block
    line_numbers: list[int] = []
    tokens: list[str] = []
    tags: list[str] = []
    document = 0

    def close_sentence() -> None:
        nonlocal line_numbers, tokens, tags
        if tokens:
            blocks.append((line_numbers, tokens, tags))
            documents.append(document)
            line_numbers, tokens, tags = [], [], []

    for number, line in enumerate(lines, start=1):
        content = line.strip(_LINE_EDGES)
        if not content:
            close_sentence()
            continue
        if comment_prefix is not None and line.startswith(comment_prefix):
            continue
        fields = _COLUMN_SEPARATOR.split(content)
        if docstart is not None and fields[0] == docstart:
            close_sentence()
            if documents and documents[-1] == document:  # a document with sentences ends
                document += 1
            continue
        if len(fields) < min_columns:
            raise DataError(
                path,
                number,
                f"found {len(fields)} column ({content!r}); a labeled CoNLL line needs at least "
                "two, the word first and the tag last (pass labeled=False to read words only)",
            )
        if labeled:
            try:
                split_tag(fields[-1])
            except ValueError as error:
                raise DataError(path, number, f"bad tag in the last column: {error}") from None
            tags.append(fields[-1])
        line_numbers.append(number)
        tokens.append(fields[0])
    close_sentence()

    if not blocks:
        raise DataError(
            path,
            max(1, len(lines)),
            "no sentences in the file (it holds only blank or -DOCSTART- lines)",
        )
    if not labeled:
        return [
            Sentence(tokens, None, source, numbers[0], number)
            for (numbers, tokens, _), number in zip(blocks, documents, strict=True)
        ]

    file_scheme = detect_scheme(block[2] for block in blocks) if scheme == "auto" else scheme
    sentences = []
    for (numbers, tokens, tags), number in zip(blocks, documents, strict=True):
        violation = find_scheme_violation(tags, file_scheme)
        if violation is not None:
            index, reason = violation
            detected = " (detected)" if scheme == "auto" else ""
            raise DataError(path, numbers[index], f"{reason} [scheme {file_scheme}{detected}]")
        if target_scheme is not None and target_scheme != file_scheme:
            tags = convert_tags(tags, file_scheme, target_scheme)
        sentences.append(Sentence(tokens, tags, source, numbers[0], number))
    if scheme == "auto" and file_scheme == "iob1":
        _warn_inferred_iob1(source, blocks)
    return sentences


def _warn_inferred_iob1(
    source: str, blocks: Sequence[tuple[list[int], list[str], list[str]]]
) -> None:
    """Warn that ``source`` was read as IOB1, naming the first line where an ``I-`` opens a span."""
    where = ""
    for numbers, _, tags in blocks:
        violation = find_scheme_violation(tags, "iob2")
        if violation is not None:
            index = violation[0]
            previous = "the start of the sentence" if index == 0 else repr(tags[index - 1])
            where = f" (line {numbers[index]}: {tags[index]!r} follows {previous})"
            break
    warnings.warn(
        f"{source}: the tags were read as IOB1, where an I- tag may open an entity{where}; "
        "pass --scheme iob1 to confirm or --scheme iob2 to refuse (scheme='iob1' or 'iob2' "
        "from Python)",
        InferredIOB1Warning,
        stacklevel=3,
    )


def read_tokenized(path: str | os.PathLike[str]) -> list[Sentence]:
    """Read unlabeled text: one sentence per line, tokens separated by spaces or tabs.

    Blank lines are skipped and separate documents (``Sentence.document``: the 0-based index of
    the sentence's run of lines between blank lines; a file without blank lines is one document);
    no line is a comment (a sentence may start with ``#``). Returns
    ``[n_sentences]`` sentences with ``tags=None``. Raises ``DataError`` (file and line) for an
    empty file, one with only blank lines, or bytes that are not UTF-8.
    """
    lines = read_text_lines(path)
    source = os.fspath(path)
    sentences: list[Sentence] = []
    document, after_blank = 0, False
    for number, line in enumerate(lines, start=1):
        content = line.strip(_LINE_EDGES)
        if not content:
            after_blank = True
            continue
        if after_blank and sentences:
            document += 1
        after_blank = False
        tokens = _COLUMN_SEPARATOR.split(content)
        sentences.append(Sentence(tokens, None, source, number, document))
    if not sentences:
        raise DataError(
            path, max(1, len(lines)), "no sentences in the file (it holds only blank lines)"
        )
    return sentences


def read_unlabeled(
    path: str | os.PathLike[str], file_format: Literal["tokens", "conll"] = "tokens"
) -> list[Sentence]:
    """Read unlabeled sentences (``tags=None``) for distillation.

    ``file_format="tokens"``: one tokenized sentence per line (``read_tokenized``); ``"conll"``:
    a CoNLL column file whose tags, if any, are ignored (``read_conll(labeled=False)``).
    """
    if file_format == "tokens":
        return read_tokenized(path)
    if file_format == "conll":
        return read_conll(path, labeled=False)
    raise ValueError(f"file_format must be 'tokens' or 'conll'; got {file_format!r}")


def labeled_count(n_sentences: int, fraction: float) -> int:
    """How many of ``n_sentences`` keep their labels under ``--labeled-fraction fraction``.

    ``floor(fraction * n_sentences)``, at least 1, computed on the decimal value of ``fraction``
    (so ``0.29`` of 100 is 29, not the 28 that float arithmetic would give).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, Real):
        raise ValueError(f"fraction must be a number in (0, 1]; got {fraction!r}")
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}")
    if n_sentences < 1:
        raise ValueError(f"n_sentences must be at least 1; got {n_sentences}")
    exact = Fraction(fraction) if isinstance(fraction, int | Fraction) else Fraction(str(fraction))
    return max(1, math.floor(exact * n_sentences))


def split_labeled_fraction(
    sentences: Sequence[Sentence], fraction: float
) -> tuple[list[Sentence], list[Sentence]]:
    """Implement ``--labeled-fraction F``: keep the labels of the first ``F`` of the sentences.

    Returns ``(labeled, unlabeled)``: the first ``labeled_count(len(sentences), F)`` sentences
    unchanged, and the rest with their tags removed, in order. Every input sentence must be labeled.
    """
    for index, sentence in enumerate(sentences):
        if sentence.tags is None:
            raise ValueError(
                f"sentences[{index}] has no tags; split_labeled_fraction needs labeled sentences"
            )
    n_labeled = labeled_count(len(sentences), fraction)
    labeled = list(sentences[:n_labeled])
    unlabeled = [sentence.without_tags() for sentence in sentences[n_labeled:]]
    return labeled, unlabeled


def _check_field(value: str, name: str) -> None:
    if not isinstance(value, str) or not value or _COLUMN_SEPARATOR.search(value) or "\n" in value:
        raise ValueError(f"{name} = {value!r} cannot be a CoNLL column (empty or has whitespace)")


def write_conll(
    destination: str | os.PathLike[str] | TextIO,
    sentences: Sequence[Sentence],
    predictions: Sequence[Sequence[str]],
    probabilities: Sequence[Sequence[float]] | None = None,
    *,
    digits: int = 4,
) -> None:
    """Write predictions as a CoNLL file: ``word [gold] predicted [probability]`` per token.

    Args:
        destination: a path (written as UTF-8) or an open text stream (e.g. ``sys.stdout``).
        sentences: ``[n_sentences]``; the gold column is written when they all have tags, left out
            when none has (a mix is an error).
        predictions: ``[n_sentences][seq_len]`` predicted tags.
        probabilities: optional ``[n_sentences][seq_len]`` numbers in ``[0, 1]`` (e.g. the marginal
            probability of each predicted tag), written with ``digits`` decimals as a last column.

    Columns are separated by a space and sentences by a blank line, so ``read_conll`` reads the
    file back (without the probability column, the last column is the predicted tag).
    """
    if len(predictions) != len(sentences):
        raise ValueError(
            f"predictions must have one entry per sentence; got {len(predictions)} for "
            f"{len(sentences)} sentences"
        )
    if probabilities is not None and len(probabilities) != len(sentences):
        raise ValueError(
            f"probabilities must have one entry per sentence; got {len(probabilities)} for "
            f"{len(sentences)} sentences"
        )
    n_labeled = sum(sentence.tags is not None for sentence in sentences)
    if 0 < n_labeled < len(sentences):
        raise ValueError(
            f"sentences: {n_labeled} of {len(sentences)} have gold tags; all or none must have "
            "them (the gold column is written for every sentence or for none)"
        )
    blocks = []
    for index, sentence in enumerate(sentences):
        predicted = predictions[index]
        if len(predicted) != len(sentence):
            raise ValueError(
                f"predictions[{index}] has {len(predicted)} tags for {len(sentence)} tokens"
            )
        columns = [sentence.tokens] + ([sentence.tags] if n_labeled else []) + [predicted]
        names = ["tokens", "tags", "predictions"] if n_labeled else ["tokens", "predictions"]
        for name, column in zip(names, columns, strict=True):
            owner = "predictions" if name == "predictions" else "sentences"
            label = f"{owner}[{index}]" + ("" if owner == "predictions" else f".{name}")
            for position, value in enumerate(column):
                _check_field(value, f"{label}[{position}]")
        if probabilities is not None:
            numbers = probabilities[index]
            if len(numbers) != len(sentence):
                raise ValueError(
                    f"probabilities[{index}] has {len(numbers)} values for {len(sentence)} tokens"
                )
            formatted = []
            for position, number in enumerate(numbers):
                number = float(number)
                if not (0.0 <= number <= 1.0):  # also rejects NaN
                    raise ValueError(
                        f"probabilities[{index}][{position}] = {number} is not in [0, 1]"
                    )
                formatted.append(f"{number:.{digits}f}")
            columns.append(formatted)
        blocks.append("".join(" ".join(row) + "\n" for row in zip(*columns, strict=True)))
    text = "\n".join(blocks)
    if isinstance(destination, str | os.PathLike):
        with open(destination, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
    else:
        destination.write(text)


__all__ = [
    "DOCSTART",
    "DataError",
    "InferredIOB1Warning",
    "Sentence",
    "decode_utf8",
    "labeled_count",
    "read_conll",
    "read_text_lines",
    "read_tokenized",
    "read_unlabeled",
    "split_labeled_fraction",
    "write_conll",
]
