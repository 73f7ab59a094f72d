"""Brute-force references for the distillation tests.

Raw potentials of the three tag-sequence distributions (CRF, factorized tagger, span teacher) and
their exact distributions over all tag sequences of a sentence, by enumeration with
``itertools.product``. Nothing here uses the ``structkd.structures`` classes for the reference
numbers; ``build`` only constructs the object under test from the same potentials.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF
from structkd.structures.semimarkov import SemiMarkovSpans

DTYPE = torch.float64


@functools.cache
def tag_sequences(n_tokens: int, n_tags: int) -> Tensor:
    """``[n_tags ** n_tokens, n_tokens]`` every tag sequence of a sentence."""
    return torch.tensor(list(itertools.product(range(n_tags), repeat=n_tokens)), dtype=torch.long)


@functools.cache
def bioes_parse(n_tokens: int, n_span_labels: int) -> tuple[Tensor, Tensor]:
    """For every tag sequence of ``tag_sequences(n_tokens, 1 + 4R)``: whether it is well-formed
    BIOES, and its spans ``[S, n_tokens, 3]`` as ``(start, end, label)`` rows (``-1`` rows pad)."""
    sequences = tag_sequences(n_tokens, 1 + 4 * n_span_labels).tolist()
    valid, spans = [], []
    for tags in sequences:
        open_start, open_label, ok, found = None, None, True, []
        for position, tag in enumerate(tags):
            if tag == 0:
                ok = open_start is None
            else:
                label, kind = (tag - 1) // 4, (tag - 1) % 4  # 0 B, 1 I, 2 E, 3 S
                if kind == 0:
                    ok = open_start is None
                    open_start, open_label = position, label
                elif kind == 1:
                    ok = open_start is not None and open_label == label
                elif kind == 2:
                    ok = open_start is not None and open_label == label
                    found.append((open_start, position, label))
                    open_start, open_label = None, None
                else:
                    ok = open_start is None
                    found.append((position, position, label))
            if not ok:
                break
        ok = ok and open_start is None
        valid.append(ok)
        rows = found if ok else []
        spans.append(rows + [(-1, -1, -1)] * (n_tokens - len(rows)))
    return torch.tensor(valid), torch.tensor(spans, dtype=torch.long)


@dataclass
class RawCRF:
    """CRF potentials: emissions ``[B, N, L]``, transitions ``[L, L]``, start/end ``[L]``."""

    emissions: Tensor
    transitions: Tensor
    start: Tensor
    end: Tensor
    lengths: Tensor

    @property
    def n_tags(self) -> int:
        return self.emissions.shape[-1]

    def build(self, temperature: float = 1.0) -> LinearChainCRF:
        return LinearChainCRF(
            emissions=self.emissions,
            transitions=self.transitions,
            start=self.start,
            end=self.end,
            lengths=self.lengths,
            temperature=temperature,
        )

    def potentials(self) -> list[Tensor]:
        return [self.emissions, self.transitions, self.start, self.end]

    def scores(self, sentence: int, sequences: Tensor) -> Tensor:
        """``[S]`` untempered score of each tag sequence ``[S, n]`` of sentence ``sentence``."""
        n = sequences.shape[1]
        total = self.emissions[sentence, torch.arange(n), sequences].sum(1)
        total = total + self.transitions[sequences[:, :-1], sequences[:, 1:]].sum(1)
        return total + self.start[sequences[:, 0]] + self.end[sequences[:, -1]]


@dataclass
class RawFactorized:
    """Factorized tagger logits ``[B, N, L]``."""

    logits: Tensor
    lengths: Tensor

    @property
    def n_tags(self) -> int:
        return self.logits.shape[-1]

    def build(self, temperature: float = 1.0) -> Factorized:
        return Factorized(logits=self.logits, lengths=self.lengths, temperature=temperature)

    def potentials(self) -> list[Tensor]:
        return [self.logits]

    def scores(self, sentence: int, sequences: Tensor) -> Tensor:
        n = sequences.shape[1]
        return self.logits[sentence, torch.arange(n), sequences].sum(1)


@dataclass
class RawSpans:
    """Span potentials ``[B, N, N, R]`` (relative to ``O``) of a semi-Markov span teacher."""

    span_scores: Tensor
    lengths: Tensor

    @property
    def n_tags(self) -> int:
        return 1 + 4 * self.span_scores.shape[-1]

    def build(self, temperature: float = 1.0) -> SemiMarkovSpans:
        return SemiMarkovSpans(
            span_scores=self.span_scores, lengths=self.lengths, temperature=temperature
        )

    def potentials(self) -> list[Tensor]:
        return [self.span_scores]

    def scores(self, sentence: int, sequences: Tensor) -> Tensor:
        """``[S]`` score of each BIOES sequence: the sum of its spans' scores; ``-inf`` if it is
        not well-formed BIOES."""
        n = sequences.shape[1]
        valid, spans = bioes_parse(n, self.span_scores.shape[-1])
        assert torch.equal(sequences, tag_sequences(n, self.n_tags))
        is_span = spans[..., 0] >= 0
        index = spans.clamp(min=0)
        per_span = self.span_scores[sentence, index[..., 0], index[..., 1], index[..., 2]]
        total = torch.where(is_span, per_span, torch.zeros_like(per_span)).sum(1)
        return torch.where(valid, total, torch.full_like(total, -torch.inf))


Raw = RawCRF | RawFactorized | RawSpans


def random_raw(
    kind: str,
    lengths: list[int],
    n_tags: int,
    generator: torch.Generator,
    scale: float = 1.0,
    max_len: int | None = None,
) -> Raw:
    """Random potentials of ``kind`` (``"crf"``, ``"factorized"``, ``"spans"``); for ``"spans"``
    ``n_tags`` must be ``1 + 4R``. Padded entries are random too (they must be ignored)."""
    batch, max_len = len(lengths), max_len or max(lengths)
    lengths_t = torch.tensor(lengths, dtype=torch.long)

    def draw(*shape: int) -> Tensor:
        return scale * torch.randn(*shape, generator=generator, dtype=DTYPE)

    if kind == "crf":
        return RawCRF(
            draw(batch, max_len, n_tags),
            draw(n_tags, n_tags),
            draw(n_tags),
            draw(n_tags),
            lengths_t,
        )
    if kind == "factorized":
        return RawFactorized(draw(batch, max_len, n_tags), lengths_t)
    if kind == "spans":
        assert (n_tags - 1) % 4 == 0
        return RawSpans(draw(batch, max_len, max_len, (n_tags - 1) // 4), lengths_t)
    raise ValueError(kind)


def log_probs(raw: Raw, sentence: int, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(sequences [S, n], log P [S])`` over every tag sequence of sentence ``sentence``,
    ``P(y) ∝ exp(score(y) / T)``; differentiable w.r.t. the raw potentials."""
    n = int(raw.lengths[sentence])
    sequences = tag_sequences(n, raw.n_tags)
    scores = raw.scores(sentence, sequences) / temperature
    return sequences, scores - torch.logsumexp(scores, 0)


def cross_entropy(teacher_log_probs: Tensor, student_log_probs: Tensor) -> Tensor:
    """``- sum_y P_t(y) log P_s(y)`` with ``0 log 0 = 0``."""
    teacher_probs = teacher_log_probs.exp()
    terms = torch.where(
        teacher_probs > 0, teacher_probs * student_log_probs, torch.zeros_like(student_log_probs)
    )
    return -terms.sum()


def token_marginals(sequences: Tensor, probs: Tensor, n_tags: int) -> Tensor:
    """``[n, n_tags]`` ``P(y_i = l)`` from ``probs [S]`` over ``sequences [S, n]``."""
    one_hot = torch.nn.functional.one_hot(sequences, n_tags).to(probs.dtype)  # [S, n, L]
    return torch.einsum("s,snl->nl", probs, one_hot)


def pair_marginals(sequences: Tensor, probs: Tensor, n_tags: int) -> Tensor:
    """``[n - 1, n_tags, n_tags]`` ``P(y_i = a, y_{i+1} = c)``."""
    one_hot = torch.nn.functional.one_hot(sequences, n_tags).to(probs.dtype)
    return torch.einsum("s,sna,snc->nac", probs, one_hot[:, :-1], one_hot[:, 1:])


def enumerated_marginals(raw: Raw, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Padded token ``[B, N, L]`` and pair ``[B, N - 1, L, L]`` marginals of ``raw`` (0 at
    padding), by enumeration."""
    batch, max_len, n_tags = len(raw.lengths), _max_len(raw), raw.n_tags
    tokens = torch.zeros(batch, max_len, n_tags, dtype=DTYPE)
    pairs = torch.zeros(batch, max(max_len - 1, 0), n_tags, n_tags, dtype=DTYPE)
    for b in range(batch):
        n = int(raw.lengths[b])
        sequences, log_p = log_probs(raw, b, temperature)
        probs = log_p.detach().exp()
        tokens[b, :n] = token_marginals(sequences, probs, n_tags)
        pairs[b, : n - 1] = pair_marginals(sequences, probs, n_tags)
    return tokens, pairs


def _max_len(raw: Raw) -> int:
    if isinstance(raw, RawCRF):
        return raw.emissions.shape[1]
    if isinstance(raw, RawFactorized):
        return raw.logits.shape[1]
    return raw.span_scores.shape[1]


def with_grad(raw: Raw) -> Raw:
    """A copy of ``raw`` whose potentials are fresh leaves requiring grad."""
    fields = {
        name: (value.detach().clone().requires_grad_() if value.is_floating_point() else value)
        for name, value in vars(raw).items()
    }
    return type(raw)(**fields)


# --- the pairs under test -------------------------------------------------------------------------

PAIRS = [
    ("crf", "crf"),
    ("crf", "factorized"),
    ("factorized", "crf"),
    ("factorized", "factorized"),
    ("spans", "factorized"),
    ("spans", "crf"),
]
LENGTHS = [4, 1, 3, 2]


def n_tags_for(teacher_kind: str, n_span_labels: int = 1) -> int:
    """3 tags for chain teachers; the BIOES layout ``1 + 4R`` for a span teacher."""
    return 1 + 4 * n_span_labels if teacher_kind == "spans" else 3


def make_pair(teacher_kind, student_kind, seed, scale=1.0, lengths=LENGTHS, n_span_labels=1):
    generator = torch.Generator().manual_seed(seed)
    n_tags = n_tags_for(teacher_kind, n_span_labels)
    teacher = random_raw(teacher_kind, lengths, n_tags, generator, scale)
    student = random_raw(student_kind, lengths, n_tags, generator, scale)
    return teacher, student


def enumerated_loss(raw_teacher, raw_student, temperature=1.0) -> torch.Tensor:
    """``[B]`` ``- sum_y P_t^T(y) log P_s^T(y)`` by enumeration (both sides tempered)."""
    losses = []
    for b in range(len(raw_student.lengths)):
        _, teacher_log_p = log_probs(raw_teacher, b, temperature)
        _, student_log_p = log_probs(raw_student, b, temperature)
        losses.append(cross_entropy(teacher_log_p, student_log_p))
    return torch.stack(losses)


def enumerated_mixture_loss(raw_teachers, weights, raw_student, temperature=1.0):
    """``[B]`` cross-entropy from the mixture ``sum_k w_k P_k^T`` to the student."""
    losses = []
    for b in range(len(raw_student.lengths)):
        mixture = torch.logsumexp(
            torch.stack(
                [
                    math.log(w) + log_probs(raw, b, temperature)[1]
                    for raw, w in zip(raw_teachers, weights, strict=True)
                ]
            ),
            0,
        )
        losses.append(cross_entropy(mixture, log_probs(raw_student, b, temperature)[1]))
    return torch.stack(losses)
