"""CoNLL-U dependency treebanks: reading with validation, writing predictions back, projectivity.

A sentence is read into a :class:`DepSentence`: its *words* (the lines whose ID is an integer),
their UPOS, heads (``0`` = root, words numbered from 1) and relations, plus the original
``conllu.TokenList`` so that a prediction can be written back with everything else untouched.
Multiword-token lines (IDs like ``3-4``) and empty-node lines (IDs like ``5.1``) stay in the
``TokenList`` (so they round-trip through :func:`write_conllu`) but are not words: they are left out
of the sequence a parser sees.

Every column of the ``TokenList`` is kept as the raw string of the file, except ``id`` (parsed
by ``conllu``: an int, or a tuple such as ``(3, "-", 4)``) and the ``head`` of words (an int):
writing a sentence back reproduces its lines exactly (``conllu``'s own dict parsing of FEATS
would merge repeated keys, which the Turkish treebank has, e.g.
``PersonNumber=A3sg|...|PersonNumber=V3sg``).

A malformed sentence (a wrong column count, a bad or out-of-sequence ID, a multiword-token range
or an empty node outside the sentence or out of place, a missing or out-of-range HEAD, a missing
DEPREL, a word its own head, no root, several roots, a cycle) raises :class:`DataError`
(``structkd.data.conll``; a ``ValueError``) naming the file, the line and the problem; so do bytes
that are not UTF-8 (a leading byte-order mark is ignored).

Unparsed text (HEAD and DEPREL ``_``, text to parse) is read with ``require_trees=False``: its
sentences have ``has_tree=False``, ``heads`` ``-1`` and ``relations`` ``"_"`` where the file has
``_`` (the ``TokenList`` keeps ``_``, so writing it back without predictions reproduces it).
Training and evaluation data need trees (the default).

Projectivity: a tree is projective when no two arcs cross, the root word's arc being drawn from a
node ``0`` left of the sentence (the trees Eisner's algorithm builds). Projective teachers (Eisner
inside-outside) train on the projective subset of the training data (:func:`projective_subset`); the
decision taken for this project. Evaluation always uses every sentence.

Named data sets: ``twt-tr:train``, ``twt-tr:dev``, ``twt-tr:test`` (:func:`load_turkish_treebank`),
the Turkish Web Treebank from the package ``turkish-treebanks==1.0.0``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import conllu
from conllu.exceptions import ParseException
from conllu.parser import DEFAULT_FIELDS, parse_comment_line, parse_id_value, parse_int_value

from structkd.data.conll import DataError, decode_utf8, labeled_count
from structkd.data.packages import distribution_data_file

__all__ = [
    "CONLLU_FIELDS",
    "TURKISH_TREEBANK_FILES",
    "TURKISH_TREEBANK_PACKAGE",
    "TURKISH_TREEBANK_SPLITS",
    "TURKISH_TREEBANK_VERSION",
    "DataError",
    "DepSentence",
    "format_conllu",
    "is_projective",
    "load_turkish_treebank",
    "parse_conllu",
    "projective_subset",
    "read_conllu",
    "split_labeled_trees",
    "tree_problem",
    "treebank_statistics",
    "turkish_treebank_paths",
    "with_predictions",
    "without_tree",
    "write_conllu",
]

CONLLU_FIELDS: tuple[str, ...] = tuple(DEFAULT_FIELDS)
"""The ten CoNLL-U columns: id form lemma upos xpos feats head deprel deps misc."""

# keep every comment line, also those without `key = value` (conllu drops them by default)
_KEEP_ALL_COMMENTS = {"__fallback__": lambda key, value: (key, value)}


# --------------------------------------------------------------------------------------------------
# sentences


@dataclass(frozen=True, eq=False)
class DepSentence:
    """One dependency-annotated sentence of a CoNLL-U file.

    ``words``, ``upos``, ``heads``, ``relations`` and ``word_lines`` have one entry per word (the
    integer-ID lines, in order); word ``i`` (1-based) is at index ``i - 1``. ``heads[i - 1]`` is the
    head of word ``i``: ``0`` for the root, else a word number in ``1..len(words)``.

    ``tokens`` is the original ``conllu.TokenList`` (multiword tokens and empty nodes included;
    columns as raw strings, see the module docstring); treat it as read-only
    (:func:`with_predictions` copies it). ``source`` is the file (or ``"<string>"``),
    ``start_line`` the 1-based line where the sentence block starts (its first comment or token
    line), ``word_lines`` the line of each word. ``has_tree``: ``False`` for a sentence read with
    ``require_trees=False`` whose HEAD or DEPREL column is ``_`` somewhere (text to parse): its
    ``heads`` are then ``-1`` and its ``relations`` ``"_"`` where the file has ``_``.
    """

    words: tuple[str, ...]
    upos: tuple[str, ...]
    heads: tuple[int, ...]
    relations: tuple[str, ...]
    tokens: conllu.TokenList
    source: str
    start_line: int
    word_lines: tuple[int, ...]
    has_tree: bool = True

    def __len__(self) -> int:
        return len(self.words)

    @property
    def is_projective(self) -> bool:
        """True when no two arcs cross (root arc drawn from node 0); see :func:`is_projective`."""
        return is_projective(self.heads)

    @property
    def sent_id(self) -> str | None:
        """The ``# sent_id`` comment, if any."""
        return self.tokens.metadata.get("sent_id")

    def __repr__(self) -> str:
        return (
            f"DepSentence({len(self.words)} words, source={self.source!r}, "
            f"start_line={self.start_line}, words={' '.join(self.words)[:60]!r})"
        )


# --------------------------------------------------------------------------------------------------
# tree checks (pure Python, one sentence)


def tree_problem(heads: Sequence[int], *, single_root: bool = True) -> tuple[int, str] | None:
    """The first reason ``heads`` is not a dependency tree, or ``None`` if it is one.

    ``heads[i - 1]`` is the head of word ``i`` (``0`` = root). Returns ``(word, message)``: the
    1-based word the problem sits on (``0`` for a problem of the whole sentence, such as no root)
    and a message. Checked in order: a head out of ``0..n``, a word its own head, no root, several
    roots (when ``single_root``), a cycle (words that never reach the root).
    """
    n_words = len(heads)
    if n_words == 0:
        return 0, "the sentence has no words"
    for word, head in enumerate(heads, start=1):
        if not 0 <= head <= n_words:
            return word, f"head {head} of word {word} is out of range 0..{n_words}"
        if head == word:
            return word, f"word {word} is its own head"
    roots = [word for word, head in enumerate(heads, start=1) if head == 0]
    if not roots:
        return 0, "no root (no word has head 0)"
    if single_root and len(roots) > 1:
        return roots[1], f"several roots: words {roots} have head 0"
    cycle = _find_cycle(heads)
    if cycle:
        return min(cycle), f"cycle through words {sorted(cycle)}"
    return None


def _find_cycle(heads: Sequence[int]) -> list[int]:
    """Words of one cycle of the head graph (``heads`` all in ``0..n``), or ``[]`` if none."""
    state = [0] * (len(heads) + 1)  # 0 unvisited, 1 on the current path, 2 reaches the root
    state[0] = 2
    for start in range(1, len(heads) + 1):
        path = []
        word = start
        while state[word] == 0:
            state[word] = 1
            path.append(word)
            word = heads[word - 1]
        if state[word] == 1:  # walked back into the current path
            return path[path.index(word) :]
        for visited in path:
            state[visited] = 2
    return []


def is_projective(heads: Sequence[int]) -> bool:
    """True when the tree ``heads`` (``heads[i - 1]`` = head of word ``i``, 0 = root) is projective.

    Arcs are the spans ``(min(h, d), max(h, d))`` with the root's arc drawn from node ``0`` left of
    the sentence; two arcs ``(a, b)`` and ``(c, d)`` cross when ``a < c < b < d``. Projective
    teachers train on the projective subset (:func:`projective_subset`).
    """
    arcs = sorted((min(head, dep), max(head, dep)) for dep, head in enumerate(heads, start=1))
    for index, (left, right) in enumerate(arcs):
        for other_left, other_right in arcs[index + 1 :]:
            if other_left >= right:
                break  # sorted by left end: no later arc starts inside (left, right)
            if left < other_left < right < other_right:
                return False
    return True


def projective_subset(sentences: Iterable[DepSentence]) -> list[DepSentence]:
    """The sentences whose tree is projective (:func:`is_projective`), in order.

    The decision taken for this project: a projective teacher (Eisner inside-outside) trains on
    this subset of the training data; non-projective teachers and students train on all of it.
    """
    return [sentence for sentence in sentences if sentence.is_projective]


# --------------------------------------------------------------------------------------------------
# reading


def read_conllu(
    path: str | os.PathLike[str], *, single_root: bool = True, require_trees: bool = True
) -> list[DepSentence]:
    """Read a CoNLL-U file (UTF-8, a byte-order mark ignored) into sentences; raises
    :class:`DataError` (file and line) on malformed data or bytes that are not UTF-8.

    ``single_root=False`` accepts several words with head 0 (still at least one, and no cycle).
    ``require_trees=False`` also accepts unparsed sentences (HEAD and DEPREL ``_``: text to
    parse; ``has_tree=False``); a sentence whose every word has a HEAD is still checked as a tree.
    """
    path = Path(path)
    text = decode_utf8(path.read_bytes(), path)
    return parse_conllu(
        text, source=str(path), single_root=single_root, require_trees=require_trees
    )


def parse_conllu(
    text: str,
    *,
    source: str = "<string>",
    single_root: bool = True,
    require_trees: bool = True,
) -> list[DepSentence]:
    """Parse CoNLL-U text into sentences; ``source`` names the text in error messages; options as
    :func:`read_conllu` (a leading byte-order mark is ignored)."""
    return [
        _parse_block(block, source, single_root, require_trees)
        for block in _sentence_blocks(text.removeprefix("\ufeff").split("\n"))
    ]


def _sentence_blocks(lines: Sequence[str]) -> Iterator[list[tuple[int, str]]]:
    """Blank-line separated blocks of ``(1-based line number, line)`` (a final ``\\r`` removed)."""
    block: list[tuple[int, str]] = []
    for line_number, raw_line in enumerate(lines, start=1):
        line = raw_line[:-1] if raw_line.endswith("\r") else raw_line
        if line.strip():
            block.append((line_number, line))
        elif block:
            yield block
            block = []
    if block:
        yield block


_NEEDS_TREES = (
    "training and evaluation data need gold trees (unparsed CoNLL-U can only be given to predict)"
)


def _parse_block(
    block: list[tuple[int, str]], source: str, single_root: bool, require_trees: bool = True
) -> DepSentence:
    metadata = conllu.Metadata()
    tokens: list[conllu.Token] = []
    words: list[conllu.Token] = []
    word_lines: list[int] = []
    ranges: list[tuple[int, int, int]] = []  # (line, first word, last word) of multiword tokens
    empty_nodes: list[tuple[int, int]] = []  # (line, the word it follows)
    unparsed = False
    for line_number, line in block:
        if line.startswith("#"):
            try:
                pairs = parse_comment_line(line, metadata_parsers=_KEEP_ALL_COMMENTS)
            except (ParseException, ValueError) as error:
                raise DataError(source, line_number, f"malformed comment line: {error}") from None
            for key, value in pairs:
                metadata[key] = value
            continue
        columns = line.split("\t")
        if len(columns) != len(CONLLU_FIELDS):
            raise DataError(
                source,
                line_number,
                f"expected {len(CONLLU_FIELDS)} tab-separated columns, found {len(columns)}: "
                f"{line!r}",
            )
        token = conllu.Token(zip(CONLLU_FIELDS, columns, strict=True))
        try:
            token_id = parse_id_value(columns[0])
        except (ParseException, ValueError):
            token_id = None
        if token_id is None:
            raise DataError(source, line_number, f"invalid ID {columns[0]!r}")
        token["id"] = token_id
        if isinstance(token_id, int):
            expected = len(words) + 1
            if token_id != expected:
                raise DataError(
                    source, line_number, f"word ID {token_id} out of sequence, expected {expected}"
                )
            try:
                head = parse_int_value(columns[6])
            except (ParseException, ValueError):
                raise DataError(source, line_number, f"invalid HEAD {columns[6]!r}") from None
            missing = "HEAD" if head is None else "DEPREL" if columns[7] in ("", "_") else None
            if missing is not None:
                if require_trees:
                    raise DataError(
                        source,
                        line_number,
                        f"word {token_id} has no {missing} ('_'); {_NEEDS_TREES}",
                    )
                unparsed = True
            token["head"] = head
            words.append(token)
            word_lines.append(line_number)
        elif token_id[1] == "-":
            first, last = token_id[0], token_id[2]
            if first != len(words) + 1 or last <= first:
                raise DataError(
                    source,
                    line_number,
                    f"multiword token {columns[0]} must span two or more words from the next "
                    f"word, {len(words) + 1}",
                )
            ranges.append((line_number, first, last))
        else:
            if token_id[0] != len(words):
                raise DataError(
                    source,
                    line_number,
                    f"empty node {columns[0]} must follow word {token_id[0]}, not word "
                    f"{len(words)}",
                )
            empty_nodes.append((line_number, token_id[0]))
        tokens.append(token)

    start_line = block[0][0]
    if not words:
        raise DataError(source, start_line, "sentence has no words (no integer-ID line)")
    for line_number, first, last in ranges:
        if last > len(words):
            raise DataError(
                source,
                line_number,
                f"multiword token {first}-{last} reaches past the last word, {len(words)}",
            )
    for index, (line_number, first, last) in enumerate(ranges[1:], start=1):
        if first <= ranges[index - 1][2]:
            raise DataError(
                source,
                line_number,
                f"multiword token {first}-{last} overlaps {ranges[index - 1][1]}-"
                f"{ranges[index - 1][2]}",
            )
    if unparsed:
        for word, token in enumerate(words, start=1):
            head = token["head"]
            if head is not None and (not 0 <= head <= len(words) or head == word):
                raise DataError(
                    source,
                    word_lines[word - 1],
                    f"head {head} of word {word} is out of range 0..{len(words)} or the word "
                    "itself",
                )
        heads = tuple(-1 if token["head"] is None else token["head"] for token in words)
    else:
        heads = tuple(token["head"] for token in words)
        problem = tree_problem(heads, single_root=single_root)
        if problem is not None:
            word, message = problem
            line_number = word_lines[word - 1] if word else start_line
            raise DataError(source, line_number, f"malformed tree: {message}")
    return DepSentence(
        words=tuple(token["form"] for token in words),
        upos=tuple(token["upos"] for token in words),
        heads=heads,
        relations=tuple(token["deprel"] for token in words),
        tokens=conllu.TokenList(tokens, metadata, default_fields=list(CONLLU_FIELDS)),
        source=source,
        start_line=start_line,
        word_lines=tuple(word_lines),
        has_tree=not unparsed,
    )


def without_tree(sentence: DepSentence) -> DepSentence:
    """``sentence`` as unparsed text: the same words and UPOS, ``heads`` ``-1`` and
    ``relations`` ``"_"`` everywhere, ``has_tree=False``, and a copy of ``tokens`` whose words'
    HEAD, DEPREL and DEPS are ``_`` (so that no gold tree is left in it to read)."""
    tokens = conllu.TokenList(
        [
            conllu.Token({**token, "head": None, "deprel": "_", "deps": "_"})
            if isinstance(token["id"], int)
            else conllu.Token(token)
            for token in sentence.tokens
        ],
        conllu.Metadata(sentence.tokens.metadata),
        default_fields=sentence.tokens.default_fields,
    )
    n_words = len(sentence)
    return DepSentence(
        words=sentence.words,
        upos=sentence.upos,
        heads=(-1,) * n_words,
        relations=("_",) * n_words,
        tokens=tokens,
        source=sentence.source,
        start_line=sentence.start_line,
        word_lines=sentence.word_lines,
        has_tree=False,
    )


def split_labeled_trees(
    sentences: Sequence[DepSentence], fraction: float
) -> tuple[list[DepSentence], list[DepSentence]]:
    """``--labeled-fraction F`` on a treebank: ``(labeled, unlabeled)``, the first
    ``labeled_count(len(sentences), F)`` sentences unchanged and the rest ``without_tree``, in
    order (the dependency counterpart of ``structkd.data.conll.split_labeled_fraction``). Every
    input sentence must have a tree."""
    for index, sentence in enumerate(sentences):
        if not sentence.has_tree:
            raise ValueError(
                f"sentences[{index}] has no tree; split_labeled_trees needs gold trees"
            )
    n_labeled = labeled_count(len(sentences), fraction)
    return list(sentences[:n_labeled]), [without_tree(s) for s in sentences[n_labeled:]]


# --------------------------------------------------------------------------------------------------
# writing


def with_predictions(
    sentence: DepSentence,
    heads: Sequence[int] | None = None,
    relations: Sequence[str] | None = None,
) -> conllu.TokenList:
    """A copy of ``sentence.tokens`` with the HEAD (and DEPREL) of each word replaced.

    ``heads`` ``[n_words]`` ints in ``0..n_words`` (word ``i`` at index ``i - 1``), ``relations``
    ``[n_words]`` strings; ``None`` keeps the column. Multiword tokens, empty nodes, comments and
    every other column are kept as read. Raises ``ValueError`` on a wrong length or a head out of
    range (a prediction need not be a tree; the decoders in ``dep_encodings`` always give one).
    """
    n_words = len(sentence)
    if heads is not None:
        heads = [int(head) for head in heads]
        if len(heads) != n_words:
            raise ValueError(f"heads must have {n_words} entries (one per word), got {len(heads)}")
        bad = [head for head in heads if not 0 <= head <= n_words]
        if bad:
            raise ValueError(f"heads must lie in 0..{n_words}, got {bad[0]}")
    if relations is not None:
        relations = [str(relation) for relation in relations]
        if len(relations) != n_words:
            raise ValueError(
                f"relations must have {n_words} entries (one per word), got {len(relations)}"
            )
        if any(not relation or "\t" in relation or "\n" in relation for relation in relations):
            raise ValueError("relations must be non-empty strings without tabs or newlines")
    copied = conllu.TokenList(
        [conllu.Token(token) for token in sentence.tokens],
        conllu.Metadata(sentence.tokens.metadata),
        default_fields=sentence.tokens.default_fields,
    )
    word_index = 0
    for token in copied:
        if isinstance(token["id"], int):
            if heads is not None:
                token["head"] = heads[word_index]
            if relations is not None:
                token["deprel"] = relations[word_index]
            word_index += 1
    return copied


def _per_sentence(name: str, values: Any, sentences: Sequence[DepSentence]) -> list[Any]:
    """Per-sentence predictions: a sequence of per-word sequences, or (heads only) a padded
    tensor ``[batch, max_len + 1]`` in the structures' value format (column 0 unused, word ``i``
    at ``i``)."""
    if values is None:
        return [None] * len(sentences)
    torch = sys.modules.get("torch")  # a tensor can only come from an imported torch
    if torch is not None and isinstance(values, torch.Tensor):
        if values.dim() != 2 or values.shape[0] != len(sentences):
            raise ValueError(
                f"{name} as a tensor must have shape [batch={len(sentences)}, max_len + 1], "
                f"got {list(values.shape)}"
            )
        if values.shape[1] < max((len(sentence) for sentence in sentences), default=0) + 1:
            raise ValueError(f"{name} tensor has {values.shape[1]} columns, too few for the words")
        rows = values.tolist()
        return [row[1 : len(sentence) + 1] for row, sentence in zip(rows, sentences, strict=True)]
    values = list(values)
    if len(values) != len(sentences):
        raise ValueError(
            f"{name} must have one entry per sentence ({len(sentences)}), got {len(values)}"
        )
    return values


def format_conllu(
    sentences: Sequence[DepSentence],
    heads: Sequence[Sequence[int]] | Any | None = None,
    relations: Sequence[Sequence[str]] | None = None,
) -> str:
    """CoNLL-U text of ``sentences``, with predicted ``heads`` / ``relations`` if given.

    ``heads``: one ``[n_words]`` sequence per sentence, or a tensor ``[batch, max_len + 1]`` in the
    structures' value format (``heads[b, i]`` = head of word ``i``, column 0 and padding ignored);
    ``relations``: one ``[n_words]`` sequence of strings per sentence. ``None`` keeps the gold
    columns.
    """
    sentences = list(sentences)
    head_rows = _per_sentence("heads", heads, sentences)
    relation_rows = _per_sentence("relations", relations, sentences)
    return "".join(
        with_predictions(sentence, sentence_heads, sentence_relations).serialize()
        for sentence, sentence_heads, sentence_relations in zip(
            sentences, head_rows, relation_rows, strict=True
        )
    )


def write_conllu(
    path: str | os.PathLike[str],
    sentences: Sequence[DepSentence],
    heads: Sequence[Sequence[int]] | Any | None = None,
    relations: Sequence[Sequence[str]] | None = None,
) -> None:
    """Write ``sentences`` as CoNLL-U (UTF-8) to ``path``; arguments as :func:`format_conllu`."""
    text = format_conllu(sentences, heads, relations)
    Path(path).write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# the Turkish Web Treebank (named data sets twt-tr:train, twt-tr:dev, twt-tr:test)

TURKISH_TREEBANK_PACKAGE = "turkish-treebanks"
TURKISH_TREEBANK_VERSION = "1.0.0"
TURKISH_TREEBANK_FILES: tuple[str, ...] = ("data/web.conllu", "data/wiki.conllu")
TURKISH_TREEBANK_SPLITS: tuple[str, ...] = ("train", "dev", "test")


def turkish_treebank_paths() -> tuple[Path, ...]:
    """The installed ``data/web.conllu`` and ``data/wiki.conllu`` of ``turkish-treebanks``.

    Found at run time in the site-packages where the distribution is installed
    (``importlib.metadata``). Raises ``MissingDataPackageError`` with the pip command if the
    package is absent, ``FileNotFoundError`` if it lacks a file.
    """
    requirement = f"{TURKISH_TREEBANK_PACKAGE}=={TURKISH_TREEBANK_VERSION}"
    return tuple(
        distribution_data_file(TURKISH_TREEBANK_PACKAGE, name, requirement)
        for name in TURKISH_TREEBANK_FILES
    )


def _split_of(index: int) -> str:
    """The treebank's split rule: sentence ``index`` of a file goes to train if ``index % 10 < 8``,
    dev if ``== 8``, test if ``== 9``."""
    remainder = index % 10
    return "train" if remainder < 8 else ("dev" if remainder == 8 else "test")


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, modified_ns: int) -> tuple[DepSentence, ...]:
    del modified_ns  # part of the cache key only: a changed file is read again
    return tuple(read_conllu(path))


def load_turkish_treebank(split: str) -> list[DepSentence]:
    """The ``train``, ``dev`` or ``test`` split of the Turkish Web Treebank (``twt-tr:<split>``).

    Both files (``web`` then ``wiki``) are split by the treebank's rule: sentence ``i`` of a file
    (0-based) goes to train if ``i % 10 < 8``, dev if ``i % 10 == 8``, test if ``i % 10 == 9``.
    4,851 sentences in all (3,881 / 485 / 485), 81,370 words, 14 UPOS, 44 relations, 315 trees
    (6.5%) non-projective. Files are parsed once per process (cached; sentences are shared, treat
    them as read-only).
    """
    if split not in TURKISH_TREEBANK_SPLITS:
        raise ValueError(f"split must be one of {TURKISH_TREEBANK_SPLITS}, got {split!r}")
    selected: list[DepSentence] = []
    for path in turkish_treebank_paths():
        sentences = _read_cached(str(path), path.stat().st_mtime_ns)
        selected.extend(s for index, s in enumerate(sentences) if _split_of(index) == split)
    return selected


def treebank_statistics(sentences: Sequence[DepSentence]) -> dict[str, float | int]:
    """Counts of a list of sentences: sentences, words, UPOS and relation types, multiword tokens,
    empty nodes, the longest sentence, and the number and fraction of non-projective trees."""
    non_projective = sum(not sentence.is_projective for sentence in sentences)
    ids = [token["id"] for sentence in sentences for token in sentence.tokens]
    return {
        "sentences": len(sentences),
        "words": sum(len(sentence) for sentence in sentences),
        "upos": len({tag for sentence in sentences for tag in sentence.upos}),
        "relations": len({rel for sentence in sentences for rel in sentence.relations}),
        "multiword_tokens": sum(isinstance(i, tuple) and i[1] == "-" for i in ids),
        "empty_nodes": sum(isinstance(i, tuple) and i[1] == "." for i in ids),
        "max_length": max((len(sentence) for sentence in sentences), default=0),
        "non_projective": non_projective,
        "non_projective_fraction": non_projective / len(sentences) if sentences else 0.0,
    }
