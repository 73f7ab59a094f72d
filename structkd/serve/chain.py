"""Linear-chain CRF inference in numpy (float64), for serving exported taggers without torch:
Viterbi, forward-backward, token marginals, the probability of a labeled span, and a stable
log-softmax for softmax taggers.

The conventions are those of ``structkd.structures.linear_chain.LinearChainCRF`` (temperature 1):
a tag sequence ``y`` of a sentence of ``n`` tokens scores

    Score(y) = start[y_0] + sum_{i<n} emissions[i, y_i] + sum_{i<n-1} transitions[y_i, y_{i+1}]
               + end[y_{n-1}],            P(y) = exp(Score(y) - log Z),

``transitions[a, c]`` scoring tag ``a`` followed by tag ``c``. A forbidden tag, start, end or
transition scores ``-inf`` (a constraint mask is applied by the caller as ``np.where(allowed,
scores, -inf)``, as ``LinearChainCRF`` does with its ``allowed_*`` masks); ``NaN`` and ``+inf``
are refused (``ValueError``), and a sentence with no allowed sequence (``log Z = -inf``) raises
``ValueError``: nothing is clamped. Batches are padded: ``emissions [B, N, L]`` and ``lengths
[B]`` (``1 <= length <= N``); what lies at padded positions is never read.

The forward vectors fold ``start`` into position 0 and ``end`` into each sentence's last position
(as ``LinearChainCRF``'s): ``log_alpha[i, c] = log sum_{y_0..y_i = c} exp(score of the prefix)``,
``log_beta[i, c] = log sum_{y_i = c, y_{i+1}..} exp(score of the rest after i)`` (0 at the last
position), so ``P(y_i = c) = exp(log_alpha[i, c] + log_beta[i, c] - log Z)``.

Forward-backward runs in scaled probability space: with ``K = exp(transitions - max T)`` (a
forbidden transition is ``exp(-inf) = 0``) and ``E_i = exp(folded_i - max_c folded_i)``, each step
is one ``[B, L] x [L, L]`` product for both directions at once, ``p_i = normalize((p_{i-1} *
E_{i-1}) @ K)`` (``alpha_i`` is ``p_i * E_i`` up to a scale; ``beta`` the same on each sentence
reversed, with ``K^T``), and the logarithms of the normalizers and shifts give back
``log_alpha``, ``log_beta`` and ``log Z``. That is exact to float64 rounding as long as every
product of the recursion is a normal float, which is checked once per batch from the spread of
the scores; a sentence whose scores are too spread for it (a label ``~700`` nats below the best
one at a step: far beyond what a trained tagger emits) is recomputed with the log-space recursion
(a ``logsumexp`` over ``[B, L, L]`` per step), so no result depends on an underflow. Viterbi is a
``[B, L, L]`` max-plus step (``argmax``, then the best scores gathered) per position.

Only numpy is imported here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "ChainDecoding",
    "ChainPosterior",
    "decode",
    "forward_backward",
    "log_softmax",
    "marginals",
    "span_log_probs",
    "viterbi",
]

# The scaled recursion is trusted where each of its products is at least exp(-_SCALED_FLOOR):
# a normal float64 (the smallest is exp(-708.4)), with a margin for the sums and normalizers.
_SCALED_FLOOR = 690.0


class ChainPosterior(NamedTuple):
    """The result of ``forward_backward``: ``log_alpha [B, N, L]`` and ``log_beta [B, N, L]``
    (``-inf`` at padded positions), ``log_z [B]`` (finite), all float64."""

    log_alpha: np.ndarray
    log_beta: np.ndarray
    log_z: np.ndarray


class ChainDecoding(NamedTuple):
    """The result of ``decode``: ``best [B, N]`` int64 (the Viterbi labels, ``-1`` at padding),
    ``marginals [B, N, L]`` float64 (0 at padding) and ``posterior`` (``ChainPosterior``)."""

    best: np.ndarray
    marginals: np.ndarray
    posterior: ChainPosterior


# ---------------------------------------------------------------------------------------------
# Checks


def _scores(name: str, values: object, shape: tuple[int, ...] | None, ndim: int) -> np.ndarray:
    """``values`` as a float64 array of ``ndim`` dimensions (and ``shape``, if given)."""
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a float array; got dtype {array.dtype}")
    if array.ndim != ndim or (shape is not None and array.shape != shape):
        expected = f"{ndim} dimensions" if shape is None else f"shape {list(shape)}"
        raise ValueError(f"{name} must have {expected}; got {list(array.shape)}")
    return array.astype(np.float64, copy=False)


def _check_values(name: str, array: np.ndarray, keep: np.ndarray | None = None) -> None:
    """``ValueError`` for NaN or ``+inf`` in ``array`` (where ``keep``, broadcastable, is True).

    One pass when the sum is finite or ``-inf`` (no NaN, no ``+inf``: the usual case)."""
    with np.errstate(invalid="ignore", over="ignore"):
        total = array.sum() if keep is None else np.where(keep, array, 0.0).sum()
    if not (np.isnan(total) or np.isposinf(total)):
        return
    bad = np.isnan(array) | np.isposinf(array)
    if keep is not None:
        bad &= keep
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "NaN" if np.isnan(array[where]) else "+inf"
        raise ValueError(
            f"{name} holds {what} at index {list(where)} (scores must be finite; -inf forbids)"
        )


def _check_lengths(lengths: object, batch_size: int, max_len: int) -> np.ndarray:
    array = np.asarray(lengths)
    if array.dtype.kind not in "iu" or array.shape != (batch_size,):
        raise ValueError(
            f"lengths must be an integer array of shape [batch]=[{batch_size}]; got "
            f"{array.dtype} {list(array.shape)}"
        )
    if batch_size and (array.min() < 1 or array.max() > max_len):
        raise ValueError(
            f"lengths must be in 1..{max_len} (the padded length); got min {int(array.min())}, "
            f"max {int(array.max())}"
        )
    return array.astype(np.int64, copy=False)


def _length_mask(lengths: np.ndarray, max_len: int) -> np.ndarray:
    """``[B, N]`` bool, True on real tokens."""
    return np.arange(max_len) < lengths[:, None]


class _Chain(NamedTuple):
    """Checked potentials: ``folded [B, N, L]`` (emissions with ``start`` added at position 0
    and ``end`` at each last position, 0 at padding), ``transitions [L, L]``, ``lengths [B]``,
    ``mask [B, N]``."""

    folded: np.ndarray
    transitions: np.ndarray
    lengths: np.ndarray
    mask: np.ndarray


def _chain(
    emissions: object,
    transitions: object,
    start: object | None,
    end: object | None,
    lengths: object,
    *,
    check_values: bool = True,
) -> _Chain:
    """The folded potentials, with their shapes checked (and their values unless
    ``check_values=False``: potentials already checked by the caller)."""
    emissions = _scores("emissions", emissions, None, 3)
    batch_size, max_len, n_labels = emissions.shape
    if max_len < 1 or n_labels < 1:
        raise ValueError(
            f"emissions must have seq_len >= 1 and n_labels >= 1; got {list(emissions.shape)}"
        )
    transitions = _scores("transitions", transitions, (n_labels, n_labels), 2)
    zeros = np.zeros(n_labels)
    start = zeros if start is None else _scores("start", start, (n_labels,), 1)
    end = zeros if end is None else _scores("end", end, (n_labels,), 1)
    lengths = _check_lengths(lengths, batch_size, max_len)
    mask = _length_mask(lengths, max_len)
    folded = np.where(mask[..., None], emissions, 0.0)
    if check_values:
        _check_values("emissions", folded)
        for name, array in (("transitions", transitions), ("start", start), ("end", end)):
            _check_values(name, array)
    folded[:, 0] += start
    folded[np.arange(batch_size), lengths - 1] += end
    return _Chain(folded, transitions, lengths, mask)


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    """``log sum exp`` over ``axis``; ``-inf`` (no warning) where every entry is ``-inf``."""
    shift = values.max(axis=axis, keepdims=True)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    with np.errstate(divide="ignore"):
        total = np.log(np.exp(values - shift).sum(axis=axis, keepdims=True))
    return np.squeeze(total + shift, axis=axis)


def _raise_if_infeasible(scores: np.ndarray) -> None:
    """``ValueError`` naming the sentences whose ``scores [B]`` (log Z or best score) are -inf."""
    infeasible = scores == -np.inf
    if infeasible.any():
        rows = np.flatnonzero(infeasible).tolist()
        raise ValueError(
            f"no tag sequence is allowed for sentence(s) {rows}: every sequence has a -inf score "
            "(check the constraint masks and -inf potentials)"
        )


# ---------------------------------------------------------------------------------------------
# Viterbi


def _viterbi(chain: _Chain) -> np.ndarray:
    """``[B, N]`` best labels (``-1`` at padding); see ``viterbi``."""
    folded, transitions, lengths, mask = chain
    batch_size, max_len, n_labels = folded.shape
    rows = np.arange(batch_size)
    steps = np.ascontiguousarray(folded.transpose(1, 0, 2))  # [N, B, L], time-major
    # [B, L (to), L (from)]: transitions[from, to] for every sentence
    into = np.ascontiguousarray(np.broadcast_to(transitions.T, (batch_size, n_labels, n_labels)))
    delta = np.empty_like(steps)  # delta[i]: best score of a prefix ending in each label at i
    delta[0] = steps[0]
    pointers = np.empty((max(max_len - 1, 0), batch_size, n_labels), dtype=np.intp)
    candidates = np.empty_like(into)
    flat_candidates = candidates.reshape(-1)
    offsets = np.arange(batch_size * n_labels) * n_labels  # row starts of the flat candidates
    index = np.empty_like(offsets)
    # rows run past their end unmasked: what they compute there is never read
    for position in range(1, max_len):
        np.add(into, delta[position - 1][:, None, :], out=candidates)
        pointer = pointers[position - 1]
        candidates.argmax(axis=2, out=pointer)  # ties: the lowest label
        np.add(offsets, pointer.reshape(-1), out=index)
        np.take(flat_candidates, index, out=delta[position].reshape(-1))
        delta[position] += steps[position]
    last = lengths - 1
    final = delta[last, rows]  # [B, L] at each sentence's last position
    tag = final.argmax(axis=-1)
    _raise_if_infeasible(final[rows, tag])
    # past a sentence's end, each label points to itself: backtracking from position N - 1
    # keeps the sentence's last label until its last position
    pointers[~mask[:, 1:].T] = np.arange(n_labels)
    tags = np.empty((max_len, batch_size), dtype=np.int64)
    tags[max_len - 1] = tag
    for position in range(max_len - 1, 0, -1):
        tag = pointers[position - 1][rows, tag]
        tags[position - 1] = tag
    return np.where(mask, tags.T, -1)


def viterbi(
    emissions: np.ndarray,
    transitions: np.ndarray,
    start: np.ndarray | None,
    end: np.ndarray | None,
    lengths: np.ndarray,
) -> np.ndarray:
    """The best tag sequence of each sentence: ``[B, N]`` int64, ``-1`` at padding.

    ``delta_i[c] = max_a (delta_{i-1}[a] + transitions[a, c]) + folded_i[c]``, then backtrack
    from ``argmax_c delta_{n-1}[c]``. Ties go to the lowest label index. ``emissions [B, N, L]``,
    ``transitions [L, L]``, ``start``/``end`` ``[L]`` (``None``: 0), ``lengths [B]``.
    """
    return _viterbi(_chain(emissions, transitions, start, end, lengths))


# ---------------------------------------------------------------------------------------------
# Forward-backward


def _forward_backward_log(chain: _Chain) -> ChainPosterior:
    """Log-space forward-backward (a ``logsumexp`` over ``[B, L, L]`` per step): exact for any
    spread of the scores; the reference the scaled recursion falls back to."""
    folded, transitions, lengths, mask = chain
    batch_size, max_len, _ = folded.shape
    log_alpha = np.empty_like(folded)
    log_alpha[:, 0] = folded[:, 0]
    for position in range(1, max_len):
        incoming = _logsumexp(log_alpha[:, position - 1, :, None] + transitions, axis=1)
        log_alpha[:, position] = incoming + folded[:, position]
    log_alpha = np.where(mask[..., None], log_alpha, -np.inf)
    log_z = _logsumexp(log_alpha[np.arange(batch_size), lengths - 1], axis=-1)
    _raise_if_infeasible(log_z)

    log_beta = np.full_like(folded, -np.inf)
    is_last = lengths - 1
    log_beta[:, max_len - 1] = np.where((is_last == max_len - 1)[:, None], 0.0, -np.inf)
    for position in range(max_len - 2, -1, -1):
        following = folded[:, position + 1] + log_beta[:, position + 1]  # [B, L (to)]
        outgoing = _logsumexp(transitions + following[:, None, :], axis=2)  # [B, L (from)]
        here = np.where((position < is_last)[:, None], outgoing, -np.inf)
        log_beta[:, position] = np.where((position == is_last)[:, None], 0.0, here)
    return ChainPosterior(log_alpha, log_beta, log_z)


def _scaled_passes(factors: np.ndarray, kernels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalized recursions, ``G`` of them in each of ``B`` rows, one matrix product per step
    for all: ``v_0 = 1 / L`` and ``v_k = normalize((v_{k-1} * factors_{k-1}) @ kernels[g])``
    for the rows of group ``g``.

    ``factors [N, G * B, L]`` (group-major rows, each entry in ``[0, 1]``), ``kernels [G, L,
    L]``. Returns ``(v [N, G * B, L], log s [N, G * B])``, ``s_k`` the sum ``v_k`` was divided
    by (``s_0 = L``); a zero sum gives ``-inf`` and NaN from there on (the caller's checks send
    such a row to the log-space recursion)."""
    n_steps, n_rows, n_labels = factors.shape
    groups = kernels.shape[0]
    values = np.empty(factors.shape)
    sums = np.empty((n_steps, n_rows))
    values[0] = 1.0 / n_labels
    sums[0] = n_labels
    ones = np.ones(n_labels)
    scratch = np.empty((n_rows, n_labels))
    stacked = scratch.reshape(groups, n_rows // groups, n_labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        for step in range(1, n_steps):
            here = values[step]
            np.multiply(values[step - 1], factors[step - 1], out=scratch)
            np.matmul(stacked, kernels, out=here.reshape(stacked.shape))
            total = sums[step]
            np.dot(here, ones, out=total)
            here /= total[:, None]
        log_sums = np.log(sums)
    return values, log_sums


def _forward_backward(chain: _Chain) -> tuple[ChainPosterior, np.ndarray]:
    """Scaled forward-backward (module docstring), with the log-space recursion for the rows
    whose scores are too spread for it: ``(posterior, marginals [B, N, L])``; see
    ``forward_backward``.

    Both directions run as one recursion over ``2B`` rows: the forward one on the positions
    ``0, 1, ..`` (``v_i = p_i``, what reaches position ``i`` before its own scores:
    ``alpha_i = p_i * exp(folded_i)``), the backward one on each sentence reversed, ``k`` for
    position ``n - 1 - k`` (``v_k = beta_{n-1-k}``, ``K`` transposed), so that both start at
    step 0 with ``1`` for every label. With ``shift_i = max_c folded_i[c]`` and ``top = max
    transitions``, the true ``v_k`` is the computed one times ``exp(S_k)``, ``S_0 = log L``,
    ``S_k = S_{k-1} + log s_k + shift of step k - 1 + top``."""
    folded, transitions, lengths, mask = chain
    batch_size, max_len, n_labels = folded.shape
    rows = np.arange(batch_size)
    last = lengths - 1
    steps = np.ascontiguousarray(folded.transpose(1, 0, 2))  # [N, B, L], time-major
    outside = ~mask.T  # [N, B]
    reverse = np.maximum(last - np.arange(max_len)[:, None], 0)  # [N, B]: position of step k
    # each position's best and worst allowed scores (the only non-finite scores are -inf)
    shift = steps.max(axis=-1)  # [N, B]
    spread = shift - np.min(steps, axis=-1, initial=np.inf, where=steps > -np.inf)
    spread = np.concatenate([spread, spread[reverse, rows]], axis=1)  # [N, 2B]
    shift = np.where(shift > -np.inf, shift, 0.0)  # a position forbidding every label: 0
    finite_transitions = transitions[transitions > -np.inf]
    top = float(finite_transitions.max()) if finite_transitions.size else 0.0
    if finite_transitions.size:
        spread += top - float(finite_transitions.min())
    kernel = np.exp(transitions - top)  # [L, L] in [0, 1], 0 where forbidden
    factors = np.empty((max_len, 2 * batch_size, n_labels))  # [N, 2B, L] in [0, 1]
    forward_factors, backward_factors = factors[:, :batch_size], factors[:, batch_size:]
    np.exp(steps - shift[..., None], out=forward_factors)
    backward_factors[...] = forward_factors[reverse, rows]
    scaled, log_sums = _scaled_passes(factors, np.stack([kernel, kernel.T]))
    scale = log_sums.copy()  # [N, 2B]
    scale[1:, :batch_size] += shift[:-1] + top
    scale[1:, batch_size:] += shift[reverse[:-1], rows] + top
    np.cumsum(scale, axis=0, out=scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_scaled = np.log(scaled)

    # the rows to recompute: a zero (or NaN) normalizer, or a product of the recursion that may
    # be below exp(-_SCALED_FLOOR): the smallest nonzero value of the previous step times the
    # smallest nonzero factor (the spread of that position's scores and of the transitions)
    low = np.min(log_scaled, axis=-1, initial=0.0, where=scaled > 0)  # [N, 2B]
    bad = ~np.isfinite(log_sums)
    bad[1:] |= low[:-1] - spread[:-1] < -_SCALED_FLOOR
    # step k of either direction is inside the sentence iff k < length
    redo = ((bad[:, :batch_size] | bad[:, batch_size:]) & ~outside).any(axis=0)  # [B]

    log_scaled += scale[..., None]  # log v: [N, 2B, L]
    log_alpha = log_scaled[:, :batch_size]
    log_alpha += steps
    log_beta = log_scaled[:, batch_size:][reverse, rows]  # [N, B, L], time-major
    log_alpha[outside] = -np.inf
    log_beta[outside] = -np.inf
    final = log_alpha[last, rows]  # [B, L]
    top_final = np.maximum(final.max(axis=-1), np.finfo(np.float64).min)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_z = np.log(np.exp(final - top_final[:, None]).sum(axis=-1)) + top_final
    redo |= ~np.isfinite(log_z)
    log_alpha, log_beta = log_alpha.transpose(1, 0, 2), log_beta.transpose(1, 0, 2)  # [B, N, L]
    if redo.any():
        exact = _forward_backward_log(_Chain(folded[redo], transitions, lengths[redo], mask[redo]))
        log_alpha[redo], log_beta[redo], log_z[redo] = exact
    posterior = ChainPosterior(log_alpha, log_beta, log_z)
    return posterior, _marginals(posterior)


def forward_backward(
    emissions: np.ndarray,
    transitions: np.ndarray,
    start: np.ndarray | None,
    end: np.ndarray | None,
    lengths: np.ndarray,
) -> ChainPosterior:
    """Forward-backward: ``ChainPosterior(log_alpha, log_beta, log_z)``.

    ``log_alpha_i[c] = logsumexp_a (log_alpha_{i-1}[a] + transitions[a, c]) + folded_i[c]``,
    ``log_beta_i[a] = logsumexp_c (transitions[a, c] + folded_{i+1}[c] + log_beta_{i+1}[c])``
    (0 at the last position), ``log Z = logsumexp_c log_alpha_{n-1}[c]``, computed by the scaled
    recursion of the module docstring; shapes as ``viterbi``.
    """
    return _forward_backward(_chain(emissions, transitions, start, end, lengths))[0]


def _marginals(posterior: ChainPosterior) -> np.ndarray:
    """``[B, N, L]`` (C order) ``exp(log_alpha + log_beta - log Z)``, computed in the memory
    order of ``log_alpha`` (time-major for ``_forward_backward``'s)."""
    log_alpha, log_beta, log_z = posterior
    total = np.add(log_alpha, log_beta)
    total -= log_z[:, None, None]
    return np.ascontiguousarray(np.exp(total, out=total))


def marginals(
    emissions: np.ndarray,
    transitions: np.ndarray,
    start: np.ndarray | None,
    end: np.ndarray | None,
    lengths: np.ndarray,
    *,
    posterior: ChainPosterior | None = None,
) -> np.ndarray:
    """``[B, N, L]`` token marginals ``P(y_i = c) = exp(log_alpha_i[c] + log_beta_i[c] - log Z)``
    (0 at padding); ``posterior``: the ``forward_backward`` of the same potentials, if known."""
    if posterior is None:
        posterior = forward_backward(emissions, transitions, start, end, lengths)
    return _marginals(posterior)


def decode(
    emissions: np.ndarray,
    transitions: np.ndarray,
    start: np.ndarray | None,
    end: np.ndarray | None,
    lengths: np.ndarray,
) -> ChainDecoding:
    """``viterbi``, ``forward_backward`` and ``marginals`` of one batch, its potentials checked
    once: ``ChainDecoding(best [B, N], marginals [B, N, L], posterior)``; shapes as
    ``viterbi``."""
    chain = _chain(emissions, transitions, start, end, lengths)
    best = _viterbi(chain)
    posterior, token_marginals = _forward_backward(chain)
    return ChainDecoding(best, token_marginals, posterior)


def span_log_probs(
    emissions: np.ndarray,
    transitions: np.ndarray,
    start: np.ndarray | None,
    end: np.ndarray | None,
    lengths: np.ndarray,
    rows: np.ndarray,
    starts: np.ndarray,
    paths: np.ndarray,
    *,
    posterior: ChainPosterior | None = None,
) -> np.ndarray:
    """``[S]`` the log-probability that the labels of span ``s`` equal ``paths[s]``:
    ``log P(y_{i..j} = p) = log_alpha_i[p_0] + sum_{k=i+1..j} (transitions[p_{k-1-i}, p_{k-i}]
    + folded_k[p_{k-i}]) + log_beta_j[p_{j-i}] - log Z`` (exact; ``-inf`` for a forbidden path).

    ``rows [S]``: each span's sentence; ``starts [S]``: its first token ``i``; ``paths [S, W]``
    int: its labels from ``i`` on, ``-1``-padded past its last token ``j`` (at least one label,
    ``j < length``). ``posterior``: the ``forward_backward`` of the same potentials, if known
    (the potentials' values, checked by it, are then not checked again).
    """
    folded, transitions, lengths, mask = _chain(
        emissions, transitions, start, end, lengths, check_values=posterior is None
    )
    batch_size, max_len, n_labels = folded.shape
    rows, starts, paths = np.asarray(rows), np.asarray(starts), np.asarray(paths)
    n_spans = rows.shape[0] if rows.ndim == 1 else -1
    if rows.ndim != 1 or starts.shape != (n_spans,) or paths.ndim != 2 or len(paths) != n_spans:
        raise ValueError(
            f"rows and starts must have shape [spans], paths [spans, width]; got "
            f"{list(rows.shape)}, {list(starts.shape)}, {list(paths.shape)}"
        )
    if n_spans == 0:
        return np.zeros(0)
    for name, array in (("rows", rows), ("starts", starts), ("paths", paths)):
        if array.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer array; got {array.dtype}")
    if paths.shape[1] < 1 or (paths[:, 0] < 0).any():
        raise ValueError("every span's path must hold at least one label")
    present = paths >= 0
    if (present[:, 1:] & ~present[:, :-1]).any():
        raise ValueError("paths must be -1 only after each span's last label")
    if (paths >= n_labels).any():
        raise ValueError(f"paths must hold labels in 0..{n_labels - 1} (or -1 for padding)")
    if rows.min() < 0 or rows.max() >= batch_size:
        raise ValueError(f"rows must be sentence indices in 0..{batch_size - 1}")
    widths = present.sum(axis=1)
    last = starts + widths - 1
    if starts.min() < 0 or (last >= lengths[rows]).any():
        raise ValueError("every span must lie inside its sentence (0 <= start, end < length)")
    if posterior is None:
        posterior = _forward_backward(_Chain(folded, transitions, lengths, mask))[0]
    log_alpha, log_beta, log_z = posterior

    labels = np.where(present, paths, 0)
    score = log_alpha[rows, starts, labels[:, 0]]
    for offset in range(1, paths.shape[1]):
        here = present[:, offset]
        position = np.minimum(starts + offset, max_len - 1)
        step = (
            transitions[labels[:, offset - 1], labels[:, offset]]
            + folded[rows, position, labels[:, offset]]
        )
        score = score + np.where(here, step, 0.0)
    final = labels[np.arange(n_spans), widths - 1]
    return score + log_beta[rows, last, final] - log_z[rows]


def log_softmax(scores: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    """Stable ``log softmax`` over the last axis: ``s - max(s) - log sum exp(s - max(s))``.

    ``scores [..., L]`` float (``-inf`` forbids a label; NaN, ``+inf`` or a row of ``-inf`` raise
    ``ValueError``). With ``lengths [B]``, ``scores`` is ``[B, N, L]`` and padded positions are
    not read: they come back ``-inf`` (probability 0). Returns float64 of ``scores``' shape.
    """
    if lengths is None:
        array = _scores("scores", scores, None, np.ndim(scores))
        if array.ndim < 1 or array.shape[-1] < 1:
            raise ValueError(f"scores must have a last axis of labels; got {list(array.shape)}")
        keep = np.ones(array.shape[:-1], dtype=bool)
    else:
        array = _scores("scores", scores, None, 3)
        keep = _length_mask(_check_lengths(lengths, array.shape[0], array.shape[1]), array.shape[1])
        if array.shape[-1] < 1:
            raise ValueError(f"scores must have at least one label; got {list(array.shape)}")
    _check_values("scores", array, keep[..., None])
    used = np.where(keep[..., None], array, 0.0)
    top = used.max(axis=-1, keepdims=True)
    empty = np.isneginf(top[..., 0]) & keep
    if empty.any():
        where = [int(i) for i in np.argwhere(empty)[0]]
        raise ValueError(f"scores at {where} forbid every label (all -inf)")
    shifted = used - top
    with np.errstate(divide="ignore"):
        result = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return np.where(keep[..., None], result, -np.inf)
