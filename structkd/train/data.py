"""Training data, whatever the task: the parts a trainer samples from, the batch sampler
(length-bucketed, sharded across DDP processes) and the collator of training steps.

A *source* is a list of sentences read once (a named data set or a file, read by the task); a
sentence's id is its index in the source, so cached teacher outputs and transformer features are
keyed by (source, id). A *part* is a subset of a source's sentences that is labeled or unlabeled
(``--labeled-fraction`` splits one source into two parts); a batch never mixes parts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["BucketBatchSampler", "Part", "PartsDataset", "StepBatch", "StepCollator"]


@dataclass(frozen=True, eq=False)
class Part:
    """Sentences a trainer samples batches from: ``items`` ``[(sentence_id, sentence), ...]``
    (ids index ``source``; a sentence is whatever the task's collator reads, with a ``len``),
    ``labeled`` (gold labels are used) and the ``source`` key (which collator, features and
    teacher caches apply)."""

    source: str
    items: list[tuple[int, Any]]
    labeled: bool

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError(f"part of {self.source!r} has no sentences")


class PartsDataset(Dataset):
    """The sentences of several parts as one map-style dataset: item ``i`` is
    ``(part_index, sentence_id, Any)``; ``groups[p]`` lists the items of part ``p``."""

    def __init__(self, parts: Sequence[Part]):
        self.parts = list(parts)
        self.items: list[tuple[int, int, Any]] = []
        self.groups: list[list[int]] = []
        for part_index, part in enumerate(self.parts):
            start = len(self.items)
            self.items.extend((part_index, sentence_id, s) for sentence_id, s in part.items)
            self.groups.append(list(range(start, len(self.items))))
        self.lengths = [len(sentence) for _, _, sentence in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, int, Any]:
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
    """One training or evaluation step: the task's ``batch`` (anything with ``batch_size`` and
    ``to(device, non_blocking)``; the batch of an unlabeled part has had its ``without_labels()``
    called, which a task that learns from unlabeled text provides), whether its sentences are
    ``labeled``, the teacher ``targets`` of a distillation step (what the task's target reader
    returns, with ``to``), or ``None``, and the index of its ``part``."""

    batch: Any
    labeled: bool
    targets: Any = None
    part: int = 0

    @property
    def batch_size(self) -> int:
        return self.batch.batch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StepBatch:
        """The same step with every tensor on ``device`` (Lightning calls this)."""
        targets = None if self.targets is None else self.targets.to(device, non_blocking)
        return replace(self, batch=self.batch.to(device, non_blocking), targets=targets)


@dataclass
class StepCollator:
    """Collates ``[(part_index, sentence_id, sentence), ...]`` (one part) into a ``StepBatch``.

    ``collators`` maps a source key to the task's collator of that source
    (``collate([(sentence_id, sentence), ...]) -> batch``, the batch having ``sentence_ids``
    ``[B]`` and ``lengths`` ``[B]``); ``targets`` maps a source key to a reader of cached teacher
    outputs (``read(sentence_ids, lengths) -> targets``), absent for a source without
    distillation.
    """

    parts: Sequence[Part]
    collators: Mapping[str, Callable[..., Any]]
    targets: Mapping[str, Callable[..., Any]] = field(default_factory=dict)

    def __call__(self, items: Sequence[tuple[int, int, Any]]) -> StepBatch:
        part_indices = {item[0] for item in items}
        if len(part_indices) != 1:
            raise ValueError(f"a batch must come from one part; got parts {sorted(part_indices)}")
        part_index = part_indices.pop()
        part = self.parts[part_index]
        batch = self.collators[part.source]([(sentence_id, s) for _, sentence_id, s in items])
        if not part.labeled:
            batch = batch.without_labels()
        reader = self.targets.get(part.source)
        targets = None if reader is None else reader(batch.sentence_ids, batch.lengths)
        return StepBatch(batch, part.labeled, targets, part_index)
