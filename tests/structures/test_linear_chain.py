"""LinearChainCRF and transition_constraints against brute-force enumeration of tag sequences."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.structures.base import NumericalError
from structkd.structures.linear_chain import (
    LinearChainCRF,
    _log_forward_backward,
    _log_space_marginals,
    _posterior,
    _prob_forward,
    transition_constraints,
)
from tests.structures.brute_chains import enumerate_chain, is_valid_bio, is_valid_bioes

F64 = torch.float64
LENGTHS = [4, 1, 3, 2, 4]
CONFIGS = ["plain", "start_end", "bio", "bioes", "temperature", "forbidden_emission"]


def make_case(config: str, seed: int = 0, dtype: torch.dtype = F64) -> dict:
    """Keyword arguments of a small random LinearChainCRF (batch 5, seq_len 4, mixed lengths)."""
    generator = torch.Generator().manual_seed(seed)
    n_labels = {"bio": 3, "bioes": 5}.get(config, 3)
    lengths = torch.tensor(LENGTHS)

    def scores(*shape: int) -> torch.Tensor:
        return (2 * torch.randn(*shape, generator=generator, dtype=F64)).to(dtype)

    case = {
        "emissions": scores(len(LENGTHS), max(LENGTHS), n_labels),
        "transitions": scores(n_labels, n_labels),
        "lengths": lengths,
    }
    if config != "plain":
        case["start"] = scores(n_labels)
        case["end"] = scores(n_labels)
    if config == "bio":
        masks = transition_constraints(["O", "B-X", "I-X"], "BIO")
    elif config == "bioes":
        masks = transition_constraints(["S-X", "O", "E-X", "B-X", "I-X"], "BIOES")
    else:
        masks = None
    if masks is not None:
        names = ("allowed_transitions", "allowed_start", "allowed_end")
        case.update(zip(names, masks, strict=True))
    if config == "temperature":
        case["temperature"] = 0.37
    if config == "forbidden_emission":
        case["emissions"][0, 1, 2] = -math.inf  # sentence 0 may not use tag 2 at token 1
        case["emissions"][2, :, 0] = -math.inf  # sentence 2 never uses tag 0
    return case


def brute_batch(case: dict) -> list:
    """One Enumeration per sentence."""
    emissions = case["emissions"].to(F64)
    return [
        enumerate_chain(
            emissions[b],
            case["transitions"].to(F64),
            int(length),
            case.get("start"),
            case.get("end"),
            case.get("temperature", 1.0),
            case.get("allowed_transitions"),
            case.get("allowed_start"),
            case.get("allowed_end"),
        )
        for b, length in enumerate(case["lengths"].tolist())
    ]


def build(case: dict) -> LinearChainCRF:
    kwargs = dict(case)
    return LinearChainCRF(kwargs.pop("emissions"), kwargs.pop("transitions"), **kwargs)


def close(actual, expected, atol=1e-9, rtol=1e-9) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=F64),
        torch.as_tensor(expected, dtype=F64),
        atol=atol,
        rtol=rtol,
    )


# ------------------------------------------------------------------------------------------------
# Exact inference against enumeration
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_log_partition_marginals_pairs_entropy(config):
    case = make_case(config)
    crf, brute = build(case), brute_batch(case)
    seq_len, n_labels = case["emissions"].shape[1:]
    for b, enumeration in enumerate(brute):
        unary, pairs = enumeration.marginals(seq_len, n_labels)
        close(crf.log_partition[b], enumeration.log_partition)
        close(crf.marginals[b], unary)
        close(crf.pair_marginals[b], pairs)
        close(crf.entropy[b], enumeration.entropy)
    assert crf.pair_marginals.shape == (len(LENGTHS), seq_len - 1, n_labels, n_labels)


@pytest.mark.parametrize("config", CONFIGS)
def test_argmax_and_kbest_match_sorted_enumeration(config):
    case = make_case(config, seed=1)
    crf, brute = build(case), brute_batch(case)
    for k in (1, 7, 200):  # 200 > every sentence's number of sequences
        values, scores = crf.kbest(k)
        assert values.shape == (k, len(LENGTHS), max(LENGTHS)) and scores.shape == (k, len(LENGTHS))
        for b, enumeration in enumerate(brute):
            ranked = enumeration.ranked()
            found = min(k, len(ranked))
            close(scores[:found, b], [score for score, _ in ranked[:found]])
            assert torch.isneginf(scores[found:, b]).all()
            assert (values[found:, b] == -1).all()
            length = LENGTHS[b]
            sequences = [tuple(row[:length].tolist()) for row in values[:found, b]]
            assert len(set(sequences)) == found, "k-best sequences must be distinct"
            assert (values[:found, b, length:] == -1).all()
            table = dict(zip(enumeration.sequences, enumeration.scores.tolist(), strict=True))
            for sequence, score in zip(sequences, scores[:found, b].tolist(), strict=True):
                close(table[sequence], score)
    best = crf.argmax
    for b, enumeration in enumerate(brute):
        top_score = enumeration.ranked()[0][0]
        sequence = tuple(best[b, : LENGTHS[b]].tolist())
        close(enumeration.scores[enumeration.sequences.index(sequence)], top_score)
        assert (best[b, LENGTHS[b] :] == -1).all()


def test_kbest_with_ties_returns_distinct_sequences():
    crf = LinearChainCRF(
        torch.zeros(2, 3, 2, dtype=F64), torch.zeros(2, 2, dtype=F64), lengths=torch.tensor([3, 2])
    )
    values, scores = crf.kbest(10)
    for b, count in enumerate([8, 4]):
        rows = {tuple(row.tolist()) for row in values[:count, b]}
        assert len(rows) == count
        assert (scores[:count, b] == 0).all() and torch.isneginf(scores[count:, b]).all()
        assert (values[count:, b] == -1).all()


@pytest.mark.parametrize("config", ["start_end", "bio", "temperature"])
def test_score_and_log_prob(config):
    case = make_case(config, seed=2)
    crf, brute = build(case), brute_batch(case)
    generator = torch.Generator().manual_seed(0)
    n_labels = case["emissions"].shape[-1]
    value = torch.randint(n_labels, (6, len(LENGTHS), max(LENGTHS)), generator=generator)
    value = torch.where(crf.mask, value, -1)
    scores, log_probs = crf.score(value), crf.log_prob(value)
    assert scores.shape == log_probs.shape == (6, len(LENGTHS))
    for sample in range(6):
        for b, enumeration in enumerate(brute):
            sequence = tuple(value[sample, b, : LENGTHS[b]].tolist())
            expected = float(enumeration.scores[enumeration.sequences.index(sequence)])
            close(scores[sample, b], expected)
            close(log_probs[sample, b], expected - enumeration.log_partition)
    # the probabilities of all sequences of a sentence sum to one
    for b, enumeration in enumerate(brute):
        tags = torch.full((len(enumeration.sequences), len(LENGTHS), max(LENGTHS)), 0)
        tags[:, b, : LENGTHS[b]] = torch.tensor(enumeration.sequences)
        tags = torch.where(crf.mask, tags, -1)
        close(torch.logsumexp(crf.log_prob(tags)[:, b], 0), 0.0)


@pytest.mark.parametrize("config", ["plain", "bio", "temperature", "forbidden_emission"])
def test_expected_score_with_foreign_marginals(config):
    case = make_case(config, seed=3)
    crf, brute = build(case), brute_batch(case)
    # a teacher with the same constraints (so it puts no mass where crf has -inf) and other scores
    teacher_case = make_case(config, seed=4)
    teacher, teacher_brute = build(teacher_case), brute_batch(teacher_case)
    expected_score = crf.expected_score(teacher.marginals, teacher.pair_marginals)
    for b, (ours, theirs) in enumerate(zip(brute, teacher_brute, strict=True)):
        mass = theirs.probabilities
        support = mass > 0
        expected = float((mass[support] * ours.scores[support]).sum())  # E_teacher[score(y)]
        close(expected_score[b], expected)
    # own marginals: expected score = log Z - entropy
    close(crf.expected_score(), crf.log_partition - crf.entropy)


def test_expected_score_is_minus_inf_with_mass_on_forbidden_transition():
    case = make_case("bio", seed=5)
    crf = build(case)
    pairs = torch.zeros(5, 3, 3, 3, dtype=F64)
    pairs[:, 0, 0, 2] = 1.0  # O -> I-X is forbidden in BIO
    marginals = torch.zeros(5, 4, 3, dtype=F64)
    marginals[..., 0] = crf.mask.to(F64)  # all O: allowed on its own
    scores = crf.expected_score(marginals, pairs)
    has_pair = torch.tensor(LENGTHS) > 1
    assert torch.isneginf(scores[has_pair]).all()
    assert torch.isfinite(scores[~has_pair]).all()  # padded pair positions are ignored


def test_sample_frequencies_match_enumeration():
    case = make_case("bio", seed=6)
    case = {**case, "emissions": case["emissions"][:2, :3], "lengths": torch.tensor([3, 2])}
    crf, brute = build(case), brute_batch(case)
    n_samples = 20000
    samples = crf.sample(n_samples, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (n_samples, 2, 3)
    assert (samples[:, 1, 2] == -1).all()
    for b, enumeration in enumerate(brute):
        counts = Counter(tuple(row[: case["lengths"][b]].tolist()) for row in samples[:, b])
        assert all(
            is_valid_bio(["O", "B-X", "I-X"][tag] for tag in sequence) for sequence in counts
        )
        probabilities = dict(
            zip(enumeration.sequences, enumeration.probabilities.tolist(), strict=True)
        )
        total_variation = 0.5 * sum(
            abs(counts.get(sequence, 0) / n_samples - probability)
            for sequence, probability in probabilities.items()
        )
        # E[TV] <= 0.5 * sqrt(2 / pi) * sum_y sqrt(p_y / n) ~ 0.011 here; a wrong sampler is > 0.05.
        assert total_variation < 0.03, total_variation


def test_sample_is_reproducible_with_a_generator():
    crf = build(make_case("start_end"))
    first = crf.sample(5, generator=torch.Generator().manual_seed(3))
    second = crf.sample(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    assert ((first == -1) == ~crf.mask).all()


# ------------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------------


def leaf_case(config: str, seed: int = 7) -> dict:
    case = make_case(config, seed)
    for name in ("emissions", "transitions", "start", "end"):
        if name in case:
            case[name] = case[name].clone().requires_grad_()
    return case


@pytest.mark.parametrize("config", ["start_end", "bio", "temperature", "forbidden_emission"])
def test_gradient_of_log_partition_is_the_marginals(config):
    case = leaf_case(config)
    crf = build(case)
    weights = torch.linspace(0.5, 2.0, len(LENGTHS), dtype=F64)
    (crf.log_partition * weights).sum().backward()
    with torch.no_grad():
        reference = build({k: v.detach() if torch.is_tensor(v) else v for k, v in case.items()})
        marginals, pairs = reference.marginals, reference.pair_marginals
    scale = 1.0 / case.get("temperature", 1.0)
    close(case["emissions"].grad, scale * weights.view(-1, 1, 1) * marginals)
    close(case["transitions"].grad, scale * (weights.view(-1, 1, 1, 1) * pairs).sum((0, 1)))
    close(case["start"].grad, scale * weights @ marginals[:, 0])
    last = torch.tensor(LENGTHS) - 1
    close(case["end"].grad, scale * weights @ marginals[torch.arange(5), last])
    assert torch.isfinite(case["emissions"].grad).all()


def test_log_partition_gradcheck_and_double_backward():
    case = make_case("start_end", seed=8)
    lengths = case["lengths"]

    def log_partition(emissions, transitions, start, end):
        return LinearChainCRF(emissions, transitions, start, end, lengths=lengths).log_partition

    inputs = tuple(
        case[name].clone().requires_grad_() for name in ("emissions", "transitions", "start", "end")
    )
    assert torch.autograd.gradcheck(log_partition, inputs)
    assert torch.autograd.gradgradcheck(log_partition, inputs)


@pytest.mark.parametrize("config", ["bio", "temperature"])
def test_marginals_are_differentiable(config):
    case = make_case(config, seed=9)
    rest = {k: v for k, v in case.items() if k not in ("emissions", "transitions")}

    def marginals(emissions, transitions):
        crf = LinearChainCRF(emissions, transitions, **rest)
        return crf.marginals, crf.pair_marginals

    inputs = (
        case["emissions"].clone().requires_grad_(),
        case["transitions"].clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(marginals, inputs)


def test_marginals_are_differentiable_with_many_labels():
    # more labels than _MAX_LABELS_TOGETHER: the forward and backward recursions run separately
    crf = random_crf(2, 3, 33, 1.0, seed=17)

    def outputs(emissions):
        other = LinearChainCRF(emissions, crf.transitions, crf.start, crf.end, lengths=crf.lengths)
        return other.log_partition, other.marginals

    inputs = (crf.emissions.clone().requires_grad_(),)
    assert torch.autograd.gradcheck(outputs, inputs, fast_mode=True)


def test_results_cached_without_graph_are_not_reused_with_grad():
    case = leaf_case("start_end")
    crf = build(case)
    with torch.no_grad():
        detached = crf.log_partition
        assert not crf.marginals.requires_grad
    assert not detached.requires_grad
    attached = crf.log_partition
    assert attached.requires_grad and crf.marginals.requires_grad
    close(attached.detach(), detached)


# ------------------------------------------------------------------------------------------------
# Numerics: the probability-space path, the log-space fallback, dtypes, extreme scores
# ------------------------------------------------------------------------------------------------


def random_crf(batch, seq_len, n_labels, scale, seed, dtype=F64, constrained=False):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq_len + 1, (batch,), generator=generator)
    lengths[0] = seq_len
    kwargs = {
        "start": scale * torch.randn(n_labels, generator=generator, dtype=F64).to(dtype),
        "end": scale * torch.randn(n_labels, generator=generator, dtype=F64).to(dtype),
        "lengths": lengths,
    }
    if constrained:
        masks = transition_constraints(["O", "B-A", "I-A", "B-B", "I-B"][:n_labels], "BIO")
        kwargs.update(
            zip(("allowed_transitions", "allowed_start", "allowed_end"), masks, strict=True)
        )
    emissions = scale * torch.randn(batch, seq_len, n_labels, generator=generator, dtype=F64)
    transitions = scale * torch.randn(n_labels, n_labels, generator=generator, dtype=F64)
    return LinearChainCRF(emissions.to(dtype), transitions.to(dtype), **kwargs)


@pytest.mark.parametrize(
    ("n_labels", "constrained", "with_backward"),
    [(5, False, True), (5, True, True), (5, True, False), (40, False, True)],
)
def test_probability_path_agrees_with_log_path(n_labels, constrained, with_backward):
    # 5 labels: forward and backward share one block-diagonal matmul; 40: separate recursions
    crf = random_crf(6, 12, n_labels, 2.0, seed=10, constrained=constrained)
    potentials = crf._tempered()
    forward = _prob_forward(potentials, safe=False, with_backward=with_backward)
    assert not forward.flagged.any(), "moderate scores must take the probability path"
    posterior = _posterior(potentials, forward, safe=False)
    assert posterior.log_rows is None
    exact = _log_forward_backward(potentials)
    marginals, pairs = _log_space_marginals(potentials, exact)
    close(posterior.log_partition, exact.log_partition, atol=1e-10, rtol=1e-12)
    close(posterior.marginals, marginals, atol=1e-12, rtol=0)
    close(posterior.pair_marginals(F64), pairs, atol=1e-12, rtol=0)
    # the autograd-safe variant computes the same numbers
    safe = _posterior(potentials, _prob_forward(potentials, True, with_backward), safe=True)
    close(safe.marginals, posterior.marginals, atol=1e-14, rtol=0)
    close(safe.pair_marginals(F64), posterior.pair_marginals(F64), atol=1e-14, rtol=0)


def test_extreme_scores_fall_back_to_log_space_and_stay_exact():
    case = make_case("bio", seed=11)
    case["emissions"] = case["emissions"] * 1e3  # sentence-wide gaps of thousands of nats
    case["emissions"][1] = case["emissions"][1] / 1e3  # ... except sentence 1
    case["transitions"] = case["transitions"] * 100
    crf, brute = build(case), brute_batch(case)
    forward = _prob_forward(crf._tempered(), safe=False, with_backward=False)
    assert forward.flagged.any()
    for b, enumeration in enumerate(brute):
        unary, pairs = enumeration.marginals(4, 3)
        close(crf.log_partition[b], enumeration.log_partition, rtol=1e-12)
        close(crf.marginals[b], unary, atol=1e-12, rtol=0)
        close(crf.pair_marginals[b], pairs, atol=1e-12, rtol=0)
        close(crf.entropy[b], enumeration.entropy, atol=1e-9, rtol=0)


def test_float32_agrees_with_float64():
    double = random_crf(4, 10, 5, 2.0, seed=12, constrained=True)
    single = random_crf(4, 10, 5, 2.0, seed=12, dtype=torch.float32, constrained=True)
    assert single.marginals.dtype == single.pair_marginals.dtype == torch.float32
    assert single.log_partition.dtype == single.entropy.dtype == torch.float32
    close(single.log_partition, double.log_partition, rtol=1e-6, atol=1e-5)
    close(single.marginals, double.marginals, atol=1e-5, rtol=0)
    close(single.pair_marginals, double.pair_marginals, atol=1e-5, rtol=0)
    close(single.entropy, double.entropy, atol=1e-4, rtol=0)
    assert torch.equal(single.argmax, double.argmax)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    seq_len=st.integers(1, 6),
    n_labels=st.integers(1, 5),
    scale=st.sampled_from([1e-3, 1.0, 50.0, 1e4]),
    double=st.booleans(),
    constrained=st.booleans(),
    temperature=st.sampled_from([0.1, 1.0, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_property_finite_normalized_and_consistent(
    batch, seq_len, n_labels, scale, double, constrained, temperature, seed
):
    dtype = F64 if double else torch.float32
    crf = random_crf(batch, seq_len, n_labels, scale, seed, dtype, constrained and n_labels >= 3)
    try:
        crf = crf.tempered(temperature)
    except ValueError as error:
        # beyond the exactness range of float32 (|s / T| <= 1e5): refused, never wrong
        assert "exactness range" in str(error) and not double and scale / temperature >= 1e5
        return
    mask = crf.mask
    log_partition, marginals, pairs = crf.log_partition, crf.marginals, crf.pair_marginals
    assert torch.isfinite(log_partition).all()
    assert torch.isfinite(marginals).all() and torch.isfinite(pairs).all()
    assert torch.isfinite(crf.entropy).all()
    tolerance = 1e-9 if double else 1e-4
    close(marginals.sum(-1), mask.to(F64), atol=tolerance, rtol=0)
    assert (marginals[~mask] == 0).all()
    pair_inside = mask[:, 1:]
    close(
        pairs.sum(-1),
        torch.where(pair_inside.unsqueeze(-1), marginals[:, :-1], 0),
        atol=tolerance,
        rtol=0,
    )
    close(
        pairs.sum(-2),
        torch.where(pair_inside.unsqueeze(-1), marginals[:, 1:], 0),
        atol=tolerance,
        rtol=0,
    )
    assert crf.entropy.min() > -tolerance * (1 + log_partition.abs().max())
    # Viterbi and the k-best agree and never beat log Z
    best = crf.argmax
    values, scores = crf.kbest(2)
    assert torch.equal(values[0], best)
    close(crf.score(best), scores[0], rtol=1e-6 if double else 1e-4, atol=1e-6)
    assert (scores[0] <= log_partition + tolerance * (1 + log_partition.abs())).all()
    assert ((best == -1) == ~mask).all()
    if double:  # against the log-space reference
        potentials = crf._tempered()
        exact = _log_forward_backward(potentials)
        reference, _ = _log_space_marginals(potentials, exact)
        close(log_partition, exact.log_partition, atol=1e-9, rtol=1e-12)
        close(marginals, reference, atol=1e-9, rtol=0)


def test_gradients_are_finite_with_extreme_scores_and_constraints():
    crf = random_crf(4, 8, 5, 1e4, seed=13, constrained=True)
    emissions = crf.emissions.clone().requires_grad_()
    transitions = crf.transitions.clone().requires_grad_()
    kwargs = {
        name: getattr(crf, name)
        for name in ("start", "end", "lengths", "allowed_transitions", "allowed_start")
    }
    extreme = LinearChainCRF(emissions, transitions, allowed_end=crf.allowed_end, **kwargs)
    (extreme.log_partition.sum() + (extreme.marginals**2).sum()).backward()
    assert torch.isfinite(emissions.grad).all() and torch.isfinite(transitions.grad).all()


def test_padding_is_ignored():
    case = make_case("bio", seed=14)
    crf = build(case)
    noisy = dict(case)
    noisy["emissions"] = case["emissions"].clone()
    padding = ~crf.mask
    noisy["emissions"][padding] = torch.tensor([1e30, -math.inf, 7.0], dtype=F64)
    other = build(noisy)
    close(other.log_partition, crf.log_partition, atol=0, rtol=0)
    close(other.marginals, crf.marginals, atol=0, rtol=0)
    close(other.pair_marginals, crf.pair_marginals, atol=0, rtol=0)
    assert torch.equal(other.argmax, crf.argmax)
    assert (crf.marginals[padding] == 0).all()
    assert (crf.pair_marginals[~crf.mask[:, 1:]] == 0).all()


def test_single_label_and_single_token():
    crf = LinearChainCRF(
        torch.randn(2, 3, 1, dtype=F64), torch.randn(1, 1, dtype=F64), lengths=torch.tensor([3, 1])
    )
    close(crf.entropy, [0.0, 0.0])
    close(crf.marginals.sum(-1), crf.mask.to(F64))
    _, scores = crf.kbest(3)
    assert torch.isfinite(scores[0]).all() and torch.isneginf(scores[1:]).all()
    close(scores[0], crf.log_partition)
    one_token = LinearChainCRF(
        torch.randn(3, 1, 4), torch.randn(4, 4), lengths=torch.ones(3, dtype=torch.long)
    )
    assert one_token.pair_marginals.shape == (3, 0, 4, 4)
    close(
        one_token.log_partition,
        torch.logsumexp(one_token.emissions[:, 0].double(), -1),
        atol=1e-5,
        rtol=1e-6,
    )


def test_tempered_and_repr():
    case = make_case("start_end", seed=15)
    crf = build(case)
    twice = crf.tempered(2.0).tempered(1.5)
    direct = build({**case, "temperature": 3.0})
    assert twice.temperature == pytest.approx(3.0)
    close(twice.log_partition, direct.log_partition)
    close(twice.marginals, direct.marginals)
    text = repr(build(make_case("bio")))
    assert "LinearChainCRF(" in text and "n_labels=3" in text and "allowed_transitions" in text


# ------------------------------------------------------------------------------------------------
# Invalid input
# ------------------------------------------------------------------------------------------------


def test_invalid_inputs_raise():
    emissions, transitions = torch.randn(2, 3, 4), torch.randn(4, 4)
    lengths = torch.tensor([3, 2])
    with pytest.raises(ValueError, match="emissions"):
        LinearChainCRF(torch.randn(2, 3), transitions, lengths=lengths)
    with pytest.raises(ValueError, match="transitions"):
        LinearChainCRF(emissions, torch.randn(4, 3), lengths=lengths)
    with pytest.raises(ValueError, match="start"):
        LinearChainCRF(emissions, transitions, torch.randn(3), lengths=lengths)
    with pytest.raises(ValueError, match="dtype"):
        LinearChainCRF(emissions, transitions.double(), lengths=lengths)
    with pytest.raises(ValueError, match="lengths"):
        LinearChainCRF(emissions, transitions, lengths=torch.tensor([3, 0]))
    with pytest.raises(ValueError, match="lengths"):
        LinearChainCRF(emissions, transitions, lengths=torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="lengths"):
        LinearChainCRF(emissions, transitions, lengths=torch.tensor([3]))
    with pytest.raises(ValueError, match="temperature"):
        LinearChainCRF(emissions, transitions, lengths=lengths, temperature=0.0)
    with pytest.raises(NumericalError, match="emissions"):
        LinearChainCRF(emissions.clone().fill_(math.nan), transitions, lengths=lengths)
    with pytest.raises(ValueError, match=r"\+inf"):
        LinearChainCRF(emissions, transitions.clone().fill_(math.inf), lengths=lengths)
    with pytest.raises(ValueError, match="allowed_transitions"):
        LinearChainCRF(
            emissions, transitions, lengths=lengths, allowed_transitions=torch.ones(4, 4)
        )
    with pytest.raises(ValueError, match="allowed_end"):
        LinearChainCRF(
            emissions, transitions, lengths=lengths, allowed_end=torch.ones(3, dtype=torch.bool)
        )
    crf = LinearChainCRF(emissions, transitions, lengths=lengths)
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k"):
            crf.kbest(bad_k)
    with pytest.raises(ValueError, match="n"):
        crf.sample(0)
    with pytest.raises(ValueError, match="value"):
        crf.score(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="value"):
        crf.score(torch.full((2, 3), 4))
    with pytest.raises(ValueError, match="value"):
        crf.score(torch.zeros(2, 3))
    crf.score(torch.tensor([[0, 1, 2], [3, 0, 99]]))  # padding may hold anything
    with pytest.raises(ValueError, match="pair_marginals"):
        crf.expected_score(crf.marginals)
    with pytest.raises(ValueError, match="marginals"):
        crf.expected_score(crf.marginals[:, :2], crf.pair_marginals)


def test_a_sentence_without_any_allowed_sequence_raises():
    emissions = torch.randn(2, 3, 2)
    allowed = torch.tensor([[False, True], [False, False]])  # tag 1 is a dead end
    crf = LinearChainCRF(
        emissions,
        torch.zeros(2, 2),
        lengths=torch.tensor([3, 1]),
        allowed_transitions=allowed,
        allowed_start=torch.tensor([False, True]),
    )
    for infer in (
        lambda: crf.log_partition,
        lambda: crf.marginals,
        lambda: crf.argmax,
        lambda: crf.kbest(2),
        lambda: crf.sample(2),
    ):
        with pytest.raises(ValueError, match=r"sentence\(s\) \[0\]"):
            infer()
    forbidden = emissions.clone()
    forbidden[1, 0] = -math.inf
    crf = LinearChainCRF(forbidden, torch.zeros(2, 2), lengths=torch.tensor([3, 1]))
    with pytest.raises(ValueError, match=r"\[1\]"):
        _ = crf.log_partition


# ------------------------------------------------------------------------------------------------
# Tag-scheme constraints
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "tags", "valid"),
    [
        ("BIO", ["I-PER", "O", "B-LOC", "B-PER", "I-LOC"], is_valid_bio),
        ("iob2", ["O", "B-A", "I-A"], is_valid_bio),
        ("BIOES", ["E-X", "S-Y", "O", "B-X", "I-X", "S-X", "B-Y", "E-Y", "I-Y"], is_valid_bioes),
    ],
)
def test_transition_constraints_allow_exactly_the_valid_sequences(scheme, tags, valid):
    allowed_transitions, allowed_start, allowed_end = transition_constraints(tags, scheme)
    n_labels = len(tags)
    assert allowed_transitions.dtype == torch.bool and allowed_transitions.shape == (
        n_labels,
        n_labels,
    )
    length = 3
    enumeration = enumerate_chain(
        torch.zeros(length, n_labels, dtype=F64),
        torch.zeros(n_labels, n_labels, dtype=F64),
        length,
        allowed_transitions=allowed_transitions,
        allowed_start=allowed_start,
        allowed_end=allowed_end,
    )
    for sequence, score in zip(enumeration.sequences, enumeration.scores.tolist(), strict=True):
        assert (score > -math.inf) == valid([tags[tag] for tag in sequence]), sequence


def test_transition_constraints_reject_bad_input():
    with pytest.raises(ValueError, match="scheme"):
        transition_constraints(["O", "B-X"], "BILOU")
    with pytest.raises(ValueError, match="E-X"):
        transition_constraints(["O", "B-X", "E-X"], "BIO")
    with pytest.raises(ValueError, match="tag"):
        transition_constraints(["O", "BX"], "BIO")
    with pytest.raises(ValueError, match="tag"):
        transition_constraints(["O", "B-"], "BIO")
    with pytest.raises(ValueError, match="distinct"):
        transition_constraints(["O", "O"], "BIO")


def test_gradients_are_exact_on_the_log_space_fallback():
    case = make_case("bio", seed=16)
    case["emissions"] = case["emissions"] * 300  # gaps beyond the probability path's floors
    rest = {k: v for k, v in case.items() if k not in ("emissions", "transitions")}
    assert (
        _prob_forward(build(case)._tempered(), safe=False, with_backward=False).flagged.sum() >= 3
    )

    def log_partition_and_marginals(emissions, transitions):
        crf = LinearChainCRF(emissions, transitions, **rest)
        return crf.log_partition, crf.marginals

    inputs = (
        case["emissions"].clone().requires_grad_(),
        case["transitions"].clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(log_partition_and_marginals, inputs, atol=1e-6)
