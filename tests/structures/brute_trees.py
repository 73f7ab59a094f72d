"""Brute-force enumeration of head vectors and dependency trees, for tests on tiny sentences.

A head vector of a sentence of ``n`` words is a tuple ``(-1, h_1, ..., h_n)`` with ``h_d`` in
``0..n`` and ``h_d != d`` (position 0 is the root). Plain Python: slow, obviously right.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import Tensor


def all_head_vectors(n: int) -> Iterator[tuple[int, ...]]:
    """Every head vector ``(-1, h_1, ..., h_n)`` of ``n`` words (``n^n`` of them), trees or not."""
    choices = [[h for h in range(n + 1) if h != d] for d in range(1, n + 1)]
    for heads in itertools.product(*choices):
        yield (-1, *heads)


def reaches_root(heads: tuple[int, ...]) -> bool:
    """Whether every word reaches the root by following heads (no cycle)."""
    n = len(heads) - 1
    for start in range(1, n + 1):
        node, steps = start, 0
        while node != 0:
            node = heads[node]
            steps += 1
            if steps > n:
                return False
    return True


def crosses(heads: tuple[int, ...]) -> bool:
    """Whether two arcs cross (``l1 < l2 < r1 < r2``), arcs from the root included."""
    arcs = [(min(h, d), max(h, d)) for d, h in enumerate(heads) if d >= 1]
    return any(l1 < l2 < r1 < r2 for (l1, r1) in arcs for (l2, r2) in arcs)


def is_tree_heads(heads: tuple[int, ...], projective: bool, multiroot: bool) -> bool:
    """Whether a head vector is a tree of the given kind."""
    if not reaches_root(heads):
        return False
    if not multiroot and sum(1 for h in heads[1:] if h == 0) != 1:
        return False
    return not (projective and crosses(heads))


def all_trees(n: int, projective: bool, multiroot: bool) -> list[tuple[int, ...]]:
    """Every tree of ``n`` words of the given kind, as head vectors."""
    return [h for h in all_head_vectors(n) if is_tree_heads(h, projective, multiroot)]


def padded(structures: list[tuple[int, ...]], size: int) -> Tensor:
    """``[count, size]`` int64 head vectors padded with ``-1`` to ``size`` positions."""
    rows = [list(h) + [-1] * (size - len(h)) for h in structures]
    return torch.tensor(rows, dtype=torch.long).view(len(rows), size)


def structure_scores(arc_scores: Tensor, heads: Tensor) -> Tensor:
    """``[count]`` ``sum_d arc_scores[heads[d], d]`` of head vectors ``[count, size]`` of one
    sentence (``arc_scores`` ``[size, size]``; ``-1`` entries are skipped)."""
    words = heads >= 0
    dependents = torch.arange(heads.shape[-1]).expand_as(heads)
    values = arc_scores[heads.clamp(min=0), dependents]
    return torch.where(words, values, torch.zeros_like(values)).sum(-1)


def arc_indicators(heads: Tensor, size: int) -> Tensor:
    """``[count, size, size]`` float64 one-hot arcs ``[h, d]`` of head vectors ``[count, size]``."""
    count = heads.shape[0]
    out = torch.zeros(count, size, size, dtype=torch.float64)
    rows, deps = torch.nonzero(heads >= 0, as_tuple=True)
    out[rows, heads[rows, deps], deps] = 1.0
    return out
