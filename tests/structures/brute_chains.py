"""Brute force over tag sequences: enumerate every sequence of one sentence with itertools.product.

Written independently of the library (plain loops and float64), for tests of ``LinearChainCRF`` and
``Factorized`` on tiny inputs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Enumeration:
    """Every tag sequence of one sentence with its tempered score (``-inf`` when disallowed)."""

    sequences: list[tuple[int, ...]]
    scores: Tensor  # [n_sequences] float64

    @property
    def allowed(self) -> list[int]:
        return [index for index, score in enumerate(self.scores.tolist()) if score > -math.inf]

    @property
    def log_partition(self) -> float:
        return float(torch.logsumexp(self.scores, 0))

    @property
    def probabilities(self) -> Tensor:
        return torch.exp(self.scores - torch.logsumexp(self.scores, 0))

    def marginals(self, seq_len: int, n_labels: int) -> tuple[Tensor, Tensor]:
        """``([seq_len, n_labels], [seq_len - 1, n_labels, n_labels])``, zero beyond the
        sentence."""
        unary = torch.zeros(seq_len, n_labels, dtype=torch.float64)
        pairs = torch.zeros(max(seq_len - 1, 0), n_labels, n_labels, dtype=torch.float64)
        for sequence, probability in zip(self.sequences, self.probabilities.tolist(), strict=True):
            for position, tag in enumerate(sequence):
                unary[position, tag] += probability
            for position in range(len(sequence) - 1):
                pairs[position, sequence[position], sequence[position + 1]] += probability
        return unary, pairs

    @property
    def entropy(self) -> float:
        probabilities = self.probabilities
        probabilities = probabilities[probabilities > 0]
        return float(-(probabilities * probabilities.log()).sum())

    def ranked(self) -> list[tuple[float, tuple[int, ...]]]:
        """Allowed sequences with their scores, best first."""
        pairs = [(float(self.scores[index]), self.sequences[index]) for index in self.allowed]
        return sorted(pairs, key=lambda pair: -pair[0])


def chain_scores(
    sequence: tuple[int, ...],
    emissions: Tensor,
    transitions: Tensor,
    start: Tensor | None,
    end: Tensor | None,
    allowed_transitions: Tensor | None = None,
    allowed_start: Tensor | None = None,
    allowed_end: Tensor | None = None,
) -> float:
    """Untempered score of one sequence: start + emissions + transitions + end, ``-inf`` if a
    constraint forbids it. ``emissions [seq_len, n_labels]`` of this sentence."""
    total = 0.0
    first, last = sequence[0], sequence[-1]
    if allowed_start is not None and not bool(allowed_start[first]):
        return -math.inf
    if allowed_end is not None and not bool(allowed_end[last]):
        return -math.inf
    if start is not None:
        total += float(start[first])
    if end is not None:
        total += float(end[last])
    for position, tag in enumerate(sequence):
        total += float(emissions[position, tag])
    for previous, following in itertools.pairwise(sequence):
        if allowed_transitions is not None and not bool(allowed_transitions[previous, following]):
            return -math.inf
        total += float(transitions[previous, following])
    return total


def enumerate_chain(
    emissions: Tensor,
    transitions: Tensor | None,
    length: int,
    start: Tensor | None = None,
    end: Tensor | None = None,
    temperature: float = 1.0,
    allowed_transitions: Tensor | None = None,
    allowed_start: Tensor | None = None,
    allowed_end: Tensor | None = None,
) -> Enumeration:
    """All ``n_labels ** length`` sequences of one sentence (``emissions [seq_len, n_labels]``);
    ``transitions=None`` scores no pairs (a factorized tagger)."""
    n_labels = emissions.shape[-1]
    if transitions is None:
        transitions = torch.zeros(n_labels, n_labels, dtype=torch.float64)
    sequences = list(itertools.product(range(n_labels), repeat=length))
    scores = [
        chain_scores(
            sequence,
            emissions,
            transitions,
            start,
            end,
            allowed_transitions,
            allowed_start,
            allowed_end,
        )
        / temperature
        for sequence in sequences
    ]
    return Enumeration(sequences, torch.tensor(scores, dtype=torch.float64))


def is_valid_bio(tags: list[str]) -> bool:
    """IOB2: every ``I-X`` follows ``B-X`` or ``I-X``."""
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        if tag.startswith("I-") and not previous.startswith(("B-", "I-")):
            return False
        previous = tag
    return True


def is_valid_bioes(tags: list[str]) -> bool:
    """BIOES: spans are ``S-X`` or ``B-X I-X* E-X``, nothing else."""
    inside = None  # the type of the open span, if any
    for tag in tags:
        prefix, kind = (tag, "") if tag == "O" else tag.split("-", 1)
        if inside is None:
            if prefix in ("I", "E"):
                return False
            if prefix == "B":
                inside = kind
        else:
            if prefix not in ("I", "E") or kind != inside:
                return False
            if prefix == "E":
                inside = None
    return inside is None
