"""On-disk caches: teacher outputs for distillation and frozen transformer word features.

Both are computed once per (model, data) and read back in batches, never held whole in memory.
Each cached quantity is one flat memory-mapped ``.npy`` array ``[total_rows, *row_shape]`` (the rows
of every sentence, one after another) with an offset index ``[n_sentences + 1]``: sentence ``i``
owns rows ``offsets[i]:offsets[i + 1]``, so a batch is a gather of row ranges (random access). A
cache entry is a directory named by the SHA-256 fingerprint of everything its contents depend on
(the model file's hash, the tokens of the data, the method and its options); it is built in a
temporary directory under a file lock and renamed into place when complete, so concurrent
processes (DDP ranks, parallel runs) build it once and an interrupted build leaves nothing behind.

What a distillation method caches (``TargetSpec``), for a teacher and a source of sentences:

=============  =============================================  ==============================
method         quantities (per sentence of ``n`` tokens)       computed from
=============  =============================================  ==============================
struct         ``marginals [n, L]``, ``pair_marginals          the teacher projected on the
               [n - 1, L, L]`` (CRF student only)              student's substructures
                                                               (``project_teacher``): global
                                                               temperature on the tempered
                                                               teacher, local via
                                                               ``local_temper``
posterior      ``marginals [n, L]``                            the tempered teacher
token          ``emissions [n, L]``                            the teacher's emissions / logits
topk, topwk    ``kbest_tags [n, k]`` (int32, ``-1`` where      ``teacher.tempered(T).kbest(k)``
               fewer than ``k`` structures exist),
               ``kbest_log_probs [1, k]`` (``-inf`` there)
=============  =============================================  ==============================

An ensemble caches each teacher separately and mixes at load time (``KDTargets``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from structkd.data.batching import TaggingCollator, length_sorted_batches
from structkd.data.conll import Sentence
from structkd.distill.baselines import token_emissions
from structkd.distill.bridges import ChainTargets, project_teacher
from structkd.distill.temperature import local_temper
from structkd.models.tagger import Tagger, TaggerConfig
from structkd.structures.base import StructDistribution
from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF

__all__ = [
    "CACHE_FORMAT",
    "KDTargets",
    "RaggedArray",
    "TargetReader",
    "TargetSpec",
    "WordFeatures",
    "default_cache_dir",
    "ensure_targets",
    "ensure_word_features",
    "make_collator",
    "needs_cached_features",
]

CACHE_FORMAT = 1
METHODS = ("struct", "token", "topk", "topwk", "posterior")
STUDENT_KINDS = ("crf", "factorized")
_META = "meta.json"


def default_cache_dir() -> Path:
    """``$STRUCTKD_CACHE_DIR``, else ``$XDG_CACHE_HOME/structkd``, else ``~/.cache/structkd``."""
    if os.environ.get("STRUCTKD_CACHE_DIR"):
        return Path(os.environ["STRUCTKD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "structkd"


def _fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _complete(directory: Path) -> bool:
    return (directory / _META).is_file()


# ---------------------------------------------------------------------------------------------
# Ragged arrays


class RaggedArray:
    """Rows of many sentences in one memory-mapped ``.npy`` ``[total_rows, *row_shape]`` plus an
    offset index ``[n_sentences + 1]`` (``<name>.npy`` and ``<name>.offsets.npy`` in a directory).

    ``create`` preallocates the file for known row counts; ``write`` fills sentences; ``open``
    maps an existing one read-only; ``gather`` reads a padded batch.
    """

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        self.values = values
        self.offsets = offsets

    @classmethod
    def create(
        cls,
        directory: Path,
        name: str,
        rows: Sequence[int] | np.ndarray,
        row_shape: tuple[int, ...],
        dtype: str,
    ) -> RaggedArray:
        rows = np.asarray(rows, dtype=np.int64)
        if (rows < 0).any():
            raise ValueError(f"rows of {name} must be non-negative")
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(rows, out=offsets[1:])
        np.save(directory / f"{name}.offsets.npy", offsets)
        # np.memmap cannot map 0 bytes: keep at least one row in the file
        shape = (max(int(offsets[-1]), 1), *row_shape)
        values = np.lib.format.open_memmap(
            directory / f"{name}.npy", mode="w+", dtype=np.dtype(dtype), shape=shape
        )
        return cls(values, offsets)

    @classmethod
    def open(cls, directory: Path, name: str) -> RaggedArray:
        offsets = np.load(directory / f"{name}.offsets.npy")
        values = np.load(directory / f"{name}.npy", mmap_mode="r")
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[1:])

    def rows(self, items: np.ndarray) -> np.ndarray:
        """``[len(items)]`` row counts of sentences ``items``."""
        return self.offsets[items + 1] - self.offsets[items]

    def _flat_rows(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row index in the file, batch index, position in the sentence) of every row."""
        starts = self.offsets[items]
        counts = self.offsets[items + 1] - starts
        total = int(counts.sum())
        first = np.repeat(np.cumsum(counts) - counts, counts)
        within = np.arange(total, dtype=np.int64) - first
        return np.repeat(starts, counts) + within, np.repeat(np.arange(len(items)), counts), within

    def write(self, items: np.ndarray, padded: np.ndarray) -> None:
        """Store ``padded[b, :rows(item_b)]`` as the rows of sentence ``items[b]``
        (``padded``: ``[len(items), max_rows, *row_shape]``)."""
        file_rows, batch_index, within = self._flat_rows(np.asarray(items, dtype=np.int64))
        self.values[file_rows] = padded[batch_index, within]

    def __getitem__(self, item: int) -> np.ndarray:
        """The rows ``[rows, *row_shape]`` of sentence ``item`` (a view of the map)."""
        if not 0 <= item < len(self):
            raise IndexError(f"sentence id {item} is outside 0..{len(self) - 1}")
        return self.values[self.offsets[item] : self.offsets[item + 1]]

    def gather(self, items: np.ndarray, max_rows: int, pad_value: float) -> np.ndarray:
        """``[len(items), max_rows, *row_shape]``: each sentence's rows, then ``pad_value``."""
        items = np.asarray(items, dtype=np.int64)
        if len(items) and (items.min() < 0 or items.max() >= len(self)):
            raise ValueError(
                f"sentence ids must be in 0..{len(self) - 1}; got {items.min()}..{items.max()} "
                "(is the cache of this data set?)"
            )
        out = np.full((len(items), max_rows, *self.row_shape), pad_value, dtype=self.values.dtype)
        file_rows, batch_index, within = self._flat_rows(items)
        if len(within) and within.max() >= max_rows:
            raise ValueError(f"a sentence has more than {max_rows} rows")
        out[batch_index, within] = self.values[file_rows]
        return out


def _new_entry(root: Path, key: str) -> Path:
    scratch = root / f".{key}.{os.getpid()}.building"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    return scratch


def _finish_entry(scratch: Path, final: Path, meta: dict[str, Any]) -> None:
    (scratch / _META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(scratch, final)


def _progress(total: int, description: str, enabled: bool) -> Any:
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="sent", file=sys.stderr, leave=False)


# ---------------------------------------------------------------------------------------------
# Word features of a frozen transformer


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
    chunk: memory stays bounded by a chunk.
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
    root = Path(cache_dir) / "features"
    key = _fingerprint(inputs)
    final = root / key
    with _locked(root / f"{key}.lock"):
        if _complete(final):
            return WordFeatures(final), False
        started = time.perf_counter()
        encoder = frozen_transformer(
            config.transformer, config.transformer_layers, config.transformer_pooling
        )
        encoder.to(device)
        scratch = _new_entry(root, key)
        lengths = [len(sentence) for sentence in sentences]
        array = RaggedArray.create(scratch, "features", lengths, (encoder.hidden_size,), "float32")
        order = [
            index for batch in length_sorted_batches(lengths, chunk_sentences) for index in batch
        ]
        with _progress(len(sentences), "transformer features", progress) as bar:
            for start in range(0, len(order), chunk_sentences):
                chunk = np.asarray(order[start : start + chunk_sentences], dtype=np.int64)
                features = compute_word_features(
                    encoder, [sentences[i] for i in chunk], batch_size=batch_size
                )
                width = max(row.shape[0] for row in features)
                padded = np.zeros((len(chunk), width, encoder.hidden_size), dtype=np.float32)
                for row_index, row in enumerate(features):
                    padded[row_index, : row.shape[0]] = row.numpy()
                array.write(chunk, padded)
                if bar is not None:
                    bar.update(len(chunk))
        array.values.flush()
        del array
        seconds = time.perf_counter() - started
        _finish_entry(scratch, final, {**inputs, "model": model_path, "seconds": seconds})
    return WordFeatures(final), True


def make_collator(
    tagger_config: TaggerConfig,
    tagger: Tagger | None,
    vocab: Any,
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
    transformer (``tagger`` gives its tokenizer), or plain."""
    if tagger_config.transformer is None:
        return TaggingCollator(vocab)
    if needs_cached_features(tagger_config) and cached_features:
        features, _ = ensure_word_features(
            tagger_config, sentences, data_fingerprint, cache_dir, device=device, progress=progress
        )
        return TaggingCollator(vocab, features=features)
    if tagger is None:
        raise ValueError("a tagger is needed for its subword tokenizer")
    return TaggingCollator(vocab, tokenizer=tagger.subword_tokenizer)


# ---------------------------------------------------------------------------------------------
# Teacher targets


@dataclass(frozen=True)
class TargetSpec:
    """What to cache of a teacher for one distillation method (see the module docstring).

    ``method``: one of ``METHODS``; ``temperature``; ``temperature_mode``: ``"global"`` or
    ``"local"`` (struct only); ``student_kind``: ``"crf"`` (pair marginals too) or
    ``"factorized"``; ``k``: structures kept by top-k methods.
    """

    method: str
    temperature: float = 1.0
    temperature_mode: str = "global"
    student_kind: str = "crf"
    k: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.student_kind not in STUDENT_KINDS:
            raise ValueError(
                f"student_kind must be one of {', '.join(STUDENT_KINDS)}; got {self.student_kind!r}"
            )
        if self.temperature_mode not in ("global", "local"):
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
        return "kbest" if self.method in ("topk", "topwk") else self.method

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
        if self.kind == "struct":
            found = {"marginals": ("tokens", (n_labels,), "float32")}
            if self.student_kind == "crf":
                found["pair_marginals"] = ("pairs", (n_labels, n_labels), "float32")
            return found
        if self.kind == "posterior":
            return {"marginals": ("tokens", (n_labels,), "float32")}
        if self.kind == "token":
            return {"emissions": ("tokens", (n_labels,), "float32")}
        return {
            "kbest_tags": ("tokens", (self.k,), "int32"),
            "kbest_log_probs": ("sentence", (self.k,), "float32"),
        }


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


def _dummy_student(kind: str, like: Tensor, lengths: Tensor) -> StructDistribution:
    """A student distribution of ``kind`` with zero potentials shaped like ``like``
    ``[batch, seq_len, n_labels]``: what ``project_teacher`` needs to pick the bridge and check
    shapes (its potentials are never read)."""
    zeros = torch.zeros_like(like)
    if kind == "crf":
        n_labels = like.shape[-1]
        return LinearChainCRF(zeros, like.new_zeros(n_labels, n_labels), lengths=lengths)
    return Factorized(zeros, lengths)


def teacher_outputs(
    distribution: StructDistribution, spec: TargetSpec, n_labels: int
) -> dict[str, Tensor]:
    """The cached quantities of ``spec`` for one batch of teacher output, padded:
    ``marginals`` ``[B, N, L]``, ``pair_marginals`` ``[B, N - 1, L, L]``, ``emissions``
    ``[B, N, L]``, ``kbest_tags`` ``[B, N, k]``, ``kbest_log_probs`` ``[B, 1, k]``."""
    lengths = distribution.lengths
    batch_size, max_len = distribution.batch_size, distribution.max_len
    temperature = float(spec.temperature)
    tempered = distribution.tempered(temperature) if temperature != 1.0 else distribution
    if spec.kind in ("struct", "posterior"):
        like = _potentials_like(distribution, batch_size, max_len, n_labels)
        kind = spec.student_kind if spec.kind == "struct" else "factorized"
        student = _dummy_student(kind, like, lengths)
        if spec.kind == "struct" and spec.temperature_mode == "local":
            targets = local_temper(project_teacher(distribution, student), temperature, lengths)
        else:
            targets = project_teacher(tempered, student)
        found = {"marginals": targets.marginals}
        if kind == "crf":
            found["pair_marginals"] = targets.pair_marginals
        return found
    if spec.kind == "token":
        return {"emissions": token_emissions(distribution, "teacher")}
    values, scores = tempered.kbest(spec.k)
    log_probs = scores - tempered.log_partition.unsqueeze(0)
    return {
        "kbest_tags": values.permute(1, 2, 0),
        "kbest_log_probs": log_probs.transpose(0, 1).unsqueeze(1),
    }


def _potentials_like(
    distribution: StructDistribution, batch_size: int, max_len: int, n_labels: int
) -> Tensor:
    for name in ("emissions", "logits", "span_scores"):
        tensor = getattr(distribution, name, None)
        if isinstance(tensor, Tensor):
            return tensor.new_zeros(batch_size, max_len, n_labels)
    raise TypeError(f"cannot tell the dtype of a {type(distribution).__name__} teacher")


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
) -> tuple[Path, bool]:
    """The cache entry of ``spec``'s teacher outputs on ``sentences`` (ids = their indices),
    built if missing; returns ``(directory, built)``.

    The key is the SHA-256 of ``(model.pt hash, data_fingerprint, number of sentences, spec's
    options)``. Building loads the teacher, runs it once over length-sorted batches of
    ``batch_size`` sentences in eval mode without gradients (frozen transformer features come from
    their own cache) and writes each batch's quantities to the memory maps.
    """
    from structkd.train.checkpoint import load_tagger, model_info

    info = model_info(teacher_dir)
    inputs = {
        "format": CACHE_FORMAT,
        "teacher_hash": info.file_hash,
        "data": data_fingerprint,
        "n_sentences": len(sentences),
        **spec.key_inputs(),
    }
    root = Path(cache_dir) / "targets"
    key = _fingerprint(inputs)
    final = root / key
    with _locked(root / f"{key}.lock"):
        if _complete(final):
            return final, False
        started = time.perf_counter()
        teacher, _ = load_tagger(teacher_dir, device=device)
        unlabeled = [sentence.without_tags() for sentence in sentences]
        collator = make_collator(
            info.config,
            teacher,
            info.vocab,
            unlabeled,
            data_fingerprint,
            cache_dir,
            device=device,
            progress=progress,
        )
        n_labels = info.vocab.n_labels
        lengths = np.asarray([len(sentence) for sentence in sentences], dtype=np.int64)
        scratch = _new_entry(root, key)
        quantities = spec.quantities(n_labels)
        arrays = {
            name: RaggedArray.create(scratch, name, _rows(rule, lengths), shape, dtype)
            for name, (rule, shape, dtype) in quantities.items()
        }
        with _progress(len(sentences), f"teacher outputs ({spec.kind})", progress) as bar:
            with torch.inference_mode():
                for indices in length_sorted_batches(lengths.tolist(), batch_size):
                    batch = collator([(index, unlabeled[index]) for index in indices]).to(device)
                    outputs = teacher_outputs(teacher(batch), spec, n_labels)
                    items = np.asarray(indices, dtype=np.int64)
                    for name, array in arrays.items():
                        dtype = quantities[name][2]
                        array.write(items, outputs[name].cpu().numpy().astype(dtype, copy=False))
                    if bar is not None:
                        bar.update(len(indices))
        for array in arrays.values():
            array.values.flush()
        del arrays
        meta = {
            **inputs,
            "teacher": os.fspath(Path(teacher_dir).resolve()),
            "data_name": data_name,
            "spec": asdict(spec),
            "n_labels": n_labels,
            "types": list(info.types),
            "quantities": {name: list(rule_shape[:1]) for name, rule_shape in quantities.items()},
            "seconds": time.perf_counter() - started,
        }
        _finish_entry(scratch, final, meta)
    return final, True


@dataclass
class KDTargets:
    """Cached teacher outputs for one batch of ``B`` sentences padded to ``N`` tokens, one dict
    per teacher (``per_teacher``, keys as in ``TargetSpec.quantities``, padded as in
    ``teacher_outputs`` except ``kbest_tags`` ``[k, B, N]`` int64 and ``kbest_log_probs``
    ``[k, B]``), and the ensemble ``weights`` ``[n_teachers]``."""

    method: str
    per_teacher: list[dict[str, Tensor]]
    weights: Tensor

    def chains(self) -> list[ChainTargets]:
        """Per-teacher ``ChainTargets`` (struct and posterior)."""
        return [ChainTargets(t["marginals"], t.get("pair_marginals")) for t in self.per_teacher]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KDTargets:
        moved = [
            {name: value.to(device, non_blocking=non_blocking) for name, value in t.items()}
            for t in self.per_teacher
        ]
        return KDTargets(self.method, moved, self.weights)


class TargetReader:
    """Reads ``KDTargets`` for batches of sentence ids from the cache entries of one source (one
    entry per teacher, all of the same ``TargetSpec``)."""

    def __init__(self, directories: Sequence[Path], spec: TargetSpec, weights: Tensor):
        if len(directories) != len(weights):
            raise ValueError(f"{len(directories)} cache entries but {len(weights)} weights")
        self.spec = spec
        self.weights = weights
        self.entries: list[dict[str, tuple[RaggedArray, str]]] = []
        for directory in directories:
            meta = json.loads((directory / _META).read_text(encoding="utf-8"))
            n_labels = int(meta["n_labels"])
            self.entries.append(
                {
                    name: (RaggedArray.open(directory, name), rule)
                    for name, (rule, _, _) in spec.quantities(n_labels).items()
                }
            )

    def __call__(self, sentence_ids: Tensor, lengths: Tensor) -> KDTargets:
        """Targets of the sentences ``sentence_ids`` ``[B]`` with ``lengths`` ``[B]``."""
        items = sentence_ids.cpu().numpy().astype(np.int64)
        lengths_np = lengths.cpu().numpy().astype(np.int64)
        max_len = int(lengths_np.max())
        per_teacher = []
        for entry in self.entries:
            found = {}
            for name, (array, rule) in entry.items():
                expected = _rows(rule, lengths_np)
                if not np.array_equal(array.rows(items), expected):
                    raise ValueError(
                        f"cached {name} do not match the batch's sentence lengths (a cache of "
                        "other data?)"
                    )
                pad = _PAD_BY_NAME.get(name, _PAD[str(array.values.dtype)])
                padded = torch.from_numpy(array.gather(items, _max_rows(rule, max_len), pad))
                if name == "kbest_tags":
                    padded = padded.long().permute(2, 0, 1)  # [k, B, N]
                elif name == "kbest_log_probs":
                    padded = padded[:, 0, :].transpose(0, 1)  # [k, B]
                found[name] = padded
            per_teacher.append(found)
        return KDTargets(self.spec.method, per_teacher, self.weights)
