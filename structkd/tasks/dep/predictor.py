"""What the dependency predictors of both backends share (no torch here): ``DepParse``, one
sentence's result; ``DepPredictor``, which checks the input's UPOS tags and writes a parse into a
``Document``; ``write_documents``, CoNLL-U or JSON lines out.

**UPOS.** Every dependency model reads gold UPOS tags: the biaffine parsers and the students
embed them, and the PoS-based student's labels name their heads by UPOS (``+1@VERB``: the next
verb), so it cannot decode a head without them. Input with tags (CoNLL-U, or
``TokenizedSentence(upos=...)``) is parsed as trained. Input without (raw text, token lists):

* a model that decodes with UPOS (``student-dep-pos``) refuses it, ``ValueError``: give CoNLL-U
  input with the UPOS column;
* any other model parses it with no UPOS information (every word reads the UPOS embedding's
  zero row, ``WordEncoder``) and warns once per predictor (``UserWarning``) that accuracy drops.
  Measured on the Turkish Web Treebank test set (punctuation excluded): the offset student
  distilled from the matrix-tree parser (structural KD, 12 epochs) goes from 79.5 UAS / 73.3 LAS
  with gold UPOS to 65.2 / 47.3 without; the matrix-tree parser from 88.2 / 82.6 to 73.6 / 51.0.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from structkd.serve.predictor import Predictor
from structkd.serve.results import Document, Sentence, write_json_lines
from structkd.serve.text import TokenizedSentence

__all__ = [
    "OUTPUT_FORMATS",
    "DepParse",
    "DepPredictor",
    "ParserInput",
    "check_scheme",
    "conllu_lines",
    "parses",
    "write_documents",
]

OUTPUT_FORMATS = ("conllu", "json")
"""What ``write_documents`` writes (``DepTask.output_formats``)."""


@dataclass(frozen=True)
class DepParse:
    """One sentence's parse: ``heads`` (the head of each token, 1-based, ``0`` for the root),
    ``deprels`` (the relation of each token's arc) and ``head_scores`` (the probability of each
    token's head under the model: a tree CRF's exact arc marginal, a student's label
    probabilities summed over the labels that denote that head)."""

    heads: tuple[int, ...]
    deprels: tuple[str, ...]
    head_scores: tuple[float, ...]


class ParserInput:
    """A sentence as the dependency collator reads it: ``words`` and ``upos`` (``None``: no
    tags)."""

    __slots__ = ("upos", "words")

    def __init__(self, words: Sequence[str], upos: Sequence[str] | None):
        self.words = words
        self.upos = upos

    def __len__(self) -> int:
        return len(self.words)


def check_scheme(scheme: str | None) -> None:
    """``ValueError`` for a tag scheme: dependency parses have none (``None`` or the API's
    default ``"bioes"`` are accepted and ignored)."""
    if scheme not in (None, "bioes"):
        raise ValueError(
            f"scheme={scheme!r} is a NER tag scheme; a dependency parse has no tags (leave it out)"
        )


class DepPredictor(Predictor):
    """A dependency predictor (either backend): ``label_batch`` checks the UPOS tags (module
    docstring) and returns a ``DepParse`` per sentence (``parse_batch``, the backend's);
    ``annotate`` fills each token's ``head``, ``deprel`` and ``head_score``.

    Attributes (set by the backend): ``needs_upos``: the model cannot decode without UPOS tags
    (PoS-based student); ``reads_upos``: it embeds them (parsing without them warns)."""

    task = "dep"
    needs_upos: bool = False
    reads_upos: bool = True

    def __init__(self, model_dir: Any, **options: Any):
        super().__init__(model_dir, **options)
        self._warned = False

    def parse_batch(self, sentences: Sequence[TokenizedSentence]) -> list[DepParse]:
        """The backend's parse of one batch (UPOS already checked)."""
        raise NotImplementedError

    def label_batch(self, sentences: Sequence[TokenizedSentence]) -> list[DepParse]:
        if not sentences:
            return []
        self.check_upos(sentences)
        return self.parse_batch(sentences)

    def check_upos(self, sentences: Sequence[TokenizedSentence]) -> None:
        """Refuse (``needs_upos``) or warn once about sentences without UPOS tags."""
        untagged = [index for index, sentence in enumerate(sentences) if sentence.upos is None]
        for sentence in sentences:
            if sentence.upos is not None and len(sentence.upos) != len(sentence.tokens):
                raise ValueError(
                    f"a sentence has {len(sentence.tokens)} tokens but {len(sentence.upos)} UPOS "
                    "tags"
                )
        if not untagged:
            return
        if self.needs_upos:
            raise ValueError(
                f"the model in {self.model_dir} decodes heads from UPOS tags (its labels name a "
                "head by its part of speech), and the input has none (raw text or tokens): give "
                "CoNLL-U input with the UPOS column"
            )
        if self.reads_upos and not self._warned:
            self._warned = True
            warnings.warn(
                f"parsing without UPOS tags: the model in {self.model_dir} was trained with gold "
                "UPOS, which every word now lacks (unknown); expect a lower accuracy than with "
                "tagged input (CoNLL-U with the UPOS column)",
                UserWarning,
                stacklevel=5,
            )

    def annotate(
        self, document: Document, sentence_index: int, sentence: Sentence, result: DepParse
    ) -> None:
        for token, head, deprel, score in zip(
            sentence.tokens, result.heads, result.deprels, result.head_scores, strict=True
        ):
            token.head = head
            token.deprel = deprel
            token.head_score = score


def parses(
    heads: Any, deprels: Sequence[Sequence[str]], scores: Any, lengths: Sequence[int]
) -> list[DepParse]:
    """``DepParse`` per sentence from padded ``heads`` ``[B, N]`` and ``scores`` ``[B, N]``
    (numpy) and per-sentence relation names."""
    head_rows = heads.tolist()
    score_rows = scores.clip(0.0, 1.0).tolist()
    return [
        DepParse(tuple(head_rows[b][:n]), tuple(deprels[b]), tuple(score_rows[b][:n]))
        for b, n in enumerate(lengths)
    ]


# -- output ---------------------------------------------------------------------------------------


def _field(text: str, what: str) -> str:
    if any(character in text for character in "\t\n\r"):
        raise ValueError(f"{what} {text!r} holds a tab or a line break: not writable as CoNLL-U")
    return text


def conllu_lines(document: Document, number: int) -> list[str]:
    """The CoNLL-U lines of ``document`` (the ``number``-th): per sentence a ``# text`` comment,
    one line per token ``ID FORM _ UPOS _ _ HEAD DEPREL _ MISC`` (``MISC``: ``HeadProb``, the
    head's probability to 4 decimals, and ``SpaceAfter=No`` where the next token follows without
    a space), and a blank line."""
    lines = []
    for sentence in document.sentences:
        tokens = sentence.tokens
        if any(token.head is None or token.deprel is None for token in tokens):
            raise ValueError(f"document {number} has a token without a predicted head")
        text = " ".join(document.text[sentence.start : sentence.end].split())
        lines.append(f"# text = {text}")
        for index, token in enumerate(tokens):
            misc = [] if token.head_score is None else [f"HeadProb={token.head_score:.4f}"]
            if index + 1 < len(tokens) and tokens[index + 1].start == token.end:
                misc.append("SpaceAfter=No")
            columns = [
                str(index + 1),
                _field(token.text, "token"),
                "_",
                _field(token.upos, "UPOS") if token.upos else "_",
                "_",
                "_",
                str(token.head),
                _field(token.deprel, "relation"),
                "_",
                "|".join(misc) or "_",
            ]
            lines.append("\t".join(columns))
        lines.append("")
    return lines


def write_documents(
    stream: TextIO, documents: Iterable[Document], *, format: str, scheme: str | None = None
) -> int:
    """Write parsed ``documents`` to ``stream``; returns the number of sentences written.

    ``"conllu"``: the sentences of every document, ``ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL
    DEPS MISC`` (``_`` for what the parser does not predict; UPOS as given; ``HeadProb`` in MISC,
    see ``conllu_lines``), a blank line after each sentence; ``"json"``: one JSON object per
    document and line (``Document.to_dict``: text, sentences, tokens with offsets, head, deprel,
    head_score, upos). ``scheme``: the NER option, refused unless ``None`` or ``"bioes"``."""
    if format not in OUTPUT_FORMATS:
        raise ValueError(
            f"dependency parses can be written as {', '.join(OUTPUT_FORMATS)}; got {format!r}"
        )
    check_scheme(scheme)
    documents = list(documents)
    n_sentences = sum(len(document.sentences) for document in documents)
    if format == "json":
        write_json_lines(stream, documents)
        return n_sentences
    for number, document in enumerate(documents, start=1):
        lines = conllu_lines(document, number)
        if lines:
            stream.write("\n".join(lines) + "\n")
    return n_sentences
