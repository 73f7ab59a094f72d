"""Second-order dependency trees: exact projective sibling CRF and mean-field arc marginals.

``Dependency2oCRF`` is the projective tree CRF with adjacent-sibling factors (Eisner 1996;
McDonald & Pereira 2006):

    Score(y) = ( sum_{(h, d) in y} arc[h, d] + sum_{(h, d, s) adjacent in y} sib[h, d, s] ) / T

where ``(h, d, s)`` ranges over pairs of dependents ``d``, ``s`` of the same head ``h`` on the
same side of it with no other dependent of ``h`` between them and ``s`` the one closer to ``h``.
The chart is the second-order Eisner algorithm with incomplete, sibling and complete spans,
vectorized over the batch and over all spans of one width (strided views), so the only Python loop
runs over widths.

``mean_field_arcs`` is the approximate second-order teacher of Wang & Tu (2020): mean-field
variational inference over one categorical head variable per word (no tree constraint) with sibling
and grandparent factors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from structkd.structures.base import (
    NumericalError,
    StructDistribution,
    autograd_marginals,
    check_lengths,
    check_potential_values,
    check_potentials,
    check_temperature,
    lazy_property,
    upcast,
)

__all__ = ["Dependency2oCRF", "mean_field_arcs"]

NEG_INF = float("-inf")

# Kinds of chart items, in the order the top-down pass visits them within one width.
_COMPLETE_RIGHT = "complete_right"  # C[i, i+w]: head i, its right half-subtree reaching i+w
_COMPLETE_LEFT = "complete_left"  # C[i+w, i]: head i+w, its left half-subtree reaching i
_INCOMPLETE_RIGHT = "incomplete_right"  # I[i, i+w]: arc i -> i+w
_INCOMPLETE_LEFT = "incomplete_left"  # I[i+w, i]: arc i+w -> i
_SIBLING = "sibling"  # S[i, i+w]: i and i+w adjacent dependents of one head outside the span
_KINDS = (_COMPLETE_RIGHT, _COMPLETE_LEFT, _INCOMPLETE_RIGHT, _INCOMPLETE_LEFT, _SIBLING)


# -------------------------------------------------------------------------------------------------
# small tensor helpers


class _LogSumExp(torch.autograd.Function):
    """``logsumexp`` over the last dim whose gradient is 0, not NaN, on rows that are all ``-inf``.

    ``torch.logsumexp`` back-propagates ``exp(x - lse(x))``, which is ``exp(-inf + inf) = NaN`` on
    an all ``-inf`` row (a chart item with no derivation, e.g. under ``-inf`` potentials); the
    gradient there is 0. The backward is written with differentiable ops, so double backward works.
    """

    @staticmethod
    def forward(ctx, scores: Tensor) -> Tensor:  # type: ignore[override]
        total = torch.logsumexp(scores, dim=-1)
        ctx.save_for_backward(scores, total)
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor) -> Tensor:  # type: ignore[override]
        scores, total = ctx.saved_tensors
        shift = total.masked_fill(torch.isneginf(total), 0.0).unsqueeze(-1)
        return grad_total.unsqueeze(-1) * torch.exp(scores - shift)


def _logsumexp(scores: Tensor) -> Tensor:
    return _LogSumExp.apply(scores)


def _stripe(
    chart: Tensor, n_spans: int, width: int, start: tuple[int, int], step: tuple[int, int]
) -> Tensor:
    """``[batch, n_spans, width, *rest]`` view of a contiguous chart ``[batch, L, L, *rest]``.

    Element ``[b, i, k]`` is ``chart[b, start[0] + i + k * step[0], start[1] + i + k * step[1]]``:
    ``i`` walks along a diagonal (one span per start position), ``k`` along the split points.
    """
    cell = chart.stride(2)
    row = chart.stride(1)
    return chart.as_strided(
        (chart.shape[0], n_spans, width, *chart.shape[3:]),
        (chart.stride(0), row + cell, step[0] * row + step[1] * cell, *chart.stride()[3:]),
        chart.storage_offset() + start[0] * row + start[1] * cell,
    )


class _SpanIndex(NamedTuple):
    """Flat indices of the potentials that the chart reads at each width, for a padded size ``L``.

    Arcs: for each width ``w`` the right arcs ``i -> i+w`` then the left arcs ``i+w -> i`` (``i`` in
    ``0..L-1-w``), as flat indices ``head * L + dependent``. Siblings: for each width ``w >= 2`` the
    right triples ``(i, i+w, i+k)`` then the left triples ``(i+w, i, i+k)`` (``k`` in ``1..w-1``),
    as flat indices ``(head * L + dependent) * L + sibling``.
    """

    arc_flat: Tensor  # [n_arcs]
    arc_last: Tensor  # [n_arcs] the larger position of the arc
    arc_dependent: Tensor  # [n_arcs]
    arc_sizes: list[int]  # per width 1..L-1: 2 * n
    sib_flat: Tensor  # [n_sibs]
    sib_last: Tensor  # [n_sibs]
    sib_head: Tensor  # [n_sibs]
    sib_dependent: Tensor  # [n_sibs]
    sib_sizes: list[int]  # per width 2..L-1: 2 * n * (w - 1)


@functools.lru_cache(maxsize=32)
def _span_index(size: int, device: torch.device) -> _SpanIndex:
    # Built outside inference mode whatever the caller's mode: the index is cached and shared, and
    # an inference tensor could never be saved for backward by a later autograd pass (the exact
    # marginals are gradients of log Z), e.g. a teacher scored under inference_mode and then
    # asked for targets in the same process.
    with torch.inference_mode(False):
        return _build_span_index(size, device)


def _build_span_index(size: int, device: torch.device) -> _SpanIndex:
    arc_flat, arc_last, arc_dep, arc_sizes = [], [], [], []
    sib_flat, sib_last, sib_head, sib_dep, sib_sizes = [], [], [], [], []
    for width in range(1, size):
        starts = torch.arange(size - width)
        ends = starts + width
        arc_flat += [starts * size + ends, ends * size + starts]
        arc_last += [ends, ends]
        arc_dep += [ends, starts]
        arc_sizes.append(2 * starts.numel())
        if width < 2:
            continue
        offsets = torch.arange(1, width)
        between = (starts.unsqueeze(1) + offsets).reshape(-1)  # [n * (w - 1)]
        left_end = starts.repeat_interleave(width - 1)
        right_end = ends.repeat_interleave(width - 1)
        sib_flat += [
            (left_end * size + right_end) * size + between,
            (right_end * size + left_end) * size + between,
        ]
        sib_last += [right_end, right_end]
        sib_head += [left_end, right_end]
        sib_dep += [right_end, left_end]
        sib_sizes.append(2 * between.numel())

    def cat(parts: list[Tensor]) -> Tensor:
        if not parts:
            return torch.zeros(0, dtype=torch.long, device=device)
        return torch.cat(parts).to(device)

    return _SpanIndex(
        cat(arc_flat), cat(arc_last), cat(arc_dep), arc_sizes,
        cat(sib_flat), cat(sib_last), cat(sib_head), cat(sib_dep), sib_sizes,
    )  # fmt: skip


def _gather_potentials(
    arc_scores: Tensor, sibling_scores: Tensor, lengths: Tensor, multiroot: bool, temperature: float
) -> tuple[list[Tensor], list[Tensor]]:
    """Read the potentials the chart uses, tempered and masked, split by width.

    Returns ``arcs[w-1]`` ``[batch, 2, n]`` (``[:, 0]`` right arcs ``i -> i+w``, ``[:, 1]`` left
    arcs ``i+w -> i``) and ``sibs[w-2]`` ``[batch, 2, n, w-1]`` (the sibling ``i+k`` of the same
    arcs), with ``-inf`` on arcs into the root or past the sentence, and on root siblings when
    ``multiroot`` is False (so the root keeps a single dependent).
    """
    batch, size = arc_scores.shape[:2]
    index = _span_index(size, arc_scores.device)
    last = lengths.unsqueeze(1)
    arcs = arc_scores.reshape(batch, size * size).index_select(1, index.arc_flat)
    arc_ok = (index.arc_last <= last) & (index.arc_dependent >= 1)
    arcs = torch.where(arc_ok, arcs, NEG_INF)
    sibs = sibling_scores.reshape(batch, size**3).index_select(1, index.sib_flat)
    sib_ok = (index.sib_last <= last) & (index.sib_dependent >= 1)
    if not multiroot:
        sib_ok = sib_ok & (index.sib_head >= 1)
    sibs = torch.where(sib_ok, sibs, NEG_INF)
    if temperature != 1.0:
        arcs = arcs / temperature
        sibs = sibs / temperature
    if torch.isposinf(arcs).any():
        raise ValueError("arc_scores must not be +inf")
    if torch.isposinf(sibs).any():
        raise ValueError("sibling_scores must not be +inf (at adjacent-sibling entries)")
    arc_list = [part.view(batch, 2, -1) for part in torch.split(arcs, index.arc_sizes, dim=1)]
    sib_list = [
        part.view(batch, 2, size - width, width - 1)
        for width, part in zip(
            range(2, size), torch.split(sibs, index.sib_sizes, dim=1), strict=True
        )
    ]
    return arc_list, sib_list


# -------------------------------------------------------------------------------------------------
# the charts


def _log_inside(
    arcs: list[Tensor],
    sibs: list[Tensor],
    lengths: Tensor,
    candidates: dict[str, list[Tensor]] | None = None,
) -> Tensor:
    """Second-order Eisner inside pass in log space; returns ``log Z`` ``[batch]``.

    Chart items (``i < j``, ``w = j - i``), each a logsumexp over its split points:

        I[i, j] = arc(i, j) + lse( C[j, i+1] ;  I[i, r] + S[r, j] + sib(i, j, r), i < r < j )
        I[j, i] = arc(j, i) + lse( C[i, j-1] ;  I[j, r] + S[i, r] + sib(j, i, r), i < r < j )
        S[i, j] = lse_{i <= m < j} C[i, m] + C[j, m+1]
        C[i, j] = lse_{i < m <= j} I[i, m] + C[m, j]
        C[j, i] = lse_{i <= m < j} I[j, m] + C[m, i]

    ``log Z = C[0, len]``. When ``candidates`` is a dict, the terms of every logsumexp are stored
    in it per kind and width (``[batch, n, w]``, slot 0 = first dependent / first split), for
    sampling.
    """
    batch = lengths.shape[0]
    size = len(arcs) + 1
    like = arcs[0]
    incomplete = like.new_full((batch, size, size), NEG_INF)
    sibling = like.new_full((batch, size, size), NEG_INF)  # S[i, j] = S[j, i]
    complete = like.new_full((batch, size, size), NEG_INF)
    complete.diagonal(0, 1, 2).fill_(0.0)
    # complete_t[j, i] = complete[i, j]: every stripe below walks along a row (never down a column),
    # so its autograd backward is a plain strided copy, not the slow overlapping-view path.
    complete_t = complete.clone()
    for width in range(1, size):
        n = size - width
        arc = arcs[width - 1]
        # first dependent of its head on that side: C[i+w, i+1] (right), C[i, i+w-1] (left)
        first_right = complete.diagonal(1 - width, 1, 2)[:, 1 : n + 1].unsqueeze(-1)
        first_left = complete.diagonal(width - 1, 1, 2)[:, :n].unsqueeze(-1)
        if width > 1:
            sib = sibs[width - 2]
            inner = width - 1
            # I[i, r] + S[r, i+w] + sib(i, i+w, r) and I[i+w, r] + S[i, r] + sib(i+w, i, r)
            later_right = (
                _stripe(incomplete, n, inner, (0, 1), (0, 1))
                + _stripe(sibling, n, inner, (width, 1), (0, 1))
                + sib[:, 0]
            )
            later_left = (
                _stripe(incomplete, n, inner, (width, 1), (0, 1))
                + _stripe(sibling, n, inner, (0, 1), (0, 1))
                + sib[:, 1]
            )
            terms_right = torch.cat([first_right, later_right], dim=-1)
            terms_left = torch.cat([first_left, later_left], dim=-1)
        else:
            terms_right, terms_left = first_right, first_left
        incomplete.diagonal(width, 1, 2).copy_(_logsumexp(terms_right) + arc[:, 0])
        incomplete.diagonal(-width, 1, 2).copy_(_logsumexp(terms_left) + arc[:, 1])
        # C[i, m] + C[i+w, m+1]
        terms_sibling = _stripe(complete, n, width, (0, 0), (0, 1)) + _stripe(
            complete, n, width, (width, 1), (0, 1)
        )
        sibling_value = _logsumexp(terms_sibling)
        sibling.diagonal(width, 1, 2).copy_(sibling_value)
        sibling.diagonal(-width, 1, 2).copy_(sibling_value)
        # I[i, m] + C[m, i+w] and I[i+w, m] + C[m, i]
        terms_complete_right = _stripe(incomplete, n, width, (0, 1), (0, 1)) + _stripe(
            complete_t, n, width, (width, 1), (0, 1)
        )
        terms_complete_left = _stripe(incomplete, n, width, (width, 0), (0, 1)) + _stripe(
            complete_t, n, width, (0, 0), (0, 1)
        )
        complete_right = _logsumexp(terms_complete_right)
        complete_left = _logsumexp(terms_complete_left)
        complete.diagonal(width, 1, 2).copy_(complete_right)
        complete.diagonal(-width, 1, 2).copy_(complete_left)
        complete_t.diagonal(-width, 1, 2).copy_(complete_right)
        complete_t.diagonal(width, 1, 2).copy_(complete_left)
        if candidates is not None:
            candidates[_INCOMPLETE_RIGHT].append(terms_right)
            candidates[_INCOMPLETE_LEFT].append(terms_left)
            candidates[_SIBLING].append(terms_sibling)
            candidates[_COMPLETE_RIGHT].append(terms_complete_right)
            candidates[_COMPLETE_LEFT].append(terms_complete_left)
    return complete[torch.arange(batch, device=lengths.device), 0, lengths]


def _kmax_inside(
    arcs: list[Tensor], sibs: list[Tensor], lengths: Tensor, k: int
) -> tuple[Tensor, dict[str, list[Tensor]]]:
    """The same chart in the k-max semiring: each item keeps its ``k`` best derivations.

    Every item's candidates are (split slot, rank of the first child, rank of the second child); the
    top ``k`` of their sums are kept with a flat backpointer ``(slot * k + rank1) * k + rank2``. The
    derivation of a projective tree in this chart is unique, so the ``k`` best derivations of
    ``C[0, len]`` are the ``k`` best trees. Returns the scores ``[batch, k]`` (best first, ``-inf``
    where a sentence has fewer trees) and the backpointers per kind and width (``[batch, n, k]``).
    """
    batch = lengths.shape[0]
    size = len(arcs) + 1
    like = arcs[0]
    incomplete = like.new_full((batch, size, size, k), NEG_INF)
    sibling = like.new_full((batch, size, size, k), NEG_INF)
    complete = like.new_full((batch, size, size, k), NEG_INF)
    complete.diagonal(0, 1, 2)[:, 0].fill_(0.0)
    pointers: dict[str, list[Tensor]] = {kind: [] for kind in _KINDS}

    def pair(first: Tensor, second: Tensor) -> Tensor:
        """``[batch, n, slots, k]`` twice -> ``[batch, n, slots, k, k]`` sums over rank pairs."""
        return first.unsqueeze(-1) + second.unsqueeze(-2)

    def best(candidates: Tensor) -> tuple[Tensor, Tensor]:
        """``[batch, n, slots, k, k]`` -> top-``k`` values and pointers, each ``[batch, n, k]``."""
        return candidates.flatten(2).topk(k, dim=-1)

    def only_rank0(child: Tensor) -> Tensor:
        """``[batch, n, k]`` ranks of a second child whose first child is the trivial C[h, h]."""
        terms = child.new_full((*child.shape[:2], 1, k, k), NEG_INF)
        terms[:, :, 0, 0, :] = child
        return terms

    for width in range(1, size):
        n = size - width
        arc = arcs[width - 1]
        first_right = only_rank0(complete.diagonal(1 - width, 1, 2)[..., 1 : n + 1].transpose(1, 2))
        first_left = only_rank0(complete.diagonal(width - 1, 1, 2)[..., :n].transpose(1, 2))
        if width > 1:
            sib = sibs[width - 2].unsqueeze(-1).unsqueeze(-1)
            inner = width - 1
            later_right = (
                pair(
                    _stripe(incomplete, n, inner, (0, 1), (0, 1)),
                    _stripe(sibling, n, inner, (1, width), (1, 0)),
                )
                + sib[:, 0]
            )
            later_left = (
                pair(
                    _stripe(incomplete, n, inner, (width, 1), (0, 1)),
                    _stripe(sibling, n, inner, (0, 1), (0, 1)),
                )
                + sib[:, 1]
            )
            first_right = torch.cat([first_right, later_right], dim=2)
            first_left = torch.cat([first_left, later_left], dim=2)
        for kind, terms, offset, direction in (
            (_INCOMPLETE_RIGHT, first_right, width, 0),
            (_INCOMPLETE_LEFT, first_left, -width, 1),
        ):
            values, pointer = best(terms)
            incomplete.diagonal(offset, 1, 2).copy_(
                (values + arc[:, direction].unsqueeze(-1)).transpose(1, 2)
            )
            pointers[kind].append(pointer)
        values, pointer = best(
            pair(
                _stripe(complete, n, width, (0, 0), (0, 1)),
                _stripe(complete, n, width, (width, 1), (0, 1)),
            )
        )
        sibling.diagonal(width, 1, 2).copy_(values.transpose(1, 2))
        pointers[_SIBLING].append(pointer)
        right = best(
            pair(
                _stripe(incomplete, n, width, (0, 1), (0, 1)),
                _stripe(complete, n, width, (1, width), (1, 0)),
            )
        )
        left = best(
            pair(
                _stripe(incomplete, n, width, (width, 0), (0, 1)),
                _stripe(complete, n, width, (0, 0), (1, 0)),
            )
        )
        complete.diagonal(width, 1, 2).copy_(right[0].transpose(1, 2))
        complete.diagonal(-width, 1, 2).copy_(left[0].transpose(1, 2))
        pointers[_COMPLETE_RIGHT].append(right[1])
        pointers[_COMPLETE_LEFT].append(left[1])
    scores = complete[torch.arange(batch, device=lengths.device), 0, lengths]
    return scores, pointers


_MARKS_PER_CHUNK = 2**21

# A decision rule for the top-down pass: (kind, width, batch index, span start, rank of the item)
# -> (slot, rank of the first child, rank of the second child), all 1-D tensors of one length.
_Decide = Callable[[str, int, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def _top_down(decide: _Decide, root_ranks: Tensor, lengths: Tensor, size: int) -> Tensor:
    """Read trees off the chart top-down, batched over queries, sentences and spans of one width.

    ``root_ranks`` ``[queries, batch]`` is the rank of ``C[0, len]`` each query starts from. Items
    of width ``w`` are visited after all wider items (their only parents), complete before
    incomplete before sibling items (a complete item's child may be an incomplete item of the same
    width).
    Returns heads ``[queries, batch, size]`` (``-1`` at the root and at padding). Queries are read
    in chunks so that the marks take at most ``_MARKS_PER_CHUNK`` cells per chart.
    """
    queries, batch = root_ranks.shape
    chunk = max(1, _MARKS_PER_CHUNK // (batch * size * size))
    if queries > chunk:
        parts = [_top_down(decide, part, lengths, size) for part in root_ranks.split(chunk)]
        return torch.cat(parts)
    device = lengths.device
    shape = (queries, batch, size, size)
    marks = {
        "complete": torch.full(shape, -1, dtype=torch.long, device=device),
        "incomplete": torch.full(shape, -1, dtype=torch.long, device=device),
        "sibling": torch.full(shape, -1, dtype=torch.long, device=device),
    }
    heads = torch.full((queries, batch, size), -1, dtype=torch.long, device=device)
    query_index = torch.arange(queries, device=device).unsqueeze(1)
    batch_index = torch.arange(batch, device=device).unsqueeze(0)
    marks["complete"][query_index, batch_index, 0, lengths.unsqueeze(0)] = root_ranks

    def visit(chart: str, offset: int, kind: str, width: int):
        """Selected items of one kind and width -> (query, batch, start, slot, rank1, rank2)."""
        n = size - width
        ranks = marks[chart].diagonal(offset, 2, 3)[..., :n]
        query, sentence, start = (ranks >= 0).nonzero(as_tuple=True)
        slot, rank1, rank2 = decide(kind, width, sentence, start, ranks[query, sentence, start])
        return query, sentence, start, slot, rank1, rank2

    complete, incomplete, sibling = marks["complete"], marks["incomplete"], marks["sibling"]
    for width in range(size - 1, 0, -1):
        q, b, i, slot, r1, r2 = visit("complete", width, _COMPLETE_RIGHT, width)
        split = i + 1 + slot  # C[i, i+w] = I[i, m] + C[m, i+w]
        incomplete[q, b, i, split] = r1
        complete[q, b, split, i + width] = r2
        q, b, i, slot, r1, r2 = visit("complete", -width, _COMPLETE_LEFT, width)
        split = i + slot  # C[i+w, i] = I[i+w, m] + C[m, i]
        incomplete[q, b, i + width, split] = r1
        complete[q, b, split, i] = r2
        q, b, i, slot, r1, r2 = visit("incomplete", width, _INCOMPLETE_RIGHT, width)
        heads[q, b, i + width] = i
        first = slot == 0  # I[i, i+w] from C[i+w, i+1], or I[i, r] + S[r, i+w] with r = i + slot
        complete[q[first], b[first], i[first] + width, i[first] + 1] = r2[first]
        later = ~first
        q, b, i, slot, r1, r2 = q[later], b[later], i[later], slot[later], r1[later], r2[later]
        incomplete[q, b, i, i + slot] = r1
        sibling[q, b, i + slot, i + width] = r2
        q, b, i, slot, r1, r2 = visit("incomplete", -width, _INCOMPLETE_LEFT, width)
        heads[q, b, i] = i + width
        first = slot == 0  # I[i+w, i] from C[i, i+w-1], or I[i+w, r] + S[i, r] with r = i + slot
        complete[q[first], b[first], i[first], i[first] + width - 1] = r2[first]
        later = ~first
        q, b, i, slot, r1, r2 = q[later], b[later], i[later], slot[later], r1[later], r2[later]
        incomplete[q, b, i + width, i + slot] = r1
        sibling[q, b, i, i + slot] = r2
        q, b, i, slot, r1, r2 = visit("sibling", width, _SIBLING, width)
        split = i + slot  # S[i, i+w] = C[i, m] + C[i+w, m+1]
        complete[q, b, i, split] = r1
        complete[q, b, i + width, split + 1] = r2
    heads[..., 0] = -1
    return heads


# -------------------------------------------------------------------------------------------------
# head vectors: validation and the sibling of each dependent


def _adjacent_siblings(heads: Tensor) -> Tensor:
    """``[..., batch, L]`` heads -> the adjacent inner sibling of each dependent, ``-1`` if none.

    For dependent ``d`` of head ``h`` the sibling is the dependent of ``h`` strictly between ``h``
    and ``d`` that is closest to ``d`` (the largest such position when ``d > h``, the smallest when
    ``d < h``).
    """
    size = heads.shape[-1]
    position = torch.arange(size, device=heads.device)
    head = heads.unsqueeze(-1)  # [..., d, 1]
    dependent = position.unsqueeze(-1)  # [d, 1]
    other = position  # [d']
    same_head = (heads.unsqueeze(-2) == head) & (head >= 0) & (other != dependent)
    between = (other - head) * (other - dependent) < 0
    candidate = same_head & between
    right = torch.where(candidate, other, -1).amax(-1)
    left = torch.where(candidate, other, size).amin(-1)
    left = torch.where(left == size, -1, left)
    return torch.where(dependent.squeeze(-1) > heads, right, left).masked_fill(heads < 0, -1)


def _check_heads(heads: Tensor, lengths: Tensor, size: int, multiroot: bool) -> Tensor:
    """Validate head vectors ``[..., batch, size]`` as projective trees; returns them as int64."""
    if not isinstance(heads, Tensor):
        raise TypeError(f"heads must be a torch.Tensor, got {type(heads).__name__}")
    if heads.dtype.is_floating_point or heads.dtype == torch.bool or heads.is_complex():
        raise ValueError(f"heads must be an integer tensor, got {heads.dtype}")
    heads = heads.long()
    batch = lengths.shape[0]
    if heads.dim() < 2 or heads.shape[-2] != batch:
        raise ValueError(
            f"heads must have shape [..., batch={batch}, N+1], got {list(heads.shape)}"
        )
    if heads.shape[-1] != size:
        raise ValueError(f"heads must have N+1={size} positions, got {heads.shape[-1]}")
    position = torch.arange(size, device=heads.device)
    real = (position >= 1) & (position <= lengths.unsqueeze(-1))  # [batch, L]
    if (heads[..., 0] != -1).any():
        raise ValueError("heads[..., 0] (the root) must be -1")
    if (heads.masked_fill(real, -1) != -1).any():
        raise ValueError("heads must be -1 at padding positions (beyond each length)")
    limit = lengths.unsqueeze(-1)
    if ((heads < 0) & real).any() or (heads > limit).any():
        raise ValueError("heads must be in 0..length at every word")
    if ((heads == position) & real).any():
        raise ValueError("heads must not contain self-loops")
    parent = heads.clamp_min(0)  # the root and padding point to 0
    for _ in range(max(1, (size - 1).bit_length())):
        parent = parent.gather(-1, parent)
    if (parent != 0).any():
        raise ValueError("heads must form a tree (found a cycle)")
    low = torch.minimum(heads, position).masked_fill(~real, -1)
    high = torch.maximum(heads, position).masked_fill(~real, -1)
    low_a, high_a = low.unsqueeze(-1), high.unsqueeze(-1)
    low_b, high_b = low.unsqueeze(-2), high.unsqueeze(-2)
    crossing = (low_a < low_b) & (low_b < high_a) & (high_a < high_b) & (low_a >= 0) & (low_b >= 0)
    if crossing.any():
        raise ValueError("heads must form a projective tree (found crossing arcs)")
    if not multiroot and ((heads == 0).sum(-1) != 1).any():
        raise ValueError("heads must attach exactly one word to the root (multiroot=False)")
    return heads


# -------------------------------------------------------------------------------------------------
# the distribution


def _sibling_entries(inside: Tensor, multiroot: bool) -> Tensor:
    """``[batch, N+1, N+1, N+1]`` bool: the ``[head, dependent, sibling]`` entries that can be
    read, the sibling strictly between the head and the dependent, all inside the sentence
    (``inside`` ``[batch, N+1]``); with a single root, no entry of head 0."""
    size = inside.shape[-1]
    position = torch.arange(size, device=inside.device)
    head, dep, sib = position.view(-1, 1, 1), position.view(1, -1, 1), position.view(1, 1, -1)
    between = ((head < sib) & (sib < dep)) | ((dep < sib) & (sib < head))
    if not multiroot:
        between = between & (head > 0)
    return (
        between
        & inside.view(-1, size, 1, 1)
        & inside.view(-1, 1, size, 1)
        & inside.view(-1, 1, 1, size)
    )


class Dependency2oCRF(StructDistribution):
    """Projective dependency trees with adjacent-sibling factors (second-order Eisner).

    ``P(y) ∝ exp((sum_{(h,d) in y} arc[h,d] + sum_{(h,d,s) in y} sib[h,d,s]) / T)`` over
    projective trees of words ``1..len`` under the root ``0``; ``(h, d, s)`` ranges over adjacent
    dependents ``d``, ``s`` of ``h`` on one side, ``s`` between ``h`` and ``d``. The first
    (innermost) dependent on each side gets no sibling factor, and other entries of
    ``sibling_scores`` are ignored.

    Root: with ``multiroot=False`` exactly one word attaches to the root, so no sibling factor has
    head 0 (``sibling_scores[:, 0]`` is ignored). With ``multiroot=True`` the root's dependents are
    ordinary right dependents of position 0 and adjacent pairs of them get ``sibling_scores[b, 0, d,
    s]``.

    Args:
        arc_scores: ``[batch, N+1, N+1]`` as ``[head, dependent]`` (0 = root). Column 0, the
            diagonal and padding are ignored.
        sibling_scores: ``[batch, N+1, N+1, N+1]`` as ``[head, dependent, sibling]``.
        lengths: ``[batch]`` int64 words per sentence (root excluded), ``1 <= len <= N``.
        multiroot: allow several words attached to the root.
        temperature: ``T > 0`` dividing every potential.

    Marginals: ``marginals[b, h, d] = P(head_d = h)`` ``[batch, N+1, N+1]`` and
    ``sibling_marginals[b, h, d, s] = P((h, d, s) adjacent)`` ``[batch, N+1, N+1, N+1]``, by
    autograd through the inside pass. Values are heads ``[batch, N+1]`` with ``heads[:, 0] = -1``
    and ``-1`` at padding.

    Examples:
        >>> arcs, sibs = torch.randn(2, 4, 4), torch.randn(2, 4, 4, 4)
        >>> dist = Dependency2oCRF(arcs, sibs, lengths=torch.tensor([3, 2]))
        >>> dist.marginals.sum(1)[:, 1:]  # every word has exactly one head
        tensor([[1.0000, 1.0000, 1.0000],
                [1.0000, 1.0000, 0.0000]])
        >>> dist.argmax.shape, dist.kbest(3)[0].shape, dist.sample(5).shape
        (torch.Size([2, 4]), torch.Size([3, 2, 4]), torch.Size([5, 2, 4]))
    """

    def __init__(
        self,
        arc_scores: Tensor,
        sibling_scores: Tensor,
        lengths: Tensor,
        multiroot: bool = False,
        temperature: float = 1.0,
    ):
        check_potentials("arc_scores", arc_scores, 3, "[batch, N+1, N+1]", nan=False)
        check_potentials("sibling_scores", sibling_scores, 4, "[batch, N+1, N+1, N+1]", nan=False)
        batch, size = arc_scores.shape[:2]
        if arc_scores.shape[2] != size or size < 2:
            raise ValueError(
                f"arc_scores must have shape [batch, N+1, N+1] with N >= 1, "
                f"got {list(arc_scores.shape)}"
            )
        if sibling_scores.shape != (batch, size, size, size):
            raise ValueError(
                f"sibling_scores must have shape [batch, N+1, N+1, N+1]="
                f"{[batch, size, size, size]}, got {list(sibling_scores.shape)}"
            )
        if sibling_scores.dtype != arc_scores.dtype:
            raise ValueError(
                f"sibling_scores dtype {sibling_scores.dtype} differs from arc_scores dtype "
                f"{arc_scores.dtype}"
            )
        if sibling_scores.device != arc_scores.device:
            raise ValueError("sibling_scores and arc_scores must be on the same device")
        if not isinstance(multiroot, bool):
            raise ValueError(f"multiroot must be a bool, got {multiroot!r}")
        super().__init__(lengths, temperature, batch, size - 1)
        self.lengths = self.lengths.to(arc_scores.device)
        inside = torch.arange(size, device=arc_scores.device) <= self.lengths.view(-1, 1)
        self.arc_scores = check_potential_values(
            "arc_scores",
            upcast(arc_scores),
            inside.view(batch, size, 1)
            & inside.view(batch, 1, size)
            & ~torch.eye(size, dtype=torch.bool, device=arc_scores.device)
            & (torch.arange(size, device=arc_scores.device) > 0),
            self.temperature,
        )
        self.sibling_scores = check_potential_values(
            "sibling_scores",
            upcast(sibling_scores),
            _sibling_entries(inside, multiroot),
            self.temperature,
        )
        self.multiroot = multiroot

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_size={self.batch_size}, max_len={self.max_len}, "
            f"multiroot={self.multiroot}, temperature={self.temperature})"
        )

    def tempered(self, temperature: float) -> Dependency2oCRF:
        """The same distribution with every potential further divided by ``temperature``."""
        temperature = check_temperature(temperature)
        return Dependency2oCRF(
            self.arc_scores,
            self.sibling_scores,
            self.lengths,
            multiroot=self.multiroot,
            temperature=self.temperature * temperature,
        )

    def _single_sentence(self) -> tuple[Dependency2oCRF, list[Tensor]]:
        size = self.max_len + 1
        arcs = self.arc_scores.detach().new_zeros(1, size, size)
        siblings = self.sibling_scores.detach().new_zeros(1, size, size, size)
        one = torch.ones(1, dtype=torch.long, device=arcs.device)
        stand_in = Dependency2oCRF(arcs, siblings, one, self.multiroot, self.temperature)
        return stand_in, [self.arc_scores, self.sibling_scores]

    # --- inference --------------------------------------------------------------------------------

    def _potentials(
        self, arc_scores: Tensor | None = None, sibling_scores: Tensor | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        return _gather_potentials(
            self.arc_scores if arc_scores is None else arc_scores,
            self.sibling_scores if sibling_scores is None else sibling_scores,
            self.lengths,
            self.multiroot,
            self.temperature,
        )

    def _log_partition_of(self, arc_scores: Tensor, sibling_scores: Tensor) -> Tensor:
        arcs, sibs = self._potentials(arc_scores, sibling_scores)
        return self._checked(_log_inside(arcs, sibs, self.lengths))

    @staticmethod
    def _checked(log_z: Tensor) -> Tensor:
        if torch.isnan(log_z).any():
            raise NumericalError("Dependency2oCRF log-partition is NaN")
        if torch.isposinf(log_z).any():
            raise NumericalError("Dependency2oCRF log-partition overflowed to +inf")
        if torch.isneginf(log_z).any():
            bad = torch.isneginf(log_z).nonzero().flatten().tolist()
            raise ValueError(
                f"sentences {bad} have no projective tree with a finite score (all -inf potentials)"
            )
        return log_z

    @lazy_property
    def log_partition(self) -> Tensor:
        """``[batch]`` log-partition of the tempered potentials."""
        return self._log_partition_of(self.arc_scores, self.sibling_scores)

    def _marginals_of(self, potentials: list[Tensor]) -> list[Tensor]:
        """``P(u)`` of ``[arc_scores]`` or ``[arc_scores, sibling_scores]``, by autograd."""

        def log_partition_fn(arc_scores: Tensor, sibling_scores: Tensor | None = None) -> Tensor:
            if sibling_scores is None:
                sibling_scores = self.sibling_scores
            return self._log_partition_of(arc_scores, sibling_scores)

        log_z, marginals = autograd_marginals(log_partition_fn, potentials)
        self.__dict__.setdefault("_lazy_cache", {}).setdefault("log_partition", log_z)
        if self.temperature != 1.0:  # d log Z / d raw potential = P(u) / T
            marginals = [marginal * self.temperature for marginal in marginals]
        if any(torch.isnan(marginal).any() for marginal in marginals):
            raise NumericalError("Dependency2oCRF marginals contain NaN")
        return marginals

    @lazy_property
    def _all_marginals(self) -> tuple[Tensor, Tensor]:
        arc_marginals, sibling_marginals = self._marginals_of(
            [self.arc_scores, self.sibling_scores]
        )
        return arc_marginals, sibling_marginals

    @lazy_property
    def marginals(self) -> Tensor:
        """``[batch, N+1, N+1]``: ``P(head_d = h)`` at ``[b, h, d]`` (0 at column 0 and padding)."""
        cache = self.__dict__.get("_lazy_cache", {})
        # backprop to the sibling scores only when needed: they are cached, or the arc marginals
        # must stay differentiable in sibling scores that require grad
        if "_all_marginals" in cache or (
            torch.is_grad_enabled() and self.sibling_scores.requires_grad
        ):
            return self._all_marginals[0]
        return self._marginals_of([self.arc_scores])[0]

    @property
    def sibling_marginals(self) -> Tensor:
        """``[batch, N+1, N+1, N+1]``: ``P(d, s adjacent dependents of h, s inner)``."""
        return self._all_marginals[1]

    def kbest(self, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best trees, best first: heads ``[k, batch, N+1]``, scores ``[k, batch]``.

        Exact: the k-max semiring over the second-order chart, whose derivations are in one-to-one
        correspondence with projective trees. Where a sentence has fewer than ``k`` trees the
        surplus rows hold ``-1`` heads and ``-inf`` scores.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        with torch.no_grad():
            arcs, sibs = self._potentials()
            scores, pointers = _kmax_inside(arcs, sibs, self.lengths, k)
            scores = scores.transpose(0, 1)  # [k, batch]
            if torch.isneginf(scores[0]).any():
                self._checked(scores[0])

            def decide(kind, width, sentence, start, rank):
                flat = pointers[kind][width - 1][sentence, start, rank]
                return flat // (k * k), flat // k % k, flat % k

            root_ranks = (
                torch.arange(k, device=scores.device).unsqueeze(1).expand(k, self.batch_size)
            )
            heads = _top_down(decide, root_ranks, self.lengths, self.max_len + 1)
            heads = heads.masked_fill(torch.isneginf(scores).unsqueeze(-1), -1)
        return heads, scores

    @lazy_property
    def argmax(self) -> Tensor:
        """``[batch, N+1]`` heads of the best tree (second-order Eisner Viterbi, backpointers)."""
        return self.kbest(1)[0][0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples, heads ``[n, batch, N+1]``.

        Forward filtering, backward sampling: one inside pass keeps the terms of every logsumexp;
        starting from ``C[0, len]``, each visited item picks its split with probability proportional
        to ``exp(term)`` (Gumbel-max), batched over samples, sentences and spans of one width.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        with torch.no_grad():
            arcs, sibs = self._potentials()
            candidates: dict[str, list[Tensor]] = {kind: [] for kind in _KINDS}
            self._checked(_log_inside(arcs, sibs, self.lengths, candidates))

            def decide(kind, width, sentence, start, rank):
                terms = candidates[kind][width - 1][sentence, start]  # [items, slots]
                uniform = torch.rand(
                    terms.shape, generator=generator, dtype=terms.dtype, device=terms.device
                )
                slot = (terms - torch.log(-torch.log(uniform))).argmax(-1)
                return slot, torch.zeros_like(slot), torch.zeros_like(slot)

            root_ranks = self.lengths.new_zeros(n, self.batch_size)
            return _top_down(decide, root_ranks, self.lengths, self.max_len + 1)

    # --- scores -----------------------------------------------------------------------------------

    def score(self, value: Tensor) -> Tensor:
        """Tempered score ``[..., batch]`` of projective trees ``value`` ``[..., batch, N+1]``.

        Raises ``ValueError`` when a head vector is not a projective tree of its sentence (or has
        several root dependents with ``multiroot=False``).
        """
        size = self.max_len + 1
        heads = _check_heads(value, self.lengths, size, self.multiroot)
        batch_index = torch.arange(self.batch_size, device=heads.device).unsqueeze(-1)
        position = torch.arange(size, device=heads.device)
        has_head = heads >= 0
        head = heads.clamp_min(0)
        arc = self.arc_scores[batch_index, head, position]
        total = torch.where(has_head, arc, 0.0).sum(-1)
        siblings = _adjacent_siblings(heads)
        has_sibling = siblings >= 0
        sib = self.sibling_scores[batch_index, head, position, siblings.clamp_min(0)]
        total = total + torch.where(has_sibling, sib, 0.0).sum(-1)
        return total / self.temperature

    def _relevant_arcs(self) -> Tensor:
        """``[batch, N+1, N+1]`` bool: ``h -> d`` with ``h, d <= len``, ``d >= 1``, ``h != d``."""
        position = torch.arange(self.max_len + 1, device=self.lengths.device)
        inside = position <= self.lengths.unsqueeze(-1)
        ok = inside.unsqueeze(-1) & (inside & (position >= 1)).unsqueeze(-2)
        return ok & (position.unsqueeze(-1) != position)

    def expected_score(
        self, marginals: Tensor | None = None, sibling_marginals: Tensor | None = None
    ) -> Tensor:
        """``[batch]`` ``sum_u mu(u) s(u)`` over arcs and adjacent-sibling triples (tempered).

        With no arguments ``mu`` is this distribution's marginals; otherwise both ``marginals``
        ``[batch, N+1, N+1]`` and ``sibling_marginals`` ``[batch, N+1, N+1, N+1]`` must be given
        (mass on entries that are not arcs or adjacent-sibling triples of this model is ignored).
        ``0 * -inf`` counts as 0; positive mass on a ``-inf`` potential gives ``-inf``.
        """
        if marginals is None and sibling_marginals is None:
            marginals, sibling_marginals = self._all_marginals
        elif marginals is None or sibling_marginals is None:
            raise ValueError(
                "expected_score needs both marginals and sibling_marginals, or neither"
            )
        size = self.max_len + 1
        batch = self.batch_size
        if marginals.shape != (batch, size, size):
            raise ValueError(
                f"marginals must have shape [batch, N+1, N+1]={[batch, size, size]}, "
                f"got {list(marginals.shape)}"
            )
        if sibling_marginals.shape != (batch, size, size, size):
            raise ValueError(
                f"sibling_marginals must have shape [batch, N+1, N+1, N+1]="
                f"{[batch, size, size, size]}, got {list(sibling_marginals.shape)}"
            )
        arc_terms = torch.where(marginals == 0, 0.0, marginals * self.arc_scores)
        arc_total = torch.where(self._relevant_arcs(), arc_terms, 0.0).sum((-1, -2))
        index = _span_index(size, self.arc_scores.device)
        sib_mass = sibling_marginals.reshape(batch, -1).index_select(1, index.sib_flat)
        sib_score = self.sibling_scores.reshape(batch, -1).index_select(1, index.sib_flat)
        sib_ok = (index.sib_last <= self.lengths.unsqueeze(-1)) & (index.sib_dependent >= 1)
        if not self.multiroot:
            sib_ok = sib_ok & (index.sib_head >= 1)
        sib_terms = torch.where(sib_mass == 0, 0.0, sib_mass * sib_score)
        sib_total = torch.where(sib_ok, sib_terms, 0.0).sum(-1)
        return (arc_total + sib_total) / self.temperature


# -------------------------------------------------------------------------------------------------
# mean-field variational inference (Wang & Tu 2020)


def mean_field_arcs(
    arc_scores: Tensor,
    sibling_scores: Tensor | None = None,
    grandparent_scores: Tensor | None = None,
    *,
    lengths: Tensor,
    iterations: int = 3,
    temperature: float = 1.0,
) -> Tensor:
    """Approximate ``P(head_d = h)`` ``[batch, N+1, N+1]`` by mean-field inference (Wang & Tu 2020).

    One categorical head variable ``Q_d`` per word ``d`` in ``1..len`` over ``h`` in ``0..len``,
    ``h != d`` (head selection: no tree constraint). ``Q`` starts as the softmax over heads of the
    arc scores; each of ``iterations`` updates sets, with every score divided by ``T``,

        Q_d(h) ∝ exp( s(h,d) + sum_{s != d} Q_s(h) sib(h,d,s)
                      + sum_{g != d} Q_h(g) grand(g,h,d) + sum_{c != h} Q_c(d) grand(h,d,c) )

    Args:
        arc_scores: ``[batch, N+1, N+1]`` as ``[head, dependent]`` (0 = root); ``-inf`` forbids
            an arc.
        sibling_scores: ``[batch, N+1, N+1, N+1]`` as ``[head, dependent, sibling]``: ``dependent``
            and ``sibling`` both attached to ``head`` (any two, either side). With symmetric scores
            (``sib[h,d,s] == sib[h,s,d]``) the update is exact mean field for the energy that counts
            each unordered pair once.
        grandparent_scores: ``[batch, N+1, N+1, N+1]`` as ``[grandparent, head, dependent]``: arcs
            ``g -> h`` and ``h -> d`` (two-cycles ``g == d`` excluded).
        lengths: ``[batch]`` words per sentence (root excluded).
        iterations: number of updates (0 returns the softmax of the arc scores).
        temperature: ``T > 0``.

    Returns ``Q`` as ``[b, h, d]``: each word's column sums to 1 over ``0..len``; column 0, the
    diagonal and padding are 0. Differentiable in all scores. Second-order scores must be finite at
    the entries used.
    """
    check_potentials("arc_scores", arc_scores, 3, "[batch, N+1, N+1]")
    batch, size = arc_scores.shape[:2]
    if arc_scores.shape[2] != size or size < 2:
        raise ValueError(
            "arc_scores must have shape [batch, N+1, N+1] with N >= 1, "
            f"got {list(arc_scores.shape)}"
        )
    lengths = check_lengths(lengths, batch, size - 1).to(arc_scores.device)
    temperature = check_temperature(temperature)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    position = torch.arange(size, device=arc_scores.device)
    inside = position <= lengths.unsqueeze(-1)  # [batch, L] root and words
    is_word = inside & (position >= 1)  # [batch, L] positions that take a head
    arc_ok = inside.unsqueeze(-1) & is_word.unsqueeze(-2) & (position.unsqueeze(-1) != position)
    arcs = arc_scores / temperature
    if torch.isposinf(arcs[arc_ok]).any():
        raise ValueError("arc_scores must not be +inf")
    if (~(arc_ok & ~torch.isneginf(arcs)).any(1) & is_word).any():
        raise ValueError("every word needs at least one head with a finite arc score")
    arcs = torch.where(arc_ok, arcs, NEG_INF)

    def normalize(logits: Tensor) -> Tensor:
        """Softmax over heads (dim 1) of the words' columns; other columns become 0."""
        logits = torch.where(is_word.unsqueeze(1), logits, 0.0)
        return torch.softmax(logits, dim=1) * is_word.unsqueeze(1)

    def second_order(name: str, scores: Tensor | None, ok: Tensor) -> Tensor | None:
        if scores is None:
            return None
        check_potentials(name, scores, 4, "[batch, N+1, N+1, N+1]")
        if scores.shape != (batch, size, size, size):
            raise ValueError(
                f"{name} must have shape [batch, N+1, N+1, N+1]={[batch, size, size, size]}, "
                f"got {list(scores.shape)}"
            )
        scores = torch.where(ok, scores / temperature, 0.0)
        if torch.isinf(scores).any():
            raise ValueError(f"{name} must be finite where used")
        return scores

    # sib[h, d, s]: arcs h -> d and h -> s, d != s
    sibs = second_order(
        "sibling_scores",
        sibling_scores,
        arc_ok.unsqueeze(-1) & arc_ok.unsqueeze(-2) & (position.view(-1, 1) != position),
    )
    # grand[g, h, d]: arcs g -> h and h -> d, g != d
    grands = second_order(
        "grandparent_scores",
        grandparent_scores,
        arc_ok.unsqueeze(-1) & arc_ok.unsqueeze(1) & (position.view(-1, 1, 1) != position),
    )
    posterior = normalize(arcs)
    for _ in range(iterations):
        logits = arcs
        if sibs is not None:
            logits = logits + torch.einsum("bhs,bhds->bhd", posterior, sibs)
        if grands is not None:
            logits = logits + torch.einsum("bgh,bghd->bhd", posterior, grands)
            logits = logits + torch.einsum("bdc,bhdc->bhd", posterior, grands)
        posterior = normalize(logits)
    return posterior
