"""Frozen transformer word features, computed once per (transformer, data) and cached
(``structkd.train.store``), and the collator a tagger needs for a source of sentences.

A tagger with document context (``TaggerConfig.transformer_context``) reads each sentence with the
words of its document around it (``structkd.data.documents``): its cached features are keyed by the
context size and the document structure of the source as well (features without context are never
reused for context features, nor features of other document boundaries), and its on-the-fly
collators (fine-tuned transformers, honest-speed evaluation, prediction) lay out the same windows.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from structkd.data.batching import TaggingCollator, length_sorted_batches
from structkd.data.conll import Sentence
from structkd.data.documents import DocumentContext, document_fingerprint
from structkd.models.tagger import Tagger, TaggerConfig
from structkd.train.store import RaggedArray, build_entry, progress_bar

__all__ = [
    "CACHE_FORMAT",
    "WordFeatures",
    "ensure_word_features",
    "make_collator",
    "needs_cached_features",
]

CACHE_FORMAT = 1


def needs_cached_features(config: TaggerConfig) -> bool:
    """Whether a tagger of ``config`` reads frozen transformer features (cacheable)."""
    return config.transformer is not None and not config.fine_tune


@functools.lru_cache(maxsize=8)
def _directory_hash(path: str) -> str:
    """SHA-256 over the relative names and bytes of every file under ``path``."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode("utf-8") + b"\0")
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class WordFeatures(Sequence):
    """Cached word features of a source: ``features[sentence_id]`` is ``[n_words, D]`` float32,
    read from the memory map (what ``TaggingCollator(features=...)`` takes)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.array = RaggedArray.open(directory, "features")

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, sentence_id: int) -> Tensor:  # type: ignore[override]
        return torch.from_numpy(np.array(self.array[int(sentence_id)]))


def ensure_word_features(
    config: TaggerConfig,
    sentences: Sequence[Sentence],
    data_fingerprint: str,
    cache_dir: str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    chunk_sentences: int = 1024,
    progress: bool = False,
) -> tuple[WordFeatures, bool]:
    """The frozen transformer features of ``sentences`` for a tagger of ``config``, computed once
    and cached; returns ``(features, built)`` (``built``: computed by this call).

    Computed in chunks of ``chunk_sentences`` sentences taken in order of length (so batches of
    ``batch_size`` inside a chunk have little padding) and written to the memory map chunk by
    chunk: memory stays bounded by a chunk. With ``config.transformer_context``, each sentence is
    read with the words of its document around it (its neighbours in ``sentences``); the key then
    holds the context size and ``document_fingerprint(sentences)`` too (without context the key
    is what it always was, so existing caches stay valid).
    """
    from structkd.models.transformer import (
        compute_word_features,
        frozen_transformer,
        resolve_model_path,
    )

    if not needs_cached_features(config):
        raise ValueError("config has no frozen transformer: it needs no cached features")
    model_path = resolve_model_path(config.transformer)
    inputs = {
        "format": CACHE_FORMAT,
        "kind": "features",
        "model_hash": _directory_hash(os.path.realpath(model_path)),
        "layers": config.transformer_layers,
        "pooling": config.transformer_pooling,
        "data": data_fingerprint,
        "n_sentences": len(sentences),
    }
    context_size = config.transformer_context
    if context_size > 0:
        inputs["context"] = context_size
        inputs["documents"] = document_fingerprint(sentences)

    def build(scratch: Path) -> dict:
        started = time.perf_counter()
        encoder = frozen_transformer(
            config.transformer, config.transformer_layers, config.transformer_pooling
        )
        encoder.to(device)
        lengths = [len(sentence) for sentence in sentences]
        array = RaggedArray.create(scratch, "features", lengths, (encoder.hidden_size,), "float32")
        order = [
            index for batch in length_sorted_batches(lengths, chunk_sentences) for index in batch
        ]
        document = DocumentContext(sentences, context_size) if context_size > 0 else None
        with progress_bar(len(sentences), "transformer features", progress) as bar:
            for start in range(0, len(order), chunk_sentences):
                chunk = np.asarray(order[start : start + chunk_sentences], dtype=np.int64)
                contexts = None
                if document is not None:
                    contexts = [document.around(int(index)) for index in chunk]
                features = compute_word_features(
                    encoder,
                    [sentences[i] for i in chunk],
                    batch_size=batch_size,
                    context_size=context_size,
                    contexts=contexts,
                )
                width = max(row.shape[0] for row in features)
                padded = np.zeros((len(chunk), width, encoder.hidden_size), dtype=np.float32)
                for row_index, row in enumerate(features):
                    padded[row_index, : row.shape[0]] = row.numpy()
                array.write(chunk, padded)
                if bar is not None:
                    bar.update(len(chunk))
        array.values.flush()
        return {"model": model_path, "seconds": time.perf_counter() - started}

    directory, built = build_entry(Path(cache_dir) / "features", inputs, build)
    return WordFeatures(directory), built


def make_collator(
    tagger_config: TaggerConfig,
    tagger: Tagger | None,
    vocab: object,
    sentences: Sequence[Sentence],
    data_fingerprint: str,
    cache_dir: str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    cached_features: bool = True,
) -> TaggingCollator:
    """The ``TaggingCollator`` a tagger of ``tagger_config`` needs for ``sentences``: with cached
    frozen transformer features (built if missing; ``cached_features=False`` computes them on the
    fly instead, e.g. to time inference honestly), with subword windows for a fine-tuned
    transformer (``tagger`` gives its tokenizer), or plain. Subword windows of a tagger with
    ``transformer_context`` read the document context of ``sentences`` (the sentence ids of the
    batches index ``sentences``, whose neighbours in the list are taken as the text around them;
    ``TaggingCollator.with_context`` swaps it for other text); with no ``sentences`` (a
    predictor's collator) each sentence is read alone."""
    if tagger_config.transformer is None:
        return TaggingCollator(vocab)
    if needs_cached_features(tagger_config) and cached_features:
        features, _ = ensure_word_features(
            tagger_config, sentences, data_fingerprint, cache_dir, device=device, progress=progress
        )
        return TaggingCollator(vocab, features=features)
    if tagger is None:
        raise ValueError("a tagger is needed for its subword tokenizer")
    context = None
    if tagger_config.transformer_context > 0 and len(sentences) > 0:
        context = DocumentContext(sentences, tagger_config.transformer_context)
    return TaggingCollator(vocab, tokenizer=tagger.subword_tokenizer, context=context)
