"""The on-disk cache store: entries computed once per (model, data, options) and read back in
batches, never held whole in memory.

An entry is a directory named by the SHA-256 fingerprint of everything its contents depend on (a
JSON-able ``inputs`` dict: the model file's hash, the data's fingerprint, the method and its
options). It is built in a scratch directory under a file lock and renamed into place when
complete (its ``meta.json`` written last), so concurrent processes (DDP ranks, parallel runs)
build it once and an interrupted build never looks complete. A failed or interrupted build
removes its scratch directory; the scratch directories of killed processes are removed by the
next build that finds their lock free.

Each cached quantity is one flat memory-mapped ``.npy`` array ``[total_rows, *row_shape]`` (the
rows of every sentence, one after another) with an offset index ``[n_sentences + 1]``: sentence
``i`` owns rows ``offsets[i]:offsets[i + 1]``, so a batch is a gather of row ranges
(``RaggedArray``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "META_FILE",
    "RaggedArray",
    "build_entry",
    "fingerprint",
    "is_complete",
    "locked",
    "progress_bar",
    "read_meta",
    "remove_stale_scratch",
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


def remove_stale_scratch(root: Path, held_key: str) -> list[Path]:
    """Remove the scratch directories under ``root`` left by builds that died (killed
    processes: no ``finally`` ran); returns them. A build holds its entry's lock from start to
    end, so a scratch directory is stale when its lock is free, or when it is ``held_key``'s,
    whose lock the caller holds (whatever process ids say: they are not unique across
    containers)."""
    removed = []
    for path in root.glob(f".*{_SCRATCH_SUFFIX}"):
        key = _scratch_key(path)
        if key is None or not path.is_dir():
            continue
        if key == held_key or _lock_is_free(root / f"{key}.lock"):
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
