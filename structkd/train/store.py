"""The on-disk cache store: entries computed once per (model, data, options) and read back in
batches, never held whole in memory.

An entry is a directory named by the SHA-256 fingerprint of everything its contents depend on (a
JSON-able ``inputs`` dict: the model file's hash, the data's fingerprint, the method and its
options). It is built under a file lock and renamed into place when complete (its ``meta.json``
written last), so concurrent processes (DDP ranks, parallel runs) build it once and an
interrupted build never looks complete.

Two kinds of entries:

* ``build_entry``: one build function writes the whole entry into a scratch directory. A failed or
  interrupted build removes its scratch directory; the scratch directories of killed processes
  are removed by the next build that finds their lock free.
* ``build_sharded_entry``: items (sentences) ``0..n-1`` are cut into shards of ``shard_size``
  consecutive ids, each built on its own (under its own lock, in its own scratch directory,
  renamed into ``<key>.partial/<shard>`` when done), by ``workers`` processes of this machine and
  by any number of machines sharing the cache directory (``ShardPlan``: ``rank``/``world_size``).
  The index (``meta.json`` with the shard boundaries) is written last, by the process that
  completes the entry, and ``<key>.partial`` is renamed to ``<key>``. A failed or interrupted
  build keeps its finished shards: the next build of the same inputs resumes at the first
  unfinished one. Memory is bounded by a shard's inputs and one batch, whatever the corpus size.

Each cached quantity of a shard (or of a ``build_entry``) is one flat ``.npy`` array
``[total_rows, *row_shape]`` (the rows of every sentence, one after another) with an offset index
``[n_sentences + 1]``: sentence ``i`` owns rows ``offsets[i]:offsets[i + 1]``, so a batch is a
gather of row ranges (``RaggedArray``, memory-mapped; ``ShardedArray`` across the shards of an
entry, by sentence id). ``RaggedWriter`` writes them without mapping them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import functools
import gc
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "META_FILE",
    "PARTIAL_SUFFIX",
    "SHARD_FILE",
    "RaggedArray",
    "RaggedWriter",
    "ShardBuilder",
    "ShardPlan",
    "ShardedArray",
    "build_entry",
    "build_sharded_entry",
    "fingerprint",
    "is_complete",
    "locked",
    "progress_bar",
    "read_meta",
    "remove_stale_scratch",
    "shard_name",
]

META_FILE = "meta.json"


def fingerprint(inputs: dict[str, Any]) -> str:
    """SHA-256 of ``inputs`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()


_SCRATCH_SUFFIX = ".building"


def _scratch_key(path: Path) -> str | None:
    """The entry key of a scratch directory ``.<key>.<pid>.building`` (``None``: not one)."""
    name = path.name
    if not (name.startswith(".") and name.endswith(_SCRATCH_SUFFIX)):
        return None
    key, _, pid = name[1 : -len(_SCRATCH_SUFFIX)].rpartition(".")
    return key if key and pid.isdigit() else None


def _lock_is_free(path: Path) -> bool:
    """Whether no process holds the lock ``path`` (taken and released at once)."""
    try:
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
            fcntl.flock(handle, fcntl.LOCK_UN)
            return True
    except OSError:
        return False


def remove_stale_scratch(root: Path, held_key: str, locks: Path | None = None) -> list[Path]:
    """Remove the scratch directories under ``root`` left by builds that died (killed
    processes: no ``finally`` ran); returns them. A build holds its entry's lock from start to
    end, so a scratch directory is stale when its lock is free, or when it is ``held_key``'s,
    whose lock the caller holds (whatever process ids say: they are not unique across
    containers). The lock of key ``k`` is ``<locks>/<k>.lock`` (``locks``: ``root`` if None)."""
    locks = root if locks is None else locks
    removed = []
    for path in root.glob(f".*{_SCRATCH_SUFFIX}"):
        key = _scratch_key(path)
        if key is None or not path.is_dir():
            continue
        if key == held_key or _lock_is_free(locks / f"{key}.lock"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` is a finished entry (its ``meta.json`` exists)."""
    return (directory / META_FILE).is_file()


def read_meta(directory: Path) -> dict[str, Any]:
    """The ``meta.json`` of a finished entry."""
    return json.loads((directory / META_FILE).read_text(encoding="utf-8"))


def build_entry(
    root: str | os.PathLike[str], inputs: dict[str, Any], build: Callable[[Path], dict[str, Any]]
) -> tuple[Path, bool]:
    """The entry of ``inputs`` under ``root``, built if missing; returns ``(directory, built)``.

    ``build(scratch)`` writes the entry's files into the empty directory ``scratch`` and returns
    what ``meta.json`` records beside ``inputs``. It runs under the entry's lock; the scratch
    directory is renamed into place only after it returns, and removed when it raises (or the
    run is interrupted). Taking the lock first removes the scratch directories of builds whose
    process was killed (``remove_stale_scratch``).
    """
    root = Path(root)
    key = fingerprint(inputs)
    final = root / key
    with locked(root / f"{key}.lock"):
        if is_complete(final):
            return final, False
        remove_stale_scratch(root, key)
        scratch = root / f".{key}.{os.getpid()}{_SCRATCH_SUFFIX}"
        scratch.mkdir(parents=True)
        try:
            meta = {**inputs, **build(scratch)}
            (scratch / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            if final.exists():  # an incomplete entry (no meta.json): replaced
                shutil.rmtree(final)
            os.replace(scratch, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final, True


PARTIAL_SUFFIX = ".partial"
SHARD_FILE = "shard.json"
_PLAN_FILE = "build.json"


def shard_name(index: int) -> str:
    """The directory name of shard ``index`` (``00000``, ``00001``, ...)."""
    return f"{index:05d}"


class ShardBuilder(Protocol):
    """Writes the files of the items ``start..stop-1`` into the empty directory ``directory`` and
    returns what the shard's ``shard.json`` records (JSON-able). With ``workers > 1`` it is
    pickled to each worker process once: it must be a picklable object (a module-level class),
    cheap to pickle (it should hold how to read the items, not the items of a large corpus)."""

    def __call__(self, directory: Path, start: int, stop: int) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ShardPlan:
    """How a sharded entry is built (``build_sharded_entry``).

    ``shard_size``: items per shard (the last one may hold fewer); the memory of a build is
    bounded by one shard's inputs and one batch. ``workers``: processes of this machine building
    shards at once (spawned, ``threads`` torch threads each; 1 builds in the calling process).
    ``rank``, ``world_size``: this process's share when several machines (or DDP ranks) build
    the same entry into a shared cache directory: shards ``rank, rank + world_size, ...``.
    ``finish``: after its share, build (or wait for, under their locks) every other unfinished
    shard and write the index, so the call returns a complete entry; with ``False`` it returns
    after its share, writing the index only if that completed the entry (the last process to
    finish writes it); a later call with ``finish=True`` (any rank) completes the entry.
    """

    shard_size: int = 50_000
    workers: int = 1
    threads: int = 1
    rank: int = 0
    world_size: int = 1
    finish: bool = True

    def __post_init__(self) -> None:
        for name in ("shard_size", "workers", "threads", "world_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int):
            raise ValueError(f"rank must be an integer; got {self.rank!r}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in 0..{self.world_size - 1}; got {self.rank}")

    @classmethod
    def from_environment(cls, **changes: Any) -> ShardPlan:
        """A plan whose ``rank``/``world_size`` are the process's ``RANK``/``WORLD_SIZE``
        environment variables (set by ``torchrun`` and cluster launchers for every DDP process;
        ``LOCAL_RANK`` when ``RANK`` is missing; ``0``/``1`` when unset), ``changes`` applied."""
        world_size = int(os.environ.get("WORLD_SIZE") or 1)
        rank = int(os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or 0)
        if world_size < 1 or not 0 <= rank < world_size:
            rank, world_size = 0, 1
        return cls(**{"rank": rank, "world_size": world_size, **changes})

    @classmethod
    def for_distillation(cls, options: Any) -> ShardPlan:
        """The plan of a distillation's target caches (``DistillOptions``): its
        ``target_workers`` processes and ``target_shard_size`` sentences a shard, this process's
        rank (``from_environment``)."""
        return cls.from_environment(
            workers=options.target_workers, shard_size=options.target_shard_size
        )

    def bounds(self, n_items: int) -> list[tuple[int, int]]:
        """``[(start, stop), ...]`` of every shard of ``n_items`` items (one empty shard for
        ``n_items == 0``)."""
        if n_items < 0:
            raise ValueError(f"n_items must be >= 0; got {n_items}")
        count = max(1, math.ceil(n_items / self.shard_size))
        return [
            (k * self.shard_size, min(n_items, (k + 1) * self.shard_size)) for k in range(count)
        ]


def _shard_done(partial: Path, index: int) -> bool:
    return (partial / shard_name(index) / SHARD_FILE).is_file()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as JSON at ``path``, atomically (a temporary file renamed into place)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _start_partial(partial: Path, plan_record: dict[str, Any]) -> None:
    """Create ``partial`` with its ``build.json`` (``plan_record``), or check that an existing
    one (an interrupted build, or another machine's) was started with the same plan."""
    record_path = partial / _PLAN_FILE
    if record_path.is_file():
        found = json.loads(record_path.read_text(encoding="utf-8"))
        for field in ("n_items", "shard_size"):
            if found.get(field) != plan_record[field]:
                raise ValueError(
                    f"the unfinished build {os.fspath(partial)!r} has {field}={found.get(field)} "
                    f"but this build asks for {field}={plan_record[field]}: build with "
                    f"{field}={found.get(field)} to resume it, or remove the directory"
                )
        return
    partial.mkdir(parents=True, exist_ok=True)
    _write_json(record_path, plan_record)


def _build_shard(
    root: Path, key: str, index: int, start: int, stop: int, builder: ShardBuilder
) -> bool:
    """Build shard ``index`` of entry ``key`` unless it (or the entry) is finished; under the
    shard's lock; returns whether it was built here."""
    partial, name = root / f"{key}{PARTIAL_SUFFIX}", shard_name(index)
    locks = root / f"{key}.locks"
    with locked(locks / f"{name}.lock"):
        if is_complete(root / key) or _shard_done(partial, index):
            return False
        if not (partial / _PLAN_FILE).is_file():
            raise RuntimeError(
                f"{os.fspath(partial)!r} disappeared while its entry was being built (removed "
                "by hand?)"
            )
        remove_stale_scratch(partial, name, locks)
        scratch = partial / f".{name}.{os.getpid()}{_SCRATCH_SUFFIX}"
        scratch.mkdir()
        try:
            record = {"start": start, "stop": stop, **builder(scratch, start, stop)}
            _write_json(scratch / SHARD_FILE, record)
            os.replace(scratch, partial / name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    _release_memory()
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (``None`` where the C library has none)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _release_memory() -> None:
    """Hand the memory a finished shard freed back to the operating system: a garbage collection,
    then ``malloc_trim(0)`` (glibc keeps freed heap pages otherwise: a process building shard
    after shard grew by ~25 MB a 20k-sentence shard, to ~860 MB after ten 50k ones)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_installed: ShardBuilder | None = None


def _install_builder(builder: ShardBuilder, threads: int) -> None:
    """Initializer of a worker process: keep ``builder``, use ``threads`` torch threads."""
    global _installed
    _installed = builder
    import torch

    torch.set_num_threads(threads)


def _build_with_installed(root: Path, key: str, index: int, start: int, stop: int) -> bool:
    assert _installed is not None, "a worker process without its builder"
    return _build_shard(root, key, index, start, stop, _installed)


def _build_shards(
    root: Path,
    key: str,
    shards: list[tuple[int, int, int]],
    builder: ShardBuilder,
    plan: ShardPlan,
) -> bool:
    """Build the ``(index, start, stop)`` shards not finished yet, in this process or in
    ``plan.workers`` spawned ones; returns whether any was built here. The first failure cancels
    the shards not started and is raised once the shards in progress have finished (they are
    kept, like every finished shard, for the next build to resume from)."""
    shards = [
        shard for shard in shards if not _shard_done(root / f"{key}{PARTIAL_SUFFIX}", shard[0])
    ]
    if plan.workers == 1 or len(shards) <= 1:
        built = False
        for index, start, stop in shards:
            built = _build_shard(root, key, index, start, stop, builder) or built
        return built
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(plan.workers, len(shards)),
        mp_context=context,
        initializer=_install_builder,
        initargs=(builder, plan.threads),
    ) as pool:
        futures = [pool.submit(_build_with_installed, root, key, *shard) for shard in shards]
        try:
            return any([future.result() for future in as_completed(futures)])
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def build_sharded_entry(
    root: str | os.PathLike[str],
    inputs: dict[str, Any],
    n_items: int,
    builder: ShardBuilder,
    *,
    summarize: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    plan: ShardPlan | None = None,
) -> tuple[Path | None, bool]:
    """The entry of ``inputs`` under ``root`` over items ``0..n_items-1``, built shard by shard if
    missing; returns ``(directory, built)`` (``built``: a shard was built by this call).

    ``builder(scratch, start, stop)`` writes the files of items ``start..stop-1`` (ids local to
    the shard: item ``start + j`` is the shard's ``j``) and returns the shard's record.
    ``summarize(records)`` turns the records of every shard, in order, into what ``meta.json``
    records beside ``inputs`` and the index ``shards`` (``{"size", "starts", "n_items"}``).
    ``plan`` (``ShardPlan()``: one process builds every shard) shares the work among worker
    processes and machines. ``directory`` is ``None`` only with ``plan.finish=False`` while
    shards of other processes are still missing.

    While building, ``<key>.partial/`` holds ``build.json`` (the plan) and the finished shards
    (``00000/`` ... each with its ``shard.json`` written last); shard locks are
    ``<key>.locks/<shard>.lock``; the entry lock ``<key>.lock`` guards starting and finishing.
    Finishing writes ``meta.json`` into ``<key>.partial`` and renames it ``<key>``.
    """
    root = Path(root)
    plan = plan or ShardPlan()
    key = fingerprint(inputs)
    final, partial = root / key, root / f"{key}{PARTIAL_SUFFIX}"
    if is_complete(final):
        return final, False
    bounds = plan.bounds(n_items)
    record = {"inputs_key": key, "n_items": n_items, "shard_size": plan.shard_size}
    with locked(root / f"{key}.lock"):
        if is_complete(final):
            return final, False
        _start_partial(partial, record)
    shards = [(index, start, stop) for index, (start, stop) in enumerate(bounds)]
    built = _build_shards(root, key, shards[plan.rank :: plan.world_size], builder, plan)
    if plan.finish:
        built = _build_shards(root, key, shards, builder, plan) or built
    with locked(root / f"{key}.lock"):
        if is_complete(final):
            return final, built
        if not all(_shard_done(partial, index) for index in range(len(bounds))):
            return None, built  # others' shards are missing (plan.finish is False)
        records = [
            json.loads((partial / shard_name(index) / SHARD_FILE).read_text(encoding="utf-8"))
            for index in range(len(bounds))
        ]
        meta = {
            **inputs,
            **(summarize(records) if summarize is not None else {}),
            "shards": {
                "size": plan.shard_size,
                "starts": [start for start, _ in bounds],
                "n_items": n_items,
            },
        }
        _write_json(partial / META_FILE, meta)
        if final.exists():  # an incomplete entry (no meta.json): replaced
            shutil.rmtree(final)
        os.replace(partial, final)
    return final, built


def progress_bar(total: int, description: str, enabled: bool) -> Any:
    """A tqdm bar over ``total`` sentences on standard error (a null context when disabled)."""
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="sent", file=sys.stderr, leave=False)


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
        offsets = np.load(directory / f"{name}.offsets.npy", mmap_mode="r")
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


class RaggedWriter:
    """Writes the files of a ``RaggedArray`` (``<name>.npy`` ``[total_rows, *row_shape]`` and
    ``<name>.offsets.npy`` ``[n_sentences + 1]``) without mapping them: each sentence's rows go to
    their place in the file with ``os.pwrite``, so the writing process holds one batch, never the
    file (pages written through a memory map stay in its resident memory until it is unmapped).

    ``write`` takes batches in any order; ``close`` checks that every sentence was written once
    and syncs the file to disk. A context manager (closed on success, released on error).
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        rows: Sequence[int] | np.ndarray,
        row_shape: tuple[int, ...],
        dtype: str,
    ):
        rows = np.asarray(rows, dtype=np.int64)
        if (rows < 0).any():
            raise ValueError(f"rows of {name} must be non-negative")
        self.name = name
        self.offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(rows, out=self.offsets[1:])
        np.save(directory / f"{name}.offsets.npy", self.offsets)
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = self.dtype.itemsize * math.prod(self.row_shape)
        # like RaggedArray.create: at least one row (np.memmap cannot map 0 bytes)
        shape = (max(int(self.offsets[-1]), 1), *self.row_shape)
        path = directory / f"{name}.npy"
        with open(path, "wb") as handle:
            header = {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": shape,
            }
            np.lib.format.write_array_header_1_0(handle, header)
            self.header_bytes = handle.tell()
            handle.truncate(self.header_bytes + shape[0] * self.row_bytes)  # sparse until written
        self.written = np.zeros(len(rows), dtype=bool)
        self.fd: int | None = os.open(path, os.O_WRONLY)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def write(self, items: Sequence[int] | np.ndarray, padded: np.ndarray) -> None:
        """Store ``padded[b, :rows(item_b)]`` as the rows of sentence ``items[b]``
        (``padded``: ``[len(items), max_rows, *row_shape]``, converted to the file's dtype)."""
        if self.fd is None:
            raise ValueError(f"{self.name} is closed")
        items = np.asarray(items, dtype=np.int64)
        padded = np.ascontiguousarray(padded, dtype=self.dtype)
        if padded.shape[0] != len(items) or tuple(padded.shape[2:]) != self.row_shape:
            raise ValueError(
                f"{self.name}: got a batch of shape {tuple(padded.shape)} for {len(items)} "
                f"sentences of rows {self.row_shape}"
            )
        if len(items) and (items.min() < 0 or items.max() >= len(self)):
            raise ValueError(f"{self.name}: sentence ids must be in 0..{len(self) - 1}")
        starts, stops = self.offsets[items], self.offsets[items + 1]
        if len(items) and int((stops - starts).max()) > padded.shape[1]:
            raise ValueError(f"{self.name}: a sentence has more rows than the batch holds")
        for position, (start, stop) in enumerate(zip(starts.tolist(), stops.tolist(), strict=True)):
            if stop > start:
                os.pwrite(
                    self.fd,
                    padded[position, : stop - start],
                    self.header_bytes + start * self.row_bytes,
                )
        self.written[items] = True

    def close(self) -> None:
        """Check that every sentence was written, sync the file and close it."""
        if self.fd is None:
            return
        try:
            missing = int((~self.written).sum())
            if missing:
                raise RuntimeError(
                    f"{self.name}: {missing} of {len(self)} sentences were never written"
                )
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RaggedWriter:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if kind is None:
            self.close()
        elif self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ShardedArray:
    """One cached quantity of an entry, read by sentence id across its shards: shard ``k`` holds
    sentences ``starts[k]..starts[k + 1]-1`` in a ``RaggedArray`` (memory-mapped, opened the
    first time it is read). Reads what ``build_sharded_entry`` writes and, as one shard, what
    ``build_entry`` writes (files directly in the entry's directory).

    Pickles as its directory and name (a process that unpickles it maps the files anew).
    """

    def __init__(
        self, directory: Path, name: str, starts: Sequence[int], n_items: int, sharded: bool
    ):
        self.directory = Path(directory)
        self.name = name
        self.starts = np.asarray([*starts, n_items], dtype=np.int64)
        self.sharded = sharded
        self._shards: list[RaggedArray | None] = [None] * (len(self.starts) - 1)

    @classmethod
    def open(cls, directory: Path, name: str) -> ShardedArray:
        """Quantity ``name`` of the finished entry ``directory`` (``ValueError`` if unfinished)."""
        directory = Path(directory)
        if not is_complete(directory):
            raise ValueError(f"{os.fspath(directory)!r} is not a finished cache entry")
        layout = read_meta(directory).get("shards")
        if layout is None:  # one RaggedArray (build_entry)
            offsets = np.load(directory / f"{name}.offsets.npy", mmap_mode="r")
            return cls(directory, name, [0], len(offsets) - 1, sharded=False)
        return cls(directory, name, layout["starts"], int(layout["n_items"]), sharded=True)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_shards": [None] * len(self._shards)}

    def shard(self, index: int) -> RaggedArray:
        """The ``RaggedArray`` of shard ``index`` (mapped on first use)."""
        found = self._shards[index]
        if found is None:
            where = self.directory / shard_name(index) if self.sharded else self.directory
            found = RaggedArray.open(where, self.name)
            expected = int(self.starts[index + 1] - self.starts[index])
            if len(found) != expected:
                raise ValueError(
                    f"shard {index} of {os.fspath(self.directory)!r} holds {len(found)} "
                    f"sentences, its index says {expected}"
                )
            self._shards[index] = found
        return found

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def n_shards(self) -> int:
        return len(self._shards)

    @property
    def mapped_shards(self) -> list[int]:
        """The shards mapped so far (a shard is mapped when first read)."""
        return [index for index, shard in enumerate(self._shards) if shard is not None]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shard(0).row_shape

    @property
    def dtype(self) -> np.dtype:
        return self.shard(0).values.dtype

    def _locate(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, id within the shard) ``[len(items)]`` of sentence ids ``items``."""
        if len(items) and (items.min() < 0 or items.max() >= len(self)):
            raise ValueError(
                f"sentence ids must be in 0..{len(self) - 1}; got {items.min()}..{items.max()} "
                "(is the cache of this data set?)"
            )
        shards = np.searchsorted(self.starts, items, side="right") - 1
        return shards, items - self.starts[shards]

    def rows(self, items: np.ndarray) -> np.ndarray:
        """``[len(items)]`` row counts of sentences ``items``."""
        items = np.asarray(items, dtype=np.int64)
        shards, local = self._locate(items)
        found = np.zeros(len(items), dtype=np.int64)
        for index in np.unique(shards).tolist():
            chosen = shards == index
            found[chosen] = self.shard(index).rows(local[chosen])
        return found

    def __getitem__(self, item: int) -> np.ndarray:
        """The rows ``[rows, *row_shape]`` of sentence ``item`` (a view of the map)."""
        if not 0 <= item < len(self):
            raise IndexError(f"sentence id {item} is outside 0..{len(self) - 1}")
        shards, local = self._locate(np.asarray([item], dtype=np.int64))
        return self.shard(int(shards[0]))[int(local[0])]

    def gather(self, items: np.ndarray, max_rows: int, pad_value: float) -> np.ndarray:
        """``[len(items), max_rows, *row_shape]``: each sentence's rows, then ``pad_value``."""
        items = np.asarray(items, dtype=np.int64)
        shards, local = self._locate(items)
        touched = np.unique(shards).tolist()
        first = self.shard(touched[0] if touched else 0)
        out = np.full((len(items), max_rows, *first.row_shape), pad_value, first.values.dtype)
        for index in touched:
            chosen = shards == index
            out[chosen] = self.shard(index).gather(local[chosen], max_rows, pad_value)
        return out
