"""Distribution over flat labeled span sets: the "NER as parsing" teacher (Yu et al. 2020).

A structure of a sentence of ``n`` tokens is a set of non-overlapping labeled spans ``i..j``
(inclusive, ``j - i < max_width``); every token outside a span is ``O``. With tempered potentials
``phi(i, j, r) = s(i, j, r) / T`` (relative to the span's tokens being ``O``, which score 0):
``Score(y) = sum_{(i, j, r) in y} phi(i, j, r)``. Forward ``A`` over prefixes, backward ``B`` over
suffixes (case 4 of docs/design.md)::

    A[0] = 0,  A[m+1] = logaddexp(A[m], logsumexp_{i <= m, r} A[i] + phi(i, m, r))
    B[n] = 0,  B[m]   = logaddexp(B[m+1], logsumexp_{j >= m, r} phi(m, j, r) + B[j+1])
    log Z = A[n],  P(span i..j labeled r) = exp(A[i] + phi(i, j, r) + B[j+1] - log Z)

Values (argmax, k-best, samples, ``score`` inputs) are BIOES tags ``[batch, seq_len]`` in the layout
of the structures contract, for ``R`` span labels (``1 + 4R`` tags): ``0`` is ``O``; label ``r`` has
``B-r = 1 + 4r``, ``I-r = 2 + 4r``, ``E-r = 3 + 4r``, ``S-r = 4 + 4r``; ``-1`` at padding.

Example::

    >>> import torch
    >>> spans = SemiMarkovSpans(torch.randn(2, 5, 5, 3), torch.tensor([5, 3]), max_width=4)
    >>> spans.bioes_marginals.shape, spans.bioes_pair_marginals.shape
    (torch.Size([2, 5, 13]), torch.Size([2, 4, 13, 13]))
    >>> spans.argmax.shape, spans.sample(7).shape
    (torch.Size([2, 5]), torch.Size([7, 2, 5]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from structkd.structures.base import (
    NumericalError,
    StructDistribution,
    check_lengths,
    check_potential_values,
    check_potentials,
    check_temperature,
    lazy_property,
    length_mask,
    upcast,
)

__all__ = [
    "SemiMarkovSpans",
    "bioes_constraints",
    "bioes_tag_names",
    "bioes_to_spans",
    "spans_to_bioes",
]

# Offsets of the four tags of one span label inside its block of the BIOES layout.
_BEGIN, _INSIDE, _END, _SINGLE = 0, 1, 2, 3

MAX_ABS_SPAN_SCORE = {torch.float64: 1e5, torch.float32: 1e4}
"""The exactness range of span scores, tighter than ``structures.base.MAX_ABS_POTENTIAL``: the
entropy sums span marginals times scores over every span and loses more digits than the chains
and trees do (measured in float64: an entropy of -1.2e-7 at ``|s| = 1e4``, -5e-4 at ``1e6``)."""


def _n_tags(n_span_labels: int) -> int:
    """Number of BIOES tags ``1 + 4R`` for ``R`` span labels."""
    return 1 + 4 * n_span_labels


def _check_n_span_labels(n_span_labels: int) -> int:
    if isinstance(n_span_labels, bool) or not isinstance(n_span_labels, int) or n_span_labels < 1:
        raise ValueError(f"n_span_labels must be an integer >= 1, got {n_span_labels!r}")
    return n_span_labels


def _check_max_width(max_width: int | None) -> int | None:
    if max_width is None:
        return None
    if isinstance(max_width, bool) or not isinstance(max_width, int) or max_width < 1:
        raise ValueError(f"max_width must be None or an integer >= 1, got {max_width!r}")
    return max_width


def _logsumexp(scores: Tensor, dim: int) -> Tensor:
    """``log sum exp`` over ``dim``: ``-inf`` for an all ``-inf`` slice, with a zero gradient there.

    ``torch.logsumexp`` back-propagates NaN through an all ``-inf`` slice (``exp(-inf - -inf)``);
    here the shift is detached and finite, and ``log`` only ever sees a positive total.
    """
    peak = scores.detach().amax(dim=dim, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.exp(scores - peak).sum(dim)
    positive = total > 0
    safe_log = torch.log(torch.where(positive, total, torch.ones_like(total)))
    return torch.where(positive, safe_log + peak.squeeze(dim), torch.full_like(total, -torch.inf))


def _diagonal(tensor: Tensor, offset: int) -> Tensor:
    """Entries ``[b, k, k + offset, r]`` of ``[batch, N, N, R]`` as ``[batch, N - offset, R]``."""
    return torch.diagonal(tensor, offset=offset, dim1=1, dim2=2).transpose(1, 2)


# --------------------------------------------------------------------------------------------------
# BIOES helpers (pure functions)
# --------------------------------------------------------------------------------------------------


def bioes_tag_names(span_labels: Sequence[str]) -> list[str]:
    """Tag names in the BIOES layout: ``["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", ...]``.

    ``span_labels`` ``[R]`` names the span labels in index order; returns ``1 + 4R`` names.
    """
    if isinstance(span_labels, str):
        raise ValueError("span_labels must be a sequence of label names, got a single string")
    names = ["O"]
    for label in span_labels:
        names.extend(f"{prefix}-{label}" for prefix in ("B", "I", "E", "S"))
    return names


def bioes_constraints(n_span_labels: int) -> tuple[Tensor, Tensor, Tensor]:
    """Bool masks of well-formed BIOES sequences for a CRF over the layout with ``R`` span labels.

    Returns ``(allowed_transitions [L, L] (from, to), allowed_start [L], allowed_end [L])`` with
    ``L = 1 + 4R``: after ``O``, ``E-*`` or ``S-*`` come ``O``, ``B-*`` or ``S-*``; after ``B-r``
    or ``I-r`` come ``I-r`` or ``E-r`` (the same ``r``); a sentence starts with ``O``, ``B-*`` or
    ``S-*`` and ends with ``O``, ``E-*`` or ``S-*``. (A maximum span width is not expressible here.)
    """
    n_span_labels = _check_n_span_labels(n_span_labels)
    tags = torch.arange(_n_tags(n_span_labels))
    is_outside = tags == 0
    part = (tags - 1) % 4
    label = (tags - 1).div(4, rounding_mode="floor")
    opens = is_outside | (~is_outside & ((part == _BEGIN) | (part == _SINGLE)))
    closes = is_outside | (~is_outside & ((part == _END) | (part == _SINGLE)))
    continues = ~is_outside & ((part == _BEGIN) | (part == _INSIDE))
    completes = ~is_outside & ((part == _INSIDE) | (part == _END))
    same_label = label.unsqueeze(1) == label.unsqueeze(0)
    allowed_transitions = (closes.unsqueeze(1) & opens.unsqueeze(0)) | (
        continues.unsqueeze(1) & completes.unsqueeze(0) & same_label
    )
    return allowed_transitions, opens, closes


def _first_position(bad: Tensor) -> list[int]:
    """Index (as a list) of the first True entry of a bool tensor, for error messages."""
    return [int(i) for i in bad.nonzero()[0]]


def _bioes_segments(
    tags: Tensor,
    lengths: Tensor,
    n_span_labels: int,
    max_width: int | None = None,
    name: str = "bioes_tags",
) -> tuple[Tensor, Tensor]:
    """Validate BIOES tags ``[..., batch, seq_len]`` and locate their spans.

    Returns ``(span_start, span_label)``, both ``[..., batch, seq_len]`` int64: at a position ``e``
    where a span ends (``E-r`` or ``S-r``), the span's first token and its label ``r``; ``-1``
    elsewhere. Values at padded positions are ignored. Raises ``ValueError`` for a value out of
    ``[0, 1 + 4R)``, a sequence that is not well-formed BIOES, or a span wider than ``max_width``.
    """
    if not isinstance(tags, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [..., batch, seq_len], got {type(tags)}")
    if tags.dtype.is_floating_point or tags.dtype.is_complex or tags.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {tags.dtype}")
    if tags.dim() < 2:
        raise ValueError(f"{name} must have shape [..., batch, seq_len], got {list(tags.shape)}")
    n_tags = _n_tags(n_span_labels)
    batch_size, seq_len = tags.shape[-2], tags.shape[-1]
    lengths = check_lengths(lengths, batch_size, seq_len).to(tags.device)
    tags = tags.long()
    real = length_mask(lengths, seq_len).expand(tags.shape)
    out_of_range = real & ((tags < 0) | (tags >= n_tags))
    if out_of_range.any():
        where = _first_position(out_of_range)
        raise ValueError(
            f"{name} must hold tags in [0, {n_tags}) on real tokens, got {int(tags[tuple(where)])} "
            f"at index {where}"
        )
    tags = torch.where(real, tags, torch.zeros_like(tags))
    allowed_transitions, allowed_start, allowed_end = (
        mask.to(tags.device) for mask in bioes_constraints(n_span_labels)
    )
    bad_start = ~allowed_start[tags[..., 0]]
    if bad_start.any():
        where = _first_position(bad_start)
        raise ValueError(
            f"{name} is not well-formed BIOES: sentence {where} starts with tag "
            f"{int(tags[(*where, 0)])} (must be O, B-* or S-*)"
        )
    bad_pair = ~allowed_transitions[tags[..., :-1], tags[..., 1:]] & real[..., 1:]
    if bad_pair.any():
        where = _first_position(bad_pair)
        before = int(tags[tuple(where)])
        after = int(tags[(*where[:-1], where[-1] + 1)])
        raise ValueError(
            f"{name} is not well-formed BIOES: tag {after} cannot follow tag {before} "
            f"(positions {where[-1]} and {where[-1] + 1} of sentence {where[:-1]})"
        )
    last = tags.gather(-1, (lengths - 1).expand(tags.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    bad_end = ~allowed_end[last]
    if bad_end.any():
        where = _first_position(bad_end)
        raise ValueError(
            f"{name} is not well-formed BIOES: sentence {where} ends with tag "
            f"{int(last[tuple(where)])} (must be O, E-* or S-*)"
        )
    part = (tags - 1) % 4
    label = (tags - 1).div(4, rounding_mode="floor")
    inside_span = real & (tags > 0)
    opens = inside_span & ((part == _BEGIN) | (part == _SINGLE))
    closes = inside_span & ((part == _END) | (part == _SINGLE))
    positions = torch.arange(seq_len, device=tags.device)
    last_open = torch.where(opens, positions, torch.full_like(tags, -1)).cummax(dim=-1).values
    span_start = torch.where(closes, last_open, torch.full_like(tags, -1))
    span_label = torch.where(closes, label, torch.full_like(tags, -1))
    if max_width is not None:
        too_wide = closes & (positions - span_start + 1 > max_width)
        if too_wide.any():
            where = _first_position(too_wide)
            raise ValueError(
                f"{name} has a span wider than max_width={max_width}: tokens "
                f"{int(span_start[tuple(where)])}..{where[-1]} of sentence {where[:-1]}"
            )
    return span_start, span_label


def bioes_to_spans(tags: Tensor, lengths: Tensor, n_span_labels: int) -> Tensor:
    """Span indicator of BIOES tags: ``[..., batch, seq_len]`` -> bool ``[..., batch, N, N, R]``.

    ``spans[..., b, i, j, r]`` is True iff tokens ``i..j`` (inclusive) of sentence ``b`` form a span
    labeled ``r``. Padded positions are ignored; an ill-formed sequence raises ``ValueError``.
    """
    n_span_labels = _check_n_span_labels(n_span_labels)
    span_start, span_label = _bioes_segments(tags, lengths, n_span_labels)
    seq_len = tags.shape[-1]
    positions = torch.arange(seq_len, device=tags.device)
    # [..., batch, end, start] and [..., batch, end, label]
    start_hot = span_start.unsqueeze(-1) == positions
    label_hot = span_label.unsqueeze(-1) == torch.arange(n_span_labels, device=tags.device)
    by_end = start_hot.unsqueeze(-1) & label_hot.unsqueeze(-2)
    return by_end.transpose(-3, -2)


def spans_to_bioes(spans: Tensor, lengths: Tensor) -> Tensor:
    """BIOES tags of a span indicator: bool ``[..., batch, N, N, R]`` -> int64 ``[..., batch, N]``.

    ``spans[..., b, i, j, r]`` (bool, or 0/1 integers) marks span ``i..j`` labeled ``r``; tokens in
    no span are ``O`` (0), padded positions ``-1``. Raises ``ValueError`` for a span with ``i > j``,
    one reaching past the sentence, or overlapping spans.
    """
    if not isinstance(spans, Tensor):
        raise ValueError(f"spans must be a torch.Tensor [..., batch, N, N, R], got {type(spans)}")
    if spans.dim() < 4 or spans.shape[-3] != spans.shape[-2]:
        raise ValueError(f"spans must have shape [..., batch, N, N, R], got {list(spans.shape)}")
    if spans.dtype != torch.bool:
        if spans.dtype.is_floating_point or spans.dtype.is_complex:
            raise ValueError(f"spans must be a bool or integer tensor, got {spans.dtype}")
        if ((spans != 0) & (spans != 1)).any():
            raise ValueError("spans must hold only 0 and 1")
        spans = spans != 0
    batch_size, seq_len, n_span_labels = spans.shape[-4], spans.shape[-2], spans.shape[-1]
    lengths = check_lengths(lengths, batch_size, seq_len).to(spans.device)
    positions = torch.arange(seq_len, device=spans.device)
    reversed_span = (positions.unsqueeze(1) > positions.unsqueeze(0)).unsqueeze(-1)
    if (spans & reversed_span).any():
        raise ValueError(
            f"spans has a span i..j with i > j at index {_first_position(spans & reversed_span)}"
        )
    beyond = (positions >= lengths.unsqueeze(-1))[:, None, :, None]  # end j past the sentence
    if (spans & beyond).any():
        raise ValueError(
            f"spans has a span past the sentence at index {_first_position(spans & beyond)}"
        )
    counts = spans.long()
    single = torch.diagonal(counts, dim1=-3, dim2=-2).transpose(-1, -2)  # [..., batch, N, R]
    begin = counts.sum(-2) - single  # spans starting at p, wider than 1: [..., batch, N, R]
    end = counts.sum(-3) - single  # spans ending at p, wider than 1
    # spans strictly containing p: sum_{i < p} sum_{j > p} (integer counts: differences are exact)
    after = counts.sum(-2, keepdim=True) - counts.cumsum(-2)  # [.., i, p, r]: sum_{j > p}
    before_after = after.cumsum(-3) - after  # [.., p', p, r]: sum_{i < p'} sum_{j > p}
    inside = torch.diagonal(before_after, dim1=-3, dim2=-2).transpose(-1, -2)
    coverage = (begin + end + single + inside).sum(-1)
    if (coverage > 1).any():
        raise ValueError(f"spans overlap at token index {_first_position(coverage > 1)}")
    code_base = 1 + 4 * torch.arange(n_span_labels, device=spans.device)
    tags = (
        begin * (code_base + _BEGIN)
        + inside * (code_base + _INSIDE)
        + end * (code_base + _END)
        + single * (code_base + _SINGLE)
    ).sum(-1)
    real = length_mask(lengths, seq_len)
    return torch.where(real, tags, torch.full_like(tags, -1))


class _SegmentRecorder:
    """Collects the segments of structures ``[..., seq_len]`` traced back from their ends.

    ``record`` stores, at each segment's last token ``end``, its first token and label (``-1`` for
    a single ``O`` token); ``tags`` turns them into BIOES tags ``[..., seq_len]`` in one pass
    (``-1`` where no segment was recorded, i.e. padding).
    """

    def __init__(self, shape: tuple[int, ...], seq_len: int, device: torch.device):
        # one extra column receives the writes of finished rows
        self.start = torch.full((*shape, seq_len + 1), -1, dtype=torch.long, device=device)
        self.label = torch.full((*shape, seq_len + 1), -1, dtype=torch.long, device=device)
        self.seq_len = seq_len

    def record(self, start: Tensor, end: Tensor, label: Tensor, active: Tensor) -> None:
        """Segment ``start..end`` labeled ``label``, each ``[...]``; rows not ``active`` skip it."""
        column = torch.where(active, end, self.seq_len).unsqueeze(-1)
        self.start.scatter_(-1, column, start.unsqueeze(-1))
        self.label.scatter_(-1, column, label.unsqueeze(-1))

    def tags(self) -> Tensor:
        """``[..., seq_len]`` BIOES tags of the recorded segments, ``-1`` on uncovered tokens."""
        seq_len = self.seq_len
        seg_start, seg_label = self.start[..., :seq_len], self.label[..., :seq_len]
        positions = torch.arange(seq_len, device=seg_start.device)
        # the segment holding token p ends at the first recorded end >= p
        is_end = seg_start >= 0
        end_or_far = torch.where(is_end, positions, seq_len)
        end = end_or_far.flip(-1).cummin(-1).values.flip(-1)
        covered = end < seq_len
        end = end.clamp(max=seq_len - 1)
        start, label = seg_start.gather(-1, end), seg_label.gather(-1, end)
        offset = torch.where(
            positions == start,
            torch.where(start == end, _SINGLE, _BEGIN),
            torch.where(positions == end, _END, _INSIDE),
        )
        code = torch.where(label < 0, 0, 1 + 4 * label + offset)
        return torch.where(covered, code, -1)


# --------------------------------------------------------------------------------------------------
# The distribution
# --------------------------------------------------------------------------------------------------


class SemiMarkovSpans(StructDistribution):
    """A batch of distributions over flat labeled span sets (semi-Markov CRF over spans).

    Args:
        span_scores: ``[batch, seq_len, seq_len, n_span_labels]``: ``[b, i, j, r]`` scores span
            ``i..j`` (inclusive) labeled ``r`` relative to its tokens being ``O``. Entries with
            ``i > j`` or past the sentence are ignored; entries wider than ``max_width`` are
            forbidden; ``-inf`` forbids a span (the all-``O`` structure always remains); ``+inf`` is
            rejected.
        lengths: ``[batch]`` int64 tokens per sentence, each in ``1..seq_len``.
        max_width: the widest span allowed (tokens), or None for no limit.
        temperature: ``P(y) ∝ exp(Score(y) / temperature)``.

    Exposes ``log_partition`` ``[batch]``, span ``marginals`` ``[batch, N, N, R]``,
    ``bioes_marginals`` ``[batch, N, 1 + 4R]``,
    ``bioes_pair_marginals`` ``[batch, N - 1, 1 + 4R, 1 + 4R]``, ``argmax`` / ``kbest`` / ``sample``
    as BIOES tags, ``score`` / ``log_prob`` of BIOES tags. Inference runs in float64 whatever the
    input dtype; results come back in the input dtype.
    """

    def __init__(
        self,
        span_scores: Tensor,
        lengths: Tensor,
        max_width: int | None = None,
        temperature: float = 1.0,
    ):
        span_scores = check_potentials(
            "span_scores", span_scores, 4, "[batch, seq_len, seq_len, n_span_labels]", nan=False
        )
        batch_size, seq_len, seq_len_2, n_span_labels = span_scores.shape
        if seq_len != seq_len_2:
            raise ValueError(
                "span_scores must have shape [batch, seq_len, seq_len, n_span_labels], "
                f"got {list(span_scores.shape)} (dims 1 and 2 differ)"
            )
        if n_span_labels < 1:
            raise ValueError("span_scores must have at least one span label (last dim >= 1)")
        super().__init__(lengths, temperature, batch_size, seq_len)
        self.lengths = self.lengths.to(span_scores.device)
        self.max_width = _check_max_width(max_width)
        span_scores = check_potential_values(
            "span_scores", upcast(span_scores), self.span_mask, self.temperature, MAX_ABS_SPAN_SCORE
        )
        self.span_scores = span_scores
        self.dtype = span_scores.dtype
        self.n_span_labels = n_span_labels
        self.n_tags = _n_tags(n_span_labels)
        if (
            torch.isposinf(span_scores).any()
            and (torch.isposinf(span_scores) & self.span_mask).any()
        ):
            where = _first_position(torch.isposinf(span_scores) & self.span_mask)
            raise ValueError(f"span_scores must not be +inf, got +inf at index {where}")

    def _single_sentence(self) -> tuple[SemiMarkovSpans, list[Tensor]]:
        n, labels = self.max_len, self.n_span_labels
        scores = self.span_scores.detach().new_zeros(1, n, n, labels)
        one = torch.ones(1, dtype=torch.long, device=scores.device)
        stand_in = SemiMarkovSpans(scores, one, self.max_width, self.temperature)
        return stand_in, [self.span_scores]

    # -- potentials and charts ---------------------------------------------------------------------

    @property
    def _width(self) -> int:
        """The effective maximum width (``seq_len`` when unlimited)."""
        return self.max_len if self.max_width is None else min(self.max_width, self.max_len)

    @lazy_property
    def span_mask(self) -> Tensor:
        """``[batch, N, N, 1]`` bool: allowed spans, ``i <= j < length`` and ``j - i < width``."""
        positions = torch.arange(self.max_len, device=self.lengths.device)
        start, end = positions.view(-1, 1), positions.view(1, -1)
        shape_ok = (start <= end) & (end - start < self._width)
        inside = end < self.lengths.view(-1, 1, 1)
        return (shape_ok & inside).unsqueeze(-1)

    @lazy_property
    def potentials(self) -> Tensor:
        """``[batch, N, N, R]`` float64 tempered potentials ``phi = s / T`` (``-inf``: forbidden).

        Inference runs in float64 whatever the input dtype: with scores of 1e4, a float32 ``log Z``
        carries an absolute error of ~1e-3 per step: a relative error of that size in marginals.
        """
        phi = self.span_scores.to(torch.float64) / self.temperature
        return torch.where(self.span_mask, phi, torch.full_like(phi, -torch.inf))

    @lazy_property
    def _charts(self) -> tuple[Tensor, Tensor]:
        """Forward and backward charts ``(A, B)``, each ``[batch, N + 1]`` (module docstring).

        Beyond a sentence every potential is ``-inf``, so ``A[m] = A[length]`` and ``B[m] = 0`` for
        ``m >= length``: ``A[N]`` is ``log Z`` whatever the padding. The backward chart is the
        forward chart of the mirrored sentence (span ``i..j`` becomes ``N-1-j..N-1-i``, padding
        comes first and scores 0): ``B[m] = A_mirror[N - m]``, so one loop runs both.
        """
        phi = self.potentials
        batch_size, seq_len, width = self.batch_size, self.max_len, self._width
        # [2 * batch, end, start, R]: the sentences, then their mirrors
        by_end = torch.cat([phi.transpose(1, 2), phi.flip((1, 2))], dim=0).contiguous()
        # Each candidate list holds the "O at m" term, which is finite (A >= 0: the all-O
        # structure scores 0), so a plain logsumexp is safe here, gradient included.
        chart = phi.new_zeros(2 * batch_size, 1)  # A[0..m]
        for m in range(seq_len):
            first = max(0, m - width + 1)
            # spans i..m for i = first..m: [2 * batch, w, R]
            ending = chart[:, first:].unsqueeze(-1) + by_end[:, m, first : m + 1]
            candidates = torch.cat([chart[:, m:], ending.flatten(1)], dim=1)
            chart = torch.cat([chart, torch.logsumexp(candidates, dim=1, keepdim=True)], dim=1)
        return chart[:batch_size], chart[batch_size:].flip(1)

    # -- partition and marginals -------------------------------------------------------------------

    @lazy_property
    def _log_z(self) -> Tensor:
        """``[batch]`` float64 ``log Z`` (``A[length]`` of the forward chart)."""
        log_z = self._charts[0][:, -1]
        if not torch.isfinite(log_z).all():
            raise NumericalError(f"log_partition is not finite: {log_z.detach().tolist()}")
        return log_z

    @lazy_property
    def log_partition(self) -> Tensor:
        """``[batch]`` ``log Z`` of the tempered potentials."""
        return self._log_z.to(self.dtype)

    @lazy_property
    def _marginals(self) -> Tensor:
        """``[batch, N, N, R]`` float64 span marginals."""
        forward, backward = self._charts
        log_mu = (
            forward[:, :-1, None, None]
            + self.potentials
            + backward[:, None, 1:, None]
            - self._log_z[:, None, None, None]
        )
        return torch.exp(log_mu)

    @lazy_property
    def marginals(self) -> Tensor:
        """``[batch, N, N, R]`` span marginals ``P(span i..j labeled r)`` (0 where not allowed).

        ``= exp(A[i] + phi(i, j, r) + B[j+1] - log Z) = d log Z / d phi``, i.e. ``T * d log Z /
        d span_scores``; differentiable when ``span_scores`` requires grad.
        """
        return self._marginals.to(self.dtype)

    @lazy_property
    def _span_sums(self) -> dict[str, Tensor]:
        """Sums of span marginals, all of non-negative terms (no cancellation).

        A suffix sum over span ends, ``after[i, m] = sum_{j>m} mu[i, j]``, then masked sums over
        span starts. Per token (``[batch, N, R]``): ``single[m] = mu[m, m]``,
        ``begin[m] = sum_{j>m} mu[m, j]``, ``end[m] = sum_{i<m} mu[i, m]``,
        ``inside[m] = sum_{i<m<j} mu[i, j]``. Per pair ``(i, i+1)`` inside one span
        (``[batch, N-1, R]``): ``begin_end[i] = mu[i, i+1]``,
        ``begin_inside[i] = sum_{j>i+1} mu[i, j]``, ``inside_end[i] = sum_{s<i} mu[s, i+1]``,
        ``inside_inside[i] = sum_{s<i, j>i+1} mu[s, j]``.
        """
        mu = self._marginals
        # after[b, i, m, r] = sum_{j > m} mu[b, i, j, r]
        from_m = mu.flip(2).cumsum(2).flip(2)
        after = torch.cat([from_m[:, :, 1:], mu.new_zeros(mu[:, :, :1].shape)], dim=2)
        positions = torch.arange(self.max_len, device=mu.device)
        # [1, i, m, 1] masks of span starts i < m and i < m - 1
        before = (positions.view(-1, 1) < positions.view(1, -1)).to(mu.dtype)[None, :, :, None]
        before_previous = (positions.view(-1, 1) < positions.view(1, -1) - 1).to(mu.dtype)
        before_previous = before_previous[None, :, :, None]
        return {
            "single": _diagonal(mu, 0),
            "begin": _diagonal(after, 0),
            "end": (mu * before).sum(1),
            "inside": (after * before).sum(1),
            "begin_end": _diagonal(mu, 1),
            "begin_inside": _diagonal(after, 1),
            "inside_end": (mu * before_previous).sum(1)[:, 1:],  # at m = i + 1
            "inside_inside": (after * before_previous).sum(1)[:, 1:],
        }

    @lazy_property
    def bioes_marginals(self) -> Tensor:
        """``[batch, N, 1 + 4R]`` token marginals ``P(tag_m = a)`` in the BIOES layout.

        ``O``: ``exp(A[m] + B[m+1] - log Z)``; ``S-r``, ``B-r``, ``E-r``, ``I-r``: span marginals of
        ``m..m``, ``m..j>m``, ``i<m..m``, ``i<m<j``. Rows sum to 1 on real tokens, 0 on padding.
        """
        forward, backward = self._charts
        outside = torch.exp(forward[:, :-1] + backward[:, 1:] - self._log_z.unsqueeze(-1))
        sums = self._span_sums
        per_label = torch.stack(
            [sums["begin"], sums["inside"], sums["end"], sums["single"]], dim=-1
        )  # [batch, N, R, 4]
        tags = torch.cat([outside.unsqueeze(-1), per_label.flatten(2)], dim=-1)
        return torch.where(self.mask.unsqueeze(-1), tags, torch.zeros_like(tags)).to(self.dtype)

    @lazy_property
    def bioes_pair_marginals(self) -> Tensor:
        """``[batch, N - 1, 1 + 4R, 1 + 4R]``: ``[b, i, a, c] = P(tag_i = a, tag_{i+1} = c)``.

        Inside one span the pair is ``(B, E)``, ``(B, I)``, ``(I, E)`` or ``(I, I)`` of its label, a
        sum of span marginals. Across a segment boundary it is
        ``exp(left_i(a) + right_{i+1}(c) - log Z)``, with ``left_i(O) = A[i]``,
        ``left_i(E-r) = logsumexp_{s<i} A[s] + phi(s, i, r)``,
        ``left_i(S-r) = A[i] + phi(i, i, r)``;
        ``right_m(O) = B[m+1]``, ``right_m(B-r) = logsumexp_{j>m} phi(m, j, r) + B[j+1]``,
        ``right_m(S-r) = phi(m, m, r) + B[m+1]``. 0 for pairs past the sentence.
        """
        batch_size, seq_len, n_labels = self.batch_size, self.max_len, self.n_span_labels
        phi = self.potentials
        forward, backward = self._charts
        log_z = self._log_z
        no_mass = torch.full_like(phi[:, :, 0, :], -torch.inf)  # [batch, N, R]
        wide = torch.ones(seq_len, seq_len, dtype=torch.bool, device=phi.device).triu(1)
        phi_wide = torch.where(wide[None, :, :, None], phi, torch.full_like(phi, -torch.inf))
        single = _diagonal(phi, 0)  # [batch, N, R]
        # spans wider than one token, ending / starting at each token: [batch, N, R]
        ends_wide = _logsumexp(forward[:, :-1, None, None] + phi_wide, 1)
        begins_wide = _logsumexp(phi_wide + backward[:, None, 1:, None], 2)
        left = torch.cat(
            [
                forward[:, :-1].unsqueeze(-1),
                torch.stack(
                    [no_mass, no_mass, ends_wide, forward[:, :-1].unsqueeze(-1) + single], dim=-1
                ).flatten(2),
            ],
            dim=-1,
        )  # [batch, N, L]
        right = torch.cat(
            [
                backward[:, 1:].unsqueeze(-1),
                torch.stack(
                    [begins_wide, no_mass, no_mass, single + backward[:, 1:].unsqueeze(-1)], dim=-1
                ).flatten(2),
            ],
            dim=-1,
        )  # [batch, N, L]
        boundary = torch.exp(
            left[:, :-1, :, None] + right[:, 1:, None, :] - log_z[:, None, None, None]
        )
        sums = self._span_sums
        block = phi.new_zeros(batch_size, seq_len - 1, n_labels, 4, 4)
        block[..., _BEGIN, _END] = sums["begin_end"]
        block[..., _BEGIN, _INSIDE] = sums["begin_inside"]
        block[..., _INSIDE, _END] = sums["inside_end"]
        block[..., _INSIDE, _INSIDE] = sums["inside_inside"]
        # each label's 4 x 4 block goes on the diagonal of the [4R, 4R] span-tag part
        same_label = torch.eye(n_labels, dtype=phi.dtype, device=phi.device)
        within = torch.einsum("bnrpq,rs->bnrpsq", block, same_label).reshape(
            batch_size, seq_len - 1, 4 * n_labels, 4 * n_labels
        )
        pairs = boundary + torch.nn.functional.pad(within, (1, 0, 1, 0))
        real_pair = self.mask[:, 1:, None, None]
        return torch.where(real_pair, pairs, torch.zeros_like(pairs)).to(self.dtype)

    # -- scores ------------------------------------------------------------------------------------

    def score(self, value: Tensor) -> Tensor:
        """``[..., batch]`` tempered score ``sum_{spans} phi(i, j, r)`` of tags ``[..., batch, N]``.

        Raises ``ValueError`` for tags that are not well-formed BIOES or hold a span wider than
        ``max_width``; padded positions are ignored.
        """
        if isinstance(value, Tensor) and value.dim() >= 2 and value.shape[-1] != self.max_len:
            raise ValueError(
                f"value must have shape [..., batch, {self.max_len}], got {list(value.shape)}"
            )
        value = value.to(self.lengths.device) if isinstance(value, Tensor) else value
        span_start, span_label = _bioes_segments(
            value, self.lengths, self.n_span_labels, self.max_width, name="value"
        )
        seq_len, n_labels = self.max_len, self.n_span_labels
        positions = torch.arange(seq_len, device=span_start.device)
        flat_index = (span_start.clamp(min=0) * seq_len + positions) * n_labels
        flat_index = flat_index + span_label.clamp(min=0)
        batch_index = torch.arange(self.batch_size, device=span_start.device).unsqueeze(-1)
        gathered = self.potentials.reshape(self.batch_size, -1)[batch_index, flat_index]
        span_scores = torch.where(span_start >= 0, gathered, torch.zeros_like(gathered))
        return span_scores.sum(-1).to(self.dtype)

    def expected_score(self, marginals: Tensor | None = None) -> Tensor:
        """``[batch]`` ``sum_{i, j, r} mu(i, j, r) phi(i, j, r)`` over span marginals ``mu``.

        ``marginals`` ``[batch, N, N, R]`` (default: this distribution's own). Entries with
        ``i > j`` or past the sentence are ignored; ``0 * -inf`` counts as 0; positive mass on a
        forbidden span (``-inf``, or wider than ``max_width``) gives ``-inf``.
        """
        return self._expected_score(marginals).to(self.dtype)

    def _expected_score(self, marginals: Tensor | None) -> Tensor:
        """``expected_score`` in float64."""
        if marginals is None:
            marginals = self._marginals
        else:
            marginals = check_potentials(
                "marginals", marginals, 4, "[batch, seq_len, seq_len, n_span_labels]"
            )
            if marginals.shape != self.span_scores.shape:
                raise ValueError(
                    f"marginals must have shape {list(self.span_scores.shape)}, "
                    f"got {list(marginals.shape)}"
                )
        positions = torch.arange(self.max_len, device=self.lengths.device)
        in_sentence = (positions.view(-1, 1) <= positions.view(1, -1)) & (
            positions.view(1, 1, -1) < self.lengths.view(-1, 1, 1)
        )
        marginals = marginals.to(torch.float64)
        mass = torch.where(in_sentence.unsqueeze(-1), marginals, torch.zeros_like(marginals))
        # 0 * -inf counts as 0; masking the potential (not the product) keeps the gradient finite
        phi = torch.where(mass == 0, torch.zeros_like(self.potentials), self.potentials)
        return (mass * phi).sum(dim=(1, 2, 3))

    @lazy_property
    def entropy(self) -> Tensor:
        """``[batch]`` Shannon entropy ``log Z - sum_u P(u) phi(u)`` (nats), computed in float64."""
        return (self._log_z - self._expected_score(None)).to(self.dtype)

    # -- decoding and sampling ---------------------------------------------------------------------

    def kbest(self, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best structures, best first: ``(BIOES tags [k, batch, N], scores [k, batch])``.

        A k-best semi-Markov Viterbi: the chart keeps the ``k`` best prefixes ending at each
        position with backpointers (previous segment start, label, rank). Each structure is one
        derivation, so the ``k`` best derivations are the ``k`` best distinct structures. Where a
        sentence has fewer than ``k`` structures, surplus rows hold ``-1`` tags and ``-inf`` scores.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        phi = self.potentials.detach()
        batch_size, seq_len, width, n_labels = (
            self.batch_size,
            self.max_len,
            self._width,
            self.n_span_labels,
        )
        first_row = torch.full((batch_size, k), -torch.inf, dtype=phi.dtype, device=phi.device)
        first_row[:, 0] = 0.0
        best = [first_row]  # best[m]: [batch, k] scores of the k best prefixes of m tokens
        back_start, back_label, back_rank = [], [], []
        for m in range(seq_len):
            first = max(0, m - width + 1)
            prefixes = torch.stack(best[first : m + 1], dim=1)  # [batch, w, k]
            spans = prefixes.unsqueeze(2) + phi[:, first : m + 1, m, :, None]  # [batch, w, R, k]
            candidates = torch.cat([best[m].unsqueeze(1), spans.flatten(1, 2)], dim=1)
            scores, index = candidates.flatten(1).topk(k, dim=1)  # [batch, k]
            slot, rank = index.div(k, rounding_mode="floor"), index % k
            span_slot = (slot - 1).clamp(min=0)
            is_outside = slot == 0
            back_start.append(torch.where(is_outside, m, first + span_slot // n_labels))
            back_label.append(torch.where(is_outside, -1, span_slot % n_labels))
            back_rank.append(rank)
            best.append(scores)
        chart = torch.stack(best, dim=1)  # [batch, N + 1, k]
        totals = chart.gather(1, self.lengths.view(-1, 1, 1).expand(-1, 1, k)).squeeze(1).T
        back_start_t = torch.stack(back_start, dim=1)  # [batch, N (segment end), k]
        back_label_t = torch.stack(back_label, dim=1)
        back_rank_t = torch.stack(back_rank, dim=1)
        batch_index = torch.arange(batch_size, device=phi.device).unsqueeze(0)
        position = self.lengths.unsqueeze(0).expand(k, -1).clone()  # [k, batch]
        rank = torch.arange(k, device=phi.device).unsqueeze(1).expand(-1, batch_size).clone()
        segments = _SegmentRecorder((k, batch_size), seq_len, phi.device)
        for _ in range(seq_len):
            active = position > 0
            if not active.any():
                break
            end = (position - 1).clamp(min=0)
            start = back_start_t[batch_index, end, rank]
            label = back_label_t[batch_index, end, rank]
            segments.record(start, end, label, active)
            rank = torch.where(active, back_rank_t[batch_index, end, rank], rank)
            position = torch.where(active, start, position)
        found = torch.isfinite(totals)
        tags = torch.where(found.unsqueeze(-1), segments.tags(), -1)
        return tags, totals.to(self.dtype)

    @lazy_property
    def argmax(self) -> Tensor:
        """``[batch, N]`` BIOES tags of the best structure (semi-Markov Viterbi = ``kbest(1)``)."""
        return self.kbest(1)[0][0]

    @lazy_property
    def argmax_spans(self) -> Tensor:
        """``[batch, N, N, R]`` bool span indicator of the best structure."""
        return bioes_to_spans(self.argmax, self.lengths, self.n_span_labels)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, batch, N]`` exact samples (BIOES tags) by backward sampling from the forward chart.

        From the end of the sentence, the last segment ending at token ``e`` is ``O`` with
        probability ``exp(A[e] - A[e+1])`` or span ``i..e`` labeled ``r`` with
        ``exp(A[i] + phi(i, e, r) - A[e+1])``; then recurse on the prefix. Each draw inverts a
        cumulative table computed once in float64, ``[batch, end, 1 + N * R]``; its rows are laid
        end to end (row ``k`` offset by ``k``) so that one ``searchsorted`` serves every sample.
        This resolves probabilities down to about ``2**-52 * batch * N``, and never draws a
        candidate of probability 0.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        phi = self.potentials.detach()
        forward = self._charts[0].detach()[:, :-1]  # A[i], i = 0..N-1: [batch, N]
        batch_size, seq_len = self.batch_size, self.max_len
        # logits of the last segment ending at e: O, then span i..e labeled r at 1 + i * R + r
        span_logits = forward[:, None, :, None] + phi.transpose(1, 2)  # [batch, end, start, R]
        logits = torch.cat([forward.unsqueeze(-1), span_logits.flatten(2)], dim=-1)
        n_candidates = logits.shape[-1]
        cumulative = torch.softmax(logits, dim=-1).cumsum(-1)
        cumulative = cumulative / cumulative[..., -1:]  # the last entry of a row is exactly 1
        row_offset = torch.arange(batch_size * seq_len, dtype=phi.dtype, device=phi.device)
        table = (cumulative.reshape(-1, n_candidates) + row_offset.unsqueeze(-1)).flatten()
        position = self.lengths.unsqueeze(0).expand(n, -1).clone()  # [n, batch]
        row_base = torch.arange(batch_size, device=phi.device) * seq_len
        segments = _SegmentRecorder((n, batch_size), seq_len, phi.device)
        for _ in range(seq_len):
            active = position > 0
            if not active.any():
                break
            end = (position - 1).clamp(min=0)
            row = row_base + end  # [n, batch]
            uniform = torch.rand(
                (n, batch_size), generator=generator, dtype=phi.dtype, device=phi.device
            )
            # the first entry > row + u lies in the row (its last entry is row + 1 > row + u, also
            # after rounding) and has positive probability
            below_next_row = torch.nextafter(row + 1.0, row.to(phi.dtype))
            target = torch.minimum(row + uniform, below_next_row)
            found = torch.searchsorted(table, target, right=True)
            choice = (found - row * n_candidates).clamp(0, n_candidates - 1)
            span_slot = (choice - 1).clamp(min=0)
            is_outside = choice == 0
            start = torch.where(is_outside, end, span_slot // self.n_span_labels)
            label = torch.where(is_outside, -1, span_slot % self.n_span_labels)
            segments.record(start, end, label, active)
            position = torch.where(active, start, position)
        return segments.tags()

    # -- misc --------------------------------------------------------------------------------------

    def tempered(self, temperature: float) -> SemiMarkovSpans:
        """The same distribution with potentials further divided by ``temperature``."""
        return SemiMarkovSpans(
            self.span_scores,
            self.lengths,
            max_width=self.max_width,
            temperature=self.temperature * check_temperature(temperature),
        )

    def __repr__(self) -> str:
        return (
            f"SemiMarkovSpans(batch_size={self.batch_size}, max_len={self.max_len}, "
            f"n_span_labels={self.n_span_labels}, max_width={self.max_width}, "
            f"temperature={self.temperature})"
        )
