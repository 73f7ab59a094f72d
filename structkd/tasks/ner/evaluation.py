"""NER evaluation (entity-level seqeval scores and speed) and prediction (CoNLL out with each
tag's marginal probability)."""

from __future__ import annotations

import os
import time
from typing import Any, TextIO

import torch

from structkd.data.conll import write_conll
from structkd.data.tag_schemes import convert_tags, label_indices_to_tags
from structkd.structures.semimarkov import SemiMarkovSpans
from structkd.tasks.ner.data import load_labeled, load_text
from structkd.tasks.ner.features import make_collator
from structkd.tasks.ner.metrics import seqeval_scores
from structkd.tasks.ner.model import check_types, load_tagger
from structkd.train.inference import sorted_batches, speed
from structkd.train.outputs import output_stream
from structkd.train.runtime import default_cache_dir

__all__ = ["evaluate", "evaluate_tagger", "predict"]


def evaluate_tagger(
    tagger: Any,
    source: Any,
    collator: Any,
    *,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, Any]:
    """Entity scores of ``tagger`` on the labeled ``source`` (seqeval, strict, BIOES; gold converted
    exactly from its own scheme) and its speed: ``sentences_per_second`` over collation, forward
    and decoding of length-sorted batches of ``batch_size``."""
    check_types(source, tagger.vocab.types, "the model")
    sentences = source.sentences
    unlabeled = [sentence.without_tags() for sentence in sentences]
    predictions: list[list[int]] = [[] for _ in sentences]
    was_training = tagger.training
    tagger.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for indices, batch in sorted_batches(unlabeled, collator, batch_size, device):
            predicted = tagger.decode(batch).cpu().tolist()
            for row, index in zip(predicted, indices, strict=True):
                predictions[index] = row[: len(sentences[index])]
    seconds = time.perf_counter() - started
    tagger.train(was_training)
    types = list(tagger.vocab.types)
    gold = [convert_tags(s.tags, source.scheme, "bioes") for s in sentences]
    predicted_tags = [label_indices_to_tags(row, types, "bioes") for row in predictions]
    scores = seqeval_scores(gold, predicted_tags, types)
    return {**scores, **speed(source.lengths, seconds)}


def evaluate(
    model_dir: str | os.PathLike[str],
    data: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    max_sentences: int | None = None,
    include_punct: bool = False,
    scheme: str = "auto",
) -> dict[str, Any]:
    """Entity-level ``precision``, ``recall``, ``f1`` and ``per_type`` scores of the NER model in
    ``model_dir`` on the labeled ``data`` (a data set name or a CoNLL file, its tags in
    ``scheme``: ``auto``, ``iob1``, ``iob2`` or ``bioes``), with ``sentences_per_second``
    (transformer features computed on the fly, as in real use). ``include_punct`` is the
    dependency scores' option: entities are scored whatever their words."""
    tagger, info = load_tagger(model_dir, device=device)
    source = load_labeled(data, role="evaluation", max_sentences=max_sentences, scheme=scheme)
    collator = make_collator(
        info.config,
        tagger,
        info.vocab,
        source.sentences,
        source.fingerprint,
        default_cache_dir(),
        device=device,
        cached_features=False,
    )
    scores = evaluate_tagger(tagger, source, collator, batch_size=batch_size, device=device)
    return {"model": os.fspath(model_dir), "data": data, **scores}


def predict(
    model_dir: str | os.PathLike[str],
    input: str | os.PathLike[str],
    output: str | os.PathLike[str] | TextIO | None = None,
    *,
    input_format: str = "auto",
    scheme: str = "bioes",
    batch_size: int = 64,
    device: str = "cpu",
) -> int:
    """Tag ``input`` (a CoNLL file, tokenized text with one sentence per line, a data set name, or
    ``"-"`` for standard input) and write CoNLL to ``output`` (a path, a stream, or standard
    output for ``None``/``"-"``): ``word [gold] predicted probability``, the probability being
    the marginal probability of the predicted tag at that token under the model's distribution
    (forward-backward for a CRF, not a softmax of Viterbi scores).

    ``scheme``: ``"bioes"`` (the model's own labels) or ``"iob2"`` (each BIOES label mapped to
    its IOB2 tag: ``B``/``S`` -> ``B``, ``I``/``E`` -> ``I``; the probability is then the sum of
    the marginals of the BIOES labels with that IOB2 tag, the exact marginal of the IOB2 tag).
    A path ``output`` is checked before any work (not ``input``, in a writable directory) and
    written through a temporary file renamed onto it at the end. Returns the number of sentences
    written.
    """
    with output_stream(output, inputs=[input]) as stream:
        tagger, info = load_tagger(model_dir, device=device)
        source = load_text(input, role="input", file_format=input_format, keep_tags=True)
        sentences = source.sentences
        unlabeled = [sentence.without_tags() for sentence in sentences]
        collator = make_collator(
            info.config,
            tagger,
            info.vocab,
            unlabeled,
            source.fingerprint,
            default_cache_dir(),
            device=device,
            cached_features=False,
        )
        labels = list(info.vocab.labels)
        names, to_output = labels, torch.eye(len(labels))
        if scheme == "iob2":
            names = ["O"] + [f"{p}-{t}" for t in info.types for p in "BI"]
            mapped = {"O": "O", "B": "B", "S": "B", "I": "I", "E": "I"}
            to_output = torch.zeros(len(labels), len(names))
            for index, label in enumerate(labels):
                tag = "O" if label == "O" else f"{mapped[label[0]]}{label[1:]}"
                to_output[index, names.index(tag)] = 1.0
        to_output = to_output.to(device)
        predictions: list[list[str]] = [[] for _ in sentences]
        probabilities: list[list[float]] = [[] for _ in sentences]
        with torch.inference_mode():
            for indices, batch in sorted_batches(unlabeled, collator, batch_size, device):
                distribution = tagger(batch)
                best = distribution.argmax
                if isinstance(distribution, SemiMarkovSpans):
                    marginals = distribution.bioes_marginals
                else:
                    marginals = distribution.marginals
                output_marginals = marginals.to(to_output) @ to_output  # [B, N, L_out]
                output_best = to_output.argmax(-1)[best.clamp(min=0)]  # [B, N]
                best_probability = output_marginals.gather(-1, output_best.unsqueeze(-1))[..., 0]
                for row, index in enumerate(indices):
                    length = len(sentences[index])
                    predictions[index] = [names[i] for i in output_best[row, :length].tolist()]
                    probabilities[index] = [
                        min(1.0, max(0.0, p)) for p in best_probability[row, :length].tolist()
                    ]
        write_conll(stream, sentences, predictions, probabilities)
    return len(sentences)
