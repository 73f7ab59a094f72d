"""Linear-chain CRF over tag sequences: forward-backward, Viterbi, exact k-best, exact sampling.

A tag sequence ``y`` of a sentence of ``n`` tokens scores

    Score(y) = (start[y_0] + sum_{i<n} emissions[i, y_i] + sum_{i<n-1} transitions[y_i, y_{i+1}]
                + end[y_{n-1}]) / T,          P(y) = exp(Score(y) - log Z).

How inference runs (batched over sentences, masked by lengths, in float64 whatever the input):

* **Probability space (the fast path).** A forward step is one small matmul and one product,
  ``alpha_i = (alpha_{i-1} @ M) * e_i``, with every factor max-shifted into ``[0, 1]``:
  ``M = exp(transitions - column max)``, ``e_i = exp(emissions_i + column max - row max)``; the
  vector is renormalized every few steps and the shifts and normalizers are accumulated in log
  space. The backward pass is the same recursion over the reversed sentences, and marginals are
  products of the two, normalized per position (no autograd needed).
* **Log space (the exact fallback).** A logsumexp forward-backward, used per sentence wherever the
  probability path could lose precision: a finite factor of ``M`` below ``exp(-115)`` or of ``e``
  below ``exp(-230)``, a message entry in ``(0, exp(-230))`` of its sum, or a message sum below
  ``1e-50``. Above these floors every product the recursion forms is a normal float64 (at least
  ``1e-300``), so the fast path is exact to rounding wherever it is used, and its zeros come only
  from ``-inf`` potentials.
* ``log_partition`` of potentials that require grad is a custom autograd function whose backward
  is the explicit forward-backward (``d log Z / d potentials`` = marginals), differentiable again
  under ``create_graph``; ``marginals`` and ``pair_marginals`` of potentials that require grad are
  built from differentiable operations, so a loss on them backpropagates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from structkd.structures.base import (
    NumericalError,
    StructDistribution,
    check_potential_values,
    check_tag_values,
    check_temperature,
    upcast,
)

__all__ = ["LinearChainCRF", "transition_constraints"]

_COMPUTE_DTYPE = torch.float64
_TINY = torch.finfo(_COMPUTE_DTYPE).tiny
# Floors of the probability-space path (see the module docstring): a message entry (>= 1e-100 of a
# sum >= 1e-50) times a transition factor (>= 1e-50) times an emission factor (>= 1e-100) stays
# above 1e-300, a normal float64, so nothing the recursion multiplies underflows unless the
# sentence falls back.
_LOG_FLOOR_TRANSITION = 115.0  # exp(-115) ~ 1e-50
_LOG_FLOOR_EMISSION = 230.0  # exp(-230) ~ 1e-100
_FLOOR_MESSAGE = math.exp(-230.0)  # ~ 1e-100, for normalized forward/backward entries
_MIN_SCALE = 1e-50  # smallest sum of a message multiplied without renormalization
_RENORMALIZE_EVERY = 4
# Up to this many labels, the forward and backward recursions share one block-diagonal matmul.
_MAX_LABELS_TOGETHER = 32
_LOWEST = torch.finfo(_COMPUTE_DTYPE).min
# Largest right factor for which pair marginals are formed directly in float32/bfloat16.
_MAX_LOW_PRECISION_FACTOR = 1e18
_PAIR_CHUNK_BYTES = 1 << 21


# ---------------------------------------------------------------------------------------------
# Tag-scheme constraints


def transition_constraints(tags: Sequence[str], scheme: str) -> tuple[Tensor, Tensor, Tensor]:
    """Allowed transitions, starts and ends of a BIO (IOB2) or BIOES tag set, in ``tags``' order.

    ``tags`` are strings such as ``"O"``, ``"B-PER"``, ``"I-PER"``, ``"E-PER"``, ``"S-PER"`` in
    any order (the type is everything after the first ``-``). ``scheme`` is ``"BIO"`` (alias
    ``"IOB2"``) or ``"BIOES"`` (alias ``"IOBES"``), case-insensitive.

    BIO: ``I-X`` only follows ``B-X`` or ``I-X`` and never starts a sentence.
    BIOES: ``B-X`` and ``I-X`` are followed by ``I-X`` or ``E-X``; ``O``, ``E-X`` and ``S-X`` by
    ``O``, ``B-Y`` or ``S-Y``; a sentence starts with ``O``, ``B`` or ``S`` and ends with ``O``,
    ``E`` or ``S``.

    Returns:
        ``(allowed_transitions [n_tags, n_tags] (from, to), allowed_start [n_tags],
        allowed_end [n_tags])``, bool tensors on the CPU.

    Raises:
        ValueError: an unknown scheme, a duplicate tag, or a tag that is not ``O`` or
            ``<prefix>-<type>`` with a prefix of the scheme.
    """
    if not isinstance(scheme, str):
        raise ValueError(f"scheme must be 'BIO' or 'BIOES', got {scheme!r}")
    normalized = {"BIO": "BIO", "IOB2": "BIO", "BIOES": "BIOES", "IOBES": "BIOES"}.get(
        scheme.upper()
    )
    if normalized is None:
        raise ValueError(f"scheme must be 'BIO' (IOB2) or 'BIOES', got {scheme!r}")
    prefixes = "BI" if normalized == "BIO" else "BIES"
    tags = list(tags)
    if not tags:
        raise ValueError("tags must not be empty")
    if len(set(tags)) != len(tags):
        duplicates = sorted({tag for tag in tags if tags.count(tag) > 1})
        raise ValueError(f"tags must be distinct, got duplicates {duplicates}")
    parsed: list[tuple[str, str]] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise ValueError(f"tags must be strings, got {tag!r}")
        if tag == "O":
            parsed.append(("O", ""))
            continue
        prefix, dash, kind = tag.partition("-")
        if dash != "-" or prefix not in prefixes or not kind:
            raise ValueError(
                f"tag {tag!r} is not 'O' or '<prefix>-<type>' with a prefix in "
                f"{list(prefixes)} of scheme {normalized}"
            )
        parsed.append((prefix, kind))

    n_tags = len(tags)
    allowed = torch.zeros(n_tags, n_tags, dtype=torch.bool)
    if normalized == "BIO":
        allowed_start = torch.tensor([prefix != "I" for prefix, _ in parsed])
        allowed_end = torch.ones(n_tags, dtype=torch.bool)
        for to, (to_prefix, to_kind) in enumerate(parsed):
            for source, (from_prefix, from_kind) in enumerate(parsed):
                if to_prefix != "I":
                    allowed[source, to] = True
                else:
                    allowed[source, to] = from_prefix in "BI" and from_kind == to_kind
    else:
        allowed_start = torch.tensor([prefix in "OBS" for prefix, _ in parsed])
        allowed_end = torch.tensor([prefix in "OES" for prefix, _ in parsed])
        for to, (to_prefix, to_kind) in enumerate(parsed):
            for source, (from_prefix, from_kind) in enumerate(parsed):
                if from_prefix in "BI":  # inside a span: continue or close the same type
                    allowed[source, to] = to_prefix in "IE" and from_kind == to_kind
                else:  # outside a span: O, or open a new one
                    allowed[source, to] = to_prefix in "OBS"
    return allowed, allowed_start, allowed_end


# ---------------------------------------------------------------------------------------------
# Inference on tempered potentials (pure functions)


class _Potentials(NamedTuple):
    """Tempered potentials in the compute dtype.

    ``emissions [batch, seq_len, n_labels]`` (0 at padding), ``transitions [n_labels, n_labels]``,
    ``start [n_labels]``, ``end [n_labels]``; ``-inf`` marks what is disallowed.
    """

    emissions: Tensor
    transitions: Tensor
    start: Tensor
    end: Tensor
    lengths: Tensor
    mask: Tensor  # [batch, seq_len] bool, True on real tokens

    def detach(self) -> _Potentials:
        return _Potentials(*(tensor.detach() for tensor in self))

    def rows(self, index: Tensor) -> _Potentials:
        """The same potentials restricted to the sentences ``index`` ``[rows]``."""
        return self._replace(
            emissions=self.emissions[index], lengths=self.lengths[index], mask=self.mask[index]
        )


def _needs_graph(*tensors: Tensor | None) -> bool:
    """Whether an operation on ``tensors`` is recorded by autograd right now."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _folded_emissions(potentials: _Potentials, column_shift: Tensor | None = None) -> Tensor:
    """``[batch, seq_len, n_labels]`` emissions with ``start`` added at position 0 and ``end`` at
    each sentence's last position, so that ``Score(y) = sum_i folded[i, y_i] + transitions``;
    ``column_shift [n_labels]``, if given, is added at positions ``>= 1``."""
    emissions, _, start, end, lengths, _ = potentials
    batch_size, seq_len, n_labels = emissions.shape
    rest = torch.zeros_like(start) if column_shift is None else column_shift
    offset = torch.cat([start.unsqueeze(0), rest.expand(seq_len - 1, n_labels)])
    last = (lengths - 1).view(-1, 1, 1).expand(batch_size, 1, n_labels)
    return (emissions + offset).scatter_add(1, last, end.expand(batch_size, 1, n_labels))


def _reversal_index(lengths: Tensor, seq_len: int) -> Tensor:
    """``[batch, seq_len]`` index reversing each sentence in place (padding stays put); it is its
    own inverse."""
    positions = torch.arange(seq_len, device=lengths.device)
    lengths = lengths.unsqueeze(-1)
    return torch.where(positions < lengths, lengths - 1 - positions, positions)


def _gather_positions(tensor: Tensor, index: Tensor) -> Tensor:
    """``tensor[b, index[b, i], :]`` for ``tensor [batch, seq_len, n_labels]``."""
    return tensor.gather(1, index.unsqueeze(-1).expand_as(tensor))


def _last_position(tensor: Tensor, lengths: Tensor) -> Tensor:
    """``tensor[b, lengths[b] - 1]`` ``[batch, ...]`` for ``tensor [batch, seq_len, ...]``."""
    index = (lengths - 1).view(-1, *([1] * (tensor.dim() - 1)))
    index = index.expand(tensor.shape[0], 1, *tensor.shape[2:])
    return tensor.gather(1, index).squeeze(1)


def _safe_logsumexp(values: Tensor, dim: int) -> Tensor:
    """``log sum exp`` over ``dim`` that gives ``-inf`` (and a zero, not NaN, gradient) when every
    entry is ``-inf``."""
    shift = values.detach().amax(dim, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    total = torch.exp(values - shift).sum(dim, keepdim=True)
    positive = total > 0
    result = torch.log(torch.where(positive, total, torch.ones_like(total))) + shift
    result = torch.where(positive, result, torch.full_like(result, -math.inf))
    return result.squeeze(dim)


def _scaled_recursion(
    factors: Tensor, matrix: Tensor, groups: int, safe: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``message_0 = factors_0``, ``message_j = (message_{j-1} @ matrix) * factors_j``, each of the
    ``groups`` blocks of a message divided by its sum every ``_RENORMALIZE_EVERY`` positions.

    ``factors [batch, seq_len, groups * n_labels]`` and ``matrix [groups * n_labels, groups *
    n_labels]`` (block diagonal when ``groups > 1``: independent recursions run together, one
    matmul per step), both in ``[0, 1]``. Returns ``(messages [batch, seq_len, groups, n_labels]``
    each block normalized to sum 1, ``divisors [batch, seq_len, groups]`` (1 where none was
    applied), ``sums [batch, seq_len, groups]`` of the blocks as computed): the true block is
    ``messages_j * sums_j * prod_{i <= j} divisors_i``. Without ``safe`` (no autograd) the loop
    works in place and a vanishing sum gives NaN, which the caller's checks flag; with it, sums
    are clamped so that no NaN reaches a gradient.
    """
    batch_size, seq_len, width = factors.shape
    size = width // groups
    steps = factors.unbind(1)
    if safe:
        message = steps[0]
        ones = message.new_ones(batch_size, groups)
        messages, divisors = [message], [ones]
        for position in range(1, seq_len):
            message = torch.mm(message, matrix) * steps[position]
            if position % _RENORMALIZE_EVERY == 0:
                blocks = message.view(batch_size, groups, size)
                divisor = blocks.sum(-1, keepdim=True).clamp_min(_TINY)
                message = (blocks / divisor).view(batch_size, width)
                divisors.append(divisor.squeeze(-1))
            else:
                divisors.append(ones)
            messages.append(message)
        messages = torch.stack(messages, 1).view(batch_size, seq_len, groups, size)
        sums = messages.sum(-1, keepdim=True).clamp_min(_TINY)
        return messages / sums, torch.stack(divisors, 1), sums.squeeze(-1)

    # No autograd: write every step into one buffer, in place.
    messages = torch.empty_like(factors)
    rows = messages.unbind(1)
    rows[0].copy_(steps[0])
    divisors = []
    for position in range(1, seq_len):
        row = rows[position]
        torch.mm(rows[position - 1], matrix, out=row)
        row.mul_(steps[position])
        if position % _RENORMALIZE_EVERY == 0:
            blocks = row.view(batch_size, groups, size)
            divisor = blocks.sum(-1, keepdim=True)
            blocks.div_(divisor)
            divisors.append(divisor.squeeze(-1))
    all_divisors = factors.new_ones(batch_size, seq_len, groups)
    if divisors:
        all_divisors[:, _RENORMALIZE_EVERY::_RENORMALIZE_EVERY] = torch.stack(divisors, 1)
    messages = messages.view(batch_size, seq_len, groups, size)
    sums = messages.sum(-1, keepdim=True)
    return messages.div_(sums), all_divisors, sums.squeeze(-1)


def _lost_precision(messages: Tensor, sums: Tensor) -> Tensor:
    """``[..., groups]`` bool from ``messages [..., groups, n_labels]`` and ``sums [..., groups]``:
    a normalized entry in ``(0, _FLOOR_MESSAGE)``, or a sum below ``_MIN_SCALE`` (or NaN): a
    product of the recursion could have underflowed."""
    small = torch.logical_xor(messages > 0, messages >= _FLOOR_MESSAGE)  # 0 < entry < floor
    return small.any(-1) | ~(sums >= _MIN_SCALE)


class _ProbForward(NamedTuple):
    """The probability-space forward pass of a batch.

    ``alpha [batch, seq_len, n_labels]``: forward vectors (end folded in at the last position),
    normalized to sum 1; ``factors [batch, seq_len, n_labels]``: ``e_i``; ``transition_factor
    [n_labels, n_labels]``: ``M``; ``log_partition [batch]``; ``flagged [batch]``: sentences that
    must use the log-space path; ``backward``: ``(reversed weighted beta [batch, seq_len,
    n_labels], the reversal index [batch, seq_len], flagged [batch])`` when the backward recursion
    ran along.
    """

    alpha: Tensor
    factors: Tensor
    transition_factor: Tensor
    log_partition: Tensor
    flagged: Tensor
    backward: tuple[Tensor, Tensor, Tensor] | None


def _prob_forward(potentials: _Potentials, safe: bool, with_backward: bool) -> _ProbForward:
    """Rescaled forward pass in probability space: ``alpha_i ∝ (alpha_{i-1} @ M) * e_i``.

    With ``with_backward`` and few labels, the backward recursion runs in the same loop (one
    block-diagonal matmul per step costs about one small matmul).
    """
    _, transitions, _, _, lengths, mask = potentials
    n_labels = transitions.shape[0]

    column_max = transitions.detach().amax(0)
    column_shift = torch.where(torch.isfinite(column_max), column_max, torch.zeros_like(column_max))
    log_factor = transitions - column_shift
    transition_factor = torch.exp(log_factor)
    folded = _folded_emissions(potentials, column_shift)
    row_shift = folded.detach().amax(-1).clamp_min(_LOWEST)
    shifted = folded - row_shift.unsqueeze(-1)
    factors = torch.exp(shifted)

    together = with_backward and n_labels <= _MAX_LABELS_TOGETHER
    if together:
        reversal = _reversal_index(lengths, factors.shape[1])
        messages, divisors, sums = _scaled_recursion(
            torch.cat([factors, _gather_positions(factors, reversal)], dim=-1),
            torch.block_diag(transition_factor, transition_factor.t()),
            2,
            safe,
        )
    else:
        messages, divisors, sums = _scaled_recursion(factors, transition_factor, 1, safe)
    alpha, divisors, forward_sums = messages[:, :, 0], divisors[:, :, 0], sums[:, :, 0]
    log_scales = torch.where(mask, torch.log(divisors) + row_shift, 0.0).sum(-1)
    last = (lengths - 1).unsqueeze(-1)
    log_partition = log_scales + torch.log(forward_sums.gather(1, last).squeeze(1))

    with torch.no_grad():
        lost_factor = (shifted < -_LOG_FLOOR_EMISSION) ^ torch.isneginf(shifted)
        lost = _lost_precision(messages, sums)  # [batch, seq_len, groups]
        flagged = ((lost[:, :, 0] | lost_factor.any(-1)) & mask).any(-1)
        flagged |= ((log_factor < -_LOG_FLOOR_TRANSITION) & torch.isfinite(log_factor)).any()
        # (reversed positions < length are the valid ones: the same mask)
        backward_flagged = (lost[:, :, 1] & mask).any(-1) if together else None
    backward = (messages[:, :, 1], reversal, backward_flagged) if together else None
    return _ProbForward(alpha, factors, transition_factor, log_partition, flagged, backward)


def _prob_backward(
    forward: _ProbForward, lengths: Tensor, mask: Tensor, safe: bool
) -> tuple[Tensor, Tensor]:
    """Rescaled backward pass: ``(weighted_beta [batch, seq_len, n_labels], flagged [batch])``.

    ``w_i = e_i * beta_i ∝ e_i * (w_{i+1} @ M^T)`` with ``w_{n-1} ∝ e_{n-1}``, normalized to sum 1:
    the forward recursion run over the reversed sentences (reused if it ran with the forward).
    """
    if forward.backward is not None:
        reversed_weighted_beta, reversal, flagged = forward.backward
    else:
        reversal = _reversal_index(lengths, forward.factors.shape[1])
        messages, _, sums = _scaled_recursion(
            _gather_positions(forward.factors, reversal), forward.transition_factor.t(), 1, safe
        )
        reversed_weighted_beta = messages[:, :, 0]
        with torch.no_grad():  # reversed positions < length are the valid ones: the same mask
            flagged = (_lost_precision(messages, sums)[:, :, 0] & mask).any(-1)
    return _gather_positions(reversed_weighted_beta, reversal), flagged


class _LogForwardBackward(NamedTuple):
    """Log-space forward-backward of a subset of sentences.

    ``log_alpha [rows, seq_len, n_labels]`` (start and end folded in), ``log_beta`` (0 at the last
    position; ``None`` when only the forward ran), ``log_partition [rows]``, ``folded`` emissions.
    """

    log_alpha: Tensor
    log_beta: Tensor | None
    log_partition: Tensor
    folded: Tensor


def _log_forward_backward(potentials: _Potentials, backward: bool = True) -> _LogForwardBackward:
    """Forward (and backward) in log space with logsumexp: exact for any finite scores."""
    transitions, lengths = potentials.transitions, potentials.lengths
    folded = _folded_emissions(potentials)
    seq_len = folded.shape[1]

    log_alpha = folded[:, 0]
    log_alphas = [log_alpha]
    for position in range(1, seq_len):
        log_alpha = (
            _safe_logsumexp(log_alpha.unsqueeze(-1) + transitions, dim=1) + folded[:, position]
        )
        log_alphas.append(log_alpha)
    log_alpha = torch.stack(log_alphas, dim=1)
    log_partition = _safe_logsumexp(_last_position(log_alpha, lengths), dim=-1)
    if not backward:
        return _LogForwardBackward(log_alpha, None, log_partition, folded)

    reversal = _reversal_index(lengths, seq_len)
    reversed_folded = _gather_positions(folded, reversal)
    log_beta = torch.zeros_like(log_alpha[:, 0])
    log_betas = [log_beta]
    for position in range(1, seq_len):
        incoming = (reversed_folded[:, position - 1] + log_beta).unsqueeze(-2)
        log_beta = _safe_logsumexp(incoming + transitions, dim=-1)
        log_betas.append(log_beta)
    log_beta = _gather_positions(torch.stack(log_betas, dim=1), reversal)
    return _LogForwardBackward(log_alpha, log_beta, log_partition, folded)


def _log_space_marginals(
    potentials: _Potentials, result: _LogForwardBackward
) -> tuple[Tensor, Tensor]:
    """``(marginals [rows, seq_len, n_labels], pair_marginals [rows, seq_len-1, n_labels,
    n_labels])`` from a log-space forward-backward; 0 beyond each sentence."""
    log_alpha, log_beta, log_partition, folded = result
    mask = potentials.mask
    log_z = log_partition.view(-1, 1, 1)
    # mask before exp: past the end the recursions hold garbage that could overflow (and a 0 * inf
    # in the backward of exp would be NaN)
    log_marginals = torch.where(mask.unsqueeze(-1), log_alpha + log_beta - log_z, -math.inf)
    marginals = torch.exp(log_marginals)
    right = folded[:, 1:] + log_beta[:, 1:]
    log_pair = (
        log_alpha[:, :-1].unsqueeze(-1)
        + potentials.transitions
        + right.unsqueeze(-2)
        - log_z.unsqueeze(-1)
    )
    pair = torch.exp(torch.where(mask[:, 1:, None, None], log_pair, -math.inf))
    return marginals, pair


def _raise_if_infeasible(log_partition: Tensor, rows: Tensor | None = None) -> None:
    """Raise ``ValueError`` if a sentence has ``log Z = -inf`` (``rows``: the sentences'
    indices in the batch, when ``log_partition`` covers a subset)."""
    infeasible = torch.isneginf(log_partition)
    if bool(infeasible.any()):
        rows = (infeasible.nonzero().flatten() if rows is None else rows[infeasible]).tolist()
        raise ValueError(
            f"no tag sequence is allowed for sentence(s) {rows}: every sequence has a -inf score "
            "(check the constraint masks and -inf potentials)"
        )


def _log_partition(potentials: _Potentials, forward: _ProbForward) -> Tensor:
    """``log Z [batch]`` from the probability forward, log space for the flagged sentences."""
    log_partition = forward.log_partition
    if bool(forward.flagged.any()):
        rows = forward.flagged.nonzero().flatten()
        fallback = _log_forward_backward(potentials.rows(rows), backward=False)
        _raise_if_infeasible(fallback.log_partition, rows)
        log_partition = log_partition.index_copy(0, rows, fallback.log_partition)
    return log_partition


class _Posterior:
    """Marginals of a batch (compute dtype), merged from the probability and log-space paths.

    ``pair_marginals[b, i, a, c] = left[b, i, a] * M[a, c] * right[b, i, c]`` for sentences of the
    probability path; sentences in ``log_rows`` carry their pair marginals explicitly.
    """

    def __init__(
        self,
        log_partition: Tensor,
        marginals: Tensor,
        left: Tensor,
        right: Tensor,
        transition_factor: Tensor,
        log_rows: Tensor | None,
        log_pair: Tensor | None,
    ):
        self.log_partition = log_partition
        self.marginals = marginals
        self.left = left
        self.right = right
        self.transition_factor = transition_factor
        self.log_rows = log_rows
        self.log_pair = log_pair

    def pair_marginals(self, dtype: torch.dtype) -> Tensor:
        """``[batch, seq_len-1, n_labels, n_labels]`` in ``dtype``."""
        left, right, factor = self.left, self.right, self.transition_factor
        largest = float(right.detach().max()) if right.numel() else 0.0
        if dtype in (torch.float32, torch.bfloat16) and largest <= _MAX_LOW_PRECISION_FACTOR:
            # Entries of `left` that flush to zero in `dtype` lose at most tiny * max(right).
            left, right, factor = left.to(dtype), right.to(dtype), factor.to(dtype)
        if left.requires_grad or right.requires_grad or factor.requires_grad:
            pair = left.unsqueeze(-1) * right.unsqueeze(-2) * factor
            if self.log_rows is not None:
                pair = pair.index_copy(0, self.log_rows, self.log_pair.to(pair.dtype))
            return pair.to(dtype)
        batch_size, pairs, n_labels = left.shape
        pair = left.new_empty(batch_size, pairs, n_labels, n_labels)
        # Two passes per chunk of ~2 MB: the second one runs in cache.
        rows = pair.view(-1, n_labels, n_labels)
        left_rows, right_rows = left.reshape(-1, n_labels, 1), right.reshape(-1, 1, n_labels)
        chunk = max(1, _PAIR_CHUNK_BYTES // (n_labels * n_labels * pair.element_size()))
        for begin in range(0, rows.shape[0], chunk):
            out = rows[begin : begin + chunk]
            torch.mul(left_rows[begin : begin + chunk], right_rows[begin : begin + chunk], out=out)
            out.mul_(factor)
        if self.log_rows is not None:
            pair.index_copy_(0, self.log_rows, self.log_pair.to(pair.dtype))
        return pair.to(dtype)

    def pair_sums(self) -> Tensor:
        """``[batch, n_labels, n_labels]``: pair marginals summed over positions."""
        sums = self.transition_factor * torch.bmm(self.left.transpose(1, 2), self.right)
        if self.log_rows is not None:
            sums = sums.index_copy(0, self.log_rows, self.log_pair.sum(1))
        return sums


def _posterior(potentials: _Potentials, forward: _ProbForward, safe: bool) -> _Posterior:
    """Explicit forward-backward: log Z, marginals and the factors of the pair marginals.

    With ``v_i = alpha_{i-1} @ M`` (``v_0 = 1``) and ``w_i = e_i * beta_i``:
    ``P(y_i = c) ∝ v_i[c] w_i[c]`` and ``P(y_i = a, y_{i+1} = c) = alpha_i[a] M[a, c] w_{i+1}[c]
    / sum_c v_{i+1}[c] w_{i+1}[c]``. ``safe`` keeps every intermediate finite (needed when
    autograd records the computation).
    """
    mask = potentials.mask
    weighted_beta, flagged_backward = _prob_backward(forward, potentials.lengths, mask, safe)
    alpha, flagged = forward.alpha, forward.flagged | flagged_backward
    usable = (mask & ~flagged.unsqueeze(-1)).unsqueeze(-1)

    incoming = alpha[:, :-1] @ forward.transition_factor
    weighted = torch.cat([weighted_beta[:, :1], incoming * weighted_beta[:, 1:]], dim=1)
    per_position = weighted.sum(-1, keepdim=True)
    if safe:
        per_position = torch.where(usable, per_position, 1.0)
    marginals = torch.where(usable, weighted / per_position, 0.0)
    right = torch.where(usable[:, 1:], weighted_beta[:, 1:] / per_position[:, 1:], 0.0)
    left = torch.where(usable[:, :-1], alpha[:, :-1], 0.0)
    log_partition = forward.log_partition

    log_rows = log_pair = None
    if bool(flagged.any()):
        log_rows = flagged.nonzero().flatten()
        subset = potentials.rows(log_rows)
        fallback = _log_forward_backward(subset)
        log_marginals, log_pair = _log_space_marginals(subset, fallback)
        _raise_if_infeasible(fallback.log_partition, log_rows)
        log_partition = log_partition.index_copy(0, log_rows, fallback.log_partition)
        marginals = marginals.index_copy(0, log_rows, log_marginals)
    return _Posterior(
        log_partition, marginals, left, right, forward.transition_factor, log_rows, log_pair
    )


class _ChainSolver:
    """Caches no-grad inference on detached potentials; shared with the autograd function of
    ``log Z`` (it holds no reference to the distribution, so no reference cycle)."""

    def __init__(self, potentials: _Potentials):
        self.potentials = potentials.detach()
        self._cache: dict[str, object] = {}

    def _get(self, name: str, compute):
        if name not in self._cache:
            with torch.no_grad():
                self._cache[name] = compute()
        return self._cache[name]

    def prob_forward(self) -> _ProbForward:
        return self._get(
            "prob_forward", lambda: _prob_forward(self.potentials, safe=False, with_backward=True)
        )

    def log_partition(self) -> Tensor:
        if "posterior" in self._cache:
            return self.posterior().log_partition
        return self._get(
            "log_partition", lambda: _log_partition(self.potentials, self.prob_forward())
        )

    def posterior(self) -> _Posterior:
        return self._get(
            "posterior", lambda: _posterior(self.potentials, self.prob_forward(), safe=False)
        )

    def log_alpha(self) -> Tensor:
        """``[batch, seq_len, n_labels]`` log forward vectors (end folded in at the last
        position), each position shifted by a constant."""

        def compute() -> Tensor:
            forward = self.prob_forward()
            log_alpha = torch.log(forward.alpha)
            if bool(forward.flagged.any()):
                rows = forward.flagged.nonzero().flatten()
                fallback = _log_forward_backward(self.potentials.rows(rows), backward=False)
                _raise_if_infeasible(fallback.log_partition, rows)
                exact = fallback.log_alpha
                shift = exact.amax(-1, keepdim=True)
                shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
                log_alpha = log_alpha.index_copy(0, rows, exact - shift)
            return log_alpha

        return self._get("log_alpha", compute)


class _ChainLogPartition(torch.autograd.Function):
    """``log Z`` whose backward is the explicit forward-backward (marginals); differentiable again
    when the backward itself is recorded (``create_graph=True``)."""

    @staticmethod
    def forward(ctx, emissions, transitions, start, end, solver):  # type: ignore[override]
        ctx.solver = solver
        ctx.save_for_backward(emissions, transitions, start, end)
        return solver.log_partition().clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        emissions, transitions, start, end = ctx.saved_tensors
        lengths, mask = ctx.solver.potentials.lengths, ctx.solver.potentials.mask
        if torch.is_grad_enabled():
            potentials = _Potentials(emissions, transitions, start, end, lengths, mask)
            forward = _prob_forward(potentials, safe=True, with_backward=True)
            posterior = _posterior(potentials, forward, safe=True)
        else:
            posterior = ctx.solver.posterior()
        marginals = posterior.marginals
        needs = ctx.needs_input_grad
        grad_emissions = grad.view(-1, 1, 1) * marginals if needs[0] else None
        grad_transitions = (
            torch.einsum("b,bac->ac", grad, posterior.pair_sums()) if needs[1] else None
        )
        grad_start = grad @ marginals[:, 0] if needs[2] else None
        grad_end = grad @ _last_position(marginals, lengths) if needs[3] else None
        return grad_emissions, grad_transitions, grad_start, grad_end, None


# ---------------------------------------------------------------------------------------------
# The distribution


class LinearChainCRF(StructDistribution):
    """A batch of linear-chain CRFs over tag sequences, one per sentence.

    ``P(y) ∝ exp(Score(y) / T)`` with ``Score(y) = start[y_0] + sum_i emissions[i, y_i]
    + sum_i transitions[y_i, y_{i+1}] + end[y_{n-1}]``.

    Args:
        emissions: ``[batch, seq_len, n_labels]`` per-token tag scores (ignored at padding).
        transitions: ``[n_labels, n_labels]`` ``transitions[a, c]`` scores tag ``a`` followed
            by tag ``c``.
        start: ``[n_labels]`` score of the first tag (default 0).
        end: ``[n_labels]`` score of the last tag (default 0).
        lengths: ``[batch]`` int64 tokens per sentence, ``1 <= length <= seq_len``.
        temperature: ``T > 0``; every score is divided by it.
        allowed_transitions: ``[n_labels, n_labels]`` bool; ``False`` entries score ``-inf``.
        allowed_start: ``[n_labels]`` bool; tags that may start a sentence.
        allowed_end: ``[n_labels]`` bool; tags that may end a sentence.

    ``-inf`` potentials are allowed (forbidden tags/transitions); a sentence with no allowed tag
    sequence raises ``ValueError`` on inference. Results come back in the dtype of ``emissions``
    (inference runs in float64).

    Examples:
        >>> crf = LinearChainCRF(torch.randn(2, 4, 3), torch.randn(3, 3),
        ...                      lengths=torch.tensor([4, 2]))
        >>> crf.marginals.shape, crf.pair_marginals.shape
        (torch.Size([2, 4, 3]), torch.Size([2, 3, 3, 3]))
        >>> crf.argmax[1, 2:].tolist()
        [-1, -1]
    """

    def __init__(
        self,
        emissions: Tensor,
        transitions: Tensor,
        start: Tensor | None = None,
        end: Tensor | None = None,
        *,
        lengths: Tensor,
        temperature: float = 1.0,
        allowed_transitions: Tensor | None = None,
        allowed_start: Tensor | None = None,
        allowed_end: Tensor | None = None,
    ):
        emissions = _check_scores("emissions", emissions, 3, "[batch, seq_len, n_labels]")
        batch_size, seq_len, n_labels = emissions.shape
        if seq_len < 1 or n_labels < 1:
            raise ValueError(
                f"emissions must have seq_len >= 1 and n_labels >= 1, got {list(emissions.shape)}"
            )
        transitions = _check_scores(
            "transitions", transitions, 2, f"[n_labels, n_labels]=[{n_labels}, {n_labels}]"
        )
        if start is not None:
            start = _check_scores("start", start, 1, f"[n_labels]=[{n_labels}]")
        if end is not None:
            end = _check_scores("end", end, 1, f"[n_labels]=[{n_labels}]")
        scores = {"emissions": emissions, "transitions": transitions, "start": start, "end": end}
        for name, tensor in scores.items():
            if tensor is None or name == "emissions":
                continue
            if tensor.shape[-1] != n_labels or tensor.shape[0] != n_labels:
                raise ValueError(
                    f"{name} must have {n_labels} labels in every dim (n_labels of emissions), "
                    f"got shape {list(tensor.shape)}"
                )
            if tensor.dtype != emissions.dtype or tensor.device != emissions.device:
                raise ValueError(
                    f"{name} must have the dtype and device of emissions ({emissions.dtype}, "
                    f"{emissions.device}), got ({tensor.dtype}, {tensor.device})"
                )
        super().__init__(lengths, temperature, batch_size, seq_len)
        self.lengths = self.lengths.to(emissions.device)
        emissions, transitions = upcast(emissions), upcast(transitions)
        start = None if start is None else upcast(start)
        end = None if end is None else upcast(end)
        emissions = check_potential_values(
            "emissions", emissions, self.mask.unsqueeze(-1), self.temperature
        )
        transitions = check_potential_values("transitions", transitions, None, self.temperature)
        if start is not None:
            start = check_potential_values("start", start, None, self.temperature)
        if end is not None:
            end = check_potential_values("end", end, None, self.temperature)
        self.emissions = emissions
        self.transitions = transitions
        self.start = start
        self.end = end
        self.n_labels = n_labels
        self.allowed_transitions = _check_allowed(
            "allowed_transitions", allowed_transitions, (n_labels, n_labels), emissions.device
        )
        self.allowed_start = _check_allowed(
            "allowed_start", allowed_start, (n_labels,), emissions.device
        )
        self.allowed_end = _check_allowed("allowed_end", allowed_end, (n_labels,), emissions.device)

        self._solver: _ChainSolver | None = None
        self._memo: dict[tuple[str, bool], object] = {}

    # ----- potentials -----------------------------------------------------------------------

    def _tempered(self) -> _Potentials:
        """Tempered, masked potentials in float64 (differentiable when the inputs require grad)."""
        inverse_temperature = 1.0 / self.temperature

        def tempered(scores: Tensor) -> Tensor:
            scores = scores.to(_COMPUTE_DTYPE)
            return scores if inverse_temperature == 1.0 else scores * inverse_temperature

        emissions = tempered(torch.where(self.mask.unsqueeze(-1), self.emissions, 0.0))
        transitions = _masked(tempered(self.transitions), self.allowed_transitions)
        zeros = torch.zeros(self.n_labels, dtype=_COMPUTE_DTYPE, device=self.emissions.device)
        start = _masked(zeros if self.start is None else tempered(self.start), self.allowed_start)
        end = _masked(zeros if self.end is None else tempered(self.end), self.allowed_end)
        return _Potentials(emissions, transitions, start, end, self.lengths, self.mask)

    def _differentiable(self) -> bool:
        return _needs_graph(self.emissions, self.transitions, self.start, self.end)

    @property
    def _nograd(self) -> _ChainSolver:
        """Cached no-grad inference on the detached potentials."""
        if self._solver is None:
            with torch.no_grad():
                self._solver = _ChainSolver(self._tempered())
        return self._solver

    def _cached(self, name: str, compute):
        """Cache a result per (name, whether autograd records it): a result computed without a
        graph is never handed out where gradients are expected, and vice versa."""
        key = (name, self._differentiable())
        if key not in self._memo:
            self._memo[key] = compute(key[1])
        return self._memo[key]

    def _posterior(self) -> _Posterior:
        return self._cached(
            "posterior",
            lambda differentiable: (
                self._differentiable_posterior() if differentiable else self._nograd.posterior()
            ),
        )

    def _differentiable_posterior(self) -> _Posterior:
        potentials = self._tempered()
        forward = _prob_forward(potentials, safe=True, with_backward=True)
        return _posterior(potentials, forward, safe=True)

    # ----- the contract -----------------------------------------------------------------------

    @property
    def log_partition(self) -> Tensor:
        """``[batch]`` ``log Z`` of the tempered potentials (differentiable)."""
        return self._cached("log_partition", self._compute_log_partition)

    def _compute_log_partition(self, differentiable: bool) -> Tensor:
        if not differentiable:
            return self._nograd.log_partition().to(self.emissions.dtype)
        potentials = self._tempered()
        if self._solver is None:  # share the tempered potentials (detached) with the solver
            self._solver = _ChainSolver(potentials)
        log_partition = _ChainLogPartition.apply(
            potentials.emissions,
            potentials.transitions,
            potentials.start,
            potentials.end,
            self._nograd,
        )
        return log_partition.to(self.emissions.dtype)

    @property
    def marginals(self) -> Tensor:
        """``[batch, seq_len, n_labels]`` ``P(y_i = l)``; 0 at padding. Differentiable."""
        return self._cached(
            "marginals", lambda _: self._posterior().marginals.to(self.emissions.dtype)
        )

    @property
    def pair_marginals(self) -> Tensor:
        """``[batch, seq_len-1, n_labels, n_labels]``: ``[b, i, a, c] = P(y_i = a, y_{i+1} = c)``;
        0 where ``i + 1 >= length``. Differentiable."""
        return self._cached(
            "pair_marginals", lambda _: self._posterior().pair_marginals(self.emissions.dtype)
        )

    def score(self, value: Tensor) -> Tensor:
        """``[..., batch]`` tempered score of tag sequences ``value [..., batch, seq_len]``
        (``-inf`` for a disallowed sequence)."""
        return self._score(value).to(self.emissions.dtype)

    def _score(self, value: Tensor) -> Tensor:
        value = self._check_value(value)
        potentials = self._tempered()
        leading = value.shape[:-2]
        tags = value.reshape(-1, self.batch_size, self.max_len)
        mask = self.mask
        safe = torch.where(mask, tags, 0)  # padding may hold anything
        folded = _folded_emissions(potentials)
        unary = folded.unsqueeze(0).expand(tags.shape[0], -1, -1, -1)
        unary = unary.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        total = torch.where(mask, unary, torch.zeros_like(unary)).sum(-1)
        if self.max_len > 1:
            pairs = potentials.transitions[safe[..., :-1], safe[..., 1:]]
            total = total + torch.where(mask[:, 1:], pairs, torch.zeros_like(pairs)).sum(-1)
        return total.reshape((*leading, self.batch_size))

    def log_prob(self, value: Tensor) -> Tensor:
        """``[..., batch]`` ``log P(value)`` (computed in float64)."""
        log_partition = self.log_partition.to(_COMPUTE_DTYPE)
        return (self._score(value) - log_partition).to(self.emissions.dtype)

    def expected_score(
        self, marginals: Tensor | None = None, pair_marginals: Tensor | None = None
    ) -> Tensor:
        """``[batch]`` ``sum_u mu(u) s(u)`` with tempered potentials.

        With no arguments ``mu`` is this distribution's own marginals. Otherwise give both
        ``marginals [batch, seq_len, n_labels]`` and ``pair_marginals [batch, seq_len-1, n_labels,
        n_labels]`` (e.g. a teacher's, on this CRF's tags); their padded positions are ignored and
        must be finite. ``0 * -inf`` counts as 0; mass on a ``-inf`` potential gives ``-inf``.
        """
        return self._expected_score(marginals, pair_marginals).to(self.emissions.dtype)

    def _expected_score(self, marginals: Tensor | None, pair_marginals: Tensor | None) -> Tensor:
        if (marginals is None) != (pair_marginals is None):
            raise ValueError(
                "expected_score needs both marginals and pair_marginals (or neither, for the "
                "distribution's own)"
            )
        if marginals is None:
            posterior = self._posterior()
            marginals, pair_sums = posterior.marginals, posterior.pair_sums()
        else:
            shape = (self.batch_size, self.max_len, self.n_labels)
            _check_marginals("marginals", marginals, shape)
            _check_marginals(
                "pair_marginals", pair_marginals, (*shape[:1], shape[1] - 1, *shape[2:], shape[2])
            )
            pair_mask = self.mask[:, 1:].to(pair_marginals.dtype)
            pair_sums = torch.einsum("bi,biac->bac", pair_mask, pair_marginals)
            marginals = torch.where(self.mask.unsqueeze(-1), marginals, torch.zeros_like(marginals))
            marginals, pair_sums = marginals.to(_COMPUTE_DTYPE), pair_sums.to(_COMPUTE_DTYPE)
        potentials = self._tempered()
        folded = _folded_emissions(potentials)
        unary = marginals * torch.where(marginals == 0, torch.zeros_like(folded), folded)
        transitions = potentials.transitions.expand_as(pair_sums)
        pairs = pair_sums * torch.where(pair_sums == 0, torch.zeros_like(transitions), transitions)
        return unary.sum((-1, -2)) + pairs.sum((-1, -2))

    @property
    def entropy(self) -> Tensor:
        """``[batch]`` Shannon entropy ``log Z - sum_u P(u) s(u)`` (nats, computed in float64)."""

        def compute(_: bool) -> Tensor:
            log_partition = self._posterior().log_partition
            return (log_partition - self._expected_score(None, None)).to(self.emissions.dtype)

        return self._cached("entropy", compute)

    @property
    def argmax(self) -> Tensor:
        """``[batch, seq_len]`` int64 best tag sequence (Viterbi), ``-1`` at padding."""
        if "argmax" not in self._memo:
            self._memo["argmax"] = self._viterbi()
        return self._memo["argmax"]

    def _viterbi(self) -> Tensor:
        with torch.no_grad():
            potentials = self._nograd.potentials
            folded = _folded_emissions(potentials)
            transitions = potentials.transitions
            best = folded[:, 0]
            backpointers = []
            bests = [best]
            for position in range(1, self.max_len):
                best, pointer = (best.unsqueeze(-1) + transitions).max(dim=1)
                best = best + folded[:, position]
                backpointers.append(pointer)
                bests.append(best)
            final = _last_position(torch.stack(bests, dim=1), self.lengths)
            best_score, best_tag = final.max(-1)
            _raise_if_infeasible(best_score)
            return _backtrack(
                best_tag.unsqueeze(0), None, backpointers, self.lengths, self.max_len, 1
            ).squeeze(0)

    def kbest(self, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best tag sequences (exact k-best Viterbi), best first.

        Returns:
            ``(values [k, batch, seq_len] int64, scores [k, batch])``: distinct sequences and their
            tempered scores; where a sentence has fewer than ``k`` allowed sequences the surplus
            rows hold ``-1`` values and ``-inf`` scores. Ties are broken arbitrarily.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        with torch.no_grad():
            potentials = self._nograd.potentials
            folded = _folded_emissions(potentials)
            transitions = potentials.transitions
            batch_size, n_labels = self.batch_size, self.n_labels
            # scores[b, c, r]: the r-th best prefix ending in tag c at the current position
            scores = folded.new_full((batch_size, n_labels, k), -math.inf)
            scores[:, :, 0] = folded[:, 0]
            history = [scores]
            backpointers = []
            for position in range(1, self.max_len):
                # candidates[b, c, a * k + r] = scores[b, a, r] + transitions[a, c]
                candidates = scores.unsqueeze(2) + transitions.view(1, n_labels, n_labels, 1)
                candidates = candidates.permute(0, 2, 1, 3).reshape(batch_size, n_labels, -1)
                scores, pointer = candidates.topk(k, dim=-1)
                scores = scores + folded[:, position].unsqueeze(-1)
                backpointers.append(pointer)
                history.append(scores)
            final = _last_position(torch.stack(history, dim=1), self.lengths)
            best_scores, index = final.reshape(batch_size, -1).topk(k, dim=-1)
            _raise_if_infeasible(best_scores[:, 0])
            tags = _backtrack(
                (index // k).t(), (index % k).t(), backpointers, self.lengths, self.max_len, k
            )
            best_scores = best_scores.t()
            tags = torch.where(torch.isneginf(best_scores).unsqueeze(-1), -1, tags)
            return tags, best_scores.to(self.emissions.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, batch, seq_len]`` int64 exact samples (forward filtering, backward sampling),
        ``-1`` at padding."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        with torch.no_grad():
            log_alpha = self._nograd.log_alpha()
            transitions = self._nograd.potentials.transitions
            lengths = self.lengths
            samples = torch.full(
                (n, self.batch_size, self.max_len), -1, dtype=torch.long, device=lengths.device
            )
            current = torch.zeros(n, self.batch_size, dtype=torch.long, device=lengths.device)
            for position in range(self.max_len - 1, -1, -1):
                here = log_alpha[:, position].unsqueeze(0)
                # P(y_i = a | y_{i+1} = c) ∝ alpha_i[a] exp(transitions[a, c])
                logits = here + transitions.t()[current]
                is_last = (lengths - 1 == position).view(1, -1, 1)
                logits = torch.where(is_last, here.expand_as(logits), logits)
                uniform = torch.rand(
                    logits.shape, generator=generator, dtype=logits.dtype, device=logits.device
                ).clamp_min(_TINY)
                choice = (logits - torch.log(-torch.log(uniform))).argmax(-1)
                inside = (position < lengths).unsqueeze(0)
                current = torch.where(inside, choice, current)
                samples[:, :, position] = torch.where(inside, choice, -1)
            return samples

    def tempered(self, temperature: float) -> LinearChainCRF:
        """The same CRF with every potential further divided by ``temperature``."""
        return LinearChainCRF(
            self.emissions,
            self.transitions,
            self.start,
            self.end,
            lengths=self.lengths,
            temperature=self.temperature * check_temperature(temperature),
            allowed_transitions=self.allowed_transitions,
            allowed_start=self.allowed_start,
            allowed_end=self.allowed_end,
        )

    def _single_sentence(self) -> tuple[LinearChainCRF, list[Tensor]]:
        emissions = self.emissions.detach().new_zeros(1, self.max_len, self.n_labels)
        one = torch.ones(1, dtype=torch.long, device=emissions.device)
        stand_in = LinearChainCRF(
            emissions,
            self.transitions.detach().new_zeros(self.n_labels, self.n_labels),
            lengths=one,
        )
        potentials = [self.emissions, self.transitions, self.start, self.end]
        return stand_in, [p for p in potentials if p is not None]

    def _check_value(self, value: Tensor) -> Tensor:
        return check_tag_values(value, self.mask, self.n_labels)

    def __repr__(self) -> str:
        constrained = [
            name
            for name in ("allowed_transitions", "allowed_start", "allowed_end")
            if getattr(self, name) is not None
        ]
        return (
            f"LinearChainCRF(batch_size={self.batch_size}, max_len={self.max_len}, "
            f"n_labels={self.n_labels}, temperature={self.temperature}, "
            f"start={self.start is not None}, end={self.end is not None}, "
            f"constraints={constrained or None}, dtype={self.emissions.dtype})"
        )


# ---------------------------------------------------------------------------------------------
# Helpers


def _backtrack(
    final_tag: Tensor,
    final_rank: Tensor | None,
    backpointers: list[Tensor],
    lengths: Tensor,
    seq_len: int,
    k: int,
) -> Tensor:
    """Follow Viterbi backpointers: ``[k, batch, seq_len]`` tags, ``-1`` at padding.

    ``final_tag [k, batch]`` (and ``final_rank``, for k-best) at each sentence's last position;
    ``backpointers[i - 1] [batch, n_labels(, k)]`` points from position ``i`` to ``i - 1`` (for
    k-best, as ``previous_tag * k + previous_rank``).
    """
    tags = torch.full(
        (final_tag.shape[0], lengths.shape[0], seq_len),
        -1,
        dtype=torch.long,
        device=lengths.device,
    )
    tag = final_tag
    rank = final_rank
    for position in range(seq_len - 1, -1, -1):
        is_last = lengths - 1 == position
        tag = torch.where(is_last, final_tag, tag)
        if rank is not None:
            rank = torch.where(is_last, final_rank, rank)
        inside = position < lengths
        tags[:, :, position] = torch.where(inside, tag, -1)
        if position == 0:
            break
        pointer = backpointers[position - 1]  # [batch, n_labels] or [batch, n_labels, k]
        if rank is None:
            tag = pointer.gather(1, tag.t()).t()
        else:
            flat = pointer.flatten(1)  # [batch, n_labels * k]
            previous = flat.gather(1, (tag * k + rank).t()).t()
            tag, rank = previous // k, previous % k
    return tags


def _masked(scores: Tensor, allowed: Tensor | None) -> Tensor:
    """``scores`` with ``-inf`` where ``allowed`` is ``False``."""
    if allowed is None:
        return scores
    return torch.where(allowed, scores, torch.full_like(scores, -math.inf))


def _check_allowed(
    name: str, allowed: Tensor | None, shape: tuple[int, ...], device: torch.device
) -> Tensor | None:
    if allowed is None:
        return None
    if not isinstance(allowed, Tensor) or allowed.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor of shape {list(shape)}")
    if tuple(allowed.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(allowed.shape)}")
    return allowed.to(device)


def _check_scores(name: str, tensor: Tensor, dims: int, shape_doc: str) -> Tensor:
    """A floating tensor of ``dims`` dimensions (values are checked by
    ``_check_no_nan_or_posinf``)."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}, got {type(tensor).__name__}")
    if tensor.dim() != dims:
        raise ValueError(f"{name} must have shape {shape_doc}, got {list(tensor.shape)}")
    if not tensor.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor, got {tensor.dtype}")
    return tensor


def _check_no_nan_or_posinf(scores: dict[str, Tensor]) -> None:
    """Raise ``NumericalError`` for NaN and ``ValueError`` for ``+inf`` scores (one sync for all:
    ``max`` propagates NaN)."""
    with torch.no_grad():
        tops = torch.stack(
            [tensor.max() if tensor.numel() else tensor.new_zeros(()) for tensor in scores.values()]
        ).tolist()
    for name, top in zip(scores, tops, strict=True):
        if math.isnan(top):
            raise NumericalError(f"{name} contains NaN")
        if top == math.inf:
            raise ValueError(f"{name} must not contain +inf (use -inf to forbid)")


def _check_marginals(name: str, marginals: Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(marginals, Tensor) or not marginals.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor of shape {list(shape)}")
    if tuple(marginals.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(marginals.shape)}")
