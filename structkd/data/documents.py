"""Documents: which sentences of a list belong together, and the words around each sentence.

A transformer reading *document context* (FLERT, Schweter & Akbik 2020; ``TaggerConfig.
transformer_context``) embeds each sentence together with the text before and after it in its
document. Here a document is a run of consecutive sentences of one list that share ``source`` and
``document`` (``Sentence.document``, set by the readers of ``structkd.data.conll``; ``None``: the
sentence is alone). ``DocumentContext(sentences, size).around(i)`` gives the words of the same
document just before and just after sentence ``i``: at most ``size`` of each (every word has at
least one subword, so ``size`` words cover ``size`` subwords; the subword tokenizer keeps the whole
words that fit). It never crosses a document boundary, and reads only the neighbouring sentences
(the list may be a lazy sequence, e.g. a file read on demand).

Pure Python (no torch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from structkd.data.conll import Sentence

__all__ = ["DocumentContext", "document_fingerprint", "same_document"]

_NONE, _STARTS, _CONTINUES = b"\x00", b"\x01", b"\x02"


def same_document(first: Sentence, second: Sentence) -> bool:
    """Whether two sentences (adjacent in their list) are in one document: the same ``source``
    and the same ``document``, which is not ``None``."""
    return (
        first.document is not None
        and first.document == second.document
        and first.source == second.source
    )


def document_fingerprint(sentences: Sequence[Sentence]) -> str:
    """SHA-256 of the document structure of ``sentences``: for each, whether it has no document,
    starts one or continues the previous sentence's (what document context depends on besides
    the words; independent of file names)."""
    digest = hashlib.sha256()
    previous: Sentence | None = None
    for sentence in sentences:
        if sentence.document is None:
            digest.update(_NONE)
        elif previous is not None and same_document(previous, sentence):
            digest.update(_CONTINUES)
        else:
            digest.update(_STARTS)
        previous = sentence
    return digest.hexdigest()


class DocumentContext:
    """The words around each sentence of ``sentences`` in its document (see the module docstring).

    Args:
        sentences: ``[n]`` sentences in document order (a list or any sequence; only the
            neighbours of a sentence are read).
        size: the most words (and so at least as many subwords as needed) on each side; ``0``:
            no context.
    """

    def __init__(self, sentences: Sequence[Sentence], size: int):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be an integer >= 0; got {size!r}")
        self.sentences = sentences
        self.size = size

    def __len__(self) -> int:
        return len(self.sentences)

    def __repr__(self) -> str:
        return f"DocumentContext({len(self.sentences)} sentences, size={self.size})"

    def around(self, index: int, sentence: Sentence | None = None) -> tuple[list[str], list[str]]:
        """``(before, after)``: at most ``size`` words of the same document right before sentence
        ``index`` (in text order, the nearest last) and right after it (the nearest first); both
        empty when its ``document`` is ``None`` or it is alone in its document.

        ``sentence``: the sentence the caller holds as ``index`` (a collator's item); a
        ``ValueError`` when its words are not those of ``sentences[index]`` (an id of another
        data set would otherwise read another sentence's neighbours)."""
        if not 0 <= index < len(self.sentences):
            raise ValueError(
                f"sentence id {index} is outside 0..{len(self.sentences) - 1} (is the context "
                "that of this data set?)"
            )
        own = self.sentences[index]
        if sentence is not None and sentence.tokens != own.tokens:
            raise ValueError(
                f"sentence id {index} is not the sentence of that id in the document context "
                "(is the context that of this data set?)"
            )
        if self.size == 0 or own.document is None:
            return [], []
        return self._side(index, own, -1), self._side(index, own, 1)

    def _side(self, index: int, own: Sentence, step: int) -> list[str]:
        chunks: list[list[str]] = []
        count, other = 0, index + step
        while count < self.size and 0 <= other < len(self.sentences):
            neighbour = self.sentences[other]
            if not same_document(own, neighbour):
                break
            chunks.append(neighbour.tokens)
            count += len(neighbour.tokens)
            other += step
        if step < 0:
            words = [word for chunk in reversed(chunks) for word in chunk]
            return words[max(0, len(words) - self.size) :]
        return [word for chunk in chunks for word in chunk][: self.size]
