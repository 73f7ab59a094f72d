"""structkd.serve.chain (numpy CRF inference) against brute-force enumeration of every tag
sequence, and against the torch LinearChainCRF."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from structkd.serve import chain
from structkd.structures.linear_chain import LinearChainCRF, transition_constraints

LENGTHS = np.array([4, 1, 3, 2, 4])
BIOES_TAGS = ["O", "B-X", "I-X", "E-X", "S-X"]


def make_case(config: str, seed: int) -> dict:
    """A random CRF over a batch of 5 sentences (lengths 1..4), forbidden entries as ``-inf``:
    ``plain`` (3 labels, no start/end), ``start_end``, ``bioes`` (the BIOES constraints of one
    type), ``forbidden`` (random -inf transitions and starts, some feasible sequence left)."""
    rng = np.random.default_rng(seed)
    n_labels = 5 if config == "bioes" else 3
    case = {
        "emissions": 2 * rng.standard_normal((len(LENGTHS), LENGTHS.max(), n_labels)),
        "transitions": 2 * rng.standard_normal((n_labels, n_labels)),
        "start": None if config == "plain" else rng.standard_normal(n_labels),
        "end": None if config == "plain" else rng.standard_normal(n_labels),
        "lengths": LENGTHS.copy(),
    }
    case["emissions"][~(np.arange(LENGTHS.max()) < LENGTHS[:, None])] = np.nan  # never read
    if config == "bioes":
        allowed, allowed_start, allowed_end = (
            m.numpy() for m in transition_constraints(BIOES_TAGS, "BIOES")
        )
        case["transitions"] = np.where(allowed, case["transitions"], -np.inf)
        case["start"] = np.where(allowed_start, case["start"], -np.inf)
        case["end"] = np.where(allowed_end, case["end"], -np.inf)
    if config == "forbidden":
        case["transitions"][rng.random((n_labels, n_labels)) < 0.4] = -np.inf
        case["transitions"][0, 0] = 0.5  # label 0 throughout stays allowed
        case["start"][1] = -np.inf
        case["emissions"][0, 2, 2] = -np.inf  # a forbidden emission too
    return case


CONFIGS = ["plain", "start_end", "bioes", "forbidden"]


def brute_force(case: dict, row: int) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Every tag sequence of sentence ``row`` with its score (plain loops)."""
    length = int(case["lengths"][row])
    emissions, transitions = case["emissions"][row], case["transitions"]
    n_labels = transitions.shape[0]
    sequences = list(itertools.product(range(n_labels), repeat=length))
    scores = []
    for sequence in sequences:
        total = 0.0
        for position, tag in enumerate(sequence):
            total += emissions[position, tag]
            if position:
                total += transitions[sequence[position - 1], tag]
        if case["start"] is not None:
            total += case["start"][sequence[0]] + case["end"][sequence[-1]]
        scores.append(total)
    return sequences, np.array(scores)


def without_nan(array: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(array), 0.0, array)


def potentials(case: dict) -> tuple:
    return case["emissions"], case["transitions"], case["start"], case["end"], case["lengths"]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_viterbi_marginals_and_log_z_equal_enumeration(config: str, seed: int) -> None:
    case = make_case(config, seed)
    best = chain.viterbi(*potentials(case))
    posterior = chain.forward_backward(*potentials(case))
    marginals = chain.marginals(*potentials(case))
    assert best.shape == marginals.shape[:2] == case["emissions"].shape[:2]
    for row, length in enumerate(case["lengths"]):
        sequences, scores = brute_force(case, row)
        log_z = np.logaddexp.reduce(scores)
        assert posterior.log_z[row] == pytest.approx(log_z, abs=1e-10)
        assert tuple(best[row, :length]) == sequences[int(np.argmax(scores))]
        assert (best[row, length:] == -1).all()
        expected = np.zeros(marginals.shape[1:])
        for sequence, score in zip(sequences, scores, strict=True):
            expected[np.arange(length), list(sequence)] += math.exp(score - log_z)
        np.testing.assert_allclose(marginals[row], expected, atol=1e-12)
        assert np.isneginf(posterior.log_alpha[row, length:]).all()


@pytest.mark.parametrize("config", CONFIGS)
def test_span_log_probs_equal_enumeration(config: str) -> None:
    case = make_case(config, seed=3)
    rng = np.random.default_rng(4)
    n_labels = case["transitions"].shape[0]
    rows, starts, paths, expected = [], [], [], []
    for row, length in enumerate(case["lengths"]):
        sequences, scores = brute_force(case, row)
        probabilities = np.exp(scores - np.logaddexp.reduce(scores))
        for _ in range(6):
            start = int(rng.integers(0, length))
            width = int(rng.integers(1, length - start + 1))
            path = [int(label) for label in rng.integers(0, n_labels, size=width)]
            if rng.random() < 0.5:  # a likely path too: that of the best sequence
                path = list(sequences[int(np.argmax(scores))][start : start + width])
            rows.append(row)
            starts.append(start)
            paths.append(path + [-1] * (4 - width))
            expected.append(
                sum(
                    p
                    for sequence, p in zip(sequences, probabilities, strict=True)
                    if list(sequence[start : start + width]) == path
                )
            )
    result = chain.span_log_probs(
        *potentials(case), np.array(rows), np.array(starts), np.array(paths)
    )
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(result, np.log(expected), atol=1e-10)
    assert np.isneginf(result[np.array(expected) == 0]).all()


@pytest.mark.parametrize("config", CONFIGS)
def test_equal_to_the_torch_linear_chain_crf(config: str) -> None:
    """The torch CRF with ``allowed_*`` masks and the numpy one with ``-inf`` agree."""
    case = make_case(config, seed=5)
    emissions = torch.from_numpy(without_nan(case["emissions"]))

    def finite(array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.from_numpy(np.where(np.isinf(array), 0.0, array))

    def allowed(array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.from_numpy(~np.isneginf(array))

    crf = LinearChainCRF(
        emissions,
        finite(case["transitions"]),
        finite(case["start"]),
        finite(case["end"]),
        lengths=torch.from_numpy(case["lengths"]),
        allowed_transitions=allowed(case["transitions"]),
        allowed_start=allowed(case["start"]),
        allowed_end=allowed(case["end"]),
    )
    np.testing.assert_array_equal(chain.viterbi(*potentials(case)), crf.argmax.numpy())
    np.testing.assert_allclose(
        chain.marginals(*potentials(case)), crf.marginals.numpy(), atol=1e-10
    )
    posterior = chain.forward_backward(*potentials(case))
    np.testing.assert_allclose(posterior.log_z, crf.log_partition.numpy(), atol=1e-10)


def test_long_sentences_with_large_scores_stay_exact() -> None:
    rng = np.random.default_rng(6)
    emissions = 300 * rng.standard_normal((3, 60, 9))
    transitions = 50 * rng.standard_normal((9, 9))
    lengths = np.array([60, 17, 1])
    crf = LinearChainCRF(
        torch.from_numpy(emissions), torch.from_numpy(transitions), lengths=torch.tensor(lengths)
    )
    marginals = chain.marginals(emissions, transitions, None, None, lengths)
    np.testing.assert_allclose(marginals, crf.marginals.numpy(), atol=1e-9)
    np.testing.assert_allclose(marginals.sum(-1), np.arange(60) < lengths[:, None], atol=1e-9)
    np.testing.assert_array_equal(
        chain.viterbi(emissions, transitions, None, None, lengths), crf.argmax.numpy()
    )


def test_log_softmax_is_stable_and_masks_padding() -> None:
    rng = np.random.default_rng(7)
    scores = rng.standard_normal((2, 3, 4)) + np.array([0.0, 1e4])[:, None, None]
    scores[1, 2] = np.nan  # padding: never read
    scores[0, 0, 1] = -np.inf
    lengths = np.array([3, 2])
    result = chain.log_softmax(scores, lengths)
    expected = torch.log_softmax(torch.from_numpy(without_nan(scores)), -1).numpy()
    np.testing.assert_allclose(result[0], expected[0], atol=1e-12)
    np.testing.assert_allclose(result[1, :2], expected[1, :2], atol=1e-12)
    assert np.isneginf(result[1, 2]).all() and np.isneginf(result[0, 0, 1])
    np.testing.assert_allclose(chain.log_softmax(scores[0]), expected[0], atol=1e-12)


def test_refuses_nan_inf_and_infeasible_chains() -> None:
    case = make_case("start_end", seed=8)
    emissions = case["emissions"].copy()
    emissions[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match=r"emissions holds NaN at index \[0, 1, 2\]"):
        chain.forward_backward(emissions, *potentials(case)[1:])
    transitions = case["transitions"].copy()
    transitions[1, 1] = np.inf
    with pytest.raises(ValueError, match=r"transitions holds \+inf"):
        chain.viterbi(case["emissions"], transitions, *potentials(case)[2:])
    start = np.full(3, -np.inf)
    for function in (chain.viterbi, chain.forward_backward):
        with pytest.raises(ValueError, match=r"no tag sequence is allowed for sentence\(s\) "):
            function(case["emissions"], case["transitions"], start, case["end"], LENGTHS)
    with pytest.raises(ValueError, match=r"lengths must be in 1\.\.4"):
        chain.viterbi(case["emissions"], case["transitions"], None, None, np.array([4, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match="transitions must have shape"):
        chain.viterbi(case["emissions"], np.zeros((2, 2)), None, None, LENGTHS)
    with pytest.raises(ValueError, match="lie inside its sentence"):
        chain.span_log_probs(*potentials(case), np.array([1]), np.array([0]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="forbid every label"):
        chain.log_softmax(np.array([[-np.inf, -np.inf]]))
    with pytest.raises(ValueError, match="NaN"):
        chain.log_softmax(np.array([[0.0, np.nan]]))


def bioes_potentials(n_types: int, rng: np.random.Generator, scale: float = 1.0) -> tuple:
    """Random transitions, start and end of the BIOES labels of ``n_types`` types, ``-inf``
    where BIOES forbids."""
    tags = ["O"] + [f"{p}-{t}" for t in "ABCDEFGH"[:n_types] for p in "BIES"]
    allowed, allowed_start, allowed_end = (m.numpy() for m in transition_constraints(tags, "BIOES"))
    n_labels = len(tags)
    transitions = np.where(allowed, scale * rng.standard_normal((n_labels, n_labels)), -np.inf)
    start = np.where(allowed_start, rng.standard_normal(n_labels), -np.inf)
    end = np.where(allowed_end, rng.standard_normal(n_labels), -np.inf)
    return transitions, start, end


def log_space_reference(emissions, transitions, start, end, lengths) -> chain.ChainPosterior:
    """Forward-backward by ``np.logaddexp`` per sentence and step, whatever the spread of the
    scores (plain loops)."""
    batch_size, max_len, n_labels = emissions.shape
    log_alpha = np.full((batch_size, max_len, n_labels), -np.inf)
    log_beta = np.full((batch_size, max_len, n_labels), -np.inf)
    log_z = np.empty(batch_size)
    for row, length in enumerate(lengths):
        folded = emissions[row, :length].copy()
        folded[0] += start
        folded[length - 1] += end
        log_alpha[row, 0] = folded[0]
        for i in range(1, length):
            incoming = log_alpha[row, i - 1][:, None] + transitions
            log_alpha[row, i] = np.logaddexp.reduce(incoming, axis=0) + folded[i]
        log_beta[row, length - 1] = 0.0
        for i in range(length - 2, -1, -1):
            outgoing = transitions + (folded[i + 1] + log_beta[row, i + 1])[None, :]
            log_beta[row, i] = np.logaddexp.reduce(outgoing, axis=1)
        log_z[row] = np.logaddexp.reduce(log_alpha[row, length - 1])
    return chain.ChainPosterior(log_alpha, log_beta, log_z)


def reference_marginals(potentials: tuple) -> np.ndarray:
    log_alpha, log_beta, log_z = log_space_reference(*potentials)
    return np.exp(log_alpha + log_beta - log_z[:, None, None])


@pytest.mark.parametrize("scale", [1.0, 10.0, 60.0])
def test_scaled_forward_backward_equals_log_space_on_long_sentences(scale: float) -> None:
    """A tagger-like batch (BIOES constraints, 17 labels, sentences up to 300 tokens, emissions
    of every scale a trained tagger gives and beyond): the scaled recursion gives the log-space
    recursion's log Z, log alpha, log beta and marginals to float64 rounding."""
    rng = np.random.default_rng(int(scale))
    transitions, start, end = bioes_potentials(4, rng, scale=2.0)
    lengths = np.array([300, 1, 2, 57, 299, 120, 3, 300])
    emissions = scale * rng.standard_normal((len(lengths), 300, 17))
    emissions[~(np.arange(300) < lengths[:, None])] = np.nan  # never read
    potentials = (emissions, transitions, start, end, lengths)
    posterior = chain.forward_backward(*potentials)
    reference = log_space_reference(*potentials)
    magnitude = np.abs(reference.log_z).max() + 1.0  # log-space sums of that size round so
    np.testing.assert_allclose(posterior.log_z, reference.log_z, rtol=0, atol=1e-13 * magnitude)
    for name in ("log_alpha", "log_beta"):
        ours, theirs = getattr(posterior, name), getattr(reference, name)
        np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
        finite = np.isfinite(theirs)
        np.testing.assert_allclose(ours[finite], theirs[finite], atol=1e-13 * magnitude)
    marginals = chain.marginals(*potentials, posterior=posterior)
    np.testing.assert_allclose(marginals, reference_marginals(potentials), atol=1e-12 * magnitude)
    np.testing.assert_allclose(marginals.sum(-1), np.arange(300) < lengths[:, None], atol=1e-9)
    crf = LinearChainCRF(
        torch.from_numpy(without_nan(emissions)),
        torch.from_numpy(np.where(np.isinf(transitions), 0.0, transitions)),
        torch.from_numpy(np.where(np.isinf(start), 0.0, start)),
        torch.from_numpy(np.where(np.isinf(end), 0.0, end)),
        lengths=torch.from_numpy(lengths),
        allowed_transitions=torch.from_numpy(~np.isneginf(transitions)),
        allowed_start=torch.from_numpy(~np.isneginf(start)),
        allowed_end=torch.from_numpy(~np.isneginf(end)),
    )
    np.testing.assert_array_equal(chain.viterbi(*potentials), crf.argmax.numpy())


@pytest.mark.parametrize("then", ["forced", "outweighed"])
def test_scores_too_spread_for_the_scaled_recursion_stay_exact(then: str) -> None:
    """A label ~1000 nats below the others at one position, then the only way on (``forced``)
    or 1600 more over the next four (``outweighed``): its probability underflows any scaled
    recursion, yet it is the most likely; those sentences are recomputed in log space."""
    rng = np.random.default_rng(9)
    transitions, start, end = bioes_potentials(1, rng)  # O B-A I-A E-A S-A
    emissions = rng.standard_normal((3, 6, 5))
    emissions[0, 0] = [0.0, -1000.0, -np.inf, -np.inf, 0.0]  # B-A far below O and S-A
    if then == "forced":
        emissions[0, 1] = [-np.inf, -np.inf, 0.0, 0.0, -np.inf]  # I-A or E-A: after B-A only
    else:  # each position's scores within 400 of each other: no step underflows as a whole
        emissions[0, 1:4] = [0.0, -np.inf, 400.0, 0.0, 0.0]  # no B-A: I-A continues position 0
        emissions[0, 4] = [0.0, -np.inf, 0.0, 400.0, 0.0]
    emissions[1, 2, 1] = 800.0  # a large but fine score
    lengths = np.array([6, 6, 4])
    potentials = (emissions, transitions, start, end, lengths)
    posterior = chain.forward_backward(*potentials)
    reference = log_space_reference(*potentials)
    np.testing.assert_allclose(posterior.log_z, reference.log_z, rtol=1e-15)
    np.testing.assert_allclose(
        chain.marginals(*potentials), reference_marginals(potentials), atol=1e-12
    )
    assert chain.marginals(*potentials)[0, 0, 1] == pytest.approx(1.0)  # B-A is certain
    decoded = chain.decode(*potentials)
    assert decoded.best[0, 0] == 1
    path = np.array([[1, 2]])  # B-A I-A
    log_p = chain.span_log_probs(*potentials, np.array([0]), np.array([0]), path)
    brute_sequences, scores = brute_force(
        {
            "emissions": emissions,
            "transitions": transitions,
            "start": start,
            "end": end,
            "lengths": lengths,
        },
        0,
    )
    expected = np.logaddexp.reduce(
        [s for q, s in zip(brute_sequences, scores, strict=True) if q[:2] == (1, 2)]
    ) - np.logaddexp.reduce(scores)
    assert log_p[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("config", CONFIGS)
def test_decode_equals_the_separate_functions(config: str) -> None:
    case = make_case(config, seed=10)
    decoded = chain.decode(*potentials(case))
    np.testing.assert_array_equal(decoded.best, chain.viterbi(*potentials(case)))
    np.testing.assert_allclose(decoded.marginals, chain.marginals(*potentials(case)), atol=1e-15)
    posterior = chain.forward_backward(*potentials(case))
    for ours, theirs in zip(decoded.posterior, posterior, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-15)
    assert decoded.marginals.flags.c_contiguous
    assert np.isneginf(decoded.posterior.log_beta[1, 1:]).all()  # padding of a 1-token sentence
    with pytest.raises(ValueError, match="no tag sequence is allowed"):
        chain.decode(
            case["emissions"],
            case["transitions"],
            np.full(case["transitions"].shape[0], -np.inf),
            case["end"],
            case["lengths"],
        )
