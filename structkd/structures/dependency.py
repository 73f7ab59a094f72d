"""First-order dependency trees and independent head selection.

A sentence of ``n`` words has positions ``0..n`` with ``0`` the root; a structure is a head
vector ``heads[d]`` (the head of word ``d`` in ``1..n``). Arc scores are ``arc_scores[b, h, d]``
(head ``h``, dependent ``d``) and ``Score(heads) = sum_d arc_scores[heads[d], d] / T``.

* :class:`DependencyCRF`: ``P(heads) ∝ exp(Score(heads))`` over the dependency trees of the
  sentence, projective (Eisner's inside-outside, vectorized over all spans of one width) or not
  (the matrix-tree theorem, Koo et al. 2007), with one or any number of words under the root.
* :class:`HeadSelection`: every word picks its head independently,
  ``P(heads) = prod_d softmax_h(arc_scores[:, d] / T)[heads[d]]`` (any head vector, tree or not).
* :func:`is_tree` and :func:`is_projective`: batched checks of head vectors.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import torch
from torch import Tensor

from structkd.structures.base import (
    PROBABILITY_ROUNDOFF,
    StructDistribution,
    autograd_marginals,
    check_potential_values,
    check_potentials,
    lazy_property,
    probabilities_within_roundoff,
    upcast,
)

__all__ = ["DependencyCRF", "HeadSelection", "is_projective", "is_tree"]

_ARC_SHAPE = "[batch, seq_len + 1, seq_len + 1] as [head, dependent] with position 0 the root"

# Condition number under which the float64 LU evaluation of the matrix-tree theorem is trusted: its
# error grows like kappa * 1e-17 (measured: below 1e-9 in log Z and marginals up to 1e7). Sentences
# above it are recomputed by the exact log-space elimination.
_MAX_CONDITION = 1e7

# Each matrix-tree marginal is a weight times a difference of two entries of L^-1 (LU path) or a
# gradient through divisions by pivots (exact path): a probability near 0 comes out as roundoff of
# either sign (measured: down to -2e-13 at score scale 30 on the LU path, -2e-14 at scale 100 on
# the exact one). One below 0 by at most ``PROBABILITY_ROUNDOFF`` is such roundoff and is set to
# 0, so that the marginals are probabilities (``x log x`` of them is finite); one further below is
# numerical trouble: the LU path hands the sentence to the exact elimination, which raises.


# ----------------------------------------------------------------------------------------------
# Head vectors: checks shared by the classes and the dependency-parsing code
# ----------------------------------------------------------------------------------------------


def _check_heads_shape(heads: Tensor, lengths: Tensor, name: str = "heads") -> None:
    if not isinstance(heads, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [..., batch, seq_len + 1]")
    if heads.dim() < 2:
        raise ValueError(
            f"{name} must have shape [..., batch, seq_len + 1], got {list(heads.shape)}"
        )
    if heads.dtype.is_floating_point or heads.dtype.is_complex or heads.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {heads.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != heads.shape[-2]:
        raise ValueError(
            f"lengths must have shape [batch]=[{heads.shape[-2]}], got {list(lengths.shape)}"
        )


def _word_mask(lengths: Tensor, size: int) -> Tensor:
    """``[batch, size]`` bool, True at word positions ``1..length`` (root and padding False)."""
    positions = torch.arange(size, device=lengths.device)
    return (positions >= 1) & (positions <= lengths.unsqueeze(-1))


def _heads_well_formed(heads: Tensor, lengths: Tensor) -> Tensor:
    """``[..., batch]`` bool: ``-1`` at the root and padding, a head in ``0..len`` other than itself
    at every word."""
    size = heads.shape[-1]
    words = _word_mask(lengths, size)
    positions = torch.arange(size, device=heads.device)
    in_range = (heads >= 0) & (heads <= lengths.unsqueeze(-1)) & (heads != positions)
    per_position = torch.where(words, in_range, heads == -1)
    return per_position.all(-1)


def _heads_acyclic(heads: Tensor, lengths: Tensor) -> Tensor:
    """``[..., batch]`` bool: following heads from every word reaches the root (no cycle).

    ``heads`` must be well formed; pointer doubling, ``ceil(log2(n)) + 1`` gathers.
    """
    size = heads.shape[-1]
    words = _word_mask(lengths, size).expand_as(heads)
    ancestor = torch.where(words, heads, torch.zeros_like(heads))
    for _ in range(max(1, math.ceil(math.log2(size))) + 1):
        ancestor = ancestor.gather(-1, ancestor)
    return ((ancestor == 0) | ~words).all(-1)


def _heads_noncrossing(heads: Tensor, lengths: Tensor) -> Tensor:
    """``[..., batch]`` bool: no two arcs cross (``l1 < l2 < r1 < r2``), root arcs included."""
    size = heads.shape[-1]
    words = _word_mask(lengths, size).expand_as(heads)
    positions = torch.arange(size, device=heads.device).expand_as(heads)
    safe_heads = torch.where(words, heads, positions)
    left = torch.minimum(safe_heads, positions)
    right = torch.maximum(safe_heads, positions)
    l1, r1 = left.unsqueeze(-1), right.unsqueeze(-1)
    l2, r2 = left.unsqueeze(-2), right.unsqueeze(-2)
    crossing = (l1 < l2) & (l2 < r1) & (r1 < r2)
    crossing &= words.unsqueeze(-1) & words.unsqueeze(-2)
    return ~crossing.flatten(-2).any(-1)


def is_tree(
    heads: Tensor, lengths: Tensor, *, projective: bool = False, multiroot: bool = False
) -> Tensor:
    """Whether each head vector is a dependency tree of its sentence.

    Args:
        heads: ``[..., batch, seq_len + 1]`` int64, ``heads[b, d]`` the head of word ``d`` in
            ``1..lengths[b]`` (0 = root), ``-1`` at position 0 and at padding.
        lengths: ``[batch]`` words per sentence.
        projective: also require that no two arcs cross (root arcs included).
        multiroot: allow several words attached to the root (else exactly one).

    Returns:
        ``[..., batch]`` bool. A malformed vector (a head out of range, a self-loop, a value other
        than ``-1`` at the root or padding) is not a tree.
    """
    heads, lengths, well_formed, safe = _prepare_heads(heads, lengths)
    result = well_formed & _heads_acyclic(safe, lengths)
    if not multiroot:
        result &= (safe == 0).sum(-1) == 1
    if projective:
        result &= _heads_noncrossing(safe, lengths)
    return result


def is_projective(heads: Tensor, lengths: Tensor) -> Tensor:
    """Whether no two arcs of each head vector cross (root arcs included).

    Args:
        heads: ``[..., batch, seq_len + 1]`` int64 as in :func:`is_tree`.
        lengths: ``[batch]`` words per sentence.

    Returns:
        ``[..., batch]`` bool; True for a tree iff it is projective. Malformed vectors give False.
    """
    heads, lengths, well_formed, safe = _prepare_heads(heads, lengths)
    return well_formed & _heads_noncrossing(safe, lengths)


def _prepare_heads(heads: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate shapes; returns ``(heads, lengths, well_formed [..., batch], safe heads)`` where
    malformed vectors are replaced by a chain so that later checks can index with them."""
    lengths = torch.as_tensor(lengths)
    _check_heads_shape(heads, lengths)
    lengths = lengths.to(heads.device).long()
    heads = heads.long()
    well_formed = _heads_well_formed(heads, lengths)
    safe = torch.where(well_formed.unsqueeze(-1), heads, _chain_heads(heads.shape, lengths))
    return heads, lengths, well_formed, safe


def _chain_heads(shape: torch.Size, lengths: Tensor) -> Tensor:
    """A valid tree of the given shape (word ``d`` attached to ``d - 1``), ``-1`` elsewhere."""
    size = shape[-1]
    positions = torch.arange(size, device=lengths.device)
    chain = torch.where(_word_mask(lengths, size), positions - 1, torch.full_like(positions, -1))
    return chain.expand(shape)


# ----------------------------------------------------------------------------------------------
# Shared machinery of the two arc-factored distributions
# ----------------------------------------------------------------------------------------------


def _check_arc_scores(arc_scores: Tensor) -> None:
    """The type, rank and square shape of ``arc_scores`` (values: ``check_potential_values``)."""
    if not (
        isinstance(arc_scores, Tensor)
        and arc_scores.dim() == 3
        and arc_scores.dtype.is_floating_point
    ):
        check_potentials("arc_scores", arc_scores, 3, _ARC_SHAPE)  # raises the precise error
    _, rows, cols = arc_scores.shape
    if rows != cols or rows < 2:
        raise ValueError(
            f"arc_scores must have shape {_ARC_SHAPE} (square, at least 2), "
            f"got {list(arc_scores.shape)}"
        )


def _allowed_arcs(lengths: Tensor, size: int) -> Tensor:
    """``[batch, size, size]`` bool: head in ``0..len``, dependent in ``1..len``, no self-loop."""
    positions = torch.arange(size, device=lengths.device)
    heads_ok = positions <= lengths.view(-1, 1)
    mask = heads_ok.unsqueeze(-1) & _word_mask(lengths, size).unsqueeze(-2)
    return mask & (positions.view(-1, 1) != positions.view(1, -1))


class _ArcFactored(StructDistribution):
    """Validation, tempered scores, ``score`` and ``expected_score`` shared by both classes."""

    def __init__(self, arc_scores: Tensor, lengths: Tensor, temperature: float = 1.0):
        _check_arc_scores(arc_scores)
        batch, rows, _ = arc_scores.shape
        lengths = torch.as_tensor(lengths, device=arc_scores.device)
        super().__init__(lengths, temperature, batch, rows - 1)
        self.size = rows
        arc_scores = upcast(arc_scores)
        self.arc_scores = arc_scores  # arc_mask reads the device
        self.arc_scores = check_potential_values(
            "arc_scores", arc_scores, self.arc_mask, self.temperature
        )

    @lazy_property
    def arc_mask(self) -> Tensor:
        """``[batch, seq_len + 1, seq_len + 1]`` bool: the arcs a structure may use (head in
        ``0..len``, dependent in ``1..len``, no self-loop)."""
        return _allowed_arcs(self.lengths, self.size)

    @property
    def tempered_scores(self) -> Tensor:
        """``[batch, seq_len + 1, seq_len + 1]``: ``arc_scores / T`` on allowed arcs, ``-inf`` on
        the root column, the diagonal and padding (recomputed on every access, so a graph freed by
        one backward pass is never reused)."""
        scores = self.arc_scores / self.temperature if self.temperature != 1.0 else self.arc_scores
        return scores.masked_fill(~self.arc_mask, float("-inf"))

    def _check_value(self, heads: Tensor) -> None:
        _check_heads_shape(heads, self.lengths)
        if heads.shape[-2:] != (self.batch_size, self.size):
            raise ValueError(
                f"heads must have shape [..., batch, seq_len + 1]=[..., {self.batch_size}, "
                f"{self.size}], got {list(heads.shape)}"
            )
        if not _heads_well_formed(heads.long(), self.lengths).all():
            raise ValueError(
                "heads must hold -1 at position 0 and at padding and a head in 0..length other "
                "than the word itself at every word"
            )

    def _score_unchecked(self, heads: Tensor) -> Tensor:
        """``[k, batch]`` tempered scores of well-formed heads ``[k, batch, seq_len + 1]``."""
        words = _word_mask(self.lengths, self.size)
        scores = self.tempered_scores.detach().unsqueeze(0).expand(heads.shape[0], -1, -1, -1)
        arc = scores.gather(-2, heads.clamp(min=0).unsqueeze(-2)).squeeze(-2)
        return torch.where(words, arc, torch.zeros_like(arc)).sum(-1)

    def score(self, value: Tensor) -> Tensor:
        """Tempered score ``sum_d arc_scores[heads[d], d] / T`` ``[..., batch]`` of head vectors
        ``value`` ``[..., batch, seq_len + 1]``. Raises ``ValueError`` for an invalid value."""
        self._check_value(value)
        heads = value.long().to(self.arc_scores.device)
        words = _word_mask(self.lengths, self.size)
        leading = heads.shape[:-2]
        flat = heads.reshape(-1, self.batch_size, self.size)
        scores = self.tempered_scores.unsqueeze(0).expand(flat.shape[0], -1, -1, -1)
        index = flat.clamp(min=0).unsqueeze(-2)
        arc = scores.gather(-2, index).squeeze(-2)
        arc = torch.where(words, arc, torch.zeros_like(arc))
        return arc.sum(-1).reshape(*leading, self.batch_size)

    def expected_score(self, marginals: Tensor | None = None) -> Tensor:
        """``[batch]`` ``sum_{h,d} mu[b, h, d] * arc_scores[b, h, d] / T`` with ``mu`` the given
        ``marginals`` ``[batch, seq_len + 1, seq_len + 1]`` (default: this distribution's own).

        Only allowed arcs count; ``0 * -inf`` is 0, positive mass on a ``-inf`` arc gives ``-inf``.
        """
        if marginals is None:
            marginals = self.marginals
        elif not isinstance(marginals, Tensor) or marginals.shape != self.arc_scores.shape:
            shape = getattr(marginals, "shape", None)
            raise ValueError(
                f"marginals must have shape {list(self.arc_scores.shape)} as arc_scores, got "
                f"{list(shape) if shape is not None else type(marginals).__name__}"
            )
        scores = self.tempered_scores
        finite = torch.isfinite(scores)  # False off the allowed arcs and on -inf arcs
        total = (marginals * torch.where(finite, scores, 0.0)).sum((-2, -1))
        blocked = (self.arc_mask & ~finite & (marginals > 0)).flatten(1).any(-1)
        return total.masked_fill(blocked, float("-inf"))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_size={self.batch_size}, max_len={self.max_len}, "
            f"temperature={self.temperature}{self._repr_options()})"
        )

    def _repr_options(self) -> str:
        return ""


def _raise_if_no_structure(log_partition: Tensor, finite_floor: float, what: str) -> None:
    bad = ~(log_partition > finite_floor)
    if bad.any():
        index = torch.nonzero(bad).flatten().tolist()
        raise ValueError(f"sentences {index} have no {what} left (every one uses a -inf arc score)")


# ----------------------------------------------------------------------------------------------
# Head selection: independent softmax per dependent
# ----------------------------------------------------------------------------------------------


class HeadSelection(_ArcFactored):
    """Every word picks its head independently: the local teacher of the paper.

    ``P(heads) = prod_{d=1..len} softmax_{h in 0..len, h != d}(arc_scores[b, :, d] / T)[heads[d]]``,
    a distribution over all head vectors (trees or not). ``log Z = sum_d logsumexp_h s[h, d] / T``.

    Args:
        arc_scores: ``[batch, seq_len + 1, seq_len + 1]`` as ``[head, dependent]``, position 0 the
            root; the root column, the diagonal and padding are ignored; ``-inf`` forbids an arc.
        lengths: ``[batch]`` words per sentence (root excluded), each in ``1..seq_len``.
        temperature: divides every score.

    Examples:
        >>> scores = torch.randn(2, 4, 4)
        >>> dist = HeadSelection(scores, torch.tensor([3, 2]))
        >>> dist.marginals.sum(1)[0].round()  # every word's head distribution sums to 1
        tensor([0., 1., 1., 1.])
    """

    def _word_log_norm(self) -> Tensor:
        """``[batch, 1, seq_len + 1]`` ``logsumexp_h s[h, d] / T`` per word (0 at the root and
        padding, whose columns are all ``-inf``, so no gradient is ``NaN``). Raises ``ValueError``
        when a word has no allowed head."""
        words = _word_mask(self.lengths, self.size).unsqueeze(-2)
        columns = torch.where(words, self.tempered_scores, 0.0)
        log_norm = torch.where(words, torch.logsumexp(columns, dim=-2, keepdim=True), 0.0)
        if torch.isneginf(log_norm).any():
            index = torch.nonzero(torch.isneginf(log_norm).flatten(1).any(-1)).flatten().tolist()
            raise ValueError(
                f"sentences {index} have no head vector left (a word has only -inf arc scores)"
            )
        return log_norm

    @lazy_property
    def log_partition(self) -> Tensor:
        """``[batch]`` ``sum_d logsumexp_h s[h, d] / T`` over the words."""
        return self._word_log_norm().sum((-2, -1))

    @lazy_property
    def log_marginals(self) -> Tensor:
        """``[batch, seq_len + 1, seq_len + 1]`` ``log P(head_d = h)``; ``-inf`` off the allowed
        arcs (root column, diagonal, padding)."""
        return self.tempered_scores - self._word_log_norm()

    @lazy_property
    def marginals(self) -> Tensor:
        """``[batch, seq_len + 1, seq_len + 1]`` ``P(head_d = h)``: the per-dependent softmax;
        column 0, the diagonal and padding are 0."""
        return self.log_marginals.exp()

    @lazy_property
    def argmax(self) -> Tensor:
        """``[batch, seq_len + 1]`` int64 the best head of every word; ``-1`` at 0 and padding."""
        _ = self.log_partition
        best = self.tempered_scores.argmax(dim=-2)
        return torch.where(_word_mask(self.lengths, self.size), best, torch.full_like(best, -1))

    def kbest(self, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best head vectors, best first.

        A beam over the words (a product distribution): after word ``d`` the beam holds the ``k``
        best assignments of words ``1..d``. Exact.

        Returns:
            ``(values [k, batch, seq_len + 1] int64, scores [k, batch])``; rows past the number of
            head vectors of a sentence hold ``-1`` and ``-inf``.
        """
        k = _check_k(k)
        _ = self.log_partition
        scores = self.tempered_scores.detach()
        batch, size = self.batch_size, self.size
        words = _word_mask(self.lengths, size)
        width = min(k, size)
        top_scores, top_heads = scores.topk(width, dim=-2)  # [batch, width, size]
        beam = scores.new_full((batch, k), float("-inf"))
        beam[:, 0] = 0.0
        parents, choices = [], []
        for word in range(1, size):
            active = words[:, word].view(-1, 1)
            options = torch.where(
                active, top_scores[:, :, word], _first_only(top_scores[:, :, word])
            )
            candidates = (beam.unsqueeze(-1) + options.unsqueeze(-2)).reshape(batch, -1)
            beam, flat = candidates.topk(k, dim=-1)
            parents.append(flat // width)
            choices.append(flat % width)
        heads = torch.full((batch, k, size), -1, dtype=torch.long, device=scores.device)
        rank = torch.arange(k, device=scores.device).expand(batch, k)
        for word in range(size - 1, 0, -1):
            choice = choices[word - 1].gather(-1, rank)
            head = top_heads[:, :, word].gather(-1, choice)
            heads[:, :, word] = torch.where(words[:, word].view(-1, 1), head, -1)
            rank = parents[word - 1].gather(-1, rank)
        values = heads.transpose(0, 1).contiguous()
        exists = torch.isfinite(beam.t())
        values = torch.where(exists.unsqueeze(-1), values, torch.full_like(values, -1))
        return values, torch.where(exists, self._score_unchecked(values), beam.t())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, batch, seq_len + 1]`` int64 exact samples (every head drawn from its softmax)."""
        n = _check_k(n, "n")
        probs = self.marginals.detach()  # [batch, head, dep]
        flat = probs.transpose(-1, -2).reshape(-1, self.size)  # rows: (batch, dep)
        safe = torch.where(flat.sum(-1, keepdim=True) > 0, flat, torch.ones_like(flat))
        draws = torch.multinomial(safe, n, replacement=True, generator=generator)
        heads = draws.t().reshape(n, self.batch_size, self.size)
        words = _word_mask(self.lengths, self.size)
        return torch.where(words, heads, torch.full_like(heads, -1))

    def tempered(self, temperature: float) -> HeadSelection:
        """The same scores at temperature ``self.temperature * temperature``."""
        return HeadSelection(self.arc_scores, self.lengths, self.temperature * temperature)

    def _single_sentence(self) -> tuple[HeadSelection, list[Tensor]]:
        scores = self.arc_scores.detach().new_zeros(1, self.size, self.size)
        one = torch.ones(1, dtype=torch.long, device=scores.device)
        return HeadSelection(scores, one, self.temperature), [self.arc_scores]


def _first_only(options: Tensor) -> Tensor:
    """``[batch, width]``: 0 in the first slot, ``-inf`` elsewhere (a padded word adds nothing)."""
    result = torch.full_like(options, float("-inf"))
    result[:, 0] = 0.0
    return result


def _check_k(k: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {k!r}")
    return int(k)


# ----------------------------------------------------------------------------------------------
# Eisner's algorithm on a chart with the batch last: strided views give all spans of a width
# ----------------------------------------------------------------------------------------------
#
# Both charts are ``[n, n, *rest]`` indexed ``[head, other end]``: ``complete[h, e]`` is the
# complete span headed at ``h`` reaching ``e``; ``incomplete[h, d]`` the incomplete span of the arc
# ``h -> d``.
# For the span ``(i, j = i + width)`` and the split ``t = 0..width-1``:
#   shared(i, j)        = lse_t complete[i, i + t] + complete[j, i + 1 + t]
#   incomplete[i, j]    = shared + arc[i, j];  incomplete[j, i] = shared + arc[j, i]
#   complete[i, j]      = lse_t incomplete[i, i + 1 + t] + complete[i + 1 + t, j]
#   complete[j, i]      = lse_t complete[i + t, i] + incomplete[j, i + t]
# Each operand is one strided view over every ``i`` at once: ``x[r0 + i, c0 + i + t]`` (a row
# stripe) or ``x[r0 + i + t, c0 + i]`` (a column stripe).


def _row_stripe(x: Tensor, width: int, row: int, col: int) -> Tensor:
    """View ``[n - width, width, *rest]`` of ``x[row + i, col + i + t]``."""
    stride_row, stride_col = x.stride(0), x.stride(1)
    return x.as_strided(
        (x.shape[0] - width, width, *x.shape[2:]),
        (stride_row + stride_col, stride_col, *x.stride()[2:]),
        x.storage_offset() + row * stride_row + col * stride_col,
    )


def _col_stripe(x: Tensor, width: int, row: int, col: int) -> Tensor:
    """View ``[n - width, width, *rest]`` of ``x[row + i + t, col + i]``."""
    stride_row, stride_col = x.stride(0), x.stride(1)
    return x.as_strided(
        (x.shape[0] - width, width, *x.shape[2:]),
        (stride_row + stride_col, stride_row, *x.stride()[2:]),
        x.storage_offset() + row * stride_row + col * stride_col,
    )


def _diagonal(x: Tensor, offset: int) -> Tensor:
    """View ``[n - |offset|, *rest]`` of ``x[i, i + offset]`` (of ``x[i - offset, i]`` if < 0)."""
    stride_row, stride_col = x.stride(0), x.stride(1)
    start = offset * stride_col if offset >= 0 else -offset * stride_row
    return x.as_strided(
        (x.shape[0] - abs(offset), *x.shape[2:]),
        (stride_row + stride_col, *x.stride()[2:]),
        x.storage_offset() + start,
    )


def _finite_floor(dtype: torch.dtype, size: int) -> float:
    """The stand-in for ``-inf`` arc scores inside Eisner's chart: so negative that ``exp`` of it
    relative to any real score is exactly 0, yet ``size`` of them sum to a finite number."""
    return torch.finfo(dtype).min / (8 * size)


def _eisner_arcs(scores: Tensor, lengths: Tensor) -> tuple[Tensor, float]:
    """Tempered scores ``[batch, n, n]`` (``-inf`` off the allowed arcs) -> arcs ``[n, n, batch]``.

    ``-inf`` inside the sentence becomes a huge finite negative number (so no ``inf - inf`` arises
    and no gradient is ``NaN``); padding, which no span of the sentence reads, becomes 0. Returns
    the arcs and the threshold under which a log-partition means "no tree".
    """
    size = scores.shape[-1]
    floor = _finite_floor(scores.dtype, size)
    inside = torch.arange(size, device=scores.device) <= lengths.view(-1, 1)
    in_sentence = inside.unsqueeze(-1) & inside.unsqueeze(-2)
    arcs = torch.where(torch.isneginf(scores), floor, scores)
    arcs = torch.where(in_sentence, arcs, 0.0)
    return arcs.permute(1, 2, 0).contiguous(), floor / 2


def _logsumexp_split(parts: Tensor, dim: int, keep_weights: bool) -> tuple[Tensor, Tensor | None]:
    """``logsumexp`` over ``dim`` of finite ``parts`` and, if asked, the softmax weights."""
    if not keep_weights:
        return torch.logsumexp(parts, dim), None
    top = parts.amax(dim, keepdim=True)
    weights = (parts - top).exp_()
    total = weights.sum(dim, keepdim=True)
    weights.div_(total)
    return (total.log_() + top).squeeze(dim), weights


class _EisnerChart:
    """The inside pass of Eisner's algorithm, log space, batched; keeps what the outside pass needs.

    ``arcs`` ``[n, n, batch]`` (finite, see :func:`_eisner_arcs`). ``log_partition`` ``[batch]``.
    With ``keep_weights``, ``weights[width - 1]`` holds the softmax over split points of the
    shared part ``[n - width, width, batch]`` and of the two complete spans
    ``[2, n - width, width, batch]``, and ``root_weights`` ``[n - 1, batch]`` the choice of the
    single root child.
    With ``differentiable``, only torch operations that autograd can differentiate twice are used.
    """

    def __init__(
        self,
        arcs: Tensor,
        lengths: Tensor,
        multiroot: bool,
        keep_weights: bool = False,
        differentiable: bool = False,
    ):
        size, _, batch = arcs.shape
        self.size, self.batch, self.lengths, self.multiroot = size, batch, lengths, multiroot
        complete = arcs.new_zeros(size, size, batch)
        incomplete = arcs.new_zeros(size, size, batch)
        self.weights: list[tuple[Tensor, Tensor]] = []
        for width in range(1, size):
            parts = _row_stripe(complete, width, 0, 0) + _row_stripe(complete, width, width, 1)
            shared, shared_weights = _logsumexp_split(parts, 1, keep_weights)
            _diagonal(incomplete, width).copy_(shared + _diagonal(arcs, width))
            _diagonal(incomplete, -width).copy_(shared + _diagonal(arcs, -width))
            if differentiable:
                parts = torch.stack(
                    (
                        _row_stripe(incomplete, width, 0, 1)
                        + _col_stripe(complete, width, 1, width),
                        _col_stripe(complete, width, 0, 0)
                        + _row_stripe(incomplete, width, width, 0),
                    )
                )
            else:
                parts = arcs.new_empty(2, size - width, width, batch)
                torch.add(
                    _row_stripe(incomplete, width, 0, 1),
                    _col_stripe(complete, width, 1, width),
                    out=parts[0],
                )
                torch.add(
                    _col_stripe(complete, width, 0, 0),
                    _row_stripe(incomplete, width, width, 0),
                    out=parts[1],
                )
            spans, span_weights = _logsumexp_split(parts, 2, keep_weights)
            _diagonal(complete, width).copy_(spans[0])
            _diagonal(complete, -width).copy_(spans[1])
            if keep_weights:
                self.weights.append((shared_weights, span_weights))
        self.complete, self.incomplete = complete, incomplete
        batch_index = torch.arange(batch, device=arcs.device)
        if multiroot:
            self.log_partition = complete[0, lengths, batch_index]
            self.root_weights = None
        else:
            root_parts = self.root_parts(arcs, complete)
            self.log_partition, self.root_weights = _logsumexp_split(root_parts, 0, keep_weights)

    def root_parts(self, arcs: Tensor, complete: Tensor) -> Tensor:
        """``[n - 1, batch]``: ``arc[0, r] + complete[r, 1] + complete[r, len]`` for the single root
        child ``r = 1..n-1`` (``-inf`` past the sentence)."""
        size, lengths = self.size, self.lengths
        last = lengths.view(1, 1, -1).expand(size - 1, 1, -1)
        parts = arcs[0, 1:] + complete[1:, 1] + complete[1:].gather(1, last).squeeze(1)
        beyond = torch.arange(1, size, device=arcs.device).view(-1, 1) > lengths.view(1, -1)
        return parts.masked_fill(beyond, float("-inf"))

    def seed(self, complete_adjoint: Tensor, root_adjoint: Tensor) -> None:
        """Start the outside pass: mark the item(s) the whole sentence is made of."""
        batch_index = torch.arange(self.batch, device=complete_adjoint.device)
        if self.multiroot:
            complete_adjoint[0, self.lengths, batch_index] = 1.0
            return
        root_adjoint[0, 1:] = self.root_weights
        complete_adjoint[1:, 1] += self.root_weights
        last = self.lengths.view(1, 1, -1).expand(self.size - 1, 1, -1)
        complete_adjoint[1:].scatter_add_(1, last, self.root_weights.unsqueeze(1))

    def outside(self) -> Tensor:
        """``[n, n, batch]`` arc marginals ``P(head_d = h)`` (adjoints of the incomplete spans)."""
        complete_adjoint = torch.zeros_like(self.complete)
        incomplete_adjoint = torch.zeros_like(self.incomplete)
        root_adjoint = torch.zeros_like(self.incomplete[:1])
        self.seed(complete_adjoint, root_adjoint)
        for width in range(self.size - 1, 0, -1):
            shared_weights, span_weights = self.weights[width - 1]
            flow = span_weights[1] * _diagonal(complete_adjoint, -width).unsqueeze(1)
            _col_stripe(complete_adjoint, width, 0, 0).add_(flow)
            _row_stripe(incomplete_adjoint, width, width, 0).add_(flow)
            flow = span_weights[0] * _diagonal(complete_adjoint, width).unsqueeze(1)
            _row_stripe(incomplete_adjoint, width, 0, 1).add_(flow)
            _col_stripe(complete_adjoint, width, 1, width).add_(flow)
            arc_adjoint = _diagonal(incomplete_adjoint, width) + _diagonal(
                incomplete_adjoint, -width
            )
            flow = shared_weights * arc_adjoint.unsqueeze(1)
            _row_stripe(complete_adjoint, width, 0, 0).add_(flow)
            _row_stripe(complete_adjoint, width, width, 1).add_(flow)
        if not self.multiroot:
            incomplete_adjoint[0] = root_adjoint[0]
        return incomplete_adjoint

    def sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        """``[n, batch, size]`` exact samples: the outside pass with one split drawn per item.

        Every item of a drawn derivation picks its split from its softmax weights, top-down by
        width; all items of one width, all samples and all sentences at once.
        """
        size, batch, device = self.size, self.batch, self.complete.device
        complete_on = torch.zeros(size, size, n, batch, dtype=torch.bool, device=device)
        incomplete_on = torch.zeros_like(complete_on)
        heads = torch.full((size, n, batch), -1, dtype=torch.long, device=device)
        batch_index = torch.arange(batch, device=device)
        if self.multiroot:
            complete_on[0, self.lengths, :, batch_index] = True
        else:
            child = _draw(self.root_weights.unsqueeze(0), n, generator).squeeze(0) + 1  # [n, batch]
            sample_index = torch.arange(n, device=device).view(-1, 1)
            complete_on[child, 1, sample_index, batch_index] = True
            complete_on[child, self.lengths, sample_index, batch_index] = True
            heads.view(size, -1).scatter_(0, child.view(1, -1), 0)
        for width in range(size - 1, 0, -1):
            shared_weights, span_weights = self.weights[width - 1]
            count = size - width
            ends = torch.arange(width, count + width, device=device).view(-1, 1, 1)
            starts = torch.arange(count, device=device).view(-1, 1, 1)
            # Complete spans headed left (complete[j, i]) then right (complete[i, j]).
            chosen = _one_hot_split(span_weights[1], _diagonal(complete_on, -width), generator)
            _col_stripe(complete_on, width, 0, 0).logical_or_(chosen)
            _row_stripe(incomplete_on, width, width, 0).logical_or_(chosen)
            chosen = _one_hot_split(span_weights[0], _diagonal(complete_on, width), generator)
            _row_stripe(incomplete_on, width, 0, 1).logical_or_(chosen)
            _col_stripe(complete_on, width, 1, width).logical_or_(chosen)
            # Incomplete spans: record the arc, then split the shared part.
            right_on = _diagonal(incomplete_on, width)  # arc i -> i + width
            left_on = _diagonal(incomplete_on, -width)  # arc i + width -> i
            heads[width:] = torch.where(right_on, starts.expand_as(right_on), heads[width:])
            heads[:count] = torch.where(left_on, ends.expand_as(left_on), heads[:count])
            chosen = _one_hot_split(shared_weights, right_on | left_on, generator)
            _row_stripe(complete_on, width, 0, 0).logical_or_(chosen)
            _row_stripe(complete_on, width, width, 1).logical_or_(chosen)
        return heads.permute(1, 2, 0)


def _draw(weights: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """Index ``[items, n, batch]`` drawn from ``weights`` ``[items, options, batch]`` (rows sum to 1
    or are all 0; an all-zero row gives an arbitrary valid index)."""
    items, options, batch = weights.shape
    cumulative = weights.double().cumsum(1)  # [items, options, batch]
    total = cumulative[:, -1:]
    uniform = torch.rand(
        items, n, batch, dtype=torch.float64, device=weights.device, generator=generator
    )
    threshold = uniform * total  # [items, n, batch]
    index = (cumulative.unsqueeze(2) <= threshold.unsqueeze(1)).sum(1)
    # Guard against rounding at the top of the cumulative sum: never pick a zero-weight option.
    positions = torch.arange(options, device=weights.device).view(1, -1, 1)
    last_positive = torch.where(weights > 0, positions, 0).amax(1, keepdim=True)
    return torch.minimum(index, last_positive)


def _one_hot_split(weights: Tensor, active: Tensor, generator: torch.Generator | None) -> Tensor:
    """``[count, width, n, batch]`` bool: the split drawn for every active item
    ``[count, n, batch]`` from ``weights`` ``[count, width, batch]``."""
    n = active.shape[1]
    split = _draw(weights, n, generator)  # [count, n, batch]
    positions = torch.arange(weights.shape[1], device=weights.device).view(1, -1, 1, 1)
    return (positions == split.unsqueeze(1)) & active.unsqueeze(1)


class _EisnerLogPartition(torch.autograd.Function):
    """``log Z`` ``[batch]`` of tempered scores ``[batch, n, n]``; backward is the explicit outside
    pass (first derivatives only)."""

    @staticmethod
    def forward(ctx, scores: Tensor, lengths: Tensor, multiroot: bool) -> Tensor:  # type: ignore[override]
        arcs, _ = _eisner_arcs(scores.detach(), lengths)
        ctx.chart = _EisnerChart(arcs, lengths, multiroot, keep_weights=True)
        return ctx.chart.log_partition

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        marginals = ctx.chart.outside().permute(2, 0, 1)
        return marginals * grad.view(-1, 1, 1), None, None


# ----------------------------------------------------------------------------------------------
# k-best Eisner: a k-max semiring over the same chart, then a vectorized backtrace
# ----------------------------------------------------------------------------------------------


def _eisner_kbest(arcs: Tensor, lengths: Tensor, multiroot: bool, k: int) -> tuple[Tensor, Tensor]:
    """k best projective trees. ``arcs`` ``[n, n, batch]`` finite (see :func:`_eisner_arcs`).

    Every chart item keeps its ``k`` best derivations ``[n, n, k, batch]``; a span combines the
    ``k x k`` pairs of its two halves at every split and keeps the top ``k``, with back-pointers.

    Returns ``(heads [k, batch, n], chart scores [k, batch])``.
    """
    size, _, batch = arcs.shape
    device = arcs.device
    neg_inf = float("-inf")
    complete = arcs.new_full((size, size, k, batch), neg_inf)
    diagonal = torch.arange(size, device=device)
    complete[diagonal, diagonal, 0] = 0.0
    incomplete = arcs.new_full((size, size, k, batch), neg_inf)
    pointers: list[tuple[Tensor, Tensor, Tensor]] = []

    def best_pairs(left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
        count, width = left.shape[:2]
        pairs = left.unsqueeze(3) + right.unsqueeze(2)  # [count, width, k, k, batch]
        return pairs.reshape(count, width * k * k, batch).topk(k, dim=1)

    for width in range(1, size):
        shared, shared_pointer = best_pairs(
            _row_stripe(complete, width, 0, 0), _row_stripe(complete, width, width, 1)
        )
        _diagonal(incomplete, width).copy_(shared + _diagonal(arcs, width).unsqueeze(1))
        _diagonal(incomplete, -width).copy_(shared + _diagonal(arcs, -width).unsqueeze(1))
        right, right_pointer = best_pairs(
            _row_stripe(incomplete, width, 0, 1), _col_stripe(complete, width, 1, width)
        )
        _diagonal(complete, width).copy_(right)
        left, left_pointer = best_pairs(
            _col_stripe(complete, width, 0, 0), _row_stripe(incomplete, width, width, 0)
        )
        _diagonal(complete, -width).copy_(left)
        pointers.append((shared_pointer, right_pointer, left_pointer))

    batch_index = torch.arange(batch, device=device)
    rank = torch.arange(k, device=device)
    complete_rank = torch.full((size, size, k, batch), -1, dtype=torch.long, device=device)
    incomplete_rank = torch.full_like(complete_rank, -1)
    heads = torch.full((size, k, batch), -1, dtype=torch.long, device=device)
    if multiroot:
        scores = complete[0, lengths, :, batch_index].t()  # [k, batch]
        complete_rank[0, lengths, :, batch_index] = rank.expand(batch, k)
    else:
        root_left = complete[1:, 1].unsqueeze(2)  # [n - 1, k, 1, batch]
        last = lengths.view(1, 1, 1, -1).expand(size - 1, 1, k, batch)
        root_right = complete[1:].gather(1, last).squeeze(1).unsqueeze(1)  # [n - 1, 1, k, batch]
        beyond = torch.arange(1, size, device=device).view(-1, 1, 1, 1) > lengths.view(1, 1, 1, -1)
        parts = arcs[0, 1:].view(size - 1, 1, 1, batch) + root_left + root_right
        parts = parts.masked_fill(beyond, neg_inf)  # [n - 1 (child), k (left), k (right), batch]
        scores, flat = parts.reshape(-1, batch).topk(k, dim=0)  # [k, batch]
        child = flat // (k * k) + 1
        left_rank, right_rank = (flat // k) % k, flat % k
        complete_rank[child, 1, rank.view(-1, 1), batch_index] = left_rank
        complete_rank[child, lengths, rank.view(-1, 1), batch_index] = right_rank
        heads[child, rank.view(-1, 1), batch_index] = 0

    def follow(
        item_rank: Tensor, pointer: Tensor, left_view: Tensor, right_view: Tensor, width: int
    ) -> None:
        active = item_rank >= 0  # [count, k, batch]
        flat = pointer.gather(1, item_rank.clamp(min=0))
        split, left_rank, right_rank = flat // (k * k), (flat // k) % k, flat % k
        chosen = (torch.arange(width, device=device).view(1, -1, 1, 1) == split.unsqueeze(1)) & (
            active.unsqueeze(1)
        )
        left_view.copy_(torch.where(chosen, left_rank.unsqueeze(1), left_view))
        right_view.copy_(torch.where(chosen, right_rank.unsqueeze(1), right_view))

    for width in range(size - 1, 0, -1):
        shared_pointer, right_pointer, left_pointer = pointers[width - 1]
        count = size - width
        follow(
            _diagonal(complete_rank, -width),
            left_pointer,
            _col_stripe(complete_rank, width, 0, 0),
            _row_stripe(incomplete_rank, width, width, 0),
            width,
        )
        follow(
            _diagonal(complete_rank, width),
            right_pointer,
            _row_stripe(incomplete_rank, width, 0, 1),
            _col_stripe(complete_rank, width, 1, width),
            width,
        )
        right_rank = _diagonal(incomplete_rank, width)
        left_rank = _diagonal(incomplete_rank, -width)
        starts = torch.arange(count, device=device).view(-1, 1, 1).expand_as(right_rank)
        heads[width:] = torch.where(right_rank >= 0, starts, heads[width:])
        heads[:count] = torch.where(left_rank >= 0, starts + width, heads[:count])
        follow(
            torch.maximum(right_rank, left_rank),
            shared_pointer,
            _row_stripe(complete_rank, width, 0, 0),
            _row_stripe(complete_rank, width, width, 1),
            width,
        )
    return heads.permute(1, 2, 0), scores


# ----------------------------------------------------------------------------------------------
# Matrix-tree theorem
# ----------------------------------------------------------------------------------------------


def _word_log_weights(arc_scores: Tensor, padding: Tensor, temperature: float) -> Tensor:
    """``[batch, n, n]`` float64 ``arc_scores / T`` with ``-inf`` off the allowed arcs (the root
    column, the diagonal, rows and columns past the length), as ``tempered_scores`` in float64.

    ``padding`` ``[batch, n]`` bool is True past the length; the division happens in the scores'
    dtype (as in ``tempered_scores``). ``arc_scores`` hold no ``+inf``. Always a new tensor, so the
    caller may overwrite it.
    """
    if temperature != 1.0:
        log_weights = (arc_scores / temperature).to(torch.float64)
    else:
        log_weights = arc_scores.to(torch.float64, copy=True)
    # Additions of a [batch, n] penalty (a masked_fill with a broadcast mask is slower on CPU).
    blocked = torch.zeros(padding.shape, dtype=torch.float64, device=padding.device)
    blocked.masked_fill_(padding, float("-inf"))
    log_weights += blocked.unsqueeze(-1)  # heads past the length
    log_weights += blocked.unsqueeze(-2)  # dependents past the length
    log_weights.diagonal(0, 1, 2).fill_(float("-inf"))
    log_weights.select(2, 0).fill_(float("-inf"))  # the root is nobody's dependent
    return log_weights


def _column_shift(scores: Tensor) -> Tensor:
    """``[batch, n - 1]`` the best head score of every word (0 where a column has no allowed arc,
    e.g. padding): subtracting it per dependent column leaves the tree distribution unchanged."""
    return scores.detach()[:, :, 1:].amax(1).nan_to_num(neginf=0.0)


def _laplacian(weights: Tensor, lengths: Tensor, multiroot: bool) -> Tensor:
    """``[batch, n - 1, n - 1]`` the Laplacian of the words, from weights ``[batch, n, n - 1]``.

    ``weights[b, h, d - 1]`` is the weight of ``h -> d`` (0 off the allowed arcs). Multi-root:
    ``L[d, d] = sum_{h = 0..n} w[h, d]`` and ``L[h, d] = -w[h, d]``; single root (Koo et al. 2007):
    the root weights do not enter the diagonal and replace the first row. Padded rows and columns
    form an identity block, so they do not change the determinant.
    """
    root, between = weights[:, 0], weights[:, 1:]
    incoming = between.sum(1)
    if multiroot:
        incoming = incoming + root
    words = _word_mask(lengths, weights.shape[-2])[:, 1:]
    laplacian = -between  # ``between`` is 0 on its diagonal
    laplacian.diagonal(dim1=-2, dim2=-1).copy_(torch.where(words, incoming, 1.0))
    if not multiroot:
        laplacian[:, 0] = root
    return laplacian


def _matrix_tree_lu(
    log_weights: Tensor,
    padding: Tensor,
    multiroot: bool,
    marginals_dtype: torch.dtype | None,
    with_log_partition: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """Matrix-tree theorem by float64 LU, with a certificate of accuracy (no graph).

    ``log_weights`` ``[batch, n, n]`` float64 from :func:`_word_log_weights` (overwritten: it
    becomes the marginals), ``padding`` ``[batch, n]`` its mask. Each dependent column is shifted
    by its best head score; the word Laplacian ``L`` (as in :func:`_laplacian`) is factored once,
    in place, as ``L^T`` (``L`` laid out column-major, as LAPACK wants it), and inverted once; the
    inverse gives both the condition number and the marginals (Koo et al. 2007).

    Returns ``(log_partition [batch] float64, marginals [batch, n, n] in marginals_dtype, trusted
    [batch] bool)``, ``None`` for the one not asked for. ``trusted`` certifies
    ``||L||_1 ||L^-1||_1 <= _MAX_CONDITION`` (``||L||_1`` bounded by twice the largest column
    total of the weights; an inf or NaN inverse, i.e. a singular ``L``, fails). It fails where the
    best heads of the words form a cycle that is costly to break, whose cancellation the column
    shift cannot remove. The determinant's sign needs no test of its own: LU with partial
    pivoting exactly factors a matrix within about ``n g eps ||L||`` of ``L`` (``g`` the growth
    factor, small in practice), while the nearest singular matrix is ``||L|| / kappa >= 1e-7
    ||L||`` away, so the computed determinant has the sign of ``det L = Z exp(-sum shift) > 0``;
    a sentence without a tree has a singular ``L`` and fails the certificate. When the marginals
    are asked for, a sentence with a marginal below ``-PROBABILITY_ROUNDOFF`` fails it too, and
    the trusted sentences' roundoff below 0 is set to 0. Entries of untrusted sentences are
    meaningless (possibly inf or NaN).
    """
    batch, size, _ = log_weights.shape
    words = size - 1
    shift = log_weights.amax(1, keepdim=True).nan_to_num_(neginf=0.0)  # 0 on empty columns
    weights = log_weights.sub_(shift).exp_()  # 0 off the allowed arcs
    root, between = weights[:, 0, 1:], weights[:, 1:, 1:]
    total = weights.sum(1)  # [batch, n]: each column of L sums in absolute value to <= 2 * total
    norm_bound = total.amax(-1)  # ||L||_1 / 2
    incoming = total.masked_fill_(padding, 1.0)[:, 1:]  # padded words: an identity block
    if not multiroot:
        incoming = incoming - root  # single root: root weights leave the diagonal
    laplacian = between.neg()  # [batch, n - 1, n - 1]; ``between`` is 0 on its diagonal
    laplacian.diagonal(0, 1, 2).copy_(incoming)
    if not multiroot:
        laplacian.select(1, 0).copy_(root)  # Koo et al.: the root weights replace the first row
    transposed = laplacian.mT  # L^T, column-major: factored in place (det L^T = det L)
    pivots = torch.empty(batch, words, dtype=torch.int32, device=weights.device)
    info = torch.empty(batch, dtype=torch.int32, device=weights.device)
    factors = torch.linalg.lu_factor_ex(transposed, out=(transposed, pivots, info))[0]
    log_partition = None
    if with_log_partition:
        log_partition = factors.diagonal(0, 1, 2).abs().log_().sum(-1) + shift.sum((1, 2))
    eye = torch.eye(words, dtype=weights.dtype, device=weights.device).expand_as(laplacian)
    inverse_t = torch.linalg.lu_solve(factors, pivots, eye)  # [b, h, d] = L^-1[d, h]
    # The factors are spent: their memory takes the temporaries below (on CPU, fresh megabyte
    # buffers can cost more in page faults than the arithmetic).
    workspace = torch.abs(inverse_t, out=factors)
    inverse_norm = workspace.sum(-1).amax(-1)  # ||L^-1||_1: the largest row sum of |L^-T|
    trusted = norm_bound * inverse_norm <= _MAX_CONDITION / 2  # False for NaN
    if marginals_dtype is None:
        return log_partition, None, trusted
    # P(h -> d) = w[h, d] d log det / d w[h, d] with d log det / d L[i, j] = L^-1[j, i]: a word
    # weight w[h, d] enters L[d, d] with + and L[h, d] with -; the root weight enters L[d, d].
    # Single root: the first row holds the root weights r[d] (d log det / d r[d] = L^-1[d, 0]),
    # so w[h, first] does not enter L[first, first] and w[first, d] does not enter L[first, d].
    inverse_diagonal = inverse_t.diagonal(0, 1, 2)  # L^-1[d, d]
    gradient = torch.sub(inverse_diagonal.unsqueeze(-2), inverse_t, out=workspace)
    if multiroot:
        root.mul_(inverse_diagonal)
    else:
        root.mul_(inverse_t[:, 0])
        torch.neg(inverse_t[:, :, 0], out=gradient[:, :, 0])
        gradient.select(1, 0).copy_(inverse_diagonal)
    between.mul_(gradient)  # the weights are now the marginals (0 off the allowed arcs)
    trusted &= weights.amin((1, 2)) >= -PROBABILITY_ROUNDOFF
    weights.clamp_min_(0.0)  # roundoff below 0 (NaN stays NaN in untrusted sentences)
    return log_partition, weights.to(marginals_dtype), trusted


def _matrix_tree_log_space(
    scores: Tensor, lengths: Tensor, multiroot: bool, twice_differentiable: bool = False
) -> Tensor:
    """Exact ``log Z`` ``[batch]`` at any score scale: log-space elimination of the Laplacian.

    Grassmann-Taksar-Heyman style: eliminating word ``k`` leaves the Laplacian of a graph on the
    other words with ``w'[h, d] = w[h, d] + w[h, k] w[k, d] / p_k`` and root weight
    ``r'[d] = r[d] + r[k] w[k, d] / p_k``, where the pivot ``p_k = r[k] + sum_h w[h, k]`` is a sum
    of positive terms: no subtraction, so every quantity stays exact in log space and
    ``log Z = sum_k log p_k``. Single root: root weights are scaled by ``exp(-M)`` with ``M`` larger
    than any difference of tree scores, so ``log Z_1 = log Z_multi + M`` up to ``exp(-40)``.

    ``scores`` ``[batch, n, n]`` float64 with ``-inf`` off the allowed arcs; differentiable
    (``-inf`` is replaced by a finite floor so gradients have no ``NaN``), twice if asked (slower).
    ``O(n^3)`` per sentence in ``n`` sequential steps.
    """
    log_add = _log_add if twice_differentiable else torch.logaddexp
    size = scores.shape[-1]
    allowed = torch.isfinite(scores)
    log_weights = torch.where(allowed, scores, -1e30)
    word_to_word = log_weights[:, 1:, 1:]
    root = log_weights[:, 0, 1:]
    if not multiroot:
        values = scores.detach().flatten(1)
        lowest = values.masked_fill(~allowed.flatten(1), float("inf")).amin(-1)
        spread = values.masked_fill(~allowed.flatten(1), float("-inf")).amax(-1) - lowest
        words = size - 1.0
        penalty = words * spread.clamp(min=0) + words * math.log(words + 1.0) + 40.0
        root = root - penalty.view(-1, 1)
    total = scores.new_zeros(scores.shape[0])
    for step in range(size - 1):
        incoming = torch.cat((root[:, :1], word_to_word[:, 1:, 0]), 1)
        real = step < lengths
        log_pivot = torch.where(real, torch.logsumexp(incoming, 1), 0.0)  # [batch]
        total = total + log_pivot
        through = word_to_word[:, 1:, 0] - log_pivot.view(-1, 1)  # w[h, k] / p_k
        onward = word_to_word[:, 0, 1:]  # w[k, d]
        word_to_word = log_add(
            word_to_word[:, 1:, 1:], through.unsqueeze(-1) + onward.unsqueeze(-2)
        )
        root = log_add(root[:, 1:], root[:, :1] - log_pivot.view(-1, 1) + onward)
    if not multiroot:
        total = total + penalty
        # Trees with several root children add at most ``len * lowest - 40`` while one single-root
        # tree alone gives at least ``len * lowest``: below that, no single-root tree exists.
        total = torch.where(total < lengths * lowest - 20.0, -1e30, total)
    return total


def _log_add(first: Tensor, second: Tensor) -> Tensor:
    """``log(exp(first) + exp(second))`` whose second derivative has no ``NaN`` even when the two
    differ by ``1e30`` (``torch.logaddexp``'s double backward overflows there)."""
    return torch.logsumexp(torch.stack((first, second)), 0)


def _matrix_tree(
    arc_scores: Tensor,
    lengths: Tensor,
    multiroot: bool,
    temperature: float = 1.0,
    marginals_dtype: torch.dtype | None = torch.float64,
    with_log_partition: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """``(log Z [batch] float64, marginals [batch, n, n] in marginals_dtype)``, no graph; ``None``
    for the one not asked for (``with_log_partition=False``, ``marginals_dtype=None``).

    ``arc_scores`` ``[batch, n, n]`` untempered, any float dtype (padding, the root column and the
    diagonal are ignored). The float64 LU path where its certificate holds (one host sync to
    decide), the exact log-space elimination (marginals by autograd) for the other sentences.
    Marginals below 0 by roundoff (``PROBABILITY_ROUNDOFF``) are set to 0. Raises ``ValueError``
    when a sentence has no tree, ``NumericalError`` for an exact marginal below 0 beyond it.
    """
    positions = torch.arange(arc_scores.shape[-1], device=lengths.device)
    padding = positions > lengths.unsqueeze(-1)  # [batch, n]
    log_weights = _word_log_weights(arc_scores, padding, temperature)
    log_partition, marginals, trusted = _matrix_tree_lu(
        log_weights, padding, multiroot, marginals_dtype, with_log_partition
    )
    if bool(trusted.all()):  # a trusted determinant is positive: every sentence has a tree
        return log_partition, marginals
    redo = torch.nonzero(~trusted).flatten()
    scores = _word_log_weights(arc_scores[redo], padding[redo], temperature)
    if marginals is None:
        with torch.no_grad():
            exact_log_z = _matrix_tree_log_space(scores, lengths[redo], multiroot)
    else:
        exact_log_z, (exact_marginals,) = autograd_marginals(
            lambda s: _matrix_tree_log_space(s, lengths[redo], multiroot), [scores]
        )
        exact_marginals = probabilities_within_roundoff(
            exact_marginals, "a matrix-tree marginal of the exact elimination", at_most_one=False
        )
        marginals = marginals.index_copy(0, redo, exact_marginals.to(marginals.dtype))
    exact = torch.zeros_like(trusted, dtype=torch.float64).index_copy_(
        0, redo, exact_log_z.detach()
    )
    _raise_if_no_structure(exact, -1e29, "tree")  # the trusted sentences (0 here) have a tree
    if log_partition is not None:
        log_partition = torch.where(trusted, log_partition, exact)
    return log_partition, marginals


class _MatrixTreeLogPartition(torch.autograd.Function):
    """``log Z`` ``[batch]`` by the matrix-tree theorem from untempered ``arc_scores``; backward
    multiplies the saved marginals by ``grad / T`` (first derivatives only)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, arc_scores: Tensor, lengths: Tensor, multiroot: bool, temperature: float
    ) -> Tensor:
        log_partition, marginals = _matrix_tree(
            arc_scores, lengths, multiroot, temperature, arc_scores.dtype
        )
        ctx.save_for_backward(marginals)
        ctx.temperature = temperature
        return log_partition.to(arc_scores.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        (marginals,) = ctx.saved_tensors
        if ctx.temperature != 1.0:
            grad = grad / ctx.temperature
        return marginals * grad.view(-1, 1, 1), None, None, None


def _matrix_tree_differentiable(scores: Tensor, lengths: Tensor, multiroot: bool) -> Tensor:
    """``log Z`` ``[batch]`` through operations autograd differentiates twice: ``slogdet`` for the
    sentences the LU certificate trusts, the log-space elimination for the others.

    ``scores`` ``[batch, n, n]`` tempered, ``-inf`` off the allowed arcs.
    """
    scores64 = scores.double()
    with torch.no_grad():
        padding = torch.arange(scores.shape[-1], device=lengths.device) > lengths.unsqueeze(-1)
        _, _, trusted = _matrix_tree_lu(scores64.detach().clone(), padding, multiroot, None)
    shift = _column_shift(scores64)
    weights = torch.exp(scores64[:, :, 1:] - shift.unsqueeze(1))
    laplacian = _laplacian(weights, lengths, multiroot)
    # Untrusted sentences get an identity here (no gradient through a near-singular matrix).
    eye = torch.eye(laplacian.shape[-1], dtype=laplacian.dtype, device=laplacian.device)
    laplacian = torch.where(trusted.view(-1, 1, 1), laplacian, eye)
    log_partition = torch.linalg.slogdet(laplacian)[1] + shift.sum(-1)
    if not trusted.all():
        redo = torch.nonzero(~trusted).flatten()
        exact = _matrix_tree_log_space(scores64[redo], lengths[redo], multiroot, True)
        log_partition = log_partition.index_copy(0, redo, exact)
    return log_partition.to(scores.dtype)


# ----------------------------------------------------------------------------------------------
# Chu-Liu-Edmonds (maximum spanning arborescence) and Lawler's k-best partitioning
# ----------------------------------------------------------------------------------------------


class _CycleFinder:
    """The first cycle of the best-head graph of each contraction level, in the walk order of the
    textbook recursion (from every node of the level in level order, a node seen before ends the
    walk), without walking the whole graph at every level.

    The walks before the one that met a cycle all reached the root through nodes whose heads a
    contraction of that cycle leaves unchanged, so the next level resumes at that walk's position
    (the nodes before it keep their position in the level order: none of them is in the cycle) and
    keeps the nodes known to reach the root. ``heads`` is a Python list kept in sync by the caller.
    """

    def __init__(self, heads: list[int], size: int):
        self.heads = heads
        self.reaches_root = [False] * size
        self.position = 1  # position of the next walk in the level order (0 is the root)

    def next_cycle(self, order: list[int]) -> list[int] | None:
        heads, reaches_root = self.heads, self.reaches_root
        while self.position < len(order):
            path: list[int] = []
            on_path: dict[int, int] = {}
            node = order[self.position]
            while node > 0 and not reaches_root[node] and node not in on_path:
                on_path[node] = len(path)
                path.append(node)
                node = heads[node]
            if node > 0 and node in on_path:
                return path[on_path[node] :]
            for seen in path:
                reaches_root[seen] = True
            self.position += 1
        return None


def _chu_liu_edmonds(scores: np.ndarray) -> np.ndarray | None:
    """Maximum spanning arborescence rooted at node 0 (any number of root children).

    ``scores`` ``[n, n]`` float64 as ``[head, dependent]``; ``-inf`` forbids an arc. Returns heads
    ``[n]`` int64 (``heads[0] = -1``), or None when no arborescence exists.

    Iterative contraction in one ``[n, n]`` matrix (no recursion, ``O(n^2)`` memory). A cycle of
    the best heads is contracted into the row and column of one member (the one most words point
    to), which then stands for the cycle: its entering scores are relative to the cycle arc they
    replace, its leaving scores the best of the members. Only the words whose best head was in the
    cycle choose again, and they need no scan of their column unless another row ties with their
    best score (``ties`` counts the rows at each column's maximum). Each contraction costs
    ``O(n |cycle|)`` and keeps ``O(n)`` bookkeeping for the expansion, which runs in reverse.
    Ties resolve exactly as in the textbook recursion (a contracted cycle orders after every other
    node of its level, the first best row wins), so the tree does not depend on the implementation.
    """
    size = scores.shape[0]
    weights = scores.copy()
    weights[:, 0] = -np.inf
    np.fill_diagonal(weights, -np.inf)
    heads = weights.argmax(0)
    heads[0] = -1
    if size == 1:
        return heads
    best = weights[heads, np.arange(size)]  # each column's maximum (the score of its head)
    if np.isneginf(best[1:]).any():
        return None
    ties = (weights == best).sum(0)  # rows at each column's maximum
    heads_list = heads.tolist()
    finder = _CycleFinder(heads_list, size)
    in_cycle = np.zeros(size, dtype=bool)
    order = np.arange(size)  # the nodes of the current level in level order, root first
    compact = np.int32 if size < 2**31 else np.int64
    levels: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    while (cycle := finder.next_cycle(order.tolist())) is not None:
        in_cycle[cycle] = True
        members = order[in_cycle[order]]  # level order
        rest = order[~in_cycle[order]]  # level order, root first
        words = rest[1:]
        pointing = in_cycle[heads[words]]  # words whose best head is in the cycle
        in_cycle[cycle] = False
        entering = weights[np.ix_(rest, members)]
        entering -= best[members]
        entry = entering.argmax(1)
        enter_best = entering[np.arange(rest.size), entry]
        del entering
        leaving = weights[np.ix_(members, rest)]
        exit_ = leaving.argmax(0)
        leave_best = leaving[exit_, np.arange(rest.size)]
        at_best = (leaving == best[rest]).sum(0)
        del leaving
        indegree = np.bincount(heads[words[pointing]], minlength=size)[members]
        node = int(members[indegree.argmax()])  # its row and column now stand for the cycle
        levels.append(
            (
                node,
                rest.astype(compact),
                members,
                heads[members].copy(),
                members[entry].astype(compact),
                members[exit_].astype(compact),
            )
        )
        weights[rest, node] = enter_best
        weights[node, rest] = leave_best
        weights[node, node] = -np.inf
        ties[rest] += (at_best > 0).astype(ties.dtype) - at_best
        order = np.append(rest, node)
        # A word whose best head was in the cycle now points to the cycle (it comes last in the
        # level, so a row of the rest at the same score wins: only then is the column scanned).
        redo = words[pointing]
        before = heads[redo]
        heads[redo] = node
        tied = redo[ties[redo] > 1]
        if tied.size:
            column = weights[np.ix_(rest, tied)]
            heads[tied] = rest[(column == best[tied]).argmax(0)]
            del column
        head = int(rest[enter_best.argmax()])
        heads[node] = head
        best[node] = enter_best.max()
        ties[node] = int((enter_best == best[node]).sum())
        if best[node] == -np.inf:
            return None
        heads_list[node] = head
        for dep in redo[heads[redo] != before].tolist():
            heads_list[dep] = int(heads[dep])
    for node, rest, members, member_heads, entry, exit_ in reversed(levels):
        outer = heads[node]  # the head of the contracted cycle
        words = rest[1:]
        into = heads[words] == node
        heads[words[into]] = exit_[1:][into]
        heads[members] = member_heads
        heads[entry[np.flatnonzero(rest == outer)[0]]] = outer
    return heads


def _root_penalized(scores: np.ndarray, multiroot: bool) -> np.ndarray:
    """Scores ``[n, n]`` with every root arc lowered by more than any difference of tree scores
    (single root), so the best tree with one root child beats every tree with more."""
    if multiroot:
        return scores
    finite = scores[np.isfinite(scores)]
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    penalized = scores.copy()
    penalized[0] -= (scores.shape[0] - 1) * spread + 1.0
    return penalized


def _constrained(scores: np.ndarray, forced: np.ndarray, forbidden: tuple) -> np.ndarray:
    """``scores`` with ``forced`` arcs the only choice of their dependent (``forced[d]`` the head
    of ``d``, ``-1`` where free) and ``forbidden`` arcs ``(head, dependent)`` removed."""
    result = scores.copy()
    for head, dep in forbidden:
        result[head, dep] = -np.inf
    deps = np.flatnonzero(forced >= 0)
    if deps.size:
        keep = result[forced[deps], deps]
        result[:, deps] = -np.inf
        result[forced[deps], deps] = keep
    return result


def _assignment_bound(root: np.ndarray, word: np.ndarray, multiroot: bool) -> np.ndarray:
    """Upper bounds ``[m]`` on the best tree of ``m`` subspaces: every word takes its best allowed
    head, ignoring cycles, with exactly one (single root) or at least one root child.

    ``root`` ``[m, n - 1]``: the root arc of each word (``-inf`` if not allowed); ``word``: its best
    allowed head among the words (``-inf`` if none).
    """
    no_head = np.isneginf(root) & np.isneginf(word)
    with np.errstate(invalid="ignore"):
        gain = np.where(no_head, -np.inf, root - word)  # +inf where only the root is allowed
    if multiroot:
        bound = np.maximum(root, word).sum(-1) + np.minimum(0.0, gain.max(-1))
        return np.where(no_head.any(-1), -np.inf, bound)
    only_root = np.isneginf(word) & ~no_head
    words_total = np.where(np.isneginf(word), 0.0, word).sum(-1)
    bound = np.where(
        only_root.any(-1),
        words_total + np.where(only_root, root, -np.inf).max(-1),  # that word is the root child
        words_total + gain.max(-1),
    )
    impossible = no_head.any(-1) | (only_root.sum(-1) > 1)
    return np.where(impossible, -np.inf, bound)


class _Subspace:
    """A subspace of Lawler's partitioning, stored lazily: ``O(1)`` per child of a popped tree
    (the popped tree's subspace, heads and free words are shared by all its children), expanded
    to ``(forced [n], forbidden arcs)`` only when the child is solved."""

    __slots__ = ("free", "heads", "parent", "position")

    def __init__(self, parent, heads, free, position):
        self.parent, self.heads, self.free, self.position = parent, heads, free, position

    def expand(self) -> tuple[np.ndarray, tuple]:
        """Child ``position``: the free words before it keep their tree head, it loses its own."""
        forced, forbidden = self.parent
        forced = forced.copy()
        before = self.free[: self.position]
        forced[before] = self.heads[before]
        dep = int(self.free[self.position])
        return forced, (*forbidden, (int(self.heads[dep]), dep))


def _kbest_trees(scores: np.ndarray, multiroot: bool, k: int) -> list[np.ndarray]:
    """The ``k`` best non-projective trees of one sentence ``[n, n]``, best first.

    Lawler's partitioning, evaluated lazily: a popped tree splits its subspace by its free arcs
    ``e_1..e_m`` (subspace ``i`` forces ``e_1..e_{i-1}`` and forbids ``e_i``); a subspace enters the
    queue with a cheap upper bound (:func:`_assignment_bound`) and runs Chu-Liu-Edmonds only when
    that bound reaches the top of the queue. Single root: the root penalty of
    :func:`_root_penalized` (a subspace whose best tree has several root children has no
    single-root tree). Exact; one MST call per subspace whose bound beats the k-th best tree.
    Memory ``O(n^2 + k n)``: queued subspaces are :class:`_Subspace` records.
    """
    size = scores.shape[0]
    weights = _root_penalized(scores, multiroot)
    if weights is scores:
        weights = scores.copy()
    weights[:, 0] = -np.inf
    np.fill_diagonal(weights, -np.inf)
    start = _assignment_bound(weights[None, 0, 1:], weights[None, 1:, 1:].max(1), multiroot)[0]
    counter = 0
    queue: list = [(-start, counter, None, (np.full(size, -1, dtype=np.int64), ()))]
    found: list[np.ndarray] = []
    while queue and len(found) < k:
        _, _, heads, space = heapq.heappop(queue)
        if isinstance(space, _Subspace):
            space = space.expand()
        forced, forbidden = space
        matrix = _constrained(weights, forced, forbidden)
        if heads is None:  # a bound reached the top: solve the subspace
            heads = _chu_liu_edmonds(matrix)
            if heads is None or (not multiroot and int((heads == 0).sum()) != 1):
                continue
            value = matrix[heads[1:], np.arange(1, size)].sum()
            if np.isfinite(value):
                counter += 1
                heapq.heappush(queue, (-value, counter, heads, space))
            continue
        found.append(heads)
        if len(found) == k:
            break
        free = np.flatnonzero(forced[1:] < 0) + 1
        if free.size == 0:
            continue
        # Child i: words free[:i] forced to their tree head, free[i] loses its tree head.
        root = np.repeat(matrix[None, 0, 1:], free.size, 0)  # [children, n - 1]
        word = np.repeat(matrix[None, 1:, 1:].max(1), free.size, 0)
        tree_head = heads[free]
        tree_arc = matrix[tree_head, free]
        earlier = np.tril(np.ones((free.size, free.size), dtype=bool), -1)  # [child, position]
        columns = free - 1
        root_forced = np.where(tree_head == 0, tree_arc, -np.inf)
        word_forced = np.where(tree_head == 0, -np.inf, tree_arc)
        root[:, columns] = np.where(earlier, root_forced, root[:, columns])
        word[:, columns] = np.where(earlier, word_forced, word[:, columns])
        del earlier, root_forced, word_forced
        without = matrix
        without[tree_head, free] = -np.inf  # ``matrix`` is not needed after this point
        child = np.arange(free.size)
        root[child, columns] = without[0, free]
        word[child, columns] = without[1:, free].max(0)
        bounds = _assignment_bound(root, word, multiroot)
        del root, word, without, matrix
        for position in np.flatnonzero(np.isfinite(bounds)).tolist():
            counter += 1
            subspace = _Subspace(space, heads, free, position)
            heapq.heappush(queue, (-bounds[position], counter, None, subspace))
    return found


# ----------------------------------------------------------------------------------------------
# The tree CRF
# ----------------------------------------------------------------------------------------------


class DependencyCRF(_ArcFactored):
    """A first-order tree CRF: ``P(heads) ∝ exp(sum_d arc_scores[heads[d], d] / T)`` over trees.

    Projective trees: Eisner's inside algorithm in log space, all spans of one width at once
    (strided views), with an explicit outside pass for marginals. Non-projective trees: the matrix-
    tree theorem (Koo et al. 2007; single root by replacing the first row of the word Laplacian by
    the root weights) in float64 with a per-dependent max shift, evaluated by LU where a condition
    check certifies it and otherwise by an exact log-space elimination, so ``log Z`` and marginals
    are exact at any score scale.

    Args:
        arc_scores: ``[batch, seq_len + 1, seq_len + 1]`` as ``[head, dependent]``, position 0 the
            root; the root column, the diagonal and padding are ignored; ``-inf`` forbids an arc.
        lengths: ``[batch]`` words per sentence (root excluded), each in ``1..seq_len``.
        projective: restrict to projective trees (no crossing arcs, root arcs included).
        multiroot: allow several words attached to the root (else exactly one).
        temperature: divides every score.

    Decoding (``argmax``, ``kbest``) of non-projective trees runs Chu-Liu-Edmonds per sentence in
    numpy (a Python loop over the batch, decoding only); everything else is batched.

    Examples:
        >>> scores = torch.randn(2, 5, 5)
        >>> dist = DependencyCRF(scores, torch.tensor([4, 2]))
        >>> dist.marginals.shape, dist.argmax.shape
        (torch.Size([2, 5, 5]), torch.Size([2, 5]))
        >>> heads, tree_scores = dist.kbest(3)  # [3, 2, 5], [3, 2]
    """

    def __init__(
        self,
        arc_scores: Tensor,
        lengths: Tensor,
        projective: bool = True,
        multiroot: bool = False,
        temperature: float = 1.0,
    ):
        super().__init__(arc_scores, lengths, temperature)
        if not isinstance(projective, bool) or not isinstance(multiroot, bool):
            raise ValueError(
                f"projective and multiroot must be bool, got {projective!r} and {multiroot!r}"
            )
        self.projective = projective
        self.multiroot = multiroot

    def _repr_options(self) -> str:
        return f", projective={self.projective}, multiroot={self.multiroot}"

    def _differentiable(self) -> bool:
        return torch.is_grad_enabled() and self.arc_scores.requires_grad

    # -- log-partition and marginals ---------------------------------------------------------

    @lazy_property
    def log_partition(self) -> Tensor:
        """``[batch]`` ``log Z`` of the tempered scores; differentiable (first order) when the
        scores require grad. Raises ``ValueError`` when a sentence has no tree left."""
        if not self.projective:  # _matrix_tree raises for a sentence without a tree
            if self._differentiable():
                return _MatrixTreeLogPartition.apply(
                    self.arc_scores, self.lengths, self.multiroot, self.temperature
                )
            return self._nonprojective[0].to(self.arc_scores.dtype)
        scores = self.tempered_scores
        if self._differentiable():
            log_partition = _EisnerLogPartition.apply(scores, self.lengths, self.multiroot)
        elif "_chart" in self.__dict__.get("_lazy_cache", {}):
            log_partition = self._chart.log_partition
        else:
            log_partition = self._inside(keep_weights=False).log_partition
        _raise_if_no_structure(
            log_partition.detach(), _finite_floor(scores.dtype, self.size) / 2, "tree"
        )
        return log_partition

    def _inside(self, keep_weights: bool) -> _EisnerChart:
        arcs, _ = _eisner_arcs(self.tempered_scores.detach(), self.lengths)
        return _EisnerChart(arcs, self.lengths, self.multiroot, keep_weights=keep_weights)

    @lazy_property
    def _nonprojective(self) -> tuple[Tensor, Tensor]:
        """Non-projective ``(log Z [batch] float64, marginals [batch, seq_len + 1, seq_len + 1]
        in the scores' dtype)``, no graph: one evaluation serves both properties (``marginals``
        alone skips the determinant)."""
        return _matrix_tree(
            self.arc_scores, self.lengths, self.multiroot, self.temperature, self.arc_scores.dtype
        )

    @lazy_property
    def _chart(self) -> _EisnerChart:
        """The projective inside chart with split weights (no graph)."""
        chart = self._inside(keep_weights=True)
        floor = _finite_floor(self.arc_scores.dtype, self.size) / 2
        _raise_if_no_structure(chart.log_partition, floor, "tree")
        return chart

    @lazy_property
    def marginals(self) -> Tensor:
        """``[batch, seq_len + 1, seq_len + 1]`` ``P(head_d = h)``; column 0, the diagonal and
        padding are 0. Differentiable (with ``create_graph``) when the scores require grad."""
        if self._differentiable():
            if self.projective:
                floor = _finite_floor(self.arc_scores.dtype, self.size) / 2

                def log_partition_fn(scores: Tensor) -> Tensor:
                    arcs, _ = _eisner_arcs(scores, self.lengths)
                    chart = _EisnerChart(arcs, self.lengths, self.multiroot, differentiable=True)
                    return chart.log_partition

            else:
                floor = -1e29

                def log_partition_fn(scores: Tensor) -> Tensor:
                    return _matrix_tree_differentiable(scores, self.lengths, self.multiroot)

            log_z, (marginals,) = autograd_marginals(log_partition_fn, [self.tempered_scores])
            _raise_if_no_structure(log_z.detach(), floor, "tree")
            return marginals.masked_fill(~self.arc_mask, 0.0)
        if self.projective:
            # The outside pass leaves zeros off the allowed arcs; the fill makes it contiguous.
            return self._chart.outside().permute(2, 0, 1).masked_fill(~self.arc_mask, 0.0)
        if "_nonprojective" in self.__dict__.get("_lazy_cache", {}):
            return self._nonprojective[1]
        return _matrix_tree(  # weights are exactly 0 off the allowed arcs
            self.arc_scores,
            self.lengths,
            self.multiroot,
            self.temperature,
            self.arc_scores.dtype,
            with_log_partition=False,
        )[1]

    # -- decoding ----------------------------------------------------------------------------

    @lazy_property
    def argmax(self) -> Tensor:
        """``[batch, seq_len + 1]`` int64 heads of the best tree, ``-1`` at 0 and padding."""
        return self.kbest(1)[0][0]

    def kbest(self, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best trees, best first.

        Projective: k-best Eisner (a k-max semiring over the chart, vectorized over the batch).
        Non-projective: Lawler's partitioning with constrained Chu-Liu-Edmonds per sentence
        (``O(k n)`` MST calls per sentence, a Python loop over the batch: decoding only).

        Returns:
            ``(values [k, batch, seq_len + 1] int64, scores [k, batch])`` (tempered scores); rows
            past the number of trees of a sentence hold ``-1`` and ``-inf``.
        """
        k = _check_k(k)
        scores = self.tempered_scores.detach()
        if self.projective:
            arcs, floor = _eisner_arcs(scores, self.lengths)
            heads, chart_scores = _eisner_kbest(arcs, self.lengths, self.multiroot, k)
            exists = chart_scores > floor
        else:
            heads = torch.full(
                (k, self.batch_size, self.size), -1, dtype=torch.long, device=scores.device
            )
            exists = torch.zeros(k, self.batch_size, dtype=torch.bool, device=scores.device)
            numpy_scores = scores.double().cpu().numpy()
            for b, length in enumerate(self.lengths.tolist()):
                trees = _kbest_trees(numpy_scores[b, : length + 1, : length + 1], self.multiroot, k)
                for rank, tree in enumerate(trees):
                    heads[rank, b, : length + 1] = torch.from_numpy(tree)
                    exists[rank, b] = True
        if not exists[0].all():
            index = torch.nonzero(~exists[0]).flatten().tolist()
            raise ValueError(
                f"sentences {index} have no tree left (every one uses a -inf arc score)"
            )
        words = _word_mask(self.lengths, self.size)
        valid = exists.unsqueeze(-1) & words
        heads = torch.where(valid, heads, torch.full_like(heads, -1))
        tree_scores = self._score_unchecked(heads)
        tree_scores = torch.where(exists, tree_scores, torch.full_like(tree_scores, float("-inf")))
        return heads, tree_scores

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, batch, seq_len + 1]`` int64 exact samples.

        Projective: one split drawn per item, top-down through the inside chart (all samples at
        once). Non-projective: sequential conditioning, for ``d = 1..n`` draw ``head_d`` from the
        marginals given the heads drawn so far (``n`` matrix-tree evaluations on a batch of
        ``n * batch``).
        """
        n = _check_k(n, "n")
        words = _word_mask(self.lengths, self.size)
        if self.projective:
            heads = self._chart.sample(n, generator)
            return torch.where(words, heads, torch.full_like(heads, -1))
        _ = self.log_partition
        scores = self.tempered_scores.detach().double().repeat(n, 1, 1)
        lengths = self.lengths.repeat(n)
        heads = torch.full_like(scores[:, 0], -1, dtype=torch.long)
        positions = torch.arange(self.size, device=scores.device)
        for dep in range(1, self.size):
            real = lengths >= dep
            if not real.any():
                break
            _, marginals = _matrix_tree(scores, lengths, self.multiroot, with_log_partition=False)
            column = marginals[:, :, dep].clamp(min=0)
            column = torch.where(real.view(-1, 1), column, torch.ones_like(column))
            drawn = torch.multinomial(column, 1, generator=generator).squeeze(-1)
            heads[:, dep] = torch.where(real, drawn, -1)
            keep = (positions.view(1, -1) == drawn.view(-1, 1)) | ~real.view(-1, 1)
            scores[:, :, dep] = scores[:, :, dep].masked_fill(~keep, float("-inf"))
        heads = heads.view(n, self.batch_size, self.size)
        return torch.where(words, heads, torch.full_like(heads, -1))

    # -- values ------------------------------------------------------------------------------

    def _check_value(self, heads: Tensor) -> None:
        super()._check_value(heads)
        ok = is_tree(
            heads.long(), self.lengths, projective=self.projective, multiroot=self.multiroot
        )
        if not ok.all():
            kind = ("projective " if self.projective else "") + (
                "tree" if self.multiroot else "single-root tree"
            )
            raise ValueError(f"heads must be a {kind} of every sentence (a cycle or wrong roots)")

    def tempered(self, temperature: float) -> DependencyCRF:
        """The same scores at temperature ``self.temperature * temperature``."""
        return DependencyCRF(
            self.arc_scores,
            self.lengths,
            projective=self.projective,
            multiroot=self.multiroot,
            temperature=self.temperature * temperature,
        )

    def _single_sentence(self) -> tuple[DependencyCRF, list[Tensor]]:
        scores = self.arc_scores.detach().new_zeros(1, self.size, self.size)
        one = torch.ones(1, dtype=torch.long, device=scores.device)
        stand_in = DependencyCRF(scores, one, self.projective, self.multiroot, self.temperature)
        return stand_in, [self.arc_scores]
