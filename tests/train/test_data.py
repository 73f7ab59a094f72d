"""Training data: parts, the bucketed and sharded batch sampler."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.data.conll import Sentence
from structkd.train.data import BucketBatchSampler, Part, PartsDataset


def _sampler_setup(group_sizes: list[int], seed: int):
    lengths = [(7 * index + seed) % 11 + 1 for index in range(sum(group_sizes))]
    groups, start = [], 0
    for size in group_sizes:
        groups.append(list(range(start, start + size)))
        start += size
    return groups, lengths


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 30), min_size=1, max_size=3),
    st.integers(1, 8),
    st.integers(1, 3),
    st.integers(0, 5),
)
def test_sampler_batches(group_sizes: list[int], batch_size: int, world_size: int, epoch: int):
    """Training: every sentence once per epoch (plus repeats to even out DDP ranks), batches
    within one group and of at most ``batch_size``, the same number of batches on every rank.
    Evaluation: every sentence exactly once across ranks."""
    groups, lengths = _sampler_setup(group_sizes, epoch)
    group_of = {index: g for g, group in enumerate(groups) for index in group}
    per_rank = []
    for rank in range(world_size):
        sampler = BucketBatchSampler(
            groups, lengths, batch_size, shuffle=True, seed=3, rank=rank, world_size=world_size
        )
        sampler.sampler.set_epoch(epoch)  # what Lightning calls
        batches = list(sampler)
        assert len(batches) == len(sampler)
        for batch in batches:
            assert 1 <= len(batch) <= batch_size
            assert len({group_of[index] for index in batch}) == 1
        per_rank.append(batches)
    assert len({len(batches) for batches in per_rank}) == 1
    seen = [index for batches in per_rank for batch in batches for index in batch]
    assert set(seen) == set(range(len(lengths)))
    n_batches = sum(math.ceil(size / batch_size) for size in group_sizes)
    if world_size == 1:
        assert sorted(seen) == list(range(len(lengths)))
    assert len(per_rank[0]) == math.ceil(n_batches / world_size)

    evaluated = []
    for rank in range(world_size):
        sampler = BucketBatchSampler(
            groups,
            lengths,
            batch_size,
            shuffle=False,
            rank=rank,
            world_size=world_size,
            even=False,
        )
        batches = list(sampler)
        assert len(batches) == len(sampler)
        evaluated.extend(index for batch in batches for index in batch)
    assert sorted(evaluated) == list(range(len(lengths)))


def test_sampler_shuffles_by_epoch_and_seed() -> None:
    groups, lengths = _sampler_setup([40], 0)
    sampler = BucketBatchSampler(groups, lengths, 4, shuffle=True, seed=1)
    first = list(sampler)
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != first
    other = BucketBatchSampler(groups, lengths, 4, shuffle=True, seed=2)
    assert list(other) != first


def test_parts_dataset() -> None:
    labeled = [(0, Sentence(["a"], ["O"])), (1, Sentence(["b", "c"], ["O", "O"]))]
    unlabeled = [(2, Sentence(["d"]))]
    dataset = PartsDataset([Part("train", labeled, True), Part("train", unlabeled, False)])
    assert len(dataset) == 3 and dataset.groups == [[0, 1], [2]] and dataset.lengths == [1, 2, 1]
    assert dataset[2] == (1, 2, unlabeled[0][1])
    with pytest.raises(ValueError, match="no sentences"):
        Part("train", [], True)
