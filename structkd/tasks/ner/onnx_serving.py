"""The NER predictor of exported models (``backend = "onnx"``): numpy and onnxruntime, no torch.

    predictor = OnnxNerPredictor("models/student-onnx")        # made by export_onnx
    predictor.predict("EU rejects German call.")                -> Document with entities

A batch of tokenized sentences is encoded with the exported vocabulary (``ExportedVocab``, the
indices ``TaggingVocab`` and ``TaggingCollator`` give), the ONNX model computes the emissions
``[B, N, L]`` (on chunks of a few sentences, which it runs fastest), and ``label_emissions``
decodes them with ``structkd.serve.chain``: Viterbi and forward-backward marginals for a CRF
head, argmax and softmax for a softmax head (the torch predictor decodes its taggers' emissions
with the same function). ``decode_labels`` turns the best BIOES
labels and the marginals into ``NerLabels``: token tags and their marginal probabilities (IOB2:
``B``/``S`` -> ``B``, ``I``/``E`` -> ``I``, the probability summed over the BIOES labels of the
tag, as ``structkd predict --scheme iob2``), and the entities of the best labels, decoded strictly
(``S-r`` or ``B-r I-r* E-r``, as the evaluation counts them; ``bioes_entities``), each with the
exact probability that the model labels exactly that span so (CRF: ``chain.span_log_probs``;
softmax: the product of the token marginals).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from structkd.serve import chain
from structkd.serve.chars import flat_chars
from structkd.serve.manifest import read_manifest
from structkd.serve.onnx import onnx_session
from structkd.serve.text import TokenizedSentence
from structkd.tasks.ner.predictor import NerLabels, NerPredictor

__all__ = [
    "ExportedVocab",
    "OnnxNerPredictor",
    "bioes_entities",
    "decode_labels",
    "iob2_layout",
    "label_emissions",
    "masked_crf",
]

_HEADS = ("crf", "softmax")
_VOCAB_FORMAT = 1
_INPUTS = ("word_ids", "chars", "char_index", "word_chars", "lengths")
_CACHE_SIZE = 1 << 16  # tokens (and unseen characters) whose ids are cached
_CRF_ARRAYS = {
    "transitions": 2,
    "start": 1,
    "end": 1,
    "allowed_transitions": 2,
    "allowed_start": 1,
    "allowed_end": 1,
}


class ExportedVocab:
    """The indices of an exported tagger (``vocab.json``): ``encode`` lays out a batch of token
    lists exactly as ``TaggingCollator`` does (words lowercased, unseen -> ``<unk>``; each word's
    first ``max_word_chars`` characters, unseen -> ``<unk>``; 0 is padding)."""

    def __init__(self, data: Any, source: str = "vocab.json"):
        expected = {"format", "words", "word_unk", "lowercase_words", "chars", "char_unk"}
        expected |= {"max_word_chars", "labels", "types"}
        if not isinstance(data, dict) or set(data) != expected:
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"{source}: must be an object with keys {sorted(expected)}; got {found}"
            )
        if data["format"] != _VOCAB_FORMAT:
            raise ValueError(f"{source}: format {data['format']!r} is not {_VOCAB_FORMAT}")
        for name in ("words", "chars", "labels", "types"):
            items = data[name]
            if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
                raise ValueError(f"{source}: {name!r} must be a list of strings")
        for name in ("words", "chars"):
            unk = data[f"{name[:-1]}_unk"]
            if not isinstance(unk, int) or not 0 < unk < len(data[name]):
                raise ValueError(f"{source}: {name[:-1]}_unk must index {name!r} (not padding)")
        limit = data["max_word_chars"]
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"{source}: max_word_chars must be null or an integer >= 1")
        if data["lowercase_words"] is not True:
            raise ValueError(f"{source}: lowercase_words must be true")
        if len(data["labels"]) != 1 + 4 * len(data["types"]):
            raise ValueError(f"{source}: labels must be the BIOES labels of the types")
        self.words: dict[str, int] = {word: index for index, word in enumerate(data["words"])}
        self.chars: dict[str, int] = {char: index for index, char in enumerate(data["chars"])}
        if len(self.words) != len(data["words"]) or len(self.chars) != len(data["chars"]):
            raise ValueError(f"{source}: words and chars must not repeat")
        self.word_unk: int = data["word_unk"]
        self.char_unk: int = data["char_unk"]
        self.max_word_chars: int | None = limit
        self.labels: tuple[str, ...] = tuple(data["labels"])
        self.types: tuple[str, ...] = tuple(data["types"])
        self._token_ids = _TokenIds(self.words, self.word_unk)
        self._char_codes = _CharCodes(self.chars, self.char_unk)

    @classmethod
    def of(
        cls,
        *,
        words: Sequence[str],
        word_unk: int,
        chars: Sequence[str],
        char_unk: int,
        max_word_chars: int | None,
        labels: Sequence[str],
        types: Sequence[str],
    ) -> ExportedVocab:
        """The vocabulary of a tagger's indices (``TaggingVocab``'s ``words.items``, ... and
        its collator's ``max_word_chars``): ``encode`` then lays out batches as that collator."""
        data = {
            "format": _VOCAB_FORMAT,
            "words": list(words),
            "word_unk": word_unk,
            "lowercase_words": True,
            "chars": list(chars),
            "char_unk": char_unk,
            "max_word_chars": max_word_chars,
            "labels": list(labels),
            "types": list(types),
        }
        return cls(data, "the tagger's vocabulary")

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ExportedVocab:
        """The vocabulary of ``path`` (``ValueError`` naming the file when it is unreadable)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{os.fspath(path)}: cannot read the vocabulary ({error})") from None
        return cls(data, os.fspath(path))

    def encode(
        self, sentences: Sequence[Sequence[str]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(word_ids [B, N], char_ids [B, N, C], lengths [B])`` int64 of ``B`` non-empty token
        lists (``N``: the longest sentence, ``C``: the longest kept word): the padded layout the
        tagger reads.

        All tokens of the batch at once: word ids by a dictionary lookup per token (cached per
        token string), char ids by one ``str.translate`` of the joined tokens (each character
        to the character whose code point is its id), both scattered into the padded arrays
        in row-major order."""
        lengths, tokens = _batch_tokens(sentences)
        word_ids, inside = self._word_ids(tokens, lengths)
        codes, char_counts = self._char_codes_of(tokens)
        counts = np.zeros(inside.shape, dtype=np.int64)
        counts[inside] = char_counts
        char_ids = np.zeros((*inside.shape, int(char_counts.max())), dtype=np.int64)
        char_ids[np.arange(char_ids.shape[2]) < counts[..., None]] = codes
        return word_ids, char_ids, lengths

    def encode_flat(
        self, sentences: Sequence[Sequence[str]], context: int
    ) -> dict[str, np.ndarray]:
        """The exported model's inputs for ``B`` non-empty token lists: ``word_ids [B, N]``,
        ``lengths [B]`` and the characters of the batch's distinct tokens in the flat layout
        (``structkd.serve.chars``, ``context`` zeros around each): ``chars [T]``, ``char_index
        [U, C]``, and ``word_chars [B, N]``, each token's distinct word (0 at padding). A token
        that repeats in the batch is convolved once."""
        lengths, tokens = _batch_tokens(sentences)
        word_ids, inside = self._word_ids(tokens, lengths)
        distinct: dict[str, int] = {}
        rows = np.fromiter(
            (distinct.setdefault(token, len(distinct)) for token in tokens), np.int64, len(tokens)
        )
        codes, char_counts = self._char_codes_of(list(distinct))
        chars, char_index = flat_chars(codes, char_counts, context)
        word_chars = np.zeros(inside.shape, dtype=np.int64)
        word_chars[inside] = rows
        return {
            "word_ids": word_ids,
            "chars": chars,
            "char_index": char_index,
            "word_chars": word_chars,
            "lengths": lengths,
        }

    def _word_ids(self, tokens: list[str], lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(word_ids [B, N], inside [B, N])``: each token's word id, 0 at padding."""
        flat_words = np.fromiter(map(self._token_ids.__getitem__, tokens), np.int64, len(tokens))
        inside = np.arange(lengths.max()) < lengths[:, None]  # [B, N]
        word_ids = np.zeros(inside.shape, dtype=np.int64)
        word_ids[inside] = flat_words  # row-major order: the tokens in order
        return word_ids, inside

    def _char_codes_of(self, tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(codes [sum of counts], counts [len(tokens)])``: the character ids of each token's
        first ``max_word_chars`` characters, token after token."""
        char_counts = np.fromiter(map(len, tokens), np.int64, len(tokens))
        limit = self.max_word_chars
        if limit is not None and char_counts.max() > limit:
            tokens = [token[:limit] for token in tokens]
            char_counts = np.minimum(char_counts, limit)
        if char_counts.min() < 1:
            raise ValueError("a token must hold at least one character")
        codes = "".join(tokens).translate(self._char_codes)
        values = np.frombuffer(codes.encode("utf-32-le", "surrogatepass"), np.uint32)
        return values.astype(np.int64), char_counts


def _batch_tokens(sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, list[str]]:
    """``(lengths [B], the tokens in order)``; ``ValueError`` for no or an empty sentence."""
    lengths = np.fromiter(map(len, sentences), np.int64, len(sentences))
    if len(sentences) == 0 or lengths.min() < 1:
        raise ValueError("encode needs at least one sentence, and no empty sentence")
    return lengths, list(itertools.chain.from_iterable(sentences))


class _TokenIds(dict):
    """``token -> word id`` (lowercased, unseen -> ``unk``), filled on demand; emptied when it
    holds ``_CACHE_SIZE`` tokens, so that a long-running server's memory stays bounded."""

    def __init__(self, words: dict[str, int], unk: int):
        super().__init__()
        self.words, self.unk = words, unk

    def __missing__(self, token: str) -> int:
        if len(self) >= _CACHE_SIZE:
            self.clear()
        index = self[token] = self.words.get(token.lower(), self.unk)
        return index


class _CharCodes(dict):
    """A ``str.translate`` table: ``ord(char) -> chr(char id)``, the vocabulary's characters
    and, filled on demand, unseen ones (-> ``chr(unk)``; forgotten past ``_CACHE_SIZE``)."""

    def __init__(self, chars: dict[str, int], unk: int):
        # the special entries (``<pad>``, ``<unk>``) are longer than a character: never met
        self.known = {ord(c): chr(index) for c, index in chars.items() if len(c) == 1}
        super().__init__(self.known)
        self.unk = chr(unk)

    def __missing__(self, code: int) -> str:
        if len(self) >= len(self.known) + _CACHE_SIZE:
            self.clear()
            self.update(self.known)
        self[code] = self.unk
        return self.unk


# ---------------------------------------------------------------------------------------------
# Decoding (numpy; shared by any backend that has BIOES labels and marginals)


def bioes_entities(
    labels: np.ndarray, lengths: np.ndarray, n_types: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The strictly decoded entities of BIOES label ids ``[B, N]`` (``-1`` or anything at
    padding): ``(rows, starts, ends, types)``, each ``[S]`` int64, ``ends`` inclusive, in
    sentence and token order.

    An entity is ``S-r``, or ``B-r`` followed by ``I-r``* and ``E-r`` (seqeval strict IOBES, as
    ``structkd.tasks.ner.metrics.label_spans``): with ``link_i`` = "label ``i - 1`` is ``B``/``I``
    and label ``i`` is ``I``/``E`` of the same type", each ``E``/``S`` at ``j`` closes the run of
    links it ends, which is an entity iff the run starts at a ``B``/``S``.
    """
    labels = np.asarray(labels)
    max_len = labels.shape[1]
    inside = np.arange(max_len) < np.asarray(lengths)[:, None]
    labels = np.where(inside, labels, 0)
    if ((labels < 0) | (labels > 4 * n_types)).any():
        raise ValueError(f"labels must be BIOES label ids in 0..{4 * n_types} inside sentences")
    entity = labels > 0
    prefix = np.where(entity, (labels - 1) % 4, -1)  # 0 B, 1 I, 2 E, 3 S
    kind = np.where(entity, (labels - 1) // 4, -1)
    opens_run = (prefix == 0) | (prefix == 1)
    continues = (prefix == 1) | (prefix == 2)
    link = np.zeros_like(entity)
    link[:, 1:] = opens_run[:, :-1] & continues[:, 1:] & (kind[:, 1:] == kind[:, :-1])
    positions = np.broadcast_to(np.arange(max_len), labels.shape)
    run_start = np.maximum.accumulate(np.where(link, 0, positions), axis=1)
    start_prefix = np.take_along_axis(prefix, run_start, axis=1)
    closes = (prefix == 2) | (prefix == 3)
    is_end = closes & ((start_prefix == 0) | (start_prefix == 3))
    rows, ends = np.nonzero(is_end)
    return rows, run_start[rows, ends], ends, kind[rows, ends]


def iob2_layout(types: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """``(names [1 + 2R], mapping [1 + 4R] int64)``: the IOB2 tags and the IOB2 index of each
    BIOES label (``B``/``S`` -> ``B``, ``I``/``E`` -> ``I``)."""
    names = ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in "BI"]
    bioes = np.arange(1 + 4 * len(types))
    position = (bioes - 1) % 4  # 0 B, 1 I, 2 E, 3 S
    mapping = 1 + 2 * ((bioes - 1) // 4) + np.where((position == 1) | (position == 2), 1, 0)
    mapping[0] = 0
    return names, mapping


def decode_labels(
    best: np.ndarray,
    token_marginals: np.ndarray,
    lengths: np.ndarray,
    span_log_probs: Any,
    *,
    labels: Sequence[str],
    types: Sequence[str],
    scheme: str,
) -> list[NerLabels]:
    """``NerLabels`` of a batch from its best BIOES labels ``best [B, N]``, their marginals
    ``token_marginals [B, N, L]`` and ``lengths [B]``.

    ``span_log_probs(rows [S], starts [S], paths [S, W]) -> [S]``: the log-probability that each
    span's labels equal its path (``-1``-padded), e.g. ``chain.span_log_probs`` with the batch's
    potentials. ``scheme``: ``"bioes"`` or ``"iob2"`` for the token tags and their scores.
    """
    batch_size, max_len = best.shape
    inside = np.arange(max_len) < lengths[:, None]
    best = np.where(inside, best, 0)
    if scheme == "iob2":
        names, mapping = iob2_layout(types)
        iob2 = np.zeros((len(labels), len(names)))
        iob2[np.arange(len(labels)), mapping] = 1.0
        tags = mapping[best]
        scores = np.take_along_axis(token_marginals @ iob2, tags[..., None], axis=-1)[..., 0]
    else:
        names, tags = list(labels), best
        scores = np.take_along_axis(token_marginals, best[..., None], axis=-1)[..., 0]
    scores = np.clip(scores, 0.0, 1.0)  # sums of marginals may pass 1 by a rounding error

    rows, starts, ends, kinds = bioes_entities(best, lengths, len(types))
    if len(rows):
        width = int((ends - starts).max()) + 1
        offsets = starts[:, None] + np.arange(width)
        paths = np.where(
            offsets <= ends[:, None], best[rows[:, None], np.minimum(offsets, max_len - 1)], -1
        )
        probabilities = np.clip(np.exp(span_log_probs(rows, starts, paths)), 0.0, 1.0)
    else:
        probabilities = np.zeros(0)
    spans: list[list[tuple[int, int, str, float]]] = [[] for _ in range(batch_size)]
    for row, start, end, kind, probability in zip(
        rows.tolist(),
        starts.tolist(),
        ends.tolist(),
        kinds.tolist(),
        probabilities.tolist(),
        strict=True,
    ):
        spans[row].append((start, end + 1, types[kind], probability))
    # the real tokens in row-major order, cut per sentence
    flat_tags = np.asarray(names, dtype=object)[tags[inside]].tolist()
    flat_scores = scores[inside].tolist()
    bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    return [
        NerLabels(
            tags=tuple(flat_tags[begin:end]),
            tag_scores=tuple(flat_scores[begin:end]),
            spans=tuple(found),
        )
        for begin, end, found in zip(bounds[:-1], bounds[1:], spans, strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# The predictor


class OnnxNerPredictor(NerPredictor):
    """A NER predictor for a directory written by ``structkd.tasks.ner.export.export_onnx``
    (see the module docstring). ``num_threads``: onnxruntime's intra-op threads (``None``: its
    default); ``device``: ``"cpu"`` (the CPU execution provider) only; ``scheme``: the tag scheme
    of the token tags; ``onnx_chunk``: the sentences per run of the model (``emissions``; a batch
    of ``batch_size`` is decoded at once). ``ValueError`` for a directory that is not such an
    export (naming the file and the problem)."""

    backend = "onnx"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        batch_size: int = 64,
        num_threads: int | None = None,
        device: str = "cpu",
        scheme: str = "bioes",
        onnx_chunk: int = 32,
    ):
        super().__init__(model_dir, scheme=scheme, batch_size=batch_size, num_threads=num_threads)
        if isinstance(onnx_chunk, bool) or not isinstance(onnx_chunk, int) or onnx_chunk < 1:
            raise ValueError(f"onnx_chunk must be an integer >= 1; got {onnx_chunk!r}")
        if device != "cpu":
            raise ValueError(
                f"an exported model runs on the CPU (onnxruntime's CPU provider); got "
                f"device={device!r}"
            )
        directory = Path(model_dir)
        manifest = read_manifest(directory)
        where = os.fspath(directory / "export.json")
        if manifest["task"] != self.task or manifest["format"] != "onnx":
            raise ValueError(
                f"{where}: an export of task {manifest['task']!r} in format "
                f"{manifest['format']!r}, not an ONNX NER model"
            )
        head = manifest.get("head")
        if head not in _HEADS:
            raise ValueError(f"{where}: head must be one of {', '.join(_HEADS)}; got {head!r}")
        files = manifest["files"]
        needed = ("model", "vocab", "crf") if head == "crf" else ("model", "vocab")
        missing = [name for name in needed if name not in files]
        if missing:
            raise ValueError(f"{where}: files must name {', '.join(missing)}")
        self.manifest = manifest
        self.head = head
        self.vocab = ExportedVocab.read(directory / files["vocab"])
        if list(self.vocab.labels) != manifest.get("labels"):
            raise ValueError(f"{where}: its labels differ from those of {files['vocab']}")
        self.labels, self.types = self.vocab.labels, self.vocab.types
        self.crf = _read_crf(directory / files["crf"], len(self.labels)) if head == "crf" else None
        context = manifest.get("char_context")
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise ValueError(f"{where}: char_context must be an integer >= 0; got {context!r}")
        self.char_context = context
        self.session = onnx_session(directory / files["model"], num_threads)
        self.onnx_chunk = onnx_chunk
        self.input_names = [item.name for item in self.session.get_inputs()]
        unknown = sorted(set(self.input_names) - set(_INPUTS))
        if unknown:
            raise ValueError(f"{directory / files['model']}: unexpected model inputs {unknown}")

    def emissions(self, sentences: Sequence[TokenizedSentence]) -> tuple[np.ndarray, np.ndarray]:
        """``(emissions [B, N, L] float64, lengths [B])`` of a batch of sentences (0 at padding).

        The model runs on chunks of ``onnx_chunk`` consecutive sentences, each padded to its own
        longest sentence and word: its LSTM and character CNN run faster on small batches with
        less padding (the base predictor's batches are sorted by length, so a chunk's sentences
        are of similar lengths), while the chain decodes the whole batch at once."""
        lengths = np.fromiter((len(s.tokens) for s in sentences), np.int64, len(sentences))
        if len(sentences) == 0 or lengths.min() < 1:
            raise ValueError("emissions needs at least one sentence, and no empty sentence")
        emissions = np.zeros((len(sentences), int(lengths.max()), len(self.labels)))
        for begin in range(0, len(sentences), self.onnx_chunk):
            chunk = sentences[begin : begin + self.onnx_chunk]
            arrays = self.vocab.encode_flat([s.tokens for s in chunk], self.char_context)
            (scores,) = self.session.run(None, {name: arrays[name] for name in self.input_names})
            expected = (*arrays["word_ids"].shape, len(self.labels))
            if scores.shape != expected:
                raise ValueError(
                    f"the model returned emissions of shape {list(scores.shape)}; expected "
                    f"{list(expected)}"
                )
            emissions[begin : begin + len(chunk), : scores.shape[1]] = scores
        return emissions, lengths

    def label_batch(self, sentences: Sequence[TokenizedSentence]) -> list[NerLabels]:
        """``NerLabels`` of each sentence of one batch: the ONNX model's emissions (see
        ``emissions``), then batched decoding (``label_emissions``)."""
        if len(sentences) == 0:
            return []
        emissions, lengths = self.emissions(sentences)
        return label_emissions(
            emissions, lengths, self.crf, labels=self.labels, types=self.types, scheme=self.scheme
        )


def label_emissions(
    emissions: np.ndarray,
    lengths: np.ndarray,
    crf: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    *,
    labels: Sequence[str],
    types: Sequence[str],
    scheme: str,
) -> list[NerLabels]:
    """``NerLabels`` of a batch from a tagger's emissions ``[B, N, L]`` over the BIOES
    ``labels`` and ``lengths [B]``: with ``crf = (transitions [L, L], start [L], end [L])``
    (``-inf`` where forbidden; ``masked_crf``) a linear-chain CRF (Viterbi labels, their
    forward-backward marginals, ``chain.span_log_probs`` for the entities), with ``None`` a
    softmax per token (argmax, ``P = softmax``, an entity's probability the product of its
    tokens'); see ``decode_labels``."""
    if crf is not None:
        potentials = (emissions, *crf, lengths)
        best, token_marginals, posterior = chain.decode(*potentials)

        def span_log_probs(rows: Any, starts: Any, paths: Any) -> np.ndarray:
            return chain.span_log_probs(*potentials, rows, starts, paths, posterior=posterior)
    else:
        log_probs = chain.log_softmax(emissions, lengths)
        token_marginals = np.exp(log_probs)
        inside = np.arange(emissions.shape[1]) < lengths[:, None]
        best = np.where(inside, log_probs.argmax(-1), -1)

        def span_log_probs(rows: Any, starts: Any, paths: Any) -> np.ndarray:
            offsets = starts[:, None] + np.arange(paths.shape[1])
            positions = np.minimum(offsets, emissions.shape[1] - 1)
            picked = log_probs[rows[:, None], positions, np.maximum(paths, 0)]
            return np.where(paths >= 0, picked, 0.0).sum(-1)

    return decode_labels(
        best, token_marginals, lengths, span_log_probs, labels=labels, types=types, scheme=scheme
    )


def masked_crf(
    transitions: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    allowed_transitions: np.ndarray | None = None,
    allowed_start: np.ndarray | None = None,
    allowed_end: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(transitions [L, L], start [L], end [L])`` float64, ``-inf`` where the boolean
    ``allowed_*`` masks (``None``: everything allowed) forbid: the ``crf`` of
    ``label_emissions``, as ``LinearChainCRF`` applies its masks."""
    scores = (transitions, start, end)
    masks = (allowed_transitions, allowed_start, allowed_end)
    return tuple(  # type: ignore[return-value]
        np.asarray(score, dtype=np.float64)
        if allowed is None
        else np.where(allowed, np.asarray(score, dtype=np.float64), -np.inf)
        for score, allowed in zip(scores, masks, strict=True)
    )


def _read_crf(path: Path, n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(transitions [L, L], start [L], end [L])`` float64 with ``-inf`` where the constraint
    masks forbid, from ``crf.npz``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in _CRF_ARRAYS}
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{os.fspath(path)}: cannot read the CRF parameters ({error})") from None
    for name, ndim in _CRF_ARRAYS.items():
        if arrays[name].shape != (n_labels,) * ndim:
            raise ValueError(
                f"{os.fspath(path)}: {name} must have shape {[n_labels] * ndim}; got "
                f"{list(arrays[name].shape)}"
            )
        if name.startswith("allowed") and arrays[name].dtype != np.bool_:
            raise ValueError(f"{os.fspath(path)}: {name} must be boolean")
        if not name.startswith("allowed") and not np.isfinite(arrays[name]).all():
            raise ValueError(f"{os.fspath(path)}: {name} must be finite")
    return masked_crf(*(arrays[name] for name in _CRF_ARRAYS))
