"""The ``Predictor`` base class: what every task's predictor shares (input normalization,
tokenization, length-sorted batches, the thread count, assembling ``Document``s); a task supplies
``label_batch`` (one batch of tokenized sentences -> one result per sentence) and ``annotate``
(write a sentence's result into its tokens and document).

    predictor = structkd.load("models/student")
    predictor.predict("EU rejects German call. Peter Blackburn reports.")   -> Document
    predictor.predict(["text one", "text two"])                            -> [Document, Document]
    predictor.predict([["EU", "rejects", "German", "call", "."]])          -> [Document]
                                                                     (one pre-tokenized sentence)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import fields
from itertools import repeat
from typing import Any, overload

from structkd.serve.results import Document, Sentence, Token
from structkd.serve.text import TokenizedSentence, from_tokens, split_text

__all__ = ["Predictor", "length_sorted_batches"]

_TOKEN_ORDER = tuple(field.name for field in fields(Token) if field.init)
_TOKEN_FIELDS = frozenset(_TOKEN_ORDER)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``lengths`` in batches of at most ``batch_size``, longest sentences first (so
    each batch pads little)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
    for begin in range(0, len(order), batch_size):
        yield order[begin : begin + batch_size]


class Predictor(ABC):
    """Labels text with one model (see the module docstring).

    Attributes: ``task`` (the task's name), ``backend`` (``"torch"`` or ``"onnx"``),
    ``model_dir``, ``batch_size`` (sentences per batch), ``num_threads`` (``None``: the backend's
    default)."""

    task: str
    backend: str

    def __init__(self, model_dir: Any, *, batch_size: int = 64, num_threads: int | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        if num_threads is not None and (
            isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
        ):
            raise ValueError(f"num_threads must be None or an integer >= 1; got {num_threads!r}")
        self.model_dir = model_dir
        self.batch_size = batch_size
        self.num_threads = num_threads

    # -- what a task supplies ---------------------------------------------------------------------

    @abstractmethod
    def label_batch(self, sentences: Sequence[TokenizedSentence]) -> list[Any]:
        """One result per sentence of a batch (a task's own type)."""

    @abstractmethod
    def annotate(
        self, document: Document, sentence_index: int, sentence: Sentence, result: Any
    ) -> None:
        """Write ``result`` (of ``label_batch``) into ``sentence`` (the ``sentence_index``-th of
        ``document``): its tokens' fields (those ``token_fields`` does not give) and, for NER,
        the document's entities."""

    def token_fields(self, result: Any) -> dict[str, Sequence[Any]]:
        """The ``Token`` fields that ``result`` (of ``label_batch``) gives, one value per token
        (field name -> values): set as the tokens are made, before ``annotate`` (cheaper than
        setting them one token at a time). None by default."""
        return {}

    # -- the API ----------------------------------------------------------------------------------

    @overload
    def predict(self, texts: str, *, split_sentences: bool = True) -> Document: ...

    @overload
    def predict(self, texts: Sequence[Any], *, split_sentences: bool = True) -> list[Document]: ...

    def predict(self, texts: Any, *, split_sentences: bool = True) -> Document | list[Document]:
        """Label ``texts``: a string (one ``Document`` back), or a list of strings (raw texts,
        tokenized and split into sentences by syntok), of token lists (pre-tokenized sentences,
        one per document) or of ``TokenizedSentence`` (one per document); a list of ``Document``
        back, in input order. ``split_sentences=False`` keeps each raw text one sentence."""
        if isinstance(texts, str):
            return self.predict_documents([texts], split_sentences=split_sentences)[0]
        return self.predict_documents(list(texts), split_sentences=split_sentences)

    def predict_documents(
        self, texts: Sequence[Any], *, split_sentences: bool = True
    ) -> list[Document]:
        """``predict`` on a list (see there). A model that reads document context reads each
        raw text as one document, and the ``TokenizedSentence`` items that share a
        ``document`` number (those read from one file's document) as one document; any other
        item is a document of its own. Each item is still one ``Document`` of the result."""
        documents: list[tuple[str, list[TokenizedSentence]]] = []
        for index, item in enumerate(texts):
            if isinstance(item, str):
                sentences = split_text(item)
                if not split_sentences and len(sentences) > 1:
                    sentences = [_joined(sentences)]
                documents.append((item, sentences))
            elif isinstance(item, TokenizedSentence):
                documents.append((" ".join(item.tokens), [item] if len(item) else []))
            elif isinstance(item, Sequence):
                text, sentence = from_tokens(item)
                documents.append((text, [sentence] if len(sentence) else []))
            else:
                raise TypeError(
                    f"item {index} must be a string, a list of tokens or a TokenizedSentence; "
                    f"got {type(item).__name__}"
                )
        flat = [sentence for _, sentences in documents for sentence in sentences]
        document_of = _context_documents(texts, documents)
        results = self.label_sentences(flat, documents=document_of)
        out, position = [], 0
        for text, sentences in documents:
            document = Document(text=text, sentences=[])
            for index, tokenized in enumerate(sentences):
                result = results[position]
                sentence = Sentence(tokens=_tokens(tokenized, self.token_fields(result)))
                document.sentences.append(sentence)
                self.annotate(document, index, sentence, result)
                position += 1
            out.append(document)
        return out

    def label_sentences(
        self, sentences: Sequence[TokenizedSentence], documents: Sequence[int] | None = None
    ) -> list[Any]:
        """``label_batch`` over length-sorted batches of ``sentences``; results in input order.
        ``documents``: the input text (document) each sentence comes from, in order, for a model
        that reads the sentences around each one (a NER tagger with document context overrides
        this method); ignored here."""
        results: list[Any] = [None] * len(sentences)
        lengths = [len(sentence) for sentence in sentences]
        for indices in length_sorted_batches(lengths, self.batch_size):
            batch_results = self.label_batch([sentences[i] for i in indices])
            for index, result in zip(indices, batch_results, strict=True):
                results[index] = result
        return results

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(task={self.task!r}, backend={self.backend!r}, "
            f"model_dir={str(self.model_dir)!r})"
        )


def _tokens(sentence: TokenizedSentence, given: dict[str, Sequence[Any]]) -> list[Token]:
    """The ``Token``s of a tokenized sentence: text, offsets, the ``upos`` it was given and
    the fields ``given`` (``Token`` field name -> one value per token)."""
    columns = {"text": sentence.tokens, "start": sentence.starts, "end": sentence.ends}
    if sentence.upos is not None:
        columns["upos"] = sentence.upos
    columns.update(given)
    size = len(sentence.tokens)
    for name, values in columns.items():
        if len(values) != size:
            raise ValueError(f"a sentence of {size} tokens has {len(values)} {name} values")
    if not _TOKEN_FIELDS.issuperset(columns):
        raise ValueError(f"tokens have no field {sorted(set(columns) - _TOKEN_FIELDS)}")
    # every field in ``Token``'s order, positionally (None where no column gives it)
    missing = repeat(None)
    return list(map(Token, *[columns.get(name, missing) for name in _TOKEN_ORDER]))


def _joined(sentences: Sequence[TokenizedSentence]) -> TokenizedSentence:
    return TokenizedSentence(
        tokens=tuple(token for sentence in sentences for token in sentence.tokens),
        starts=tuple(start for sentence in sentences for start in sentence.starts),
        ends=tuple(end for sentence in sentences for end in sentence.ends),
    )


def _context_documents(
    items: Sequence[Any], documents: Sequence[tuple[str, Sequence[TokenizedSentence]]]
) -> list[int]:
    """The context document of each sentence of ``documents`` (the items of ``predict``, split
    into sentences), numbered from 0 in order of first appearance: the ``document`` of a
    ``TokenizedSentence`` item that has one (items sharing it read each other), else the item's
    own."""
    numbers: dict[tuple[str, int], int] = {}
    of_sentence = []
    for index, (item, (_, sentences)) in enumerate(zip(items, documents, strict=True)):
        document = item.document if isinstance(item, TokenizedSentence) else None
        key = ("item", index) if document is None else ("document", document)
        number = numbers.setdefault(key, len(numbers))
        of_sentence.extend(number for _ in sentences)
    return of_sentence
