"""Teacher outputs for NER distillation, computed once per (teacher, data, method options) and
cached (``structkd.train.store``), then read back per batch.

What each method caches for a sentence of ``n`` tokens (``structkd.distill.halves``):

=============  ============================================================================
method         quantities
=============  ============================================================================
struct         ``marginals [n, L]`` and, for a CRF student, ``pair_marginals [n - 1, L, L]``:
               the (tempered) teacher's marginals on the student's substructures
posterior      ``marginals [n, L]`` of the tempered teacher
token          ``emissions [n, L]``: the teacher's emissions / logits
topk, topwk    ``kbest_tags [n, k]`` (int32, ``-1`` where fewer than ``k`` structures exist),
               ``kbest_log_probs [1, k]`` (``-inf`` there)
=============  ============================================================================

An ensemble caches each teacher separately and mixes at load time (``KDTargets``). A fold teacher
(``structkd.train.folds``) caches each fold teacher on the sentences it is read on (its held-out
fold and the sentences none of them trained on: each sentence is computed once for out-of-fold
targets, K times only where the mixture is used) and ``TargetReader`` routes each sentence to
its entries (``FoldEntries``).

Entries are sharded (``structkd.train.store.build_sharded_entry``): shards of ``shard_size``
consecutive sentences, each run through the teacher in length-sorted batches and written on its
own, by ``workers`` processes and by several machines sharing the cache directory
(``ShardPlan``); an interrupted build resumes at its first unfinished shard. The sentences may be
a list or a ``TokenizedText`` (a tokenized text file read a shard at a time), so a build's memory
is bounded by a shard whatever the corpus size. Format 2 (sharded) replaced format 1 (one array
per quantity): format-1 entries are not read; their key differs, so they are rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from array import array as int_array
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from structkd.data.conll import DataError, Sentence
from structkd.distill.bridges import CHAIN_KINDS
from structkd.distill.halves import cached_quantities, teacher_half
from structkd.distill.methods import KD_METHODS, TEMPERATURE_MODES, method
from structkd.tasks.ner.features import make_collator
from structkd.tasks.ner.model import load_tagger, model_info
from structkd.train.folds import FoldEntries
from structkd.train.inference import sorted_batches
from structkd.train.store import (
    RaggedWriter,
    ShardedArray,
    ShardPlan,
    build_sharded_entry,
    progress_bar,
    read_meta,
)

__all__ = [
    "CACHE_FORMAT",
    "STUDENT_KINDS",
    "FoldEntries",
    "KDTargets",
    "TargetReader",
    "TargetSpec",
    "TokenizedText",
    "ensure_targets",
]

CACHE_FORMAT = 2
STUDENT_KINDS = CHAIN_KINDS
"""The students of a tagger: ``"crf"`` (tag pairs and tokens) or ``"factorized"`` (tokens)."""


@dataclass(frozen=True)
class TargetSpec:
    """What to cache of a teacher for one distillation method.

    ``method``: one of ``KD_METHODS``; ``temperature``; ``temperature_mode``: ``"global"`` or
    ``"local"`` (struct only); ``student_kind``: ``"crf"`` (pair marginals too) or
    ``"factorized"``; ``k``: structures kept by top-k methods.
    """

    method: str
    temperature: float = 1.0
    temperature_mode: str = "global"
    student_kind: str = "crf"
    k: int = 1

    def __post_init__(self) -> None:
        if self.method not in KD_METHODS:
            raise ValueError(f"method must be one of {', '.join(KD_METHODS)}; got {self.method!r}")
        if self.student_kind not in STUDENT_KINDS:
            raise ValueError(
                f"student_kind must be one of {', '.join(STUDENT_KINDS)}; got {self.student_kind!r}"
            )
        if self.temperature_mode not in TEMPERATURE_MODES:
            raise ValueError(
                f"temperature_mode must be 'global' or 'local'; got {self.temperature_mode!r}"
            )
        if not (isinstance(self.temperature, int | float) and self.temperature > 0):
            raise ValueError(f"temperature must be a number > 0; got {self.temperature!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1; got {self.k!r}")

    @property
    def kind(self) -> str:
        """The cache kind: ``"kbest"`` for topk and topwk (same outputs), else the method."""
        return method(self.method).cache_kind

    def key_inputs(self) -> dict[str, Any]:
        """The options the cached values depend on (and nothing else)."""
        inputs: dict[str, Any] = {"kind": self.kind}
        if self.kind in ("struct", "posterior", "kbest"):
            inputs["temperature"] = float(self.temperature)
        if self.kind == "struct":
            inputs["temperature_mode"] = self.temperature_mode
            inputs["student_kind"] = self.student_kind
        if self.kind == "kbest":
            inputs["k"] = self.k
        return inputs

    def quantities(self, n_labels: int) -> dict[str, tuple[str, tuple[int, ...], str]]:
        """``name -> (rows per sentence: "tokens" | "pairs" | "sentence", row shape, dtype)``."""
        return cached_quantities(self.method, self.student_kind, n_labels, self.k)

    def teacher_outputs(self, teacher: Any, n_labels: int) -> dict[str, Tensor]:
        """The quantities of one batch of teacher output, padded (``teacher_half``)."""
        return teacher_half(
            self.method,
            teacher,
            student_kind=self.student_kind,
            n_labels=n_labels,
            temperature=float(self.temperature),
            temperature_mode=self.temperature_mode,
            k=self.k,
        )


def _rows(rule: str, lengths: np.ndarray) -> np.ndarray:
    if rule == "tokens":
        return lengths
    if rule == "pairs":
        return lengths - 1
    return np.ones_like(lengths)


def _max_rows(rule: str, max_len: int) -> int:
    return {"tokens": max_len, "pairs": max_len - 1, "sentence": 1}[rule]


_PAD = {"float32": 0.0, "int32": -1}
_PAD_BY_NAME = {"kbest_log_probs": -np.inf}


_TOKEN_SEPARATOR = re.compile(r"[ \t]+")
_LINE_EDGES = " \t\r"
_BOM = b"\xef\xbb\xbf"


class TokenizedText(Sequence[Sentence]):
    """Tokenized text (one sentence per line, tokens separated by spaces or tabs, blank lines
    skipped: what ``structkd.data.conll.read_tokenized`` reads) read from its file on demand.

    Opening reads the file once, keeping per sentence the byte offset and number of its line
    (``[n]`` int64 each) and its document (``[n]`` int32: runs of lines between blank lines, as
    ``read_tokenized`` numbers them; 20 bytes a sentence in all) and hashing its tokens:
    ``fingerprint`` is the ``DataSource.fingerprint`` of the same text, so a cache built from it
    is the cache that ``distill --unlabeled FILE`` reads. ``text[i]`` and ``text[a:b]`` read
    those lines again; sentences are never all held in memory (a list of a million CoNLL-2003
    sentences holds about 1.2 GB). Pickles as its path and offsets. ``DataError`` (file and
    line) for an empty file, one with only blank lines, or bytes that are not UTF-8; a file
    changed since it was opened is also a ``DataError``.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        offsets = int_array("q")  # 8 bytes a sentence while reading (a list: 36)
        numbers = int_array("q")
        documents = int_array("i")
        digest = hashlib.sha256()
        position, number, document, after_blank = 0, 0, 0, False
        with open(self.path, "rb") as handle:
            for raw in handle:
                number += 1
                start = position
                position += len(raw)
                if number == 1 and raw.startswith(_BOM):
                    raw, start = raw[len(_BOM) :], start + len(_BOM)
                tokens = self._tokens(raw, number)
                if not tokens:
                    after_blank = True
                else:
                    if after_blank and numbers:
                        document += 1
                    after_blank = False
                    offsets.append(start)
                    numbers.append(number)
                    documents.append(document)
                    digest.update("\x1f".join(tokens).encode("utf-8"))
                    digest.update(b"\x1e")
        if position == 0:
            raise DataError(self.path, 1, "the file is empty (0 bytes)")
        if not offsets:
            raise DataError(
                self.path, max(1, number), "no sentences in the file (it holds only blank lines)"
            )
        self.size = position
        offsets.append(position)
        self.offsets = np.frombuffer(offsets, dtype=np.int64).copy()
        self.line_numbers = np.frombuffer(numbers, dtype=np.int64).copy()
        self.documents = np.frombuffer(documents, dtype=np.int32).copy()
        self.fingerprint = digest.hexdigest()

    def _tokens(self, raw: bytes, number: int) -> list[str]:
        """The tokens of one line (``[]`` for a blank line)."""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(
                self.path,
                number,
                f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at byte {error.start + 1} of "
                f"the line: {error.reason}); re-encode the file as UTF-8, e.g. "
                "`iconv -f latin1 -t utf-8`",
            ) from None
        content = line.removesuffix("\n").strip(_LINE_EDGES)
        return _TOKEN_SEPARATOR.split(content) if content else []

    def __len__(self) -> int:
        return len(self.line_numbers)

    @overload
    def __getitem__(self, index: int) -> Sentence: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sentence]: ...

    def __getitem__(self, index: int | slice) -> Sentence | list[Sentence]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self._read(start, stop) if stop > start else []
        if not -len(self) <= index < len(self):
            raise IndexError(f"sentence {index} is outside 0..{len(self) - 1}")
        index = index % len(self)
        return self._read(index, index + 1)[0]

    def __iter__(self) -> Iterator[Sentence]:
        for start in range(0, len(self), 10_000):
            yield from self[start : start + 10_000]

    def _read(self, start: int, stop: int) -> list[Sentence]:
        """Sentences ``start..stop-1`` (``0 <= start < stop <= len``), from their lines."""
        first, end = int(self.offsets[start]), int(self.offsets[stop])
        with open(self.path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size != self.size:
                raise DataError(self.path, 1, "the file changed since it was opened")
            handle.seek(first)
            raw = handle.read(end - first)
        numbers = self.line_numbers[start:stop].tolist()
        documents = self.documents[start:stop].tolist()
        sentences = []
        for offset, number in enumerate(numbers):
            if offset + 1 < len(numbers):
                line_end = int(self.offsets[start + offset + 1]) - first
            else:
                line_end = len(raw)
            line_start = int(self.offsets[start + offset]) - first
            tokens = self._tokens(raw[line_start:line_end].split(b"\n", 1)[0], number)
            if not tokens:
                raise DataError(self.path, number, "the file changed since it was opened")
            sentences.append(Sentence(tokens, None, self.path, number, documents[offset]))
        return sentences


class TeacherShards:
    """Builds the shards of a target entry (a ``structkd.train.store.ShardBuilder``): the teacher
    of ``teacher_dir`` runs over the shard's sentences in length-sorted batches of ``batch_size``
    (eval mode, no gradients) and each batch's quantities of ``spec`` are written to the shard's
    files (``RaggedWriter``). The collator reads the whole source's cached frozen transformer
    features (built once, keyed by ``data_fingerprint``) when the teacher has a frozen
    transformer and ``cached_features``, else computes what it needs on the fly. Picklable (the
    loaded teacher is not pickled: each process loads it once)."""

    def __init__(
        self,
        teacher_dir: str,
        sentences: Sequence[Sentence],
        data_fingerprint: str,
        spec: TargetSpec,
        cache_dir: str,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        cached_features: bool = True,
        progress: bool = False,
    ):
        self.teacher_dir = teacher_dir
        self.sentences = sentences
        self.data_fingerprint = data_fingerprint
        self.spec = spec
        self.cache_dir = cache_dir
        self.device = device
        self.batch_size = batch_size
        self.cached_features = cached_features
        self.progress = progress
        self._loaded: tuple[Any, Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}

    def _teacher(self) -> tuple[Any, Any, Any]:
        """``(teacher, its ModelInfo, collator)``, loaded once per process."""
        if self._loaded is None:
            teacher, info = load_tagger(self.teacher_dir, device=self.device)
            collator = make_collator(
                info.config,
                teacher,
                info.vocab,
                self.sentences,
                self.data_fingerprint,
                self.cache_dir,
                device=self.device,
                progress=self.progress,
                cached_features=self.cached_features,
            )
            self._loaded = (teacher, info, collator)
        return self._loaded

    def __call__(self, directory: Path, start: int, stop: int) -> dict[str, Any]:
        started = time.perf_counter()
        teacher, info, collator = self._teacher()
        n_labels = info.vocab.n_labels
        shard = [sentence.without_tags() for sentence in self.sentences[start:stop]]
        lengths = np.asarray([len(sentence) for sentence in shard], dtype=np.int64)
        quantities = self.spec.quantities(n_labels)

        def collate(items: list[tuple[int, Sentence]]) -> Any:
            return collator([(start + index, sentence) for index, sentence in items])

        description = f"teacher outputs ({self.spec.kind}, {start}..{stop - 1})"
        with contextlib.ExitStack() as files:  # on success: every sentence written, synced
            writers = {
                name: files.enter_context(
                    RaggedWriter(directory, name, _rows(rule, lengths), shape, dtype)
                )
                for name, (rule, shape, dtype) in quantities.items()
            }
            batches = sorted_batches(shard, collate, self.batch_size, self.device)
            with progress_bar(len(shard), description, self.progress) as bar:
                with torch.inference_mode():
                    for indices, batch in batches:
                        outputs = self.spec.teacher_outputs(teacher(batch), n_labels)
                        for name, writer in writers.items():
                            writer.write(indices, outputs[name].cpu().numpy())
                        if bar is not None:
                            bar.update(len(indices))
        return {"n_tokens": int(lengths.sum()), "seconds": time.perf_counter() - started}


def ensure_targets(
    teacher_dir: str | os.PathLike[str],
    sentences: Sequence[Sentence],
    data_fingerprint: str,
    spec: TargetSpec,
    cache_dir: str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = False,
    data_name: str = "",
    plan: ShardPlan | None = None,
    cached_features: bool = True,
) -> tuple[Path | None, bool]:
    """The cache entry of ``spec``'s teacher outputs on ``sentences`` (ids = their indices; a
    list or a ``TokenizedText``), built if missing; returns ``(directory, built)``.

    The key is the SHA-256 of ``(format, model.pt hash, data_fingerprint, number of sentences,
    spec's options)``. Building cuts the sentences into shards of ``plan.shard_size``
    (``ShardPlan()``: 50,000, built one after another by this process) and runs ``TeacherShards``
    on each: the teacher over length-sorted batches of ``batch_size``. ``plan`` shares the shards
    among ``workers`` processes and machines (``rank``/``world_size``); ``directory`` is ``None``
    only when ``plan.finish`` is false and other processes' shards are missing.
    ``cached_features=False``: a frozen transformer teacher computes its features on the fly
    instead of building the whole source's feature cache first (the targets are the same).
    """
    info = model_info(teacher_dir)
    inputs = {
        "format": CACHE_FORMAT,
        "teacher_hash": info.file_hash,
        "data": data_fingerprint,
        "n_sentences": len(sentences),
        **spec.key_inputs(),
    }
    if info.config.transformer_context > 0:  # the teacher reads each sentence's document too
        from structkd.data.documents import document_fingerprint

        inputs["documents"] = document_fingerprint(sentences)
    plan = plan or ShardPlan()
    builder = TeacherShards(
        os.fspath(Path(teacher_dir).resolve()),
        sentences,
        data_fingerprint,
        spec,
        os.fspath(cache_dir),
        device=str(device),
        batch_size=batch_size,
        cached_features=cached_features,
        progress=progress and plan.workers == 1,
    )
    n_labels = info.vocab.n_labels
    quantities = spec.quantities(n_labels)

    def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "teacher": os.fspath(Path(teacher_dir).resolve()),
            "data_name": data_name,
            "spec": asdict(spec),
            "n_labels": n_labels,
            "types": list(info.types),
            "quantities": {name: list(rule_shape[:1]) for name, rule_shape in quantities.items()},
            "n_tokens": sum(record["n_tokens"] for record in records),
            "seconds": sum(record["seconds"] for record in records),
        }

    return build_sharded_entry(
        Path(cache_dir) / "targets",
        inputs,
        len(sentences),
        builder,
        summarize=summarize,
        plan=plan,
    )


@dataclass
class KDTargets:
    """Cached teacher outputs for one batch of ``B`` sentences padded to ``N`` tokens, one dict
    per teacher (``per_teacher``, keys as in ``TargetSpec.quantities``, padded as in
    ``teacher_half`` except ``kbest_tags`` ``[k, B, N]`` int64 and ``kbest_log_probs``
    ``[k, B]``), and the ensemble ``weights`` ``[n_teachers]``."""

    method: str
    per_teacher: list[dict[str, Tensor]]
    weights: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KDTargets:
        moved = [
            {name: value.to(device, non_blocking=non_blocking) for name, value in t.items()}
            for t in self.per_teacher
        ]
        return KDTargets(self.method, moved, self.weights)


class TargetReader:
    """Reads ``KDTargets`` for batches of sentence ids from the cache entries of one source: per
    teacher, one entry (all of the same ``TargetSpec``) or the ``FoldEntries`` of a fold teacher,
    mixed with ``weights`` ``[n_teachers]``.

    A fold teacher of weight ``w`` gives a batch one set of targets of weight ``w`` when every
    sentence's targets are out-of-fold (each read from its own fold teacher's entry), else K sets
    of weight ``w / K`` (``FoldEntries.plans``): set ``k`` holds fold teacher ``k``'s targets of
    the sentences that get the mixture and each other sentence's out-of-fold targets (K equal
    copies mix to themselves, exactly, whatever the method)."""

    def __init__(
        self, directories: Sequence[Path | FoldEntries], spec: TargetSpec, weights: Tensor
    ):
        if len(directories) != len(weights):
            raise ValueError(f"{len(directories)} cache entries but {len(weights)} weights")
        self.spec = spec
        self.weights = weights
        self.teachers: list[tuple[list[dict[str, tuple[ShardedArray, str]] | None], Any]] = []
        for item in directories:
            fold = item if isinstance(item, FoldEntries) else FoldEntries((Path(item),), (None,))
            opened = []
            for directory in fold.entries:
                if directory is None:
                    opened.append(None)
                    continue
                n_labels = int(read_meta(directory)["n_labels"])
                opened.append(
                    {
                        name: (ShardedArray.open(directory, name), rule)
                        for name, (rule, _, _) in spec.quantities(n_labels).items()
                    }
                )
            self.teachers.append((opened, fold))

    @property
    def entries(self) -> list[dict[str, tuple[ShardedArray, str]]]:
        """The opened entries of every teacher (and fold teacher), in order."""
        return [entry for opened, _ in self.teachers for entry in opened if entry is not None]

    def __call__(self, sentence_ids: Tensor, lengths: Tensor) -> KDTargets:
        """Targets of the sentences ``sentence_ids`` ``[B]`` with ``lengths`` ``[B]``."""
        items = sentence_ids.cpu().numpy().astype(np.int64)
        lengths_np = lengths.cpu().numpy().astype(np.int64)
        max_len = int(lengths_np.max())
        per_teacher, weights = [], []
        for (opened, fold), weight in zip(self.teachers, self.weights.tolist(), strict=True):
            plans = fold.plans(items)
            for plan in plans:
                per_teacher.append(self._read(opened, fold, plan, items, lengths_np, max_len))
                weights.append(weight / len(plans))
        return KDTargets(
            self.spec.method, per_teacher, torch.tensor(weights, dtype=self.weights.dtype)
        )

    def _read(
        self,
        opened: list[dict[str, tuple[ShardedArray, str]] | None],
        fold: FoldEntries,
        plan: np.ndarray,
        items: np.ndarray,
        lengths: np.ndarray,
        max_len: int,
    ) -> dict[str, Tensor]:
        """One set of targets: sentence ``b``'s from the entry ``opened[plan[b]]``."""
        groups = []
        for index in np.unique(plan).tolist():
            rows = np.flatnonzero(plan == index)
            ids = fold.locate(index, items[rows])
            entry = opened[index]
            assert entry is not None  # locate checked it
            groups.append((rows, ids, entry))
        found = {}
        for name, (_, rule) in groups[0][2].items():
            out = None
            for rows, ids, entry in groups:
                array = entry[name][0]
                if not np.array_equal(array.rows(ids), _rows(rule, lengths[rows])):
                    raise ValueError(
                        f"cached {name} do not match the batch's sentence lengths (a cache of "
                        "other data?)"
                    )
                pad = _PAD_BY_NAME.get(name, _PAD[str(array.dtype)])
                values = array.gather(ids, _max_rows(rule, max_len), pad)
                if len(groups) == 1:
                    out = values
                    break
                if out is None:
                    out = np.full((len(items), *values.shape[1:]), pad, dtype=values.dtype)
                out[rows] = values
            padded = torch.from_numpy(out)
            if name == "kbest_tags":
                padded = padded.long().permute(2, 0, 1)  # [k, B, N]
            elif name == "kbest_log_probs":
                padded = padded[:, 0, :].transpose(0, 1)  # [k, B]
            found[name] = padded
        return found
