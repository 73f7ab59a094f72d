"""Dependency trees from a sequence-labeling parser's label scores, in numpy and batched: each
word's best label, its head, the repair of every ill-formed prediction into a tree, the relations
of the repaired words, and the probability of each decoded head. The torch student
(``SequenceLabelingParser.decode``) and the exported one (``OnnxDepPredictor``) both decode here, so
their trees are the same function of the scores.

Inputs are padded batches: ``B`` sentences of at most ``N`` words, ``lengths`` ``[B]``; word
``i + 1`` of sentence ``b`` is at ``[b, i]``. A label ``l`` of the scheme has a head code
``label_code[l]`` and a relation ``label_relation[l]``; ``code_heads`` ``[B, N, C]`` gives the head
each code denotes for each word (``0`` = root, ``-1`` = none; ``DepLabelScheme.code_head_array``).

Decoding (Strzyz et al. 2019, the rules of ``decode_scores``): each word takes its best label; if
that label denotes no head, its best label that does ("invalid head"). The heads are then repaired
into a tree (``repair_trees``); a word whose head the repair changed takes the relation of its best
label denoting the new head (else of its best label of the same kind, root or not).

Repair, per sentence (``repair_trees``), in order:

1. an invalid head (outside ``0..n``, or the word itself) is replaced by the root word;
2. the root word: with several roots, the most confident one (ties: the first), the others attach
   to it; with none, the word with the best root score (ties: the first), or without root scores
   the first word with an invalid head, else the lowest word of the cycle reached from word 1;
3. every cycle left is broken by attaching its lowest word to the root word.

Batched: a well-formedness check over the batch (``is_tree_batch``), then the repair of only the
sentences that need it, vectorized over them. Cycles are found by pointer jumping: with
``A_0 = heads`` and ``A_{k+1} = A_k[A_k]`` (the ``2^(k+1)``-th ancestor), a word reaches the root
iff ``A_K(word) = 0`` for ``2^K > n``; the words that do not reach it lead into cycles, whose
members are the ``A_K`` of those words and whose lowest word is the minimum carried along the
jumps. Cycles are disjoint, so breaking all at once equals breaking one at a time.

Only numpy is imported here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "PROBLEMS",
    "TreeDecoding",
    "decode_scores",
    "head_probabilities",
    "is_tree_batch",
    "log_softmax",
    "problem_names",
    "repair_trees",
]

PROBLEMS: tuple[str, ...] = ("invalid head", "no root", "multiple roots", "cycle")
"""The columns of a decoding's ``problems``: what the repair fixed (``no root`` and ``multiple
roots`` exclude each other)."""

# every subset of PROBLEMS as the tuple of its names, indexed by its bit mask (bit k: PROBLEMS[k])
_PROBLEM_SETS = np.empty(2 ** len(PROBLEMS), dtype=object)
_PROBLEM_SETS[:] = [
    tuple(name for bit, name in enumerate(PROBLEMS) if mask >> bit & 1)
    for mask in range(2 ** len(PROBLEMS))
]


class TreeDecoding(NamedTuple):
    """Decoded trees of a batch.

    Attributes:
        heads: ``[B, N]`` int64, the head of word ``i + 1`` at ``[b, i]`` (``0`` = root), ``-1``
            at padding; every sentence a tree.
        relations: ``[B, N]`` int64 relation index (into the scheme's relations), ``-1`` at
            padding.
        problems: ``[B, len(PROBLEMS)]`` bool, what the repair fixed; a row of ``False``: the
            best labels formed a tree.
    """

    heads: np.ndarray
    relations: np.ndarray
    problems: np.ndarray

    @property
    def well_formed(self) -> np.ndarray:
        """``[B]`` bool: the best labels formed a tree before any repair."""
        return ~self.problems.any(1)


def problem_names(problems: np.ndarray) -> list[tuple[str, ...]]:
    """``[B, len(PROBLEMS)]`` bool -> per sentence the names of its problems (``()`` for a
    tree), in ``PROBLEMS`` order."""
    bits = (np.asarray(problems, dtype=np.int64) << np.arange(len(PROBLEMS))).sum(1)
    return _PROBLEM_SETS[bits].tolist()


def log_softmax(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """``scores - logsumexp(scores)`` along ``axis`` (max-shifted)."""
    scores = np.asarray(scores)
    top = scores.max(axis=axis, keepdims=True)
    shifted = scores - np.where(np.isfinite(top), top, 0)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


# ------------------------------------------------------------------------------------------------
# checks


def _lengths(lengths: object, batch: int, max_len: int) -> np.ndarray:
    array = np.asarray(lengths)
    if array.ndim != 1 or array.shape[0] != batch:
        raise ValueError(f"lengths must have shape [batch]=[{batch}], got {list(array.shape)}")
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"lengths must be integers, got {array.dtype}")
    array = array.astype(np.int64)
    if batch and (int(array.min()) < 1 or int(array.max()) > max_len):
        raise ValueError(
            f"lengths must lie in 1..{max_len} (the padded length), got "
            f"{int(array.min())}..{int(array.max())}"
        )
    return array


def _word_scores(name: str, values: object, shape: tuple[int, int]) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(
            f"{name} must have shape {list(shape)} like heads, got {list(array.shape)}"
        )
    return array


# ------------------------------------------------------------------------------------------------
# trees


def _jump(parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pointer jumping over ``parents`` ``[B, M]`` (``parents[b, 0] = 0``, entries in ``0..M-1``):
    ``(ancestor, lowest)`` with ``ancestor[b, v] = parents^(2^K)(v)`` for the first ``2^K >= M``,
    and ``lowest[b, v]`` the smallest of ``v, parents(v), ..., parents^(2^K - 1)(v)``."""
    ancestor = parents
    lowest = np.broadcast_to(np.arange(parents.shape[1]), parents.shape)
    span = 1
    while span < parents.shape[1]:
        lowest = np.minimum(lowest, np.take_along_axis(lowest, ancestor, 1))
        ancestor = np.take_along_axis(ancestor, ancestor, 1)
        span *= 2
    return ancestor, lowest


def _with_root(heads: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``[B, N + 1]`` parent array: node 0 (the root) and every word not in ``keep`` point to 0,
    the others to their head."""
    parents = np.zeros((heads.shape[0], heads.shape[1] + 1), dtype=np.int64)
    parents[:, 1:] = np.where(keep, heads, 0)
    return parents


def is_tree_batch(heads: np.ndarray, lengths: object) -> np.ndarray:
    """``[B]`` bool: ``heads`` ``[B, N]`` (head of word ``i + 1`` at ``[b, i]``, padding ignored) is
    a tree (every head in ``0..n`` and not the word itself, one root, every word reaching it)."""
    heads = np.asarray(heads, dtype=np.int64)
    if heads.ndim != 2:
        raise ValueError(f"heads must have shape [batch, max_len], got {list(heads.shape)}")
    lengths = _lengths(lengths, heads.shape[0], heads.shape[1])
    return _formed(heads, lengths)[0]


def _formed(heads: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(formed [B], mask [B, N], invalid [B, N], roots [B, N])`` of ``heads``."""
    max_len = heads.shape[1]
    words = np.arange(1, max_len + 1)
    mask = words <= lengths[:, None]
    invalid = mask & ((heads < 0) | (heads > lengths[:, None]) | (heads == words))
    roots = mask & (heads == 0)
    ancestor, _ = _jump(_with_root(heads, mask & ~invalid))
    reaches = ancestor[:, 1:] == 0
    formed = ~invalid.any(1) & (roots.sum(1) == 1) & ~(mask & ~reaches).any(1)
    return formed, mask, invalid, roots


def repair_trees(
    heads: np.ndarray,
    lengths: object,
    *,
    confidence: np.ndarray | None = None,
    root_scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn any head arrays into trees (the module docstring's rules).

    ``heads`` ``[B, N]``: the predicted head of word ``i + 1`` at ``[b, i]`` (``0`` = root,
    anything outside ``1..n`` or the word itself is invalid); ``confidence`` ``[B, N]``: the score
    of each word's predicted label (chooses among several roots); ``root_scores`` ``[B, N]``: each
    word's best root-label score (chooses a root when there is none). Returns ``(fixed [B, N]``
    int64, ``-1`` at padding; ``problems [B, len(PROBLEMS)]`` bool``)``; a tree is returned
    unchanged with no problem.
    """
    heads = np.asarray(heads)
    if heads.ndim != 2 or heads.dtype.kind not in "iu":
        raise ValueError(
            f"heads must be integers of shape [batch, max_len], got {heads.dtype} "
            f"{list(heads.shape)}"
        )
    heads = heads.astype(np.int64)
    batch, max_len = heads.shape
    lengths = _lengths(lengths, batch, max_len)
    confidence = _word_scores("confidence", confidence, heads.shape)
    root_scores = _word_scores("root_scores", root_scores, heads.shape)
    formed, mask, invalid, roots = _formed(heads, lengths)
    fixed = np.where(mask, heads, -1)
    problems = np.zeros((batch, len(PROBLEMS)), dtype=bool)
    todo = np.flatnonzero(~formed)
    if todo.size == 0:
        return fixed, problems
    mask, invalid, roots = mask[todo], invalid[todo], roots[todo]
    current = np.where(invalid, -1, fixed[todo])
    rows = np.arange(todo.size)
    words = np.arange(1, max_len + 1)
    n_roots = roots.sum(1)
    has_invalid = invalid.any(1)
    problems[todo, 0] = has_invalid
    problems[todo, 1] = n_roots == 0
    problems[todo, 2] = n_roots > 1
    # the root word (0-based index): the first root, or the most confident of several
    root = roots.argmax(1)
    if confidence is not None:
        best = np.where(roots, confidence[todo], -np.inf).argmax(1)
        root = np.where(roots[rows, best], best, root)
    # ... or with no root: the best root score, else the first invalid head, else the lowest
    # word of the cycle word 1 leads into (every head is then a word)
    if root_scores is not None:
        rootless = np.where(mask, root_scores[todo], -np.inf).argmax(1)
    else:
        ancestor, lowest = _jump(_with_root(current, mask & ~invalid))
        cycle_lowest = lowest[rows, ancestor[:, 1]] - 1
        rootless = np.where(has_invalid, invalid.argmax(1), cycle_lowest)
    root = np.where(n_roots == 0, rootless, root)
    root_word = root + 1
    current = np.where(mask & (current <= 0), root_word[:, None], current)
    current[rows, root] = 0
    # break every cycle at its lowest word
    ancestor, lowest = _jump(_with_root(current, mask))
    lost = mask & (ancestor[:, 1:] != 0)  # words that do not reach the root
    on_cycle = np.zeros((todo.size, max_len + 1), dtype=bool)
    lost_rows, lost_words = np.nonzero(lost)
    on_cycle[lost_rows, ancestor[lost_rows, lost_words + 1]] = True
    breaks = on_cycle[:, 1:] & (lowest[:, 1:] == words)
    current = np.where(breaks, root_word[:, None], current)
    problems[todo, 3] = breaks.any(1)
    fixed[todo] = np.where(mask, current, -1)
    return fixed, problems


# ------------------------------------------------------------------------------------------------
# labels -> trees


def _check_tables(
    scores: np.ndarray,
    code_heads: np.ndarray,
    label_code: np.ndarray,
    label_relation: np.ndarray,
    root_labels: np.ndarray,
) -> None:
    if scores.ndim != 3:
        raise ValueError(
            f"label scores must have shape [batch, max_len, n_labels], got {list(scores.shape)}"
        )
    batch, max_len, n_labels = scores.shape
    if code_heads.ndim != 3 or code_heads.shape[:2] != (batch, max_len):
        raise ValueError(
            f"code_heads must have shape [batch={batch}, max_len={max_len}, n_codes], got "
            f"{list(code_heads.shape)}"
        )
    for name, table in (
        ("label_code", label_code),
        ("label_relation", label_relation),
        ("root_labels", root_labels),
    ):
        if table.shape != (n_labels,):
            raise ValueError(
                f"{name} must have shape [n_labels={n_labels}] (the scores' last dimension), got "
                f"{list(table.shape)}"
            )
    if n_labels and (label_code.min() < 0 or label_code.max() >= code_heads.shape[2]):
        raise ValueError(f"label_code must lie in 0..{code_heads.shape[2] - 1} (the codes)")


def decode_scores(
    scores: np.ndarray,
    code_heads: np.ndarray,
    lengths: object,
    *,
    label_code: np.ndarray,
    label_relation: np.ndarray,
    root_labels: np.ndarray,
) -> TreeDecoding:
    """Trees from label scores (the module docstring's rules).

    ``scores`` ``[B, N, L]`` float (higher is better; log-probabilities, since the score of the
    chosen labels compares roots across words); ``code_heads`` ``[B, N, C]`` int (the head each
    code denotes for each word, ``-1``: none); ``lengths`` ``[B]``; ``label_code`` ``[L]``,
    ``label_relation`` ``[L]`` int and ``root_labels`` ``[L]`` bool: the scheme's tables
    (``DepLabelScheme.arrays``). ``ValueError`` for NaN scores or mismatched shapes.
    """
    scores = np.asarray(scores)
    code_heads = np.asarray(code_heads)
    label_code = np.asarray(label_code, dtype=np.int64)
    label_relation = np.asarray(label_relation, dtype=np.int64)
    root_labels = np.asarray(root_labels, dtype=bool)
    _check_tables(scores, code_heads, label_code, label_relation, root_labels)
    batch, max_len, _ = scores.shape
    lengths = _lengths(lengths, batch, max_len)
    mask = np.arange(max_len) < lengths[:, None]
    # each word's best label; where it denotes no head, its best label that does
    chosen = scores.argmax(2)  # [B, N] (argmax finds a row's NaN first)
    if np.isnan(np.take_along_axis(scores, chosen[:, :, None], 2)[:, :, 0][mask]).any():
        raise ValueError("label scores contain NaN")
    heads = np.take_along_axis(code_heads, label_code[chosen][:, :, None], 2)[:, :, 0]
    invalid_top = mask & (heads < 0)
    rows, cols = np.nonzero(invalid_top)
    if rows.size:
        word_heads = code_heads[rows, cols][:, label_code]  # [K, L]
        denotes = word_heads >= 0
        best = np.where(denotes, scores[rows, cols], -np.inf).argmax(1)
        pick = np.where(denotes.any(1), best, chosen[rows, cols])
        chosen[rows, cols] = pick
        heads[rows, cols] = word_heads[np.arange(rows.size), pick]
    confidence = np.take_along_axis(scores, chosen[:, :, None], 2)[:, :, 0]
    root_scores = scores[:, :, root_labels].max(2) if root_labels.any() else None
    fixed, problems = repair_trees(heads, lengths, confidence=confidence, root_scores=root_scores)
    problems[:, 0] |= invalid_top.any(1)
    relations = label_relation[chosen]
    # re-attached words: the best label denoting the new head, else of the same kind, else any
    rows, cols = np.nonzero(mask & (fixed != heads))
    if rows.size:
        target = fixed[rows, cols]
        candidates = code_heads[rows, cols][:, label_code] == target[:, None]  # [K, L]
        same_kind = np.where(target[:, None] == 0, root_labels, ~root_labels)
        candidates = np.where(candidates.any(1, keepdims=True), candidates, same_kind)
        candidates = candidates | ~candidates.any(1, keepdims=True)
        best = np.where(candidates, scores[rows, cols], -np.inf).argmax(1)
        relations[rows, cols] = label_relation[best]
    return TreeDecoding(fixed, np.where(mask, relations, -1), problems)


def head_probabilities(
    log_probs: np.ndarray,
    code_heads: np.ndarray,
    heads: np.ndarray,
    *,
    label_code: np.ndarray,
) -> np.ndarray:
    """``[B, N]`` ``P(head_{i+1} = heads[b, i])`` under per-word label distributions:
    ``sum_{l : head(l) = h} exp(log_probs[b, i, l])``, 0 where no label denotes ``h``, 0 at
    padding (``heads`` ``-1``).

    ``log_probs`` ``[B, N, L]`` (each word's log-softmax over labels), ``code_heads``
    ``[B, N, C]``, ``heads`` ``[B, N]``, ``label_code`` ``[L]``. A head has at most one code per
    word, so the labels denoting it are those of that code: only they are read (``[B, N, K]``,
    ``K`` the most labels of one code)."""
    log_probs = np.asarray(log_probs)
    code_heads = np.asarray(code_heads)
    heads = np.asarray(heads)
    label_code = np.asarray(label_code, dtype=np.int64)
    matches = (code_heads == heads[:, :, None]) & (heads[:, :, None] >= 0)  # [B, N, C]
    found = matches.any(2)
    code = np.where(found, matches.argmax(2), 0)  # [B, N]
    # labels_of[c, k]: the k-th label of code c (real where k < count[c])
    n_codes = code_heads.shape[2]
    order = np.argsort(label_code, kind="stable")
    count = np.bincount(label_code, minlength=n_codes)
    rank = np.arange(order.size) - (np.cumsum(count) - count)[label_code[order]]
    labels_of = np.zeros((n_codes, max(int(count.max(initial=0)), 1)), dtype=np.int64)
    labels_of[label_code[order], rank] = order
    real = np.arange(labels_of.shape[1]) < count[:, None]  # [C, K]
    values = np.take_along_axis(log_probs, labels_of[code], 2)  # [B, N, K]
    keep = real[code] & found[:, :, None]
    return np.where(keep, np.exp(values), 0.0).sum(2)
