"""Factorized (softmax tagger) against brute-force enumeration of tag sequences."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.structures.base import NumericalError
from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF
from tests.structures.brute_chains import enumerate_chain

F64 = torch.float64
LENGTHS = [3, 1, 2, 3]
CONFIGS = ["plain", "temperature", "forbidden"]


def make_case(config: str, seed: int = 0, n_labels: int = 3) -> tuple[Factorized, list]:
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(len(LENGTHS), max(LENGTHS), n_labels, generator=generator, dtype=F64)
    if config == "forbidden":
        logits[0, 1, 0] = -math.inf
        logits[2, :, 1] = -math.inf
    temperature = 0.45 if config == "temperature" else 1.0
    lengths = torch.tensor(LENGTHS)
    tagger = Factorized(logits, lengths, temperature)
    brute = [
        enumerate_chain(logits[b], None, length, temperature=temperature)
        for b, length in enumerate(LENGTHS)
    ]
    return tagger, brute


def close(actual, expected, atol=1e-10, rtol=1e-10) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=F64),
        torch.as_tensor(expected, dtype=F64),
        atol=atol,
        rtol=rtol,
    )


@pytest.mark.parametrize("config", CONFIGS)
def test_against_enumeration(config):
    tagger, brute = make_case(config)
    seq_len, n_labels = tagger.logits.shape[1:]
    for b, enumeration in enumerate(brute):
        unary, pairs = enumeration.marginals(seq_len, n_labels)
        close(tagger.log_partition[b], enumeration.log_partition)
        close(tagger.marginals[b], unary)
        close(tagger.pair_marginals[b], pairs)
        close(tagger.entropy[b], enumeration.entropy)
        best = tuple(tagger.argmax[b, : LENGTHS[b]].tolist())
        close(enumeration.scores[enumeration.sequences.index(best)], enumeration.ranked()[0][0])
    assert ((tagger.argmax == -1) == ~tagger.mask).all()


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("n_labels", [2, 3, 4])
def test_kbest_matches_sorted_enumeration(config, n_labels):
    tagger, brute = make_case(config, seed=1, n_labels=n_labels)
    for k in (1, 2, 5, 100):  # k above n_labels and above the number of sequences
        values, scores = tagger.kbest(k)
        assert values.shape == (k, len(LENGTHS), max(LENGTHS))
        for b, enumeration in enumerate(brute):
            ranked = enumeration.ranked()
            found = min(k, len(ranked))
            close(scores[:found, b], [score for score, _ in ranked[:found]])
            assert torch.isneginf(scores[found:, b]).all() and (values[found:, b] == -1).all()
            rows = [tuple(row[: LENGTHS[b]].tolist()) for row in values[:found, b]]
            assert len(set(rows)) == found
            assert (values[:found, b, LENGTHS[b] :] == -1).all()
            table = dict(zip(enumeration.sequences, enumeration.scores.tolist(), strict=True))
            for row, score in zip(rows, scores[:found, b].tolist(), strict=True):
                close(table[row], score)


def test_kbest_with_ties_is_distinct():
    tagger = Factorized(torch.zeros(1, 3, 2), torch.tensor([3]))
    values, scores = tagger.kbest(8)
    assert len({tuple(row.tolist()) for row in values[:, 0]}) == 8
    assert (scores == 0).all()


def test_score_log_prob_and_expected_score():
    tagger, brute = make_case("temperature", seed=2)
    generator = torch.Generator().manual_seed(0)
    value = torch.randint(3, (5, len(LENGTHS), max(LENGTHS)), generator=generator)
    value = torch.where(tagger.mask, value, -1)
    scores, log_probs = tagger.score(value), tagger.log_prob(value)
    for sample in range(5):
        for b, enumeration in enumerate(brute):
            row = tuple(value[sample, b, : LENGTHS[b]].tolist())
            expected = float(enumeration.scores[enumeration.sequences.index(row)])
            close(scores[sample, b], expected)
            close(log_probs[sample, b], expected - enumeration.log_partition)
    teacher, teacher_brute = make_case("plain", seed=3)
    expected_score = tagger.expected_score(teacher.marginals)
    for b, (ours, theirs) in enumerate(zip(brute, teacher_brute, strict=True)):
        close(expected_score[b], float((theirs.probabilities * ours.scores).sum()))
    close(tagger.expected_score(), tagger.log_partition - tagger.entropy)


def test_expected_score_zero_times_minus_inf():
    tagger, _ = make_case("forbidden", seed=4)
    own = tagger.expected_score()
    assert torch.isfinite(own).all()
    mass = tagger.marginals.clone()
    mass[0, 1] = torch.tensor([1.0, 0.0, 0.0], dtype=F64)  # all mass on a -inf logit
    assert torch.isneginf(tagger.expected_score(mass)[0])
    assert torch.isfinite(tagger.expected_score(mass)[1:]).all()


def test_sample_frequencies():
    tagger, brute = make_case("forbidden", seed=5)
    n_samples = 20000
    samples = tagger.sample(n_samples, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (n_samples, len(LENGTHS), max(LENGTHS))
    assert ((samples == -1) == ~tagger.mask).all()
    for b, enumeration in enumerate(brute):
        counts = Counter(tuple(row[: LENGTHS[b]].tolist()) for row in samples[:, b])
        probabilities = dict(
            zip(enumeration.sequences, enumeration.probabilities.tolist(), strict=True)
        )
        assert all(probabilities[row] > 0 for row in counts)
        total_variation = 0.5 * sum(
            abs(counts.get(row, 0) / n_samples - probability)
            for row, probability in probabilities.items()
        )
        # E[TV] <= 0.5 * sqrt(2 / pi) * sum_y sqrt(p_y / n) ~ 0.01 here
        assert total_variation < 0.03, total_variation


def test_gradients():
    tagger, _ = make_case("temperature", seed=6)
    logits = tagger.logits.clone().requires_grad_()
    weights = torch.linspace(0.5, 2.0, len(LENGTHS), dtype=F64)
    (Factorized(logits, tagger.lengths, 0.45).log_partition * weights).sum().backward()
    close(logits.grad, weights.view(-1, 1, 1) * tagger.marginals / 0.45)

    def outputs(logits):
        other = Factorized(logits, tagger.lengths, 0.45)
        return other.log_partition, other.marginals, other.pair_marginals, other.entropy

    assert torch.autograd.gradcheck(outputs, (tagger.logits.clone().requires_grad_(),))


def test_matches_a_crf_without_transitions():
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 5, 4, generator=generator, dtype=F64)
    lengths = torch.tensor([5, 2, 4])
    tagger = Factorized(logits, lengths, 1.3)
    crf = LinearChainCRF(logits, torch.zeros(4, 4, dtype=F64), lengths=lengths, temperature=1.3)
    close(tagger.log_partition, crf.log_partition)
    close(tagger.marginals, crf.marginals)
    close(tagger.pair_marginals, crf.pair_marginals)
    close(tagger.entropy, crf.entropy)
    close(tagger.kbest(7)[1], crf.kbest(7)[1])


def test_float32_and_padding():
    tagger, _ = make_case("forbidden", seed=8)
    single = Factorized(tagger.logits.float(), tagger.lengths)
    double = Factorized(tagger.logits, tagger.lengths)
    assert single.marginals.dtype == single.log_partition.dtype == torch.float32
    close(single.log_partition, double.log_partition, atol=1e-5, rtol=1e-6)
    close(single.marginals, double.marginals, atol=1e-6, rtol=0)
    noisy = tagger.logits.clone()
    noisy[~tagger.mask] = -math.inf  # padding may hold anything but NaN and +inf
    other = Factorized(noisy, tagger.lengths)
    close(other.log_partition, double.log_partition, atol=0, rtol=0)
    close(other.marginals, double.marginals, atol=0, rtol=0)
    assert (other.pair_marginals[~tagger.mask[:, 1:]] == 0).all()


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    seq_len=st.integers(1, 6),
    n_labels=st.integers(1, 5),
    scale=st.sampled_from([1e-3, 1.0, 1e4]),
    double=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_extreme_scores(batch, seq_len, n_labels, scale, double, seed):
    generator = torch.Generator().manual_seed(seed)
    dtype = F64 if double else torch.float32
    logits = (scale * torch.randn(batch, seq_len, n_labels, generator=generator)).to(dtype)
    lengths = torch.randint(1, seq_len + 1, (batch,), generator=generator)
    tagger = Factorized(logits, lengths)
    for value in (tagger.log_partition, tagger.marginals, tagger.pair_marginals, tagger.entropy):
        assert torch.isfinite(value).all()
    tolerance = 1e-9 if double else 1e-5
    close(tagger.marginals.sum(-1), tagger.mask.to(F64), atol=tolerance, rtol=0)
    assert tagger.entropy.min() >= -tolerance
    values, scores = tagger.kbest(3)
    assert torch.equal(values[0], tagger.argmax)
    close(tagger.score(values[0]), scores[0], atol=1e-3, rtol=1e-6)


def test_invalid_inputs():
    lengths = torch.tensor([2, 1])
    with pytest.raises(ValueError, match="logits"):
        Factorized(torch.randn(2, 3), lengths)
    with pytest.raises(ValueError, match="logits"):
        Factorized(torch.zeros(2, 3, 2, dtype=torch.long), lengths)
    with pytest.raises(ValueError, match="lengths"):
        Factorized(torch.randn(2, 3, 2), torch.tensor([4, 1]))
    with pytest.raises(ValueError, match="temperature"):
        Factorized(torch.randn(2, 3, 2), lengths, -1.0)
    with pytest.raises(NumericalError, match="NaN"):
        Factorized(torch.full((2, 3, 2), math.nan), lengths)
    with pytest.raises(ValueError, match=r"\+inf"):
        Factorized(torch.full((2, 3, 2), math.inf), lengths)
    forbidden = torch.randn(2, 3, 2)
    forbidden[1, 0] = -math.inf
    with pytest.raises(ValueError, match=r"sentence\(s\) \[1\]"):
        Factorized(forbidden, lengths)
    tagger = Factorized(torch.randn(2, 3, 2), lengths)
    with pytest.raises(ValueError, match="k"):
        tagger.kbest(0)
    with pytest.raises(ValueError, match="n"):
        tagger.sample(-2)
    with pytest.raises(ValueError, match="value"):
        tagger.score(torch.full((2, 3), 2))
    with pytest.raises(ValueError, match="marginals"):
        tagger.expected_score(torch.zeros(2, 3, 3))


def test_tempered_and_repr():
    tagger, _ = make_case("plain", seed=9)
    tempered = tagger.tempered(2.0).tempered(0.5)
    close(tempered.log_partition, tagger.log_partition)
    assert "Factorized(" in repr(tagger) and "n_labels=3" in repr(tagger)
