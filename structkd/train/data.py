"""Training data: data sets named or read from files, the parts a trainer samples from, batch
samplers (length-bucketed, sharded across DDP processes) and the collator of training steps.

A *source* is a list of sentences read once (a named data set such as ``conll03-en:train`` or a
file); a sentence's id is its index in the source, so cached teacher outputs and transformer
features (``structkd.train.cache``) are keyed by (source, id). A *part* is a subset of a source's
sentences that is labeled or unlabeled (``--labeled-fraction`` splits one source into two parts);
a batch never mixes parts.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from structkd.data.batching import TaggingBatch, TaggingCollator
from structkd.data.conll import (
    DOCSTART,
    DataError,
    Sentence,
    read_conll,
    read_tokenized,
)
from structkd.data.datasets import dataset_names, is_dataset_name, load_dataset
from structkd.data.tag_schemes import detect_scheme, entity_types, split_tag

__all__ = [
    "BucketBatchSampler",
    "DataSource",
    "Part",
    "PartsDataset",
    "StepBatch",
    "StepCollator",
    "guess_text_format",
    "load_labeled",
    "load_text",
]

_COLUMNS = re.compile(r"[ \t]+")


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True, eq=False)
class DataSource:
    """Sentences read from a named data set or a file.

    ``name``: the spec as given (``"conll03-en:dev"`` or a path); ``sentences`` ``[n]``;
    ``scheme``: the tag scheme of labeled sentences (``"iob1"``, ``"iob2"``, ``"bioes"``), ``None``
    for unlabeled text.
    """

    name: str
    sentences: list[Sentence]
    scheme: str | None

    def __len__(self) -> int:
        return len(self.sentences)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the tokens (not the tags) of every sentence, in order: what a teacher reads,
        so it keys the caches of teacher outputs and features."""
        digest = hashlib.sha256()
        for sentence in self.sentences:
            digest.update("\x1f".join(sentence.tokens).encode("utf-8"))
            digest.update(b"\x1e")
        return digest.hexdigest()

    @property
    def lengths(self) -> list[int]:
        """``[n]`` tokens per sentence."""
        return [len(sentence) for sentence in self.sentences]

    @property
    def types(self) -> list[str]:
        """The sorted entity types of the labeled sentences."""
        return entity_types(s.tags for s in self.sentences if s.tags is not None)

    def head(self, max_sentences: int | None) -> DataSource:
        """The first ``max_sentences`` sentences (all of them for ``None``)."""
        if max_sentences is None or max_sentences >= len(self.sentences):
            return self
        if max_sentences < 1:
            raise ValueError(f"max_sentences must be >= 1 or None; got {max_sentences}")
        return replace(self, sentences=self.sentences[:max_sentences])


def _missing(spec: str, role: str) -> ValueError:
    return ValueError(
        f"{role} data {spec!r} is neither a known data set ({', '.join(dataset_names())}) "
        "nor an existing file"
    )


def _named(spec: str, role: str) -> list[Sentence]:
    records = load_dataset(spec)
    if records and not isinstance(records[0], Sentence):
        raise ValueError(
            f"{role} data {spec!r} is not a NER data set (its records are "
            f"{type(records[0]).__name__}, not tagged sentences)"
        )
    return records


def load_labeled(spec: str, *, role: str = "train", max_sentences: int | None = None) -> DataSource:
    """A labeled NER source: a registered data set name, or a CoNLL column file (any of the
    schemes IOB1, IOB2, BIOES, detected). Raises ``ValueError``/``DataError`` with a one-line
    reason (unknown name, missing file, a file that does not parse)."""
    spec = os.fspath(spec)
    if is_dataset_name(spec):
        sentences = _named(spec, role)
    elif Path(spec).is_file():
        sentences = read_conll(spec, scheme="auto")
    else:
        raise _missing(spec, role)
    unlabeled = sum(sentence.tags is None for sentence in sentences)
    if unlabeled:
        raise ValueError(f"{role} data {spec!r} has {unlabeled} sentences without tags")
    scheme = detect_scheme(sentence.tags for sentence in sentences)
    return DataSource(spec, sentences, scheme).head(max_sentences)


def guess_text_format(path: str | os.PathLike[str]) -> str:
    """``"conll"`` or ``"tokens"`` for a file of sentences.

    A CoNLL file has blank lines between sentences or ``-DOCSTART-`` lines; a file without either
    is CoNLL only if all its lines have the same number (at least 2) of columns, the last of which
    is always a tag (one labeled sentence); anything else is tokenized text, one sentence per line.
    """
    with open(path, encoding="utf-8", errors="replace") as stream:
        lines = [line.strip(" \t\r\n") for line in stream]
    while lines and not lines[-1]:
        lines.pop()
    content = [line for line in lines if line]
    if not content:
        return "tokens"
    first = next(index for index, line in enumerate(lines) if line)
    if any(not line for line in lines[first:]):
        return "conll"
    fields = [_COLUMNS.split(line) for line in content]
    if any(row[0] == DOCSTART for row in fields):
        return "conll"
    widths = {len(row) for row in fields}
    if len(widths) == 1 and widths.pop() >= 2:
        try:
            for row in fields:
                split_tag(row[-1])
        except ValueError:
            return "tokens"
        return "conll"
    return "tokens"


def load_text(
    spec: str | os.PathLike[str],
    *,
    role: str = "input",
    file_format: str = "auto",
    keep_tags: bool = True,
) -> DataSource:
    """Sentences to tag or to distill on: a registered data set, a CoNLL file (its tags kept when
    ``keep_tags`` and it has a tag column) or tokenized text (one sentence per line).

    ``file_format``: ``"auto"`` (``guess_text_format``), ``"conll"`` or ``"tokens"``; ``"-"`` reads
    standard input.
    """
    spec = os.fspath(spec)
    if file_format not in ("auto", "conll", "tokens"):
        raise ValueError(f"file_format must be 'auto', 'conll' or 'tokens'; got {file_format!r}")
    if spec != "-" and is_dataset_name(spec):
        sentences = _named(spec, role)
        if not keep_tags:
            sentences = [sentence.without_tags() for sentence in sentences]
        scheme = detect_scheme(s.tags for s in sentences) if keep_tags else None
        return DataSource(spec, sentences, scheme)
    if spec != "-" and not Path(spec).is_file():
        raise _missing(spec, role)
    path = spec
    if spec == "-":
        import sys
        import tempfile

        text = sys.stdin.read()
        handle = tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", suffix=".txt", delete=False
        )  # the readers take paths
        with handle:
            handle.write(text)
        path = handle.name
    try:
        chosen = guess_text_format(path) if file_format == "auto" else file_format
        if chosen == "tokens":
            sentences, scheme = read_tokenized(path), None
        else:
            sentences = _read_conll_any(path, keep_tags)
            labeled = [s.tags for s in sentences if s.tags is not None]
            scheme = detect_scheme(labeled) if labeled else None
    except DataError as error:
        if spec == "-":
            raise DataError("<stdin>", error.line, error.problem) from None
        raise
    finally:
        if spec == "-":
            os.unlink(path)
    return DataSource(spec, sentences, scheme)


def _read_conll_any(path: str, keep_tags: bool) -> list[Sentence]:
    """A CoNLL file with tags (when ``keep_tags`` and it has at least two columns) or without."""
    if keep_tags:
        with open(path, encoding="utf-8", errors="replace") as stream:
            widths = {
                len(_COLUMNS.split(line.strip(" \t\r\n")))
                for line in stream
                if line.strip() and not line.startswith("#")
            }
        if min(widths, default=1) >= 2:
            return read_conll(path, scheme="auto")
    return read_conll(path, labeled=False)


# ---------------------------------------------------------------------------------------------
# Parts, the dataset, the batch sampler


@dataclass(frozen=True, eq=False)
class Part:
    """Sentences a trainer samples batches from: ``items`` ``[(sentence_id, Sentence), ...]``
    (ids index ``source``), ``labeled`` (gold tags are used) and the ``source`` key (which
    collator, features and teacher caches apply)."""

    source: str
    items: list[tuple[int, Sentence]]
    labeled: bool

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError(f"part of {self.source!r} has no sentences")
        # NER sentences carry ``tags`` (None when unlabeled); dependency trees are always labeled
        if self.labeled and any(getattr(s, "tags", ()) is None for _, s in self.items):
            raise ValueError(f"labeled part of {self.source!r} has sentences without tags")


class PartsDataset(Dataset):
    """The sentences of several parts as one map-style dataset: item ``i`` is
    ``(part_index, sentence_id, Sentence)``; ``groups[p]`` lists the items of part ``p``."""

    def __init__(self, parts: Sequence[Part]):
        self.parts = list(parts)
        self.items: list[tuple[int, int, Sentence]] = []
        self.groups: list[list[int]] = []
        for part_index, part in enumerate(self.parts):
            start = len(self.items)
            self.items.extend((part_index, sentence_id, s) for sentence_id, s in part.items)
            self.groups.append(list(range(start, len(self.items))))
        self.lengths = [len(sentence) for _, _, sentence in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, int, Sentence]:
        return self.items[index]


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices, each from one group (part), of sentences of similar length.

    ``shuffle=True`` (training): every epoch, each group is shuffled (seeded by ``seed + epoch``),
    cut into pools of ``pool_batches`` batches, each pool sorted by length and cut into batches,
    and the batches of all groups shuffled together. ``shuffle=False`` (evaluation): batches sorted
    by length, longest first.

    Under DDP (``world_size > 1``) process ``rank`` takes batches ``rank, rank + world_size, ...``;
    with ``even=True`` the batch list is first extended by repeating its first batches so that every
    process runs the same number of steps (needed for training). Evaluation (``shuffle=False,
    even=False``) shards sentences instead, every ``world_size``-th of the length-sorted order, so
    that each process gets some (if there are at least ``world_size``) and none is counted twice.
    """

    def __init__(
        self,
        groups: Sequence[Sequence[int]],
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        even: bool = True,
        pool_batches: int = 50,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}; got {rank}")
        self.groups = [list(group) for group in groups if len(group)]
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.even = even
        self.pool_batches = pool_batches
        self.epoch = 0

    @property
    def sampler(self) -> BucketBatchSampler:
        """Itself: Lightning calls ``batch_sampler.sampler.set_epoch`` every epoch."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle of ``epoch``."""
        self.epoch = int(epoch)

    def _sorted_batches(self, rank: int, world_size: int) -> list[list[int]]:
        """Evaluation batches: each group's sentences sorted by length (longest first), every
        ``world_size``-th from ``rank`` on, cut into batches."""
        batches: list[list[int]] = []
        for group in self.groups:
            order = sorted(group, key=lambda index: -self.lengths[index])[rank::world_size]
            batches.extend(
                order[start : start + self.batch_size]
                for start in range(0, len(order), self.batch_size)
            )
        return batches

    def _all_batches(self) -> list[list[int]]:
        batches: list[list[int]] = []
        if not self.shuffle:
            return self._sorted_batches(0, 1)
        generator = random.Random(self.seed * 1_000_003 + self.epoch)
        pool = self.batch_size * self.pool_batches
        for group in self.groups:
            shuffled = list(group)
            generator.shuffle(shuffled)
            for start in range(0, len(shuffled), pool):
                chunk = sorted(shuffled[start : start + pool], key=lambda i: self.lengths[i])
                batches.extend(
                    chunk[offset : offset + self.batch_size]
                    for offset in range(0, len(chunk), self.batch_size)
                )
        generator.shuffle(batches)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        if not self.shuffle and not self.even:
            return self._sorted_batches(self.rank, self.world_size)
        batches = self._all_batches()
        if self.world_size == 1:
            return batches
        if self.even and batches:
            per_rank = math.ceil(len(batches) / self.world_size)
            missing = per_rank * self.world_size - len(batches)
            batches = batches + [batches[i % len(batches)] for i in range(missing)]
        return batches[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._rank_batches())

    def __len__(self) -> int:
        if not self.shuffle and not self.even:
            return len(self._sorted_batches(self.rank, self.world_size))
        n_batches = sum(math.ceil(len(group) / self.batch_size) for group in self.groups)
        if self.world_size == 1:
            return n_batches
        if self.even:
            return math.ceil(n_batches / self.world_size)
        return len(range(self.rank, n_batches, self.world_size))


# ---------------------------------------------------------------------------------------------
# Steps


@dataclass
class StepBatch:
    """One training or evaluation step: the tagger's ``tagging`` batch, whether its sentences are
    ``labeled``, and the teacher ``targets`` of a distillation step (see
    ``structkd.train.cache.KDTargets``), or ``None``."""

    tagging: TaggingBatch
    labeled: bool
    targets: Any = None
    part: int = 0

    @property
    def batch_size(self) -> int:
        return self.tagging.batch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StepBatch:
        """The same step with every tensor on ``device`` (Lightning calls this)."""
        targets = None if self.targets is None else self.targets.to(device, non_blocking)
        return replace(self, tagging=self.tagging.to(device, non_blocking), targets=targets)


@dataclass
class StepCollator:
    """Collates ``[(part_index, sentence_id, Sentence), ...]`` (one part) into a ``StepBatch``.

    ``collators`` maps a source key to the ``TaggingCollator`` of that source (with its cached
    features, if the tagger reads frozen transformer features); ``targets`` maps a source key to a
    reader of cached teacher outputs (``read(sentence_ids, lengths) -> KDTargets``), absent for a
    source without distillation.
    """

    parts: Sequence[Part]
    collators: Mapping[str, TaggingCollator]
    targets: Mapping[str, Callable[..., Any]] = field(default_factory=dict)

    def __call__(self, items: Sequence[tuple[int, int, Sentence]]) -> StepBatch:
        part_indices = {item[0] for item in items}
        if len(part_indices) != 1:
            raise ValueError(f"a batch must come from one part; got parts {sorted(part_indices)}")
        part_index = part_indices.pop()
        part = self.parts[part_index]
        tagging = self.collators[part.source]([(sentence_id, s) for _, sentence_id, s in items])
        if not part.labeled:
            tagging.label_ids = None
        reader = self.targets.get(part.source)
        targets = None if reader is None else reader(tagging.sentence_ids, tagging.lengths)
        return StepBatch(tagging, part.labeled, targets, part_index)
