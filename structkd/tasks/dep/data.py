"""Dependency treebanks: a registered data set name (``twt-tr:train``) or a CoNLL-U file."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from structkd.data.conll import read_text_lines
from structkd.data.conllu_io import DepSentence, read_conllu, without_tree
from structkd.data.datasets import is_dataset_name, load_dataset
from structkd.data.formats import conllu_line

__all__ = ["DepSource", "load_dep_source", "load_dep_text"]


@dataclass(frozen=True)
class DepSource:
    """Dependency trees read from a named data set (``twt-tr:train``) or a CoNLL-U file."""

    name: str
    sentences: list[DepSentence]

    def __len__(self) -> int:
        return len(self.sentences)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the words and UPOS tags of every sentence: what a model reads (not the
        trees), so it keys the caches of teacher outputs."""
        digest = hashlib.sha256()
        for sentence in self.sentences:
            digest.update("\x1f".join(sentence.words).encode("utf-8"))
            digest.update(b"\x1d")
            digest.update("\x1f".join(sentence.upos).encode("utf-8"))
            digest.update(b"\x1e")
        return digest.hexdigest()

    @property
    def lengths(self) -> list[int]:
        return [len(sentence) for sentence in self.sentences]


def load_dep_source(
    spec: str, *, role: str = "train", max_sentences: int | None = None
) -> DepSource:
    """A treebank: a registered data set name (``twt-tr:dev``) or a CoNLL-U file (malformed trees
    stop with the file, line and problem).

    ``role="input"`` (text to parse) also accepts unparsed sentences (HEAD and DEPREL ``_``);
    every other role (``train``, ``dev``, ``test``, ``evaluation``) needs gold trees."""
    spec = os.fspath(spec)
    if is_dataset_name(spec):
        sentences = list(load_dataset(spec))
        if sentences and not isinstance(sentences[0], DepSentence):
            raise ValueError(
                f"{role} data {spec!r} is not a dependency treebank (its records are "
                f"{type(sentences[0]).__name__}); --task dep reads CoNLL-U trees"
            )
    elif Path(spec).is_file():
        sentences = read_conllu(spec, require_trees=role != "input")
    else:
        raise ValueError(f"{role} data {spec!r} is neither a known data set nor an existing file")
    if not sentences:
        raise ValueError(f"{role} data {spec!r} has no sentences")
    if max_sentences is not None:
        sentences = sentences[:max_sentences]
    return DepSource(spec, sentences)


def load_dep_text(spec: str, *, role: str = "unlabeled") -> DepSource:
    """Unlabeled text for distillation (``--unlabeled``): a CoNLL-U file whose HEAD and DEPREL
    may be ``_`` (a treebank's trees, where it has some, are dropped: ``without_tree``), or a
    registered treebank. Every word needs its UPOS (the parsers and the students read it); a
    file that is not CoNLL-U (tokenized or raw text) or a word whose UPOS is ``_`` is refused
    with a ``ValueError`` naming the file (and the line)."""
    spec = os.fspath(spec)
    if not is_dataset_name(spec) and Path(spec).is_file() and not spec.endswith(".conllu"):
        if conllu_line(read_text_lines(spec)) is None:
            raise ValueError(
                f"{role} data {spec!r} is not CoNLL-U: --task dep reads unlabeled text as "
                "CoNLL-U with the UPOS of every word (HEAD and DEPREL may be '_'), because the "
                "parsers and the students read UPOS; tag tokenized text with UPOS first"
            )
    source = load_dep_source(spec, role="input")
    for sentence in source.sentences:
        for word, tag in enumerate(sentence.upos, start=1):
            if tag in ("", "_"):
                raise ValueError(
                    f"{role} data {spec!r}: {sentence.source}:{sentence.word_lines[word - 1]}: "
                    f"word {word} has no UPOS ('_'); --task dep reads the UPOS of every word "
                    "(the parsers and the students read it): tag the text with UPOS first"
                )
    return DepSource(spec, [without_tree(sentence) for sentence in source.sentences])
