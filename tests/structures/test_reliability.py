"""Inputs outside the everyday range (issue 10): long sentences, half precision, huge scores,
empty batches, NaN in padding. Every class answers with the right result or a clear error."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from structkd.structures import (
    Dependency2oCRF,
    DependencyCRF,
    Factorized,
    HeadSelection,
    LinearChainCRF,
    NumericalError,
    SemiMarkovSpans,
)
from structkd.structures.dependency import _chu_liu_edmonds

B, N, L, R = 2, 5, 3, 2
LENGTHS = torch.tensor([5, 3])
KINDS = ["chain", "factorized", "projective", "nonprojective", "heads", "second-order", "semi"]


def _build(kind: str, dtype=torch.float32, scale: float = 1.0, batch: int = B, nan_pad=False):
    generator = torch.Generator().manual_seed(0)

    def draw(*shape):
        return (torch.randn(*shape, dtype=torch.float64, generator=generator) * scale).to(dtype)

    lengths = LENGTHS[:batch]
    if kind in ("chain", "factorized"):
        emissions = draw(batch, N, L)
        if nan_pad and batch:
            emissions[1, 4] = float("nan")
        if kind == "chain":
            return LinearChainCRF(emissions, draw(L, L), lengths=lengths)
        return Factorized(emissions, lengths)
    if kind == "semi":
        spans = draw(batch, N, N, R)
        if nan_pad and batch:
            spans[1, 4] = float("nan")
        return SemiMarkovSpans(spans, lengths)
    arcs = draw(batch, N + 1, N + 1)
    if nan_pad and batch:
        arcs[1, 5, :] = float("nan")
        arcs[1, :, 5] = float("nan")
        arcs[1, 2, 2] = float("nan")  # the diagonal is ignored too
    if kind == "heads":
        return HeadSelection(arcs, lengths)
    if kind == "second-order":
        siblings = draw(batch, N + 1, N + 1, N + 1)
        if nan_pad and batch:
            siblings[1, 5] = float("nan")
        return Dependency2oCRF(arcs, siblings, lengths)
    return DependencyCRF(arcs, lengths, projective=kind == "projective")


# ----------------------------------------------------------------------------------------------
# Long sentences: iterative Chu-Liu-Edmonds
# ----------------------------------------------------------------------------------------------


def _recursive_chu_liu_edmonds(scores: np.ndarray) -> np.ndarray | None:
    """The textbook recursion (the implementation before issue 10), the reference for ties."""
    size = scores.shape[0]
    scores = scores.copy()
    scores[:, 0] = -np.inf
    np.fill_diagonal(scores, -np.inf)
    heads = scores.argmax(0)
    heads[0] = -1
    if size > 1 and np.isneginf(scores[heads[1:], np.arange(1, size)]).any():
        return None
    visited = np.zeros(size, dtype=np.int64)
    cycle = None
    for start in range(1, size):
        path, node = [], start
        while node > 0 and visited[node] == 0:
            visited[node] = start
            path.append(node)
            node = int(heads[node])
        if node > 0 and visited[node] == start:
            cycle = path[path.index(node) :]
            break
    if cycle is None:
        return heads
    in_cycle = np.zeros(size, dtype=bool)
    in_cycle[cycle] = True
    rest, members = np.flatnonzero(~in_cycle), np.flatnonzero(in_cycle)
    kept = len(rest)
    contracted = np.full((kept + 1, kept + 1), -np.inf)
    contracted[:kept, :kept] = scores[np.ix_(rest, rest)]
    entering = scores[np.ix_(rest, members)] - scores[heads[members], members][None, :]
    entry = entering.argmax(1)
    contracted[:kept, kept] = entering[np.arange(kept), entry]
    leaving = scores[np.ix_(members, rest)]
    exit_ = leaving.argmax(0)
    contracted[kept, :kept] = leaving[exit_, np.arange(kept)]
    inner = _recursive_chu_liu_edmonds(contracted)
    if inner is None:
        return None
    result = heads.copy()
    for position in range(1, kept):
        head = inner[position]
        result[rest[position]] = members[exit_[position]] if head == kept else rest[head]
    result[members[entry[inner[kept]]]] = rest[inner[kept]]
    return result


def test_iterative_chu_liu_edmonds_matches_the_recursion_ties_included():
    rng = np.random.default_rng(0)
    for trial in range(600):
        n = int(rng.integers(2, 13))
        if trial % 3 == 0:
            scores = rng.normal(size=(n, n))
        elif trial % 3 == 1:
            scores = rng.integers(0, 3, size=(n, n)).astype(float)  # many ties
        else:
            scores = np.zeros((n, n))
        if trial % 4 == 0:
            scores[rng.random((n, n)) < 0.3] = -np.inf
        expected, got = _recursive_chu_liu_edmonds(scores), _chu_liu_edmonds(scores)
        assert (expected is None) == (got is None)
        if expected is not None:
            assert got.tolist() == expected.tolist()


def test_long_sentences_decode_in_bounded_memory():
    """3,000 words (random scores) and 1,100 words of ties (all zeros, a RecursionError at 7 GB
    before): peak resident memory of the whole process under 2 GB."""
    script = textwrap.dedent(
        """
        import resource, torch
        from structkd.structures import DependencyCRF, is_tree
        generator = torch.Generator().manual_seed(0)
        for scores, n in ((torch.randn(1, 3001, 3001, generator=generator), 3000),
                          (torch.zeros(1, 1101, 1101), 1100)):
            lengths = torch.tensor([n])
            heads = DependencyCRF(scores, lengths, projective=False).argmax
            assert bool(is_tree(heads, lengths).all())
            del scores
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    peak_kb = int(result.stdout.split()[-1])
    assert peak_kb < 2_000_000, f"peak {peak_kb / 1e6:.2f} GB"


def test_kbest_on_a_long_sentence():
    scores = torch.randn(1, 401, 401, generator=torch.Generator().manual_seed(1))
    dist = DependencyCRF(scores, torch.tensor([400]), projective=False)
    heads, tree_scores = dist.kbest(3)
    assert (tree_scores[:-1] >= tree_scores[1:]).all()
    assert len({tuple(h.tolist()) for h in heads[:, 0]}) == 3
    assert heads[0].tolist() == dist.argmax.tolist()


# ----------------------------------------------------------------------------------------------
# Numerics outside the everyday range
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(kind, dtype):
    half = _build(kind, dtype, scale=20.0)
    exact = _rebuild_float(kind, dtype)
    assert half.log_partition.dtype == torch.float32
    assert torch.isfinite(half.log_partition).all() and torch.isfinite(half.entropy).all()
    torch.testing.assert_close(half.log_partition, exact.log_partition)
    torch.testing.assert_close(half.marginals, exact.marginals)
    assert half.argmax.tolist() == exact.argmax.tolist()


def _rebuild_float(kind: str, dtype: torch.dtype):
    """The same potentials as ``_build(kind, dtype, 20.0)``, rounded to ``dtype``, in float32."""
    generator = torch.Generator().manual_seed(0)

    def draw(*shape):
        return (
            (torch.randn(*shape, dtype=torch.float64, generator=generator) * 20.0).to(dtype).float()
        )

    if kind in ("chain", "factorized"):
        emissions = draw(B, N, L)
        if kind == "chain":
            return LinearChainCRF(emissions, draw(L, L), lengths=LENGTHS)
        return Factorized(emissions, LENGTHS)
    if kind == "semi":
        return SemiMarkovSpans(draw(B, N, N, R), LENGTHS)
    arcs = draw(B, N + 1, N + 1)
    if kind == "heads":
        return HeadSelection(arcs, LENGTHS)
    if kind == "second-order":
        return Dependency2oCRF(arcs, draw(B, N + 1, N + 1, N + 1), LENGTHS)
    return DependencyCRF(arcs, LENGTHS, projective=kind == "projective")


@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_gradients_reach_the_caller(kind):
    dist = _build(kind, torch.float16)
    potentials = {"chain": "emissions", "factorized": "logits", "semi": "span_scores"}.get(
        kind, "arc_scores"
    )
    leaf = torch.randn(getattr(dist, potentials).shape).half().requires_grad_()
    if kind in ("chain",):
        dist = LinearChainCRF(leaf, torch.zeros(L, L, dtype=torch.float16), lengths=LENGTHS)
    elif kind == "factorized":
        dist = Factorized(leaf, LENGTHS)
    elif kind == "semi":
        dist = SemiMarkovSpans(leaf, LENGTHS)
    elif kind == "heads":
        dist = HeadSelection(leaf, LENGTHS)
    elif kind == "second-order":
        dist = Dependency2oCRF(leaf, torch.zeros(B, N + 1, N + 1, N + 1).half(), LENGTHS)
    else:
        dist = DependencyCRF(leaf, LENGTHS, projective=kind == "projective")
    dist.log_partition.sum().backward()
    assert leaf.grad is not None and leaf.grad.dtype == torch.float16
    assert torch.isfinite(leaf.grad).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 1e6), (torch.float64, 1e30)])
def test_scores_beyond_the_exactness_range_are_refused(kind, dtype, scale):
    with pytest.raises(ValueError, match="exactness range"):
        _ = _build(kind, dtype, scale=scale).log_partition


def _inside_the_range(kind: str) -> float:
    """A float64 score scale inside the exactness range of ``kind`` (semi-Markov spans have a
    tighter range: their entropy loses more digits)."""
    return 3e3 if kind == "semi" else 1e6


def test_span_scores_have_a_tighter_range():
    """At |s| = 1e6 in float64 the semi-Markov entropy read -5e-4: such scores are refused."""
    with pytest.raises(ValueError, match="exactness range"):
        _ = _build("semi", torch.float64, scale=1e6).entropy


@pytest.mark.parametrize("kind", KINDS)
def test_large_scores_inside_the_range_are_exact(kind):
    """float64 at |s| ~ 1e6 (3e3 for spans): log P(argmax) <= 0 and entropy >= 0 up to float64
    rounding."""
    dist = _build(kind, torch.float64, scale=_inside_the_range(kind))
    log_z = dist.log_partition
    rounding = 1e-15 * N * 4e6 * 10
    assert (dist.log_prob(dist.argmax) <= rounding).all()
    assert (dist.entropy >= -rounding).all()
    marginals = dist.marginals
    assert ((marginals >= -rounding) & (marginals <= 1 + rounding)).all()
    assert torch.isfinite(log_z).all()


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch_gives_empty_results(kind):
    full, empty = _build(kind), _build(kind, batch=0)
    assert empty.log_partition.shape == (0,)
    assert empty.entropy.shape == (0,)
    assert empty.marginals.shape == (0, *full.marginals.shape[1:])
    assert empty.argmax.shape == (0, *full.argmax.shape[1:])
    values, scores = empty.kbest(3)
    assert values.shape == (3, 0, *full.argmax.shape[1:]) and scores.shape == (3, 0)
    assert empty.sample(4).shape == (4, 0, *full.argmax.shape[1:])
    assert empty.log_prob(empty.argmax).shape == (0,)
    assert empty.log_prob(values).shape == (3, 0)


def test_empty_batch_keeps_the_graph():
    arcs = torch.zeros(0, 4, 4, requires_grad=True)
    loss = DependencyCRF(arcs, torch.zeros(0, dtype=torch.long)).log_partition.sum()
    loss.backward()
    assert arcs.grad is not None and arcs.grad.shape == arcs.shape


@pytest.mark.parametrize("kind", KINDS)
def test_nan_in_padding_is_ignored(kind):
    clean, noisy = _build(kind), _build(kind, nan_pad=True)
    torch.testing.assert_close(noisy.log_partition, clean.log_partition)
    torch.testing.assert_close(noisy.marginals, clean.marginals)
    torch.testing.assert_close(noisy.entropy, clean.entropy)
    assert noisy.argmax.tolist() == clean.argmax.tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_nan_inside_a_sentence_still_raises(kind):
    dist = _build(kind)
    name = {"chain": "emissions", "factorized": "logits", "semi": "span_scores"}.get(
        kind, "arc_scores"
    )
    scores = getattr(dist, name).clone()
    scores[0, 0, 1] = float("nan")
    with pytest.raises(NumericalError, match=name):
        if kind == "chain":
            LinearChainCRF(scores, dist.transitions, lengths=LENGTHS)
        elif kind == "factorized":
            Factorized(scores, LENGTHS)
        elif kind == "semi":
            SemiMarkovSpans(scores, LENGTHS)
        elif kind == "heads":
            HeadSelection(scores, LENGTHS)
        elif kind == "second-order":
            Dependency2oCRF(scores, dist.sibling_scores, LENGTHS)
        else:
            DependencyCRF(scores, LENGTHS, projective=kind == "projective")


def test_probabilities_within_roundoff_snaps_roundoff_and_raises_beyond() -> None:
    """Roundoff of at most ``PROBABILITY_ROUNDOFF`` outside [0, 1] goes onto the bound; a value
    further out, or NaN, raises ``NumericalError`` (a ``FloatingPointError``), naming it."""
    from structkd.structures.base import PROBABILITY_ROUNDOFF, probabilities_within_roundoff

    tiny = PROBABILITY_ROUNDOFF / 2
    values = torch.tensor([-tiny, 0.25, 1 + tiny], dtype=torch.float64)
    assert probabilities_within_roundoff(values, "p").tolist() == [0.0, 0.25, 1.0]
    lower_only = probabilities_within_roundoff(values, "p", at_most_one=False)
    assert lower_only.tolist() == [0.0, 0.25, 1 + tiny]
    assert probabilities_within_roundoff(torch.zeros(0), "p").numel() == 0
    for bad in (-2 * PROBABILITY_ROUNDOFF, float("nan")):
        with pytest.raises(NumericalError, match=r"the mass .* below 0 beyond roundoff"):
            probabilities_within_roundoff(torch.tensor([0.5, bad]), "the mass", at_most_one=False)
    with pytest.raises(FloatingPointError, match=r"outside \[0, 1\] beyond roundoff"):
        probabilities_within_roundoff(torch.tensor([1 + 2 * PROBABILITY_ROUNDOFF]), "p")
    assert probabilities_within_roundoff(torch.tensor([2.0]), "p", at_most_one=False).item() == 2.0
