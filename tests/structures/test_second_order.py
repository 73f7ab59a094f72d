"""Dependency2oCRF and mean_field_arcs against brute-force enumeration on tiny inputs (float64)."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.structures import second_order
from structkd.structures.base import NumericalError
from structkd.structures.second_order import Dependency2oCRF, mean_field_arcs

DTYPE = torch.float64
LENGTHS = [5, 3, 1, 4, 2]  # mixed lengths in one batch, N = 5
SIZE = max(LENGTHS) + 1


# ------------------------------------------------------------------------------------------------
# brute force: every projective tree, scored from its definition


def _descendants(heads: tuple[int, ...], node: int) -> set[int]:
    children = {d for d in range(1, len(heads)) if heads[d] == node}
    found = set(children)
    for child in children:
        found |= _descendants(heads, child)
    return found


def _is_projective_tree(heads: tuple[int, ...], multiroot: bool) -> bool:
    """Definition: every word reaches the root; every word between a head and its dependent
    descends from that head; with ``multiroot=False`` a single word hangs from the root."""
    n = len(heads) - 1
    for d in range(1, n + 1):
        seen, node = set(), d
        while node != 0:
            if node in seen:
                return False
            seen.add(node)
            node = heads[node]
    for d in range(1, n + 1):
        h = heads[d]
        span = range(min(h, d) + 1, max(h, d))
        below = _descendants(heads, h)
        if any(word not in below for word in span):
            return False
    return multiroot or sum(heads[d] == 0 for d in range(1, n + 1)) == 1


@functools.cache
def projective_trees(n: int, multiroot: bool) -> list[tuple[int, ...]]:
    """All projective trees of ``n`` words as head tuples ``(-1, h_1, ..., h_n)``."""
    trees = []
    for choice in itertools.product(range(n + 1), repeat=n):
        heads = (-1, *choice)
        if all(heads[d] != d for d in range(1, n + 1)) and _is_projective_tree(heads, multiroot):
            trees.append(heads)
    return trees


def sibling_triples(heads: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """``(h, d, s)`` for adjacent dependents of ``h`` on one side, ``s`` the inner one."""
    n = len(heads) - 1
    triples = []
    for h in range(n + 1):
        right = sorted(d for d in range(1, n + 1) if heads[d] == h and d > h)
        left = sorted((d for d in range(1, n + 1) if heads[d] == h and d < h), reverse=True)
        for side in (right, left):
            triples += [(h, outer, inner) for inner, outer in itertools.pairwise(side)]
    return triples


def brute_scores(
    arc: torch.Tensor, sib: torch.Tensor | None, n: int, multiroot: bool, temperature: float = 1.0
) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """Trees of one sentence and their tempered scores ``[n_trees]``."""
    trees = projective_trees(n, multiroot)
    scores = []
    for heads in trees:
        total = sum(arc[heads[d], d] for d in range(1, n + 1))
        if sib is not None:
            total = total + sum(
                (sib[t] for t in sibling_triples(heads)), torch.zeros((), dtype=DTYPE)
            )
        scores.append(total / temperature)
    return trees, torch.stack(scores)


def brute_marginals(trees, probs, size):
    arcs = torch.zeros(size, size, dtype=DTYPE)
    sibs = torch.zeros(size, size, size, dtype=DTYPE)
    for heads, p in zip(trees, probs, strict=True):
        for d in range(1, len(heads)):
            arcs[heads[d], d] += p
        for t in sibling_triples(heads):
            sibs[t] += p
    return arcs, sibs


def random_potentials(seed: int, batch: int = len(LENGTHS), size: int = SIZE, scale: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    arc = torch.randn(batch, size, size, generator=generator, dtype=DTYPE) * scale
    sib = torch.randn(batch, size, size, size, generator=generator, dtype=DTYPE) * scale
    return arc, sib


def pad_heads(heads: tuple[int, ...], size: int) -> list[int]:
    return list(heads) + [-1] * (size - len(heads))


# ------------------------------------------------------------------------------------------------
# Dependency2oCRF: exact quantities against brute force

MODES = [(False, 1.0), (True, 1.0), (False, 0.6), (True, 1.7)]


def test_enumerator_counts():
    # projective trees of n words: single root 1, 2, 7, 30, 143; multiroot 1, 3, 12, 55, 273
    assert [len(projective_trees(n, False)) for n in range(1, 6)] == [1, 2, 7, 30, 143]
    assert [len(projective_trees(n, True)) for n in range(1, 6)] == [1, 3, 12, 55, 273]


@pytest.mark.parametrize(("multiroot", "temperature"), MODES)
def test_log_partition_and_marginals_match_brute_force(multiroot, temperature):
    arc, sib = random_potentials(0)
    lengths = torch.tensor(LENGTHS)
    dist = Dependency2oCRF(arc, sib, lengths, multiroot=multiroot, temperature=temperature)
    assert dist.log_partition.dtype == DTYPE
    for b, n in enumerate(LENGTHS):
        trees, scores = brute_scores(arc[b], sib[b], n, multiroot, temperature)
        torch.testing.assert_close(dist.log_partition[b], torch.logsumexp(scores, 0))
        arcs, sibs = brute_marginals(trees, torch.softmax(scores, 0), SIZE)
        torch.testing.assert_close(dist.marginals[b], arcs)
        torch.testing.assert_close(dist.sibling_marginals[b], sibs)
        # every word has one head; the root has one dependent unless multiroot
        torch.testing.assert_close(
            dist.marginals[b, :, 1 : n + 1].sum(0), torch.ones(n, dtype=DTYPE)
        )
        if not multiroot:
            torch.testing.assert_close(dist.marginals[b, 0].sum(), torch.tensor(1.0, dtype=DTYPE))


@pytest.mark.parametrize(("multiroot", "temperature"), MODES[:3])
def test_argmax_and_kbest_match_brute_force(multiroot, temperature):
    arc, sib = random_potentials(1)
    lengths = torch.tensor(LENGTHS)
    dist = Dependency2oCRF(arc, sib, lengths, multiroot=multiroot, temperature=temperature)
    k = 9
    values, scores = dist.kbest(k)
    assert values.shape == (k, len(LENGTHS), SIZE) and scores.shape == (k, len(LENGTHS))
    for b, n in enumerate(LENGTHS):
        trees, brute = brute_scores(arc[b], sib[b], n, multiroot, temperature)
        order = brute.argsort(descending=True)
        found = min(k, len(trees))
        torch.testing.assert_close(scores[:found, b], brute[order[:found]])
        assert torch.isneginf(scores[found:, b]).all()
        assert (values[found:, b] == -1).all()
        rows = [tuple(values[r, b, : n + 1].tolist()) for r in range(found)]
        assert len(set(rows)) == found  # distinct trees
        assert all(row in trees for row in rows)
        assert (values[:found, b, n + 1 :] == -1).all()
        assert dist.argmax[b].tolist() == pad_heads(trees[order[0]], SIZE)
    # the returned trees score what kbest says (score() recomputes from the potentials)
    finite = torch.isfinite(scores)
    rescored = dist.score(values.clamp_min(-1).where(finite.unsqueeze(-1), dist.argmax))
    torch.testing.assert_close(rescored[finite], scores[finite])


def test_kbest_more_than_all_trees():
    arc, sib = random_potentials(2, batch=3, size=4)
    lengths = torch.tensor([3, 2, 1])
    values, scores = Dependency2oCRF(arc, sib, lengths, multiroot=True).kbest(20)
    counts = [len(projective_trees(n, True)) for n in (3, 2, 1)]
    assert torch.isfinite(scores).sum(0).tolist() == counts
    for b, n in enumerate((3, 2, 1)):
        listed = {tuple(values[r, b, : n + 1].tolist()) for r in range(counts[b])}
        assert listed == set(projective_trees(n, True))
    assert (scores[:-1] >= scores[1:]).all()


@pytest.mark.parametrize(("multiroot", "temperature"), MODES[1:3])
def test_log_prob_and_entropy_match_brute_force(multiroot, temperature):
    arc, sib = random_potentials(3)
    lengths = torch.tensor(LENGTHS)
    dist = Dependency2oCRF(arc, sib, lengths, multiroot=multiroot, temperature=temperature)
    per_sentence = [
        brute_scores(arc[b], sib[b], n, multiroot, temperature) for b, n in enumerate(LENGTHS)
    ]
    most = max(len(trees) for trees, _ in per_sentence)
    # value [most, batch, N+1]: sample row r holds tree r % count of each sentence
    value = torch.tensor(
        [[pad_heads(trees[r % len(trees)], SIZE) for trees, _ in per_sentence] for r in range(most)]
    )
    log_prob = dist.log_prob(value)
    assert log_prob.shape == (most, len(LENGTHS))
    for b, (trees, scores) in enumerate(per_sentence):
        expected = torch.log_softmax(scores, 0)
        rows = [r % len(trees) for r in range(most)]
        torch.testing.assert_close(log_prob[:, b], expected[rows])
        probs = expected.exp()
        torch.testing.assert_close(dist.entropy[b], -(probs * expected).sum())
        torch.testing.assert_close(dist.expected_score()[b], (probs * scores).sum())


def test_expected_score_with_foreign_marginals():
    arc, sib = random_potentials(4)
    teacher_arc, teacher_sib = random_potentials(5)
    lengths = torch.tensor(LENGTHS)
    marginals = torch.zeros(len(LENGTHS), SIZE, SIZE, dtype=DTYPE)
    sibling_marginals = torch.zeros(len(LENGTHS), SIZE, SIZE, SIZE, dtype=DTYPE)
    for b, n in enumerate(LENGTHS):
        trees, scores = brute_scores(teacher_arc[b], teacher_sib[b], n, True)
        marginals[b], sibling_marginals[b] = brute_marginals(trees, torch.softmax(scores, 0), SIZE)
    # mass on entries this model does not have is ignored
    sibling_marginals[:, 0, 3, 4] += 0.5  # not adjacent-sibling form (4 is not between 0 and 3)
    marginals[:, 2, 2] += 0.3  # self-loop
    for multiroot in (False, True):
        dist = Dependency2oCRF(arc, sib, lengths, multiroot=multiroot, temperature=0.8)
        got = dist.expected_score(marginals, sibling_marginals)
        for b, n in enumerate(LENGTHS):
            real = torch.zeros(SIZE, SIZE, dtype=torch.bool)
            real[: n + 1, 1 : n + 1] = True
            real.fill_diagonal_(False)
            expected = (marginals[b] * arc[b])[real].sum()
            trees = projective_trees(n, True)
            triples = {t for heads in trees for t in sibling_triples(heads)}
            if not multiroot:
                triples = {t for t in triples if t[0] != 0}
            expected = expected + sum(sibling_marginals[b][t] * sib[b][t] for t in triples)
            torch.testing.assert_close(got[b], expected / 0.8)


def test_expected_score_zero_mass_on_forbidden_and_positive_mass_gives_neg_inf():
    arc, sib = random_potentials(6, batch=2, size=4)
    arc[:, 1, 2] = -math.inf
    sib[:, 0, 3, 1] = -math.inf
    lengths = torch.tensor([3, 3])
    dist = Dependency2oCRF(arc, sib, lengths, multiroot=True)
    assert dist.marginals[:, 1, 2].eq(0).all() and dist.sibling_marginals[:, 0, 3, 1].eq(0).all()
    assert torch.isfinite(dist.expected_score()).all()
    assert torch.isfinite(dist.entropy).all() and (dist.entropy > 0).all()
    marginals = dist.marginals.clone()
    marginals[0, 1, 2] = 0.1
    got = dist.expected_score(marginals, dist.sibling_marginals)
    assert torch.isneginf(got[0]) and torch.isfinite(got[1])


@pytest.mark.parametrize("multiroot", [False, True])
def test_zero_sibling_scores_give_the_first_order_model(multiroot):
    arc, _ = random_potentials(7)
    sib = torch.zeros(len(LENGTHS), SIZE, SIZE, SIZE, dtype=DTYPE)
    lengths = torch.tensor(LENGTHS)
    dist = Dependency2oCRF(arc, sib, lengths, multiroot=multiroot)
    for b, n in enumerate(LENGTHS):
        # first-order projective model: a tree scores the sum of its arcs only
        trees = projective_trees(n, multiroot)
        scores = torch.stack([sum(arc[b, t[d], d] for d in range(1, n + 1)) for t in trees])
        torch.testing.assert_close(dist.log_partition[b], torch.logsumexp(scores, 0))
        probs = torch.softmax(scores, 0)
        first_order = torch.zeros(SIZE, SIZE, dtype=DTYPE)
        for heads, p in zip(trees, probs, strict=True):
            for d in range(1, n + 1):
                first_order[heads[d], d] += p
        torch.testing.assert_close(dist.marginals[b], first_order)
        assert dist.argmax[b].tolist() == pad_heads(trees[int(scores.argmax())], SIZE)


def test_neg_inf_potentials_forbid_structures():
    arc, sib = random_potentials(8)
    arc[0, 2, 3] = -math.inf
    arc[0, 0, 1] = -math.inf
    sib[0, 4, 1, 2] = -math.inf
    sib[3, 0, 4, 1] = -math.inf  # root siblings: only reachable with multiroot
    lengths = torch.tensor(LENGTHS)
    for multiroot in (False, True):
        dist = Dependency2oCRF(arc, sib, lengths, multiroot=multiroot)
        for b, n in enumerate(LENGTHS):
            trees, scores = brute_scores(arc[b], sib[b], n, multiroot)
            torch.testing.assert_close(dist.log_partition[b], torch.logsumexp(scores, 0))
            arcs, sibs = brute_marginals(trees, torch.softmax(scores, 0), SIZE)
            torch.testing.assert_close(dist.marginals[b], arcs)
            torch.testing.assert_close(dist.sibling_marginals[b], sibs)
            _, kscores = dist.kbest(4)
            best = scores.sort(descending=True).values[:4]
            torch.testing.assert_close(kscores[: best.numel(), b], best)
        assert not torch.isnan(dist.marginals).any()


def test_a_sentence_with_no_tree_raises():
    arc, sib = random_potentials(9, batch=2, size=4)
    arc[1, :, 2] = -math.inf  # word 2 of sentence 1 can have no head
    dist = Dependency2oCRF(arc, sib, torch.tensor([3, 3]))
    with pytest.raises(ValueError, match=r"sentences \[1\]"):
        _ = dist.log_partition
    with pytest.raises(ValueError, match="no projective tree"):
        dist.kbest(2)
    with pytest.raises(ValueError, match="no projective tree"):
        dist.sample(2)


def test_padding_and_ignored_entries_do_not_matter():
    arc, sib = random_potentials(10)
    lengths = torch.tensor(LENGTHS)
    position = torch.arange(SIZE)
    outside = position > lengths.view(-1, 1)  # [batch, L]
    arc_outside = outside.unsqueeze(-1) | outside.unsqueeze(-2)
    sib_outside = (
        outside.view(-1, SIZE, 1, 1) | outside.view(-1, 1, SIZE, 1) | outside.view(-1, 1, 1, SIZE)
    )
    head, dep, other = torch.meshgrid(position, position, position, indexing="ij")
    adjacent_form = (other - head) * (other - dep) < 0
    noisy_arc, noisy_sib = arc.clone(), sib.clone()
    noisy_arc[arc_outside] = math.inf
    noisy_arc[:, :, 0] = 123.0  # column 0: arcs into the root
    noisy_arc[:, position, position] = -math.inf  # self-loops
    noisy_sib[sib_outside] = math.inf
    noisy_sib[:, ~adjacent_form] = math.inf
    for multiroot in (False, True):
        noisy_sib_here = noisy_sib.clone()
        if not multiroot:
            noisy_sib_here[:, 0] = math.inf  # the root has one dependent: no root siblings
        clean = Dependency2oCRF(arc, sib, lengths, multiroot=multiroot)
        noisy = Dependency2oCRF(noisy_arc, noisy_sib_here, lengths, multiroot=multiroot)
        torch.testing.assert_close(noisy.log_partition, clean.log_partition)
        torch.testing.assert_close(noisy.marginals, clean.marginals)
        torch.testing.assert_close(noisy.sibling_marginals, clean.sibling_marginals)
        assert torch.equal(noisy.argmax, clean.argmax)
        torch.testing.assert_close(noisy.kbest(3)[1], clean.kbest(3)[1])
        # marginals are 0 at the root column, the diagonal and padding
        assert clean.marginals[:, :, 0].eq(0).all()
        assert clean.marginals[:, position, position].eq(0).all()
        assert clean.marginals[arc_outside].eq(0).all()
        assert clean.sibling_marginals[:, ~adjacent_form].eq(0).all()
        assert clean.sibling_marginals[sib_outside].eq(0).all()
        if not multiroot:
            assert clean.sibling_marginals[:, 0].eq(0).all()


def test_temperature_and_tempered():
    arc, sib = random_potentials(11)
    lengths = torch.tensor(LENGTHS)
    hot = Dependency2oCRF(arc, sib, lengths, temperature=2.5)
    scaled = Dependency2oCRF(arc / 2.5, sib / 2.5, lengths)
    torch.testing.assert_close(hot.log_partition, scaled.log_partition)
    torch.testing.assert_close(hot.marginals, scaled.marginals)
    torch.testing.assert_close(hot.sibling_marginals, scaled.sibling_marginals)
    torch.testing.assert_close(hot.entropy, scaled.entropy)
    torch.testing.assert_close(hot.kbest(3)[1], scaled.kbest(3)[1])
    again = Dependency2oCRF(arc, sib, lengths, temperature=0.5).tempered(5.0)
    assert isinstance(again, Dependency2oCRF) and again.temperature == pytest.approx(2.5)
    torch.testing.assert_close(again.log_partition, hot.log_partition)
    assert "multiroot=False" in repr(hot) and "temperature=2.5" in repr(hot)


# ------------------------------------------------------------------------------------------------
# sampling


def _chi_square_threshold(df: int, z: float = 5.0) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) at a normal z-score (z=5: p ~ 3e-7)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi_square(counts: torch.Tensor, probs: torch.Tensor, n: int) -> tuple[float, int]:
    """Pearson statistic with bins of expected count < 5 pooled; returns (statistic, df)."""
    expected = probs * n
    small = expected < 5
    observed = torch.cat([counts[~small], counts[small].sum().view(1)])
    expected = torch.cat([expected[~small], expected[small].sum().view(1)])
    keep = expected > 0
    observed, expected = observed[keep], expected[keep]
    return float(((observed - expected) ** 2 / expected).sum()), int(keep.sum()) - 1


@pytest.mark.parametrize("multiroot", [False, True])
def test_sample_frequencies_match_probabilities(multiroot):
    arc, sib = random_potentials(12, batch=3, size=5, scale=0.8)
    lengths = torch.tensor([4, 3, 1])
    dist = Dependency2oCRF(arc, sib, lengths, multiroot=multiroot, temperature=0.9)
    n = 10000
    samples = dist.sample(n, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (n, 3, 5) and samples.dtype == torch.long
    dist.score(samples)  # every sample is a valid projective tree (raises otherwise)
    for b, length in enumerate(lengths.tolist()):
        trees, scores = brute_scores(arc[b], sib[b], length, multiroot, 0.9)
        # a tree's code: its heads as digits in base N+1
        digits = (length + 1) ** torch.arange(length)
        tree_codes = (torch.tensor([t[1:] for t in trees]) * digits).sum(-1)
        sample_codes = (samples[:, b, 1 : length + 1] * digits).sum(-1)
        matches = sample_codes.unsqueeze(-1) == tree_codes  # [n, n_trees]
        assert (matches.sum(-1) == 1).all()
        counts = matches.sum(0).to(DTYPE)
        probs = torch.softmax(scores, 0)
        statistic, df = _chi_square(counts, probs, n)
        if df == 0:
            assert counts.sum() == n
            continue
        assert statistic < _chi_square_threshold(df), (b, statistic, df)
        # the same test rejects a slightly different distribution (the test has power)
        wrong = torch.softmax(scores * 1.25, 0)
        wrong_statistic, wrong_df = _chi_square(counts, wrong, n)
        assert wrong_statistic > _chi_square_threshold(wrong_df), (b, wrong_statistic)


def test_sample_is_reproducible_with_a_generator():
    arc, sib = random_potentials(13)
    dist = Dependency2oCRF(arc, sib, torch.tensor(LENGTHS), multiroot=True)
    first = dist.sample(50, generator=torch.Generator().manual_seed(3))
    second = dist.sample(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    assert (first[..., 0] == -1).all()
    assert (first[:, 2, 2:] == -1).all()  # sentence of length 1: padding stays -1


def test_top_down_in_chunks_gives_the_same_trees(monkeypatch):
    arc, sib = random_potentials(19)
    dist = Dependency2oCRF(arc, sib, torch.tensor(LENGTHS), multiroot=True)
    whole = dist.kbest(40)
    monkeypatch.setattr(second_order, "_MARKS_PER_CHUNK", len(LENGTHS) * SIZE * SIZE * 3)
    chunked = dist.kbest(40)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    samples = dist.sample(20, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (20, len(LENGTHS), SIZE)
    dist.score(samples)


# ------------------------------------------------------------------------------------------------
# gradients, dtypes, extreme scores


def test_marginals_are_differentiable():
    generator = torch.Generator().manual_seed(14)
    size = 4
    arc = torch.randn(2, size, size, generator=generator, dtype=DTYPE, requires_grad=True)
    sib = torch.randn(2, size, size, size, generator=generator, dtype=DTYPE, requires_grad=True)
    lengths = torch.tensor([3, 2])
    weights = torch.randn(2, size, size, generator=generator, dtype=DTYPE)

    def loss(arc_scores, sibling_scores):
        dist = Dependency2oCRF(arc_scores, sibling_scores, lengths, multiroot=True, temperature=0.7)
        return (dist.marginals * weights).sum() + dist.sibling_marginals.pow(2).sum()

    assert torch.autograd.gradcheck(loss, (arc, sib), fast_mode=True)

    def arc_marginals_of_siblings(sibling_scores):  # arcs fixed, siblings learnable
        dist = Dependency2oCRF(arc.detach(), sibling_scores, lengths)
        return (dist.marginals * weights).sum()

    assert torch.autograd.gradcheck(arc_marginals_of_siblings, (sib,), fast_mode=True)
    with torch.no_grad():
        assert not Dependency2oCRF(arc, sib, lengths).marginals.requires_grad

    def log_z(arc_scores, sibling_scores):
        return Dependency2oCRF(arc_scores, sibling_scores, lengths).log_partition

    assert torch.autograd.gradgradcheck(log_z, (arc, sib), fast_mode=True)


def test_float32_and_no_grad_results():
    arc, sib = random_potentials(15)
    dist = Dependency2oCRF(arc.float(), sib.float(), torch.tensor(LENGTHS))
    reference = Dependency2oCRF(arc, sib, torch.tensor(LENGTHS))
    assert dist.log_partition.dtype == torch.float32 and dist.marginals.dtype == torch.float32
    torch.testing.assert_close(dist.marginals.double(), reference.marginals, atol=1e-5, rtol=1e-4)
    assert not dist.marginals.requires_grad and not dist.log_partition.requires_grad
    assert torch.equal(dist.argmax, reference.argmax)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 3),
    size=st.integers(2, 7),
    magnitude=st.sampled_from([1.0, 1e2, 1e4]),
    multiroot=st.booleans(),
    float32=st.booleans(),
)
def test_extreme_scores_stay_finite(seed, batch, size, magnitude, multiroot, float32):
    generator = torch.Generator().manual_seed(seed)
    dtype = torch.float32 if float32 else DTYPE
    arc = (torch.rand(batch, size, size, generator=generator, dtype=DTYPE) * 2 - 1) * magnitude
    sib = (
        torch.rand(batch, size, size, size, generator=generator, dtype=DTYPE) * 2 - 1
    ) * magnitude
    lengths = torch.randint(1, size, (batch,), generator=generator)
    dist = Dependency2oCRF(arc.to(dtype), sib.to(dtype), lengths, multiroot=multiroot)
    assert dist.log_partition.shape == (batch,) and torch.isfinite(dist.log_partition).all()
    marginals = dist.marginals
    assert marginals.shape == (batch, size, size) and torch.isfinite(marginals).all()
    assert torch.isfinite(dist.sibling_marginals).all()
    assert (marginals >= -1e-4).all() and (marginals <= 1 + 1e-4).all()
    column_sums = marginals.sum(1)
    words = torch.arange(size) >= 1
    words = words & (torch.arange(size) <= lengths.view(-1, 1))
    torch.testing.assert_close(
        column_sums[words], torch.ones_like(column_sums[words]), atol=1e-3, rtol=0
    )
    assert column_sums[~words].eq(0).all()
    heads = dist.argmax
    assert heads.shape == (batch, size)
    assert torch.isfinite(dist.score(heads)).all()
    assert torch.isfinite(dist.entropy).all()
    # log Z is at least the best tree's score, and at most it plus log(number of trees)
    best = dist.kbest(1)[1][0]
    assert (dist.log_partition >= best - 1e-3 * magnitude).all()
    torch.testing.assert_close(dist.score(heads), best, rtol=1e-5, atol=1e-2)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(2, 6), multiroot=st.booleans())
def test_marginals_are_distributions_and_kbest_is_sorted(seed, size, multiroot):
    generator = torch.Generator().manual_seed(seed)
    batch = 3
    arc = torch.randn(batch, size, size, generator=generator, dtype=DTYPE) * 3
    sib = torch.randn(batch, size, size, size, generator=generator, dtype=DTYPE) * 3
    lengths = torch.randint(1, size, (batch,), generator=generator)
    dist = Dependency2oCRF(arc, sib, lengths, multiroot=multiroot)
    n_words = lengths.to(DTYPE)
    torch.testing.assert_close(dist.marginals.sum((1, 2)), n_words)
    # every dependent except the innermost on each side of its head has one inner sibling
    inner = dist.sibling_marginals.sum(-1)  # [b, h, d] = P(d has an inner sibling under h)
    assert (inner <= dist.marginals + 1e-9).all()
    values, scores = dist.kbest(4)
    finite = torch.isfinite(scores)
    assert (scores[1:][finite[1:]] <= scores[:-1][finite[1:]] + 1e-9).all()
    torch.testing.assert_close(dist.score(values[0]), scores[0])
    assert (dist.entropy >= -1e-9).all()


# ------------------------------------------------------------------------------------------------
# invalid input


def test_invalid_constructor_arguments_raise():
    arc, sib = random_potentials(16, batch=2, size=4)
    lengths = torch.tensor([3, 2])
    with pytest.raises(ValueError, match="arc_scores"):
        Dependency2oCRF(arc[:, :3], sib, lengths)
    with pytest.raises(ValueError, match="sibling_scores"):
        Dependency2oCRF(arc, sib[..., :3], lengths)
    with pytest.raises(ValueError, match="sibling_scores"):
        Dependency2oCRF(arc, sib[:, :, :, :, None], lengths)
    with pytest.raises(ValueError, match="dtype"):
        Dependency2oCRF(arc, sib.float(), lengths)
    with pytest.raises(ValueError, match="lengths"):
        Dependency2oCRF(arc, sib, torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="lengths"):
        Dependency2oCRF(arc, sib, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="lengths"):
        Dependency2oCRF(arc, sib, torch.tensor([3]))
    with pytest.raises(ValueError, match="temperature"):
        Dependency2oCRF(arc, sib, lengths, temperature=0.0)
    with pytest.raises(ValueError, match="multiroot"):
        Dependency2oCRF(arc, sib, lengths, multiroot=1)
    with pytest.raises(TypeError, match="arc_scores"):
        Dependency2oCRF(arc.tolist(), sib, lengths)
    nan_arc = arc.clone()
    nan_arc[0, 1, 2] = math.nan
    with pytest.raises(NumericalError, match="arc_scores"):
        Dependency2oCRF(nan_arc, sib, lengths)
    nan_sib = sib.clone()
    nan_sib[0, 1, 3, 2] = math.nan  # a read entry (NaN where entries are ignored is ignored)
    with pytest.raises(NumericalError, match="sibling_scores"):
        Dependency2oCRF(arc, nan_sib, lengths)
    inf_arc = arc.clone()
    inf_arc[0, 1, 2] = math.inf
    with pytest.raises(ValueError, match=r"\+inf"):
        _ = Dependency2oCRF(inf_arc, sib, lengths).log_partition
    dist = Dependency2oCRF(arc, sib, lengths)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must"):
            dist.kbest(bad)
        with pytest.raises(ValueError, match="n must"):
            dist.sample(bad)
    with pytest.raises(ValueError, match="both"):
        dist.expected_score(dist.marginals)
    with pytest.raises(ValueError, match="sibling_marginals must have shape"):
        dist.expected_score(dist.marginals, dist.sibling_marginals[:, :3])


@pytest.mark.parametrize(
    ("heads", "multiroot", "message"),
    [
        ([-1, 2, 0, 2, -1], False, None),  # valid
        ([-1, 0, 0, 2, -1], True, None),  # valid with two root words
        ([-1, 0, 0, 2, -1], False, "exactly one word"),
        ([-1, 2, 3, 1, -1], True, "cycle"),
        ([-1, 2, 0, 1, -1], True, "crossing"),  # 1 -> 3 crosses 0 -> 2
        ([-1, 1, 0, 2, -1], True, "self-loops"),
        ([-1, 2, 0, 2, 0], True, "padding"),
        ([0, 2, 0, 2, -1], True, "root"),
        ([-1, 2, 0, 4, -1], True, "0..length"),
        ([-1, -1, 0, 2, -1], True, "0..length"),
    ],
)
def test_score_validates_head_vectors(heads, multiroot, message):
    arc, sib = random_potentials(17, batch=1, size=5)
    dist = Dependency2oCRF(arc, sib, torch.tensor([3]), multiroot=multiroot)
    value = torch.tensor([heads])
    if message is None:
        trees, scores = brute_scores(arc[0], sib[0], 3, multiroot)
        torch.testing.assert_close(dist.score(value)[0], scores[trees.index(tuple(heads[:4]))])
    else:
        with pytest.raises(ValueError, match=message):
            dist.score(value)


def test_score_rejects_bad_value_types_and_shapes():
    arc, sib = random_potentials(18, batch=2, size=4)
    dist = Dependency2oCRF(arc, sib, torch.tensor([3, 2]))
    with pytest.raises(ValueError, match="integer"):
        dist.score(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shape"):
        dist.score(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="positions"):
        dist.score(torch.tensor([[-1, 0, 1], [-1, 0, -1]]))


# ------------------------------------------------------------------------------------------------
# mean-field arcs


def masked_softmax_columns(arc: torch.Tensor, lengths: torch.Tensor, temperature: float = 1.0):
    """Reference head selection ``[b, h, d]``: softmax over ``h in 0..len, h != d`` per word."""
    expected = torch.zeros_like(arc)
    for b, n in enumerate(lengths.tolist()):
        for d in range(1, n + 1):
            heads = [h for h in range(n + 1) if h != d]
            expected[b, heads, d] = torch.softmax(arc[b, heads, d] / temperature, 0)
    return expected


def random_second_order(seed: int, batch: int, size: int, scale: float):
    generator = torch.Generator().manual_seed(seed)
    arc = torch.randn(batch, size, size, generator=generator, dtype=DTYPE)
    sib = torch.randn(batch, size, size, size, generator=generator, dtype=DTYPE) * scale
    grand = torch.randn(batch, size, size, size, generator=generator, dtype=DTYPE) * scale
    return arc, sib, grand


def test_mean_field_zero_iterations_is_the_arc_softmax():
    arc, sib, grand = random_second_order(20, 4, 6, 1.0)
    lengths = torch.tensor([5, 2, 1, 4])
    q = mean_field_arcs(arc, sib, grand, lengths=lengths, iterations=0, temperature=1.3)
    torch.testing.assert_close(q, masked_softmax_columns(arc, lengths, 1.3))


def test_mean_field_with_zero_second_order_scores_is_the_arc_softmax():
    arc, _, _ = random_second_order(21, 4, 6, 1.0)
    zeros = torch.zeros(4, 6, 6, 6, dtype=DTYPE)
    lengths = torch.tensor([5, 2, 1, 4])
    for iterations in (1, 4):
        q = mean_field_arcs(arc, zeros, zeros, lengths=lengths, iterations=iterations)
        torch.testing.assert_close(q, masked_softmax_columns(arc, lengths))
    torch.testing.assert_close(
        mean_field_arcs(arc, lengths=lengths, iterations=3), masked_softmax_columns(arc, lengths)
    )


def test_mean_field_columns_are_distributions_and_padding_is_zero():
    arc, sib, grand = random_second_order(22, 4, 7, 2.0)
    lengths = torch.tensor([6, 3, 1, 5])
    q = mean_field_arcs(arc, sib, grand, lengths=lengths, iterations=5)
    position = torch.arange(7)
    words = (position >= 1) & (position <= lengths.view(-1, 1))
    torch.testing.assert_close(q.sum(1)[words], torch.ones(int(words.sum()), dtype=DTYPE))
    assert q.sum(1)[~words].eq(0).all()  # the root column and padding columns
    assert q[:, position, position].eq(0).all()
    heads_outside = position.view(1, -1, 1) > lengths.view(-1, 1, 1)
    assert q[heads_outside.expand_as(q)].eq(0).all()
    assert (q >= 0).all()


def test_mean_field_reaches_a_fixed_point():
    arc, sib, grand = random_second_order(23, 3, 6, 0.3)
    lengths = torch.tensor([5, 4, 2])
    q = mean_field_arcs(arc, sib, grand, lengths=lengths, iterations=200)
    q_next = mean_field_arcs(arc, sib, grand, lengths=lengths, iterations=201)
    assert (q_next - q).abs().max() < 1e-6
    # and it moved away from the arc softmax (the second-order scores matter)
    assert (q - masked_softmax_columns(arc, lengths)).abs().max() > 1e-2


def test_mean_field_single_update_by_hand():
    # a 2-word sentence: word 1 picks a head in {0, 2}, word 2 in {0, 1}
    arc = torch.zeros(1, 3, 3, dtype=DTYPE)
    arc[0, 0, 1], arc[0, 2, 1] = 0.5, -0.2  # heads of word 1
    arc[0, 0, 2], arc[0, 1, 2] = 0.1, 0.4  # heads of word 2
    sib = torch.zeros(1, 3, 3, 3, dtype=DTYPE)
    sib[0, 0, 1, 2], sib[0, 0, 2, 1] = 0.7, -0.3  # words 1 and 2 both under the root
    grand = torch.zeros(1, 3, 3, 3, dtype=DTYPE)
    grand[0, 0, 2, 1] = 0.9  # 0 -> 2 -> 1
    grand[0, 0, 1, 2] = -0.6  # 0 -> 1 -> 2
    grand[0, 1, 2, 1] = 5.0  # two-cycle g == d: never used
    temperature = 0.8
    s = {key: value / temperature for key, value in {
        "01": 0.5, "21": -0.2, "02": 0.1, "12": 0.4,
        "sib012": 0.7, "sib021": -0.3, "g021": 0.9, "g012": -0.6,
    }.items()}  # fmt: skip
    # initial Q: softmax of arc scores
    q1_root = 1 / (1 + math.exp(s["21"] - s["01"]))  # P(head_1 = 0)
    q2_root = 1 / (1 + math.exp(s["12"] - s["02"]))  # P(head_2 = 0)
    q1_two, q2_one = 1 - q1_root, 1 - q2_root
    # one update: word 1
    logit_01 = (
        s["01"] + q2_root * s["sib012"] + q2_one * s["g012"]
    )  # sibling 2 under 0; child 2 of 1
    logit_21 = s["21"] + q2_root * s["g021"]  # grandparent of 1 via 2: Q_2(0) grand(0, 2, 1)
    # word 2
    logit_02 = s["02"] + q1_root * s["sib021"] + q1_two * s["g021"]
    logit_12 = s["12"] + q1_root * s["g012"]
    new_q1_root = 1 / (1 + math.exp(logit_21 - logit_01))
    new_q2_root = 1 / (1 + math.exp(logit_12 - logit_02))
    q = mean_field_arcs(
        arc, sib, grand, lengths=torch.tensor([2]), iterations=1, temperature=temperature
    )
    expected = torch.tensor(
        [[0, new_q1_root, new_q2_root], [0, 0, 1 - new_q2_root], [0, 1 - new_q1_root, 0]],
        dtype=DTYPE,
    )
    torch.testing.assert_close(q[0], expected)


def brute_head_selection(arc, sib, grand, n):
    """Exact marginals of P(heads) ∝ exp(sum arcs + sum_{unordered pairs d, s under h} sib(h,d,s)
    + sum_{g -> h -> d, g != d} grand(g,h,d)) over all head vectors (cycles allowed)."""
    size = arc.shape[-1]
    scores, vectors = [], []
    for choice in itertools.product(range(n + 1), repeat=n):
        heads = (-1, *choice)
        if any(heads[d] == d for d in range(1, n + 1)):
            continue
        total = sum(arc[heads[d], d] for d in range(1, n + 1))
        for d, s in itertools.combinations(range(1, n + 1), 2):
            if heads[d] == heads[s]:
                total = total + sib[heads[d], d, s]
        for d in range(1, n + 1):
            h = heads[d]
            if h >= 1 and heads[h] != d:
                total = total + grand[heads[h], h, d]
        scores.append(total)
        vectors.append(heads)
    probs = torch.softmax(torch.stack(scores), 0)
    marginals = torch.zeros(size, size, dtype=DTYPE)
    for heads, p in zip(vectors, probs, strict=True):
        for d in range(1, n + 1):
            marginals[heads[d], d] += p
    return marginals


def test_mean_field_is_close_to_exact_head_selection_for_weak_second_order_scores():
    """Naive mean field is exact to first order in the second-order scores, so its error shrinks
    like eps**2: with eps = 0.1 we require < 5e-3 while the second-order effect itself is > 2e-2,
    and halving eps must divide the error by more than 3 (4 for a pure eps**2 law)."""
    generator = torch.Generator().manual_seed(24)
    lengths = torch.tensor([4, 3])
    size = 5
    arc = torch.randn(2, size, size, generator=generator, dtype=DTYPE)
    sib = torch.randn(2, size, size, size, generator=generator, dtype=DTYPE)
    sib = sib + sib.transpose(2, 3)  # symmetric: each unordered pair scored once
    grand = torch.randn(2, size, size, size, generator=generator, dtype=DTYPE)
    errors = []
    for eps in (0.1, 0.05):
        q = mean_field_arcs(arc, sib * eps, grand * eps, lengths=lengths, iterations=100)
        exact = torch.stack(
            [
                brute_head_selection(arc[b], sib[b] * eps, grand[b] * eps, n)
                for b, n in enumerate(lengths.tolist())
            ]
        )
        errors.append(float((q - exact).abs().max()))
        if eps == 0.1:
            effect = float((exact - masked_softmax_columns(arc, lengths)).abs().max())
            assert effect > 2e-2
    assert errors[0] < 5e-3
    assert errors[1] < errors[0] / 3


def test_mean_field_temperature_and_gradients():
    arc, sib, grand = random_second_order(25, 2, 4, 0.5)
    lengths = torch.tensor([3, 2])
    hot = mean_field_arcs(arc, sib, grand, lengths=lengths, iterations=3, temperature=2.0)
    scaled = mean_field_arcs(arc / 2, sib / 2, grand / 2, lengths=lengths, iterations=3)
    torch.testing.assert_close(hot, scaled)
    inputs = tuple(t.clone().requires_grad_() for t in (arc, sib, grand))
    assert torch.autograd.gradcheck(
        lambda a, s, g: mean_field_arcs(a, s, g, lengths=lengths, iterations=2),
        inputs,
        fast_mode=True,
    )


def test_mean_field_neg_inf_arcs_and_invalid_inputs():
    arc, sib, grand = random_second_order(26, 2, 4, 0.5)
    lengths = torch.tensor([3, 2])
    arc[0, 2, 1] = -math.inf
    q = mean_field_arcs(arc, sib, grand, lengths=lengths)
    assert q[0, 2, 1] == 0 and not torch.isnan(q).any()
    blocked = arc.clone()
    blocked[0, :, 3] = -math.inf
    with pytest.raises(ValueError, match="at least one head"):
        mean_field_arcs(blocked, lengths=lengths)
    with pytest.raises(ValueError, match="iterations"):
        mean_field_arcs(arc, lengths=lengths, iterations=-1)
    with pytest.raises(ValueError, match="lengths"):
        mean_field_arcs(arc, lengths=torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="sibling_scores"):
        mean_field_arcs(arc, sib[:, :3], lengths=lengths)
    with pytest.raises(ValueError, match="grandparent_scores"):
        mean_field_arcs(arc, None, grand[..., :2], lengths=lengths)
    bad = sib.clone()
    bad[0, 0, 1, 2] = math.inf
    with pytest.raises(ValueError, match="finite"):
        mean_field_arcs(arc, bad, lengths=lengths)
    bad[0, 0, 1, 2] = math.nan
    with pytest.raises(NumericalError, match="sibling_scores"):
        mean_field_arcs(arc, bad, lengths=lengths)
    # entries outside the sentence are ignored, whatever they hold
    padded = sib.clone()
    padded[1, 3] = math.inf
    torch.testing.assert_close(
        mean_field_arcs(arc, padded, lengths=lengths), mean_field_arcs(arc, sib, lengths=lengths)
    )
    with pytest.raises(ValueError, match="temperature"):
        mean_field_arcs(arc, lengths=lengths, temperature=-1.0)


def test_marginals_after_an_inference_mode_pass() -> None:
    """The span index is cached per size: building it in inference mode (a teacher's evaluation)
    must not break a later autograd pass in the same process (the teacher's KD targets)."""
    size = 23  # a size no other test uses, so the first pass here builds the cached index
    torch.manual_seed(0)
    arcs = torch.randn(2, size, size, dtype=torch.float64)
    sibs = torch.randn(2, size, size, size, dtype=torch.float64)
    lengths = torch.tensor([size - 1, size - 5])
    with torch.inference_mode():  # decoding builds the index; marginals need autograd
        best = Dependency2oCRF(arcs, sibs, lengths).argmax
    with torch.no_grad():
        marginals = Dependency2oCRF(arcs, sibs, lengths).marginals
    assert torch.isfinite(marginals).all()
    assert best.shape[0] == 2
