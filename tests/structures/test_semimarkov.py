"""SemiMarkovSpans and the BIOES helpers against brute-force enumeration of flat span sets."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.structures.base import NumericalError
from structkd.structures.semimarkov import (
    SemiMarkovSpans,
    bioes_constraints,
    bioes_tag_names,
    bioes_to_spans,
    spans_to_bioes,
)

# ------------------------------------------------------------------------------------------------
# Brute force: every flat labeled segmentation of a sentence, written independently of the library
# ------------------------------------------------------------------------------------------------


def enumerate_span_sets(n: int, n_labels: int, max_width: int | None) -> list[list[tuple]]:
    """Every set of non-overlapping labeled spans ``(i, j, r)`` over ``n`` tokens."""
    width = n if max_width is None else max_width
    structures = []

    def extend(position: int, chosen: list[tuple]) -> None:
        if position == n:
            structures.append(list(chosen))
            return
        extend(position + 1, chosen)  # token `position` is O
        for end in range(position, min(n, position + width)):
            for label in range(n_labels):
                extend(end + 1, [*chosen, (position, end, label)])

    extend(0, [])
    return structures


def tags_of(spans: list[tuple], n: int) -> list[int]:
    """BIOES tags (contract layout) of a span set over ``n`` tokens."""
    tags = [0] * n
    for i, j, r in spans:
        if i == j:
            tags[i] = 4 + 4 * r
        else:
            tags[i], tags[j] = 1 + 4 * r, 3 + 4 * r
            for m in range(i + 1, j):
                tags[m] = 2 + 4 * r
    return tags


class BruteForce:
    """Exact quantities of sentence ``b`` of a batch, by summing over all its structures."""

    def __init__(self, span_scores, b, length, max_width=None, temperature=1.0):
        n_labels = span_scores.shape[-1]
        self.n, self.n_labels = length, n_labels
        self.structures = enumerate_span_sets(length, n_labels, max_width)
        self.tags = [tags_of(spans, length) for spans in self.structures]
        scores = [
            sum(float(span_scores[b, i, j, r]) for i, j, r in spans) / temperature
            for spans in self.structures
        ]
        self.scores = torch.tensor(scores, dtype=torch.float64)
        self.log_z = torch.logsumexp(self.scores, 0)
        self.probs = torch.exp(self.scores - self.log_z)

    def span_marginals(self, seq_len):
        out = torch.zeros(seq_len, seq_len, self.n_labels, dtype=torch.float64)
        for spans, p in zip(self.structures, self.probs, strict=True):
            for i, j, r in spans:
                out[i, j, r] += p
        return out

    def bioes_marginals(self, seq_len):
        out = torch.zeros(seq_len, 1 + 4 * self.n_labels, dtype=torch.float64)
        for tags, p in zip(self.tags, self.probs, strict=True):
            for m, tag in enumerate(tags):
                out[m, tag] += p
        return out

    def pair_marginals(self, seq_len):
        n_tags = 1 + 4 * self.n_labels
        out = torch.zeros(max(seq_len - 1, 0), n_tags, n_tags, dtype=torch.float64)
        for tags, p in zip(self.tags, self.probs, strict=True):
            for m in range(self.n - 1):
                out[m, tags[m], tags[m + 1]] += p
        return out

    def entropy(self):
        return float(-(self.probs * torch.log(self.probs)).sum())


def random_batch(seed, lengths, seq_len, n_labels, scale=1.0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(len(lengths), seq_len, seq_len, n_labels, generator=generator) * scale
    return scores.to(dtype), torch.tensor(lengths)


def padded_tags(tag_lists, seq_len):
    return torch.tensor([tags + [-1] * (seq_len - len(tags)) for tags in tag_lists])


CASES = [
    # lengths, seq_len, n_labels, max_width, temperature
    ([5, 3, 1, 4], 5, 2, None, 1.0),
    ([5, 2, 4], 5, 1, 2, 1.0),
    ([4, 4, 1], 5, 2, 3, 0.6),
    ([3, 5], 5, 1, None, 2.5),
    ([1, 2], 2, 2, 1, 1.0),
]


@pytest.fixture(scope="module", params=range(len(CASES)), ids=lambda i: f"case{i}")
def case(request):
    lengths, seq_len, n_labels, max_width, temperature = CASES[request.param]
    scores, lengths_t = random_batch(request.param, lengths, seq_len, n_labels)
    dist = SemiMarkovSpans(scores, lengths_t, max_width=max_width, temperature=temperature)
    brutes = [
        BruteForce(scores, b, n, max_width=max_width, temperature=temperature)
        for b, n in enumerate(lengths)
    ]
    return dist, brutes, scores


# ------------------------------------------------------------------------------------------------
# Exact quantities against brute force
# ------------------------------------------------------------------------------------------------


def test_log_partition(case):
    dist, brutes, _ = case
    expected = torch.stack([brute.log_z for brute in brutes])
    torch.testing.assert_close(dist.log_partition, expected)


def test_span_marginals(case):
    dist, brutes, _ = case
    for b, brute in enumerate(brutes):
        torch.testing.assert_close(dist.marginals[b], brute.span_marginals(dist.max_len))


def test_bioes_marginals(case):
    dist, brutes, _ = case
    for b, brute in enumerate(brutes):
        torch.testing.assert_close(dist.bioes_marginals[b], brute.bioes_marginals(dist.max_len))
    row_sums = dist.bioes_marginals.sum(-1)
    torch.testing.assert_close(row_sums, dist.mask.to(row_sums.dtype))
    assert (dist.bioes_marginals >= 0).all()


def test_bioes_pair_marginals(case):
    dist, brutes, _ = case
    pairs = dist.bioes_pair_marginals
    assert pairs.shape == (dist.batch_size, dist.max_len - 1, dist.n_tags, dist.n_tags)
    for b, brute in enumerate(brutes):
        torch.testing.assert_close(pairs[b], brute.pair_marginals(dist.max_len))
    assert (pairs >= 0).all()
    # consistent with the token marginals wherever both tokens are real
    real_pair = dist.mask[:, 1:, None]
    unary = dist.bioes_marginals
    torch.testing.assert_close(pairs.sum(-1), torch.where(real_pair, unary[:, :-1], 0.0))
    torch.testing.assert_close(pairs.sum(-2), torch.where(real_pair, unary[:, 1:], 0.0))


def test_argmax(case):
    dist, brutes, _ = case
    for b, brute in enumerate(brutes):
        best = int(torch.argmax(brute.scores))
        expected = brute.tags[best] + [-1] * (dist.max_len - brute.n)
        assert dist.argmax[b].tolist() == expected
    expected_spans = bioes_to_spans(dist.argmax, dist.lengths, dist.n_span_labels)
    assert torch.equal(dist.argmax_spans, expected_spans)


def test_kbest_against_sorted_enumeration(case):
    dist, brutes, _ = case
    k = max(len(brute.structures) for brute in brutes) + 3  # beyond every sentence's count
    values, scores = dist.kbest(k)
    assert values.shape == (k, dist.batch_size, dist.max_len) and scores.shape == (
        k,
        dist.batch_size,
    )
    for b, brute in enumerate(brutes):
        count = len(brute.structures)
        expected_scores, _ = torch.sort(brute.scores, descending=True)
        torch.testing.assert_close(scores[:count, b], expected_scores)
        assert torch.isneginf(scores[count:, b]).all()
        assert (values[count:, b] == -1).all()
        found = [tuple(row[: brute.n]) for row in values[:count, b].tolist()]
        assert sorted(found) == sorted(tuple(tags) for tags in brute.tags)  # distinct, all of them
        assert (values[:count, b, brute.n :] == -1).all()
    # the returned scores are the scores of the returned structures
    first = min(len(brute.structures) for brute in brutes)
    torch.testing.assert_close(dist.score(values[:first]), scores[:first])
    torch.testing.assert_close(scores[0], dist.score(dist.argmax))


def test_score_and_log_prob(case):
    dist, brutes, _ = case
    count = max(len(brute.structures) for brute in brutes)
    # one row per structure of each sentence (sentences with fewer repeat their all-O structure)
    rows = [
        [brute.tags[c] if c < len(brute.structures) else [0] * brute.n for brute in brutes]
        for c in range(count)
    ]
    values = torch.stack([padded_tags(row, dist.max_len) for row in rows])
    scores, log_probs = dist.score(values), dist.log_prob(values)
    for b, brute in enumerate(brutes):
        n_structures = len(brute.structures)
        torch.testing.assert_close(scores[:n_structures, b], brute.scores)
        torch.testing.assert_close(log_probs[:n_structures, b], brute.scores - brute.log_z)
        torch.testing.assert_close(
            torch.logsumexp(log_probs[:n_structures, b], 0), torch.zeros((), dtype=torch.float64)
        )


def test_entropy(case):
    dist, brutes, _ = case
    expected = torch.tensor([brute.entropy() for brute in brutes], dtype=torch.float64)
    torch.testing.assert_close(dist.entropy, expected)


def test_expected_score_with_foreign_marginals(case):
    dist, brutes, scores = case
    generator = torch.Generator().manual_seed(7)
    teacher_scores = torch.randn(scores.shape, generator=generator, dtype=torch.float64)
    teacher = SemiMarkovSpans(teacher_scores, dist.lengths, max_width=dist.max_width)
    result = dist.expected_score(teacher.marginals)
    for b, brute in enumerate(brutes):
        teacher_brute = BruteForce(teacher_scores, b, brute.n, max_width=dist.max_width)
        # structures are enumerated in the same order for both
        expected = float((teacher_brute.probs * brute.scores).sum())
        assert math.isclose(float(result[b]), expected, rel_tol=1e-9, abs_tol=1e-9)


def test_expected_score_zero_mass_on_forbidden_spans():
    scores, lengths = random_batch(3, [3, 2], 3, 1)
    scores[0, 0, 1, 0] = -torch.inf
    dist = SemiMarkovSpans(scores, lengths)
    assert torch.isfinite(dist.expected_score()).all()
    assert dist.marginals[0, 0, 1, 0] == 0
    foreign = torch.zeros_like(scores)
    foreign[:, 0, 0, 0] = 0.5
    foreign[1, 2, 0, 0] = 9.0  # i > j: ignored
    foreign[1, 2, 2, 0] = 9.0  # past the sentence: ignored
    torch.testing.assert_close(dist.expected_score(foreign), 0.5 * scores[:, 0, 0, 0])
    foreign[0, 0, 1, 0] = 0.25  # positive mass on a -inf potential
    assert torch.isneginf(dist.expected_score(foreign)[0])
    narrow = SemiMarkovSpans(torch.randn(1, 3, 3, 1, dtype=torch.float64), [3], max_width=1)
    wide_mass = torch.zeros(1, 3, 3, 1, dtype=torch.float64)
    wide_mass[0, 0, 2, 0] = 0.1  # wider than max_width: forbidden
    assert torch.isneginf(narrow.expected_score(wide_mass)[0])


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------


def chi_square_bound(dof: int, z: float = 4.75) -> float:
    """Upper quantile of chi-square(dof) at about 1 - 1e-6 (Wilson-Hilferty)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize(("n_labels", "max_width"), [(1, None), (2, 2)])
def test_sample_frequencies(n_labels, max_width):
    lengths = [4, 2, 1, 3]
    scores, lengths_t = random_batch(11 + n_labels, lengths, 4, n_labels)
    dist = SemiMarkovSpans(scores, lengths_t, max_width=max_width, temperature=1.3)
    n_samples = 20000
    samples = dist.sample(n_samples, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (n_samples, len(lengths), 4)
    dist.score(samples)  # every sample is well-formed (raises otherwise)
    for b, n in enumerate(lengths):
        brute = BruteForce(scores, b, n, max_width=max_width, temperature=1.3)
        assert (samples[:, b, n:] == -1).all()
        counts = Counter(tuple(row) for row in samples[:, b, :n].tolist())
        index = {tuple(tags): c for c, tags in enumerate(brute.tags)}
        assert set(counts) <= set(index), "a sample is not a valid structure"
        observed = torch.zeros(len(brute.tags), dtype=torch.float64)
        for tags, count in counts.items():
            observed[index[tags]] = count
        expected = brute.probs * n_samples
        # pool the categories expected fewer than 5 times into one
        small = expected < 5
        observed = torch.cat([observed[~small], observed[small].sum().view(1)])
        expected = torch.cat([expected[~small], expected[small].sum().view(1)])
        keep = expected > 0
        observed, expected = observed[keep], expected[keep]
        if len(expected) < 2:
            continue
        statistic = float(((observed - expected) ** 2 / expected).sum())
        assert statistic < chi_square_bound(len(expected) - 1), (b, statistic)


def test_sample_is_reproducible_and_never_draws_forbidden_spans():
    scores, lengths = random_batch(5, [4, 3], 4, 2)
    scores[:, :, :, 1] = -torch.inf  # label 1 forbidden everywhere
    dist = SemiMarkovSpans(scores, lengths)
    first = dist.sample(500, generator=torch.Generator().manual_seed(3))
    second = dist.sample(500, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    assert ((first < 5) | (first == -1)).all()


# ------------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------------


def test_gradient_of_log_partition_is_span_marginals():
    scores, lengths = random_batch(2, [5, 3, 4], 5, 2)
    scores.requires_grad_()
    temperature = 0.8
    dist = SemiMarkovSpans(scores, lengths, max_width=3, temperature=temperature)
    (grad,) = torch.autograd.grad(dist.log_partition.sum(), scores)
    torch.testing.assert_close(grad * temperature, dist.marginals.detach())


def test_marginals_are_differentiable():
    scores, lengths = random_batch(4, [3, 2], 3, 2)
    scores[0, 0, 2, 1] = -torch.inf  # a forbidden span must not poison the gradient
    scores.requires_grad_()

    def everything(span_scores):
        dist = SemiMarkovSpans(span_scores, lengths, temperature=1.5)
        return (
            dist.marginals,
            dist.bioes_marginals,
            dist.bioes_pair_marginals,
            dist.entropy,
        )

    finite = torch.isfinite(scores.detach())
    assert torch.autograd.gradcheck(
        lambda free: everything(torch.where(finite, free, scores.detach())),
        (torch.where(finite, scores.detach(), 0.0).requires_grad_(),),
    )
    outputs = everything(scores)
    loss = sum(output.sum() for output in outputs)
    (grad,) = torch.autograd.grad(loss, scores)
    assert torch.isfinite(grad).all()


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def test_bioes_tag_names():
    assert bioes_tag_names(["PER", "LOC"]) == [
        "O",
        *("B-PER", "I-PER", "E-PER", "S-PER"),
        *("B-LOC", "I-LOC", "E-LOC", "S-LOC"),
    ]
    assert bioes_tag_names([]) == ["O"]
    with pytest.raises(ValueError, match="span_labels"):
        bioes_tag_names("PER")


@pytest.mark.parametrize(("n_labels", "max_n"), [(1, 4), (2, 3)])
def test_bioes_constraints_accept_exactly_the_well_formed_sequences(n_labels, max_n):
    allowed_transitions, allowed_start, allowed_end = bioes_constraints(n_labels)
    n_tags = 1 + 4 * n_labels
    assert allowed_transitions.shape == (n_tags, n_tags) and allowed_transitions.dtype == torch.bool
    assert allowed_start.shape == (n_tags,) and allowed_end.shape == (n_tags,)
    for n in range(1, max_n + 1):
        well_formed = {tuple(tags_of(s, n)) for s in enumerate_span_sets(n, n_labels, None)}
        for tags in itertools.product(range(n_tags), repeat=n):
            accepted = (
                bool(allowed_start[tags[0]])
                and bool(allowed_end[tags[-1]])
                and all(bool(allowed_transitions[a, c]) for a, c in itertools.pairwise(tags))
            )
            assert accepted == (tags in well_formed), tags


def test_bioes_spans_round_trip():
    scores, lengths = random_batch(8, [5, 3, 1], 5, 2)
    dist = SemiMarkovSpans(scores, lengths, max_width=3)
    tags = dist.sample(50, generator=torch.Generator().manual_seed(1))  # [50, batch, N]
    spans = bioes_to_spans(tags, lengths, 2)
    assert spans.shape == (50, 3, 5, 5, 2) and spans.dtype == torch.bool
    assert torch.equal(spans_to_bioes(spans, lengths), tags)
    assert torch.equal(spans_to_bioes(spans.long(), lengths), tags)
    for s in range(5):
        for b, n in enumerate([5, 3, 1]):
            expected = torch.zeros(5, 5, 2, dtype=torch.bool)
            row = tags[s, b, :n].tolist()
            for spans_list in enumerate_span_sets(n, 2, 3):
                if tags_of(spans_list, n) == row:
                    for i, j, r in spans_list:
                        expected[i, j, r] = True
            assert torch.equal(spans[s, b], expected)
    # span marginals of a point mass are the indicator: expected_score of it is the score
    torch.testing.assert_close(dist.expected_score(spans[0].double()), dist.score(tags[0]))


def test_spans_to_bioes_rejects_bad_spans():
    lengths = torch.tensor([4])
    spans = torch.zeros(1, 4, 4, 1, dtype=torch.bool)
    spans[0, 0, 2, 0] = spans[0, 2, 3, 0] = True
    with pytest.raises(ValueError, match="overlap"):
        spans_to_bioes(spans, lengths)
    spans = torch.zeros(1, 4, 4, 1, dtype=torch.bool)
    spans[0, 2, 1, 0] = True
    with pytest.raises(ValueError, match="i > j"):
        spans_to_bioes(spans, lengths)
    spans = torch.zeros(1, 4, 4, 1, dtype=torch.bool)
    spans[0, 1, 3, 0] = True
    with pytest.raises(ValueError, match="past the sentence"):
        spans_to_bioes(spans, torch.tensor([3]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        spans_to_bioes(torch.full((1, 4, 4, 1), 2), lengths)
    with pytest.raises(ValueError, match="bool or integer"):
        spans_to_bioes(torch.zeros(1, 4, 4, 1), lengths)
    with pytest.raises(ValueError, match="shape"):
        spans_to_bioes(torch.zeros(1, 4, 3, 1, dtype=torch.bool), lengths)


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ([2, 3, 0], "starts with"),  # I first
        ([3, 0, 0], "starts with"),  # E first
        ([1, 0, 0], "cannot follow"),  # B then O
        ([1, 7, 0], "cannot follow"),  # B-0 then E-1
        ([1, 2, 7], "cannot follow"),  # I-0 then E-1
        ([0, 4, 2], "cannot follow"),  # S then I
        ([0, 0, 1], "ends with"),  # B last
        ([0, 1, 2], "ends with"),  # I last
        ([0, 9, 0], r"\[0, 9\)"),  # out of range for 2 labels
        ([0, -1, 0], r"\[0, 9\)"),  # -1 on a real token
    ],
)
def test_invalid_bioes_raises(tags, message):
    dist = SemiMarkovSpans(torch.zeros(1, 3, 3, 2), torch.tensor([3]))
    with pytest.raises(ValueError, match=message):
        dist.score(torch.tensor([tags]))
    with pytest.raises(ValueError, match=message):
        bioes_to_spans(torch.tensor([tags]), torch.tensor([3]), 2)


def test_score_checks_width_and_ignores_padding():
    dist = SemiMarkovSpans(torch.ones(2, 4, 4, 1), torch.tensor([4, 2]), max_width=2)
    with pytest.raises(ValueError, match="wider than max_width=2"):
        dist.score(torch.tensor([[1, 2, 3, 0], [0, 0, -1, -1]]))
    # padded positions may hold anything
    torch.testing.assert_close(
        dist.score(torch.tensor([[1, 3, 4, 0], [1, 3, 2, 99]])), torch.tensor([2.0, 1.0])
    )
    with pytest.raises(ValueError, match="integer"):
        dist.score(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shape"):
        dist.score(torch.zeros(2, 3, dtype=torch.long))


# ------------------------------------------------------------------------------------------------
# Input validation, options, dtypes
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_raise():
    good = torch.zeros(2, 3, 3, 2)
    lengths = torch.tensor([3, 2])
    with pytest.raises(ValueError, match="span_scores"):
        SemiMarkovSpans(torch.zeros(2, 3, 3), lengths)
    with pytest.raises(ValueError, match="dims 1 and 2"):
        SemiMarkovSpans(torch.zeros(2, 3, 4, 2), lengths)
    with pytest.raises(ValueError, match="floating"):
        SemiMarkovSpans(torch.zeros(2, 3, 3, 2, dtype=torch.long), lengths)
    with pytest.raises(ValueError, match="at least one span label"):
        SemiMarkovSpans(torch.zeros(2, 3, 3, 0), lengths)
    with pytest.raises(NumericalError, match="NaN"):
        SemiMarkovSpans(torch.full((2, 3, 3, 2), math.nan), lengths)
    plus_inf = good.clone()
    plus_inf[0, 0, 1, 0] = math.inf
    with pytest.raises(ValueError, match=r"\+inf"):
        SemiMarkovSpans(plus_inf, lengths)
    plus_inf_ignored = good.clone()
    plus_inf_ignored[0, 2, 1, 0] = math.inf  # i > j: ignored
    plus_inf_ignored[1, 2, 2, 0] = math.inf  # past the sentence: ignored
    assert torch.isfinite(SemiMarkovSpans(plus_inf_ignored, lengths).log_partition).all()
    for max_width in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_width"):
            SemiMarkovSpans(good, lengths, max_width=max_width)
    with pytest.raises(ValueError, match="lengths"):
        SemiMarkovSpans(good, torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="lengths"):
        SemiMarkovSpans(good, torch.tensor([3, 0]))
    with pytest.raises(ValueError, match="temperature"):
        SemiMarkovSpans(good, lengths, temperature=0.0)
    dist = SemiMarkovSpans(good, lengths)
    with pytest.raises(ValueError, match="k must"):
        dist.kbest(0)
    with pytest.raises(ValueError, match="n must"):
        dist.sample(0)
    with pytest.raises(ValueError, match="marginals must have shape"):
        dist.expected_score(torch.zeros(2, 3, 3, 1))
    with pytest.raises(ValueError, match="n_span_labels"):
        bioes_constraints(0)


def test_tempered_and_repr():
    scores, lengths = random_batch(6, [4, 2], 4, 2)
    dist = SemiMarkovSpans(scores, lengths, max_width=3, temperature=2.0)
    hotter = dist.tempered(1.5)
    direct = SemiMarkovSpans(scores, lengths, max_width=3, temperature=3.0)
    assert hotter.temperature == 3.0 and hotter.max_width == 3
    torch.testing.assert_close(hotter.log_partition, direct.log_partition)
    torch.testing.assert_close(hotter.bioes_marginals, direct.bioes_marginals)
    text = repr(dist)
    assert "SemiMarkovSpans" in text and "max_width=3" in text and "n_span_labels=2" in text
    assert "temperature=2.0" in text


def test_float32_matches_float64():
    scores, lengths = random_batch(9, [5, 3, 4], 5, 2, scale=3.0)
    double = SemiMarkovSpans(scores, lengths, max_width=4)
    single = SemiMarkovSpans(scores.float(), lengths, max_width=4)
    assert single.log_partition.dtype == torch.float32
    assert single.bioes_pair_marginals.dtype == torch.float32
    torch.testing.assert_close(single.log_partition, double.log_partition.float())
    torch.testing.assert_close(single.marginals, double.marginals.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        single.bioes_pair_marginals, double.bioes_pair_marginals.float(), atol=1e-5, rtol=1e-4
    )
    assert torch.equal(single.argmax, double.argmax)


def test_forbidden_spans_get_no_mass():
    scores, lengths = random_batch(10, [4, 3], 4, 2)
    scores[:, :, :, 0] = -torch.inf  # only label 1 remains
    dist = SemiMarkovSpans(scores, lengths)
    assert (dist.marginals[..., 0] == 0).all()
    assert (dist.bioes_marginals[..., 1:5] == 0).all()
    assert (dist.bioes_pair_marginals[..., 1:5, :] == 0).all()
    values, kscores = dist.kbest(200)
    real = values[torch.isfinite(kscores)]
    assert ((real == 0) | (real >= 5) | (real == -1)).all()
    for b, n in enumerate([4, 3]):
        brute = BruteForce(scores, b, n)
        count = int(torch.isfinite(brute.scores).sum())  # structures avoiding label 0
        assert int(torch.isfinite(kscores[:, b]).sum()) == count


# ------------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ------------------------------------------------------------------------------------------------


@st.composite
def batches(draw, max_len=6):
    batch_size = draw(st.integers(1, 3))
    seq_len = draw(st.integers(1, max_len))
    lengths = draw(st.lists(st.integers(1, seq_len), min_size=batch_size, max_size=batch_size))
    n_labels = draw(st.integers(1, 3))
    max_width = draw(st.one_of(st.none(), st.integers(1, seq_len + 1)))
    seed = draw(st.integers(0, 2**16))
    return lengths, seq_len, n_labels, max_width, seed


@settings(max_examples=25, deadline=None)
@given(batches(), st.sampled_from([1.0, 0.5, 3.0]))
def test_padding_does_not_change_results(batch, temperature):
    lengths, seq_len, n_labels, max_width, seed = batch
    scores, lengths_t = random_batch(seed, lengths, seq_len, n_labels, scale=2.0)
    # garbage in the ignored entries must not matter
    generator = torch.Generator().manual_seed(seed + 1)
    dist = SemiMarkovSpans(scores, lengths_t, max_width=max_width, temperature=temperature)
    n_tags = 1 + 4 * n_labels
    assert dist.marginals.shape == (len(lengths), seq_len, seq_len, n_labels)
    assert dist.bioes_marginals.shape == (len(lengths), seq_len, n_tags)
    assert dist.bioes_pair_marginals.shape == (len(lengths), max(seq_len - 1, 0), n_tags, n_tags)
    for b, n in enumerate(lengths):
        alone_scores = scores[b : b + 1, :n, :n].clone()
        alone = SemiMarkovSpans(
            alone_scores, torch.tensor([n]), max_width=max_width, temperature=temperature
        )
        torch.testing.assert_close(dist.log_partition[b : b + 1], alone.log_partition)
        torch.testing.assert_close(dist.marginals[b, :n, :n], alone.marginals[0])
        torch.testing.assert_close(dist.bioes_marginals[b, :n], alone.bioes_marginals[0])
        torch.testing.assert_close(
            dist.bioes_pair_marginals[b, : n - 1], alone.bioes_pair_marginals[0]
        )
        assert dist.argmax[b, :n].tolist() == alone.argmax[0].tolist()
        assert (dist.argmax[b, n:] == -1).all()
        assert (dist.marginals[b, n:] == 0).all() and (dist.marginals[b, :, n:] == 0).all()
        assert (dist.bioes_marginals[b, n:] == 0).all()
        assert (dist.bioes_pair_marginals[b, max(n - 1, 0) :] == 0).all()
    # ignored entries (i > j, past the sentence) can hold anything
    garbage = torch.randn(scores.shape, generator=generator, dtype=scores.dtype) * 100
    ignored = ~dist.span_mask.expand(scores.shape)
    if max_width is not None:  # entries too wide are forbidden, not ignored: keep them out
        positions = torch.arange(seq_len)
        ignored &= (positions.view(-1, 1) > positions.view(1, -1)).unsqueeze(-1) | (
            positions.view(1, 1, -1, 1) >= lengths_t.view(-1, 1, 1, 1)
        )
    noisy = SemiMarkovSpans(
        torch.where(ignored, garbage, scores),
        lengths_t,
        max_width=max_width,
        temperature=temperature,
    )
    torch.testing.assert_close(noisy.log_partition, dist.log_partition)
    torch.testing.assert_close(noisy.bioes_pair_marginals, dist.bioes_pair_marginals)


@settings(max_examples=25, deadline=None)
@given(batches(max_len=8), st.sampled_from([torch.float32, torch.float64]), st.booleans())
def test_extreme_scores_stay_finite(batch, dtype, with_forbidden):
    lengths, seq_len, n_labels, max_width, seed = batch
    scores, lengths_t = random_batch(seed, lengths, seq_len, n_labels, scale=1e4, dtype=dtype)
    scores = scores.clamp(-1e4, 1e4)
    if with_forbidden:
        scores[:, :, :, 0] = -torch.inf
    scores.requires_grad_()
    dist = SemiMarkovSpans(scores, lengths_t, max_width=max_width)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-9
    for quantity in (
        dist.log_partition,
        dist.marginals,
        dist.bioes_marginals,
        dist.bioes_pair_marginals,
        dist.entropy,
    ):
        assert quantity.dtype == dtype
        assert torch.isfinite(quantity).all()
    assert (dist.marginals >= 0).all() and (dist.marginals <= 1 + tolerance).all()
    row_sums = dist.bioes_marginals.sum(-1)
    torch.testing.assert_close(
        row_sums, dist.mask.to(dtype), atol=tolerance, rtol=0, check_dtype=False
    )
    (grad,) = torch.autograd.grad(dist.log_partition.sum(), scores)
    assert torch.isfinite(grad).all()
    values, kscores = dist.kbest(3)
    assert not torch.isnan(kscores).any()
    # ties (clamped scores) may order differently, but the best score is the argmax's
    assert kscores[0].tolist() == dist.score(dist.argmax).tolist()
    assert torch.isfinite(dist.score(values[0])).all()
    samples = dist.sample(4, generator=torch.Generator().manual_seed(seed))
    assert torch.isfinite(dist.score(samples)).all()


@settings(max_examples=20, deadline=None)
@given(batches(max_len=5))
def test_kbest_is_sorted_and_consistent(batch):
    lengths, seq_len, n_labels, max_width, seed = batch
    scores, lengths_t = random_batch(seed, lengths, seq_len, n_labels)
    dist = SemiMarkovSpans(scores, lengths_t, max_width=max_width)
    values, kscores = dist.kbest(6)
    finite = torch.isfinite(kscores)
    assert (kscores[1:][finite[1:]] <= kscores[:-1][finite[1:]]).all()
    rows = values[finite.all(1)]
    if len(rows):
        torch.testing.assert_close(dist.score(rows), kscores[finite.all(1)])
    torch.testing.assert_close(kscores[0], dist.score(dist.argmax))
    assert (dist.log_prob(values[0]) <= 1e-12).all()
