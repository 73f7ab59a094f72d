"""DependencyCRF, HeadSelection, is_tree and is_projective against brute-force enumeration."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.structures.base import NumericalError, autograd_marginals
from structkd.structures.dependency import (
    DependencyCRF,
    HeadSelection,
    _matrix_tree_log_space,
    _matrix_tree_lu,
    _word_log_weights,
    is_projective,
    is_tree,
)
from tests.structures.brute_trees import (
    all_head_vectors,
    all_trees,
    arc_indicators,
    is_tree_heads,
    padded,
    structure_scores,
)

KINDS = [(True, False), (True, True), (False, False), (False, True)]  # (projective, multiroot)
KIND_IDS = ["proj-single", "proj-multi", "nonproj-single", "nonproj-multi"]
LENGTHS = [5, 3, 1, 4, 2]


@functools.cache
def _trees(n: int, projective: bool | None, multiroot: bool, size: int) -> torch.Tensor:
    """Padded head vectors of every structure: trees of a kind, or all head vectors (None)."""
    if projective is None:
        return padded(list(all_head_vectors(n)), size)
    return padded(all_trees(n, projective, multiroot), size)


def _brute(scores: torch.Tensor, n: int, projective: bool | None, multiroot: bool = False):
    """Exact quantities of one sentence by enumeration: scores ``[size, size]`` already tempered."""
    size = scores.shape[-1]
    structures = _trees(n, projective, multiroot, size)
    values = structure_scores(scores, structures)
    log_z = torch.logsumexp(values, 0)
    probs = (values - log_z).exp()
    marginals = (probs.view(-1, 1, 1) * arc_indicators(structures, size)).sum(0)
    finite = torch.isfinite(values)
    entropy = -(probs[finite] * (values[finite] - log_z)).sum()
    return structures, values, log_z, marginals, entropy


def _scores(batch: int, size: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, size, size, dtype=torch.float64, generator=generator) * scale


def _with_forbidden_arcs(scores: torch.Tensor) -> torch.Tensor:
    scores = scores.clone()
    scores[0, 2, 3] = float("-inf")
    scores[0, 4, 1] = float("-inf")
    scores[3, 0, 2] = float("-inf")
    return scores


# ----------------------------------------------------------------------------------------------
# DependencyCRF against enumeration
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("projective", "multiroot"), KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_tree_crf_matches_enumeration(projective, multiroot, temperature):
    lengths = torch.tensor(LENGTHS)
    scores = _with_forbidden_arcs(_scores(len(LENGTHS), 6, scale=2.0, seed=1))
    dist = DependencyCRF(scores, lengths, projective, multiroot, temperature)
    log_z, marginals, entropy = dist.log_partition, dist.marginals, dist.entropy
    for b, n in enumerate(LENGTHS):
        structures, values, true_log_z, true_marginals, true_entropy = _brute(
            scores[b] / temperature, n, projective, multiroot
        )
        torch.testing.assert_close(log_z[b], true_log_z, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(marginals[b], true_marginals, rtol=0, atol=1e-12)
        torch.testing.assert_close(entropy[b], true_entropy, rtol=1e-10, atol=1e-10)
        # log_prob of every tree (others in the batch: the argmax, which is always valid)
        heads = dist.argmax.unsqueeze(0).repeat(len(structures), 1, 1)
        heads[:, b] = structures
        finite = torch.isfinite(values)
        log_prob = dist.log_prob(heads)[:, b]
        torch.testing.assert_close(log_prob[finite], (values - true_log_z)[finite])
        assert torch.isneginf(log_prob[~finite]).all()
    # marginals: each word has exactly one head; nothing on the root column, diagonal, padding
    words = torch.arange(6) <= lengths.view(-1, 1)
    words[:, 0] = False
    torch.testing.assert_close(marginals.sum(1), words.double())
    assert (marginals[:, :, 0] == 0).all() and (marginals.diagonal(dim1=1, dim2=2) == 0).all()


@pytest.mark.parametrize(("projective", "multiroot"), KINDS, ids=KIND_IDS)
def test_argmax_and_kbest_match_sorted_enumeration(projective, multiroot):
    lengths = torch.tensor(LENGTHS)
    scores = _with_forbidden_arcs(_scores(len(LENGTHS), 6, scale=3.0, seed=2))
    dist = DependencyCRF(scores, lengths, projective, multiroot, temperature=1.5)
    k = 40  # more than the trees of the short sentences
    values, kbest_scores = dist.kbest(k)
    assert values.shape == (k, len(LENGTHS), 6) and kbest_scores.shape == (k, len(LENGTHS))
    for b, n in enumerate(LENGTHS):
        structures, tree_scores, *_ = _brute(scores[b] / 1.5, n, projective, multiroot)
        finite = torch.isfinite(tree_scores)
        expected = tree_scores[finite].sort(descending=True).values[:k]
        count = len(expected)
        torch.testing.assert_close(kbest_scores[:count, b], expected)
        assert torch.isneginf(kbest_scores[count:, b]).all()
        assert (values[count:, b] == -1).all()
        # every returned tree is distinct, valid, and scored as returned
        found = {tuple(v.tolist()) for v in values[:count, b]}
        assert len(found) == count
        assert all(is_tree_heads(h[: n + 1], projective, multiroot) for h in found)
        assert (values[:count, b, n + 1 :] == -1).all()
        best = structures[finite][tree_scores[finite].argmax()]
        assert dist.argmax[b].tolist() == best.tolist()
    valid = torch.isfinite(kbest_scores)
    rescored = dist.score(torch.where(valid.unsqueeze(-1), values, dist.argmax.expand_as(values)))
    torch.testing.assert_close(rescored[valid], kbest_scores[valid])


@pytest.mark.parametrize(("projective", "multiroot"), KINDS, ids=KIND_IDS)
def test_gradient_of_log_partition_is_marginals(projective, multiroot):
    lengths = torch.tensor([4, 2, 3])
    scores = _scores(3, 5, seed=3).requires_grad_()
    dist = DependencyCRF(scores, lengths, projective, multiroot, temperature=2.0)
    (gradient,) = torch.autograd.grad(dist.log_partition.sum(), scores)
    expected = DependencyCRF(scores.detach(), lengths, projective, multiroot, 2.0).marginals
    torch.testing.assert_close(gradient * 2.0, expected)


@pytest.mark.parametrize(("projective", "multiroot"), KINDS, ids=KIND_IDS)
def test_marginals_are_differentiable(projective, multiroot):
    """A loss on marginals backpropagates: a Hessian-vector product against finite differences."""
    lengths = torch.tensor([4, 3])
    scores = _with_forbidden_arcs(_scores(4, 5, seed=4))[:2]
    weights = _scores(2, 5, seed=5)
    direction = torch.where(torch.isfinite(scores), _scores(2, 5, seed=6), 0.0)

    def loss(s: torch.Tensor) -> torch.Tensor:
        return (DependencyCRF(s, lengths, projective, multiroot, 1.3).marginals * weights).sum()

    leaf = scores.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(loss(leaf), leaf)
    assert torch.isfinite(gradient).all()
    step = 1e-6
    numeric = (loss(scores + step * direction) - loss(scores - step * direction)) / (2 * step)
    torch.testing.assert_close((gradient * direction).sum(), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("projective", "multiroot"), KINDS, ids=KIND_IDS)
def test_expected_score_with_foreign_marginals(projective, multiroot):
    lengths = torch.tensor([4, 3])
    scores = _scores(2, 5, seed=7)
    teacher = DependencyCRF(_scores(2, 5, seed=8), lengths, projective, multiroot)
    student = DependencyCRF(scores, lengths, projective, multiroot, temperature=0.5)
    mu = teacher.marginals
    expected = (mu * scores / 0.5).sum((-2, -1))  # teacher marginals are 0 off the allowed arcs
    torch.testing.assert_close(student.expected_score(mu), expected)
    # the cross-entropy identity: E_teacher[-log P_student] = log Z - sum_u P_t(u) s(u)
    cross_entropy = student.log_partition - student.expected_score(mu)
    for b, n in enumerate([4, 3]):
        structures, values, _, _, _ = _brute(teacher.arc_scores[b], n, projective, multiroot)
        teacher_probs = torch.softmax(values, 0)
        student_values = structure_scores(scores[b] / 0.5, structures)
        brute = -(teacher_probs * (student_values - student.log_partition[b])).sum()
        torch.testing.assert_close(cross_entropy[b], brute)


def test_expected_score_conventions_for_forbidden_arcs():
    lengths = torch.tensor([3])
    scores = _scores(1, 4, seed=9)
    scores[0, 1, 2] = float("-inf")
    dist = DependencyCRF(scores, lengths, projective=False, multiroot=True)
    mu = dist.marginals.clone()
    assert mu[0, 1, 2] == 0
    assert torch.isfinite(dist.expected_score(mu)).all()  # 0 * -inf counts as 0
    mu[0, 1, 2] = 0.25
    assert torch.isneginf(dist.expected_score(mu)).all()  # mass on a forbidden arc
    garbage = mu.clone()
    garbage[0, :, 0] = 5.0  # root column and padding are ignored
    garbage[0, 2, 2] = 7.0
    mu[0, 1, 2] = 0.0
    garbage[0, 1, 2] = 0.0
    torch.testing.assert_close(dist.expected_score(garbage), dist.expected_score(mu))
    with pytest.raises(ValueError, match="marginals must have shape"):
        dist.expected_score(mu[:, :3])


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def _check_sample_frequencies(dist, structures_per_sentence, probs_per_sentence, samples):
    """Total variation and per-arc frequencies within sound concentration bounds (prob <= 1e-6)."""
    n = samples.shape[0]
    for b, (structures, probs) in enumerate(
        zip(structures_per_sentence, probs_per_sentence, strict=True)
    ):
        index = {tuple(s.tolist()): i for i, s in enumerate(structures)}
        counts = torch.zeros(len(structures), dtype=torch.float64)
        for row in samples[:, b]:
            key = tuple(row.tolist())
            assert key in index, f"sample {key} is not a structure of sentence {b}"
            counts[index[key]] += 1
        # ||p_hat - p||_1 <= sqrt(K / n) + t with probability >= 1 - exp(-n t^2 / 2)
        slack = math.sqrt(2 * math.log(1e6) / n)
        l1 = (counts / n - probs).abs().sum()
        assert l1 <= math.sqrt(len(structures) / n) + slack
        # every arc frequency within Hoeffding's bound, union over the arcs
        size = samples.shape[-1]
        frequency = arc_indicators(samples[:, b], size).mean(0)
        marginals = (probs.view(-1, 1, 1) * arc_indicators(structures, size)).sum(0)
        bound = math.sqrt(math.log(2 * size * size / 1e-6) / (2 * n))
        assert (frequency - marginals).abs().max() <= bound


@pytest.mark.parametrize(("projective", "multiroot"), KINDS, ids=KIND_IDS)
def test_samples_follow_the_distribution(projective, multiroot):
    lengths = torch.tensor([4, 3, 1])
    scores = _scores(3, 5, scale=1.5, seed=10)
    dist = DependencyCRF(scores, lengths, projective, multiroot, temperature=1.2)
    generator = torch.Generator().manual_seed(11)
    samples = dist.sample(3000, generator=generator)
    assert samples.shape == (3000, 3, 5) and samples.dtype == torch.long
    assert is_tree(samples, lengths, projective=projective, multiroot=multiroot).all()
    structures, probs = [], []
    for b, n in enumerate([4, 3, 1]):
        trees, values, *_ = _brute(scores[b] / 1.2, n, projective, multiroot)
        structures.append(trees)
        probs.append(torch.softmax(values, 0))
    _check_sample_frequencies(dist, structures, probs, samples)
    first = dist.sample(50, generator=torch.Generator().manual_seed(12))
    assert torch.equal(first, dist.sample(50, generator=torch.Generator().manual_seed(12)))


# ----------------------------------------------------------------------------------------------
# Scale, padding, special cases
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("projective", "multiroot"), KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("scale", [1e2, 1e3, 1e4])
def test_extreme_scores_are_exact(projective, multiroot, scale):
    lengths = torch.tensor(LENGTHS)
    scores = _scores(len(LENGTHS), 6, scale=scale, seed=12)
    dist = DependencyCRF(scores, lengths, projective, multiroot)
    log_z, marginals = dist.log_partition, dist.marginals
    assert torch.isfinite(log_z).all() and torch.isfinite(marginals).all()
    for b, n in enumerate(LENGTHS):
        _, _, true_log_z, true_marginals, _ = _brute(scores[b], n, projective, multiroot)
        torch.testing.assert_close(log_z[b], true_log_z, rtol=1e-13, atol=0)
        torch.testing.assert_close(marginals[b], true_marginals, rtol=0, atol=1e-9)
    assert torch.isfinite(dist.entropy).all()
    single = DependencyCRF(scores.float(), lengths, projective, multiroot)
    assert torch.isfinite(single.log_partition).all() and torch.isfinite(single.marginals).all()
    torch.testing.assert_close(single.log_partition.double(), log_z, rtol=1e-6, atol=1e-3)


def test_matrix_tree_is_exact_when_the_best_heads_form_a_costly_cycle():
    """Column maxima 1 -> 2 -> 1 with weak root arcs: the shifted Laplacian is numerically singular
    in float64 (cancellation), so the exact elimination must take over."""
    for scale in (40.0, 1e3, 1e4):
        scores = torch.zeros(1, 3, 3, dtype=torch.float64)
        scores[0, 1, 2] = scores[0, 2, 1] = scale
        for multiroot in (True, False):
            dist = DependencyCRF(scores, torch.tensor([2]), projective=False, multiroot=multiroot)
            # trees: 0->1->2 and 0->2->1 score `scale`; multi-root adds {0->1, 0->2} scoring 0
            extra = math.exp(-scale) if multiroot else 0.0
            torch.testing.assert_close(
                dist.log_partition, torch.tensor([scale + math.log(2 + extra)], dtype=torch.float64)
            )
            expected = torch.zeros(3, 3, dtype=torch.float64)
            expected[1, 2] = expected[2, 1] = expected[0, 1] = expected[0, 2] = 0.5
            torch.testing.assert_close(dist.marginals[0], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("multiroot", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matrix_tree_mixes_exact_and_lu_sentences(multiroot, dtype):
    """One batch where a costly cycle sends sentence 0 to the exact elimination and the others
    take the LU path; marginals asked first (no determinant), then log Z, against enumeration."""
    lengths = torch.tensor(LENGTHS)
    scores = _scores(len(LENGTHS), 6, seed=31)
    scores[0, 1, 2] = scores[0, 2, 1] = 60.0
    scores = scores.to(dtype)
    padding = torch.arange(6) > lengths.unsqueeze(-1)
    trusted = _matrix_tree_lu(_word_log_weights(scores, padding, 1.0), padding, multiroot, None)[2]
    assert trusted.tolist() == [False, True, True, True, True]
    dist = DependencyCRF(scores, lengths, False, multiroot)
    marginals = dist.marginals
    log_z = dist.log_partition
    assert marginals.dtype == log_z.dtype == dtype
    tolerance = 1e-11 if dtype == torch.float64 else 1e-5
    for b, n in enumerate(LENGTHS):
        _, _, true_log_z, true_marginals, _ = _brute(scores[b].double(), n, False, multiroot)
        torch.testing.assert_close(log_z[b].double(), true_log_z, rtol=tolerance, atol=0)
        torch.testing.assert_close(marginals[b].double(), true_marginals, rtol=0, atol=tolerance)


@pytest.mark.parametrize("multiroot", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matrix_tree_lu_path_on_long_sentences(multiroot, dtype):
    """Sentences too long to enumerate: the LU path against the exact log-space elimination.

    The LU certificate must hold for every sentence of moderate random scores (else the fast path
    is lost), including a padded one with garbage in its padding; log Z, the marginals and the
    gradient of log Z (the training path) must agree with the exact elimination.
    """
    size, temperature = 31, 0.8
    lengths = torch.tensor([30, 17, 1, 24])
    scores = _scores(4, size, scale=2.0, seed=30)
    scores[1, 18:, :] = scores[1, :, 18:] = 1e4  # garbage in the padding of sentence 1
    scores = scores.to(dtype)
    padding = torch.arange(size) > lengths.unsqueeze(-1)
    log_weights = _word_log_weights(scores, padding, temperature)
    assert _matrix_tree_lu(log_weights, padding, multiroot, None)[2].all()
    leaf = scores.clone().requires_grad_()
    dist = DependencyCRF(leaf, lengths, False, multiroot, temperature)
    (gradient,) = torch.autograd.grad(dist.log_partition.sum(), leaf)
    marginals = DependencyCRF(scores, lengths, False, multiroot, temperature).marginals
    assert gradient.dtype == marginals.dtype == dtype
    reference = _word_log_weights(scores, padding, temperature)  # float64, as the LU path sees
    exact_log_z, (exact_marginals,) = autograd_marginals(
        lambda s: _matrix_tree_log_space(s, lengths, multiroot), [reference]
    )
    tolerance = 1e-10 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(
        dist.log_partition.double(), exact_log_z, rtol=tolerance / 10, atol=0
    )
    torch.testing.assert_close(marginals.double(), exact_marginals, rtol=0, atol=tolerance)
    torch.testing.assert_close(gradient * temperature, marginals, rtol=0, atol=tolerance)


@pytest.mark.parametrize("multiroot", [True, False])
def test_exact_matrix_tree_path_is_twice_differentiable(multiroot):
    scores = _scores(2, 4, seed=26)
    scores[0, 1, 2] = scores[0, 2, 1] = 40.0  # sentence 0 takes the exact path, 1 the LU path
    lengths = torch.tensor([3, 3])
    weights = _scores(2, 4, seed=27)
    direction = _scores(2, 4, seed=28)

    def loss(s: torch.Tensor) -> torch.Tensor:
        return (DependencyCRF(s, lengths, False, multiroot).marginals * weights).sum()

    leaf = scores.clone().requires_grad_()
    dist = DependencyCRF(leaf, lengths, False, multiroot)
    (gradient,) = torch.autograd.grad(dist.log_partition.sum(), leaf)
    torch.testing.assert_close(gradient, dist.marginals.detach())
    (hessian_direction,) = torch.autograd.grad(loss(leaf), leaf)
    step = 1e-6
    numeric = (loss(scores + step * direction) - loss(scores - step * direction)) / (2 * step)
    assert torch.isfinite(hessian_direction).all()
    torch.testing.assert_close((hessian_direction * direction).sum(), numeric, rtol=1e-5, atol=1e-7)


def test_single_root_impossible_while_multiroot_possible():
    scores = _scores(2, 4, seed=29)
    scores[1, 1:, 1:] = float("-inf")  # sentence 1 (two words) can only hang both on the root
    lengths = torch.tensor([3, 2])
    for projective in (True, False):
        multi = DependencyCRF(scores, lengths, projective, multiroot=True)
        torch.testing.assert_close(multi.log_partition[1], scores[1, 0, 1] + scores[1, 0, 2])
        assert multi.argmax[1].tolist() == [-1, 0, 0, -1]
        single = DependencyCRF(scores, lengths, projective, multiroot=False)
        with pytest.raises(ValueError, match=r"sentences \[1\] have no tree"):
            _ = single.log_partition
        with pytest.raises(ValueError, match=r"sentences \[1\] have no tree"):
            single.kbest(3)


@pytest.mark.parametrize(("projective", "multiroot"), KINDS, ids=KIND_IDS)
def test_padding_does_not_change_results(projective, multiroot):
    size, n = 7, 4
    scores = _scores(3, size, seed=13)
    scores[1, n + 1 :, :] = 1e4  # garbage in the padding of sentence 1
    scores[1, :, n + 1 :] = float("-inf")
    lengths = torch.tensor([6, n, 2])
    batch = DependencyCRF(scores, lengths, projective, multiroot, temperature=0.9)
    alone = DependencyCRF(scores[1:2, : n + 1, : n + 1], lengths[1:2], projective, multiroot, 0.9)
    torch.testing.assert_close(batch.log_partition[1:2], alone.log_partition, rtol=1e-14, atol=0)
    torch.testing.assert_close(batch.marginals[1, : n + 1, : n + 1], alone.marginals[0])
    assert (batch.marginals[1, n + 1 :] == 0).all() and (batch.marginals[1, :, n + 1 :] == 0).all()
    assert batch.argmax[1, : n + 1].tolist() == alone.argmax[0].tolist()
    assert (batch.argmax[1, n + 1 :] == -1).all()
    values, tree_scores = batch.kbest(5)
    alone_values, alone_scores = alone.kbest(5)
    torch.testing.assert_close(tree_scores[:, 1], alone_scores[:, 0])
    assert torch.equal(values[:, 1, : n + 1], alone_values[:, 0])
    assert (batch.sample(20, torch.Generator().manual_seed(0))[:, 1, n + 1 :] == -1).all()


@pytest.mark.parametrize(("projective", "multiroot"), KINDS, ids=KIND_IDS)
def test_float32_matches_float64(projective, multiroot):
    lengths = torch.tensor([5, 3])
    scores = _scores(2, 6, scale=3.0, seed=14)
    exact = DependencyCRF(scores, lengths, projective, multiroot)
    single = DependencyCRF(scores.float(), lengths, projective, multiroot)
    assert single.log_partition.dtype == torch.float32 and single.marginals.dtype == torch.float32
    torch.testing.assert_close(
        single.log_partition.double(), exact.log_partition, rtol=1e-5, atol=0
    )
    torch.testing.assert_close(single.marginals.double(), exact.marginals, rtol=0, atol=1e-5)
    assert torch.equal(single.argmax, exact.argmax)


def test_single_word_sentences():
    scores = _scores(2, 2, seed=15)
    for projective, multiroot in KINDS:
        dist = DependencyCRF(scores, torch.tensor([1, 1]), projective, multiroot)
        torch.testing.assert_close(dist.log_partition, scores[:, 0, 1])
        assert dist.argmax.tolist() == [[-1, 0], [-1, 0]]
        values, tree_scores = dist.kbest(3)
        assert values[0].tolist() == [[-1, 0], [-1, 0]] and (values[1:] == -1).all()
        assert torch.isneginf(tree_scores[1:]).all()
        torch.testing.assert_close(dist.entropy, torch.zeros(2, dtype=torch.float64))


def test_tempered_and_repr():
    lengths = torch.tensor([4, 2])
    scores = _scores(2, 5, seed=16)
    dist = DependencyCRF(scores, lengths, projective=False, multiroot=True, temperature=2.0)
    hotter = dist.tempered(1.5)
    assert hotter.temperature == 3.0 and not hotter.projective and hotter.multiroot
    reference = DependencyCRF(scores / 3.0, lengths, projective=False, multiroot=True)
    torch.testing.assert_close(hotter.log_partition, reference.log_partition)
    torch.testing.assert_close(hotter.marginals, reference.marginals)
    text = repr(dist)
    assert "DependencyCRF" in text and "projective=False" in text and "multiroot=True" in text
    assert "temperature=2.0" in text
    assert "HeadSelection" in repr(HeadSelection(scores, lengths))


# ----------------------------------------------------------------------------------------------
# Invalid inputs
# ----------------------------------------------------------------------------------------------


def test_invalid_constructor_inputs_raise():
    scores = _scores(2, 4, seed=17)
    lengths = torch.tensor([3, 2])
    with pytest.raises(ValueError, match="arc_scores must have shape"):
        DependencyCRF(scores[0], lengths)
    with pytest.raises(ValueError, match="square"):
        DependencyCRF(scores[:, :3], lengths)
    with pytest.raises(ValueError, match="square"):
        DependencyCRF(scores[:, :1, :1], lengths)
    with pytest.raises(ValueError, match="floating"):
        DependencyCRF(scores.long(), lengths)
    nan = scores.clone()
    nan[0, 1, 2] = float("nan")
    with pytest.raises(NumericalError, match="NaN"):
        DependencyCRF(nan, lengths)
    with pytest.raises(ValueError, match=r"\+inf"):
        DependencyCRF(scores.clone().fill_(float("inf")), lengths)
    with pytest.raises(ValueError, match="lengths"):
        DependencyCRF(scores, torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="lengths"):
        DependencyCRF(scores, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="lengths"):
        DependencyCRF(scores, torch.tensor([3]))
    with pytest.raises(ValueError, match="temperature"):
        DependencyCRF(scores, lengths, temperature=0.0)
    with pytest.raises(ValueError, match="projective and multiroot"):
        DependencyCRF(scores, lengths, projective=1)
    with pytest.raises(ValueError, match="temperature"):
        HeadSelection(scores, lengths, temperature=-1.0)
    for dist in (DependencyCRF(scores, lengths), HeadSelection(scores, lengths)):
        with pytest.raises(ValueError, match="k must be"):
            dist.kbest(0)
        with pytest.raises(ValueError, match="n must be"):
            dist.sample(0)


@pytest.mark.parametrize(("projective", "multiroot"), KINDS, ids=KIND_IDS)
def test_sentence_without_tree_raises(projective, multiroot):
    scores = _scores(2, 4, seed=18)
    scores[1, 0, :] = float("-inf")  # no arc from the root in sentence 1
    dist = DependencyCRF(scores, torch.tensor([3, 2]), projective, multiroot)
    with pytest.raises(ValueError, match=r"sentences \[1\] have no tree"):
        _ = dist.log_partition
    dist = DependencyCRF(scores, torch.tensor([3, 2]), projective, multiroot)
    with pytest.raises(ValueError, match=r"sentences \[1\] have no tree"):
        _ = dist.marginals
    with pytest.raises(ValueError, match=r"sentences \[1\] have no tree"):
        dist.kbest(2)
    no_head = _scores(2, 4, seed=18)
    no_head[1, :, 2] = float("-inf")  # word 2 of sentence 1 has no allowed head
    with pytest.raises(ValueError, match=r"sentences \[1\] have no head vector"):
        _ = HeadSelection(no_head, torch.tensor([3, 2])).log_partition


def test_score_rejects_invalid_head_vectors():
    scores = _scores(1, 5, seed=19)
    lengths = torch.tensor([4])
    proj_single = DependencyCRF(scores, lengths, projective=True, multiroot=False)
    nonproj_multi = DependencyCRF(scores, lengths, projective=False, multiroot=True)
    cycle = torch.tensor([[-1, 0, 3, 2, 1]])  # 2 <-> 3
    two_roots = torch.tensor([[-1, 0, 1, 0, 3]])
    crossing = torch.tensor([[-1, 0, 4, 1, 1]])  # arcs 1-3 and 2-4 cross
    with pytest.raises(ValueError, match="tree"):
        nonproj_multi.score(cycle)
    with pytest.raises(ValueError, match="single-root"):
        proj_single.score(two_roots)
    with pytest.raises(ValueError, match="projective"):
        proj_single.score(crossing)
    nonproj_multi.score(two_roots)  # fine: multi-root, any tree
    nonproj_multi.score(crossing)
    malformed = [
        torch.tensor([[0, 0, 1, 2, 3]]),  # root position not -1
        torch.tensor([[-1, 0, 1, 2, 5]]),  # head out of range
        torch.tensor([[-1, 1, 1, 2, 3]]),  # self-loop
        torch.tensor([[-1, 0, 1, 2, -1]]),  # word without head
    ]
    for heads in malformed:
        for dist in (proj_single, nonproj_multi, HeadSelection(scores, lengths)):
            with pytest.raises(ValueError, match="heads must"):
                dist.score(heads)
    short = DependencyCRF(scores, torch.tensor([3]))
    with pytest.raises(ValueError, match="heads must"):
        short.score(torch.tensor([[-1, 0, 1, 2, 3]]))  # padding must be -1
    with pytest.raises(ValueError, match="heads must have shape"):
        proj_single.score(torch.tensor([[-1, 0, 1, 2]]))
    with pytest.raises(ValueError, match="integer"):
        proj_single.score(torch.tensor([[-1.0, 0, 1, 2, 3]]))


# ----------------------------------------------------------------------------------------------
# is_tree / is_projective
# ----------------------------------------------------------------------------------------------


def test_is_tree_and_is_projective_on_handmade_cases():
    lengths = torch.tensor([4, 4, 4, 4, 4, 2, 3])
    heads = torch.tensor(
        [
            [-1, 2, 0, 2, 3],  # projective single-root chain-ish tree
            [-1, 0, 1, 0, 3],  # two root children, projective
            [-1, 0, 4, 1, 1],  # crossing arcs 1-3 and 2-4, single root
            [-1, 0, 3, 2, 1],  # cycle 2 <-> 3
            [-1, 3, 0, 2, 2],  # root arc 0-2 crosses arc 1-3: non-projective
            [-1, 2, 0, -1, -1],  # short sentence
            [-1, 0, 1, 2, 2],  # padding is not -1: malformed
        ]
    )
    assert is_tree(heads, lengths).tolist() == [True, False, True, False, True, True, False]
    assert is_tree(heads, lengths, multiroot=True).tolist() == [
        True, True, True, False, True, True, False
    ]  # fmt: skip
    assert is_tree(heads, lengths, projective=True, multiroot=True).tolist() == [
        True, True, False, False, False, True, False
    ]  # fmt: skip
    assert is_projective(heads, lengths).tolist() == [True, True, False, True, False, True, False]
    stacked = torch.stack((heads, heads))
    assert is_tree(stacked, lengths).shape == (2, 7)
    with pytest.raises(ValueError, match="integer"):
        is_tree(heads.float(), lengths)
    with pytest.raises(ValueError, match="lengths"):
        is_tree(heads, lengths[:3])


@pytest.mark.parametrize(("projective", "multiroot"), KINDS, ids=KIND_IDS)
def test_is_tree_agrees_with_enumeration(projective, multiroot):
    n = 4
    vectors = padded(list(all_head_vectors(n)), n + 1)
    expected = [is_tree_heads(tuple(v.tolist()), projective, multiroot) for v in vectors]
    lengths = torch.tensor([n])
    got = is_tree(vectors.unsqueeze(1), lengths, projective=projective, multiroot=multiroot)
    assert got.squeeze(1).tolist() == expected


# ----------------------------------------------------------------------------------------------
# HeadSelection
# ----------------------------------------------------------------------------------------------


def test_head_selection_matches_enumeration():
    lengths = torch.tensor([4, 2, 1, 3])
    scores = _with_forbidden_arcs(_scores(4, 5, scale=2.0, seed=20))
    dist = HeadSelection(scores, lengths, temperature=0.8)
    k = 300
    values, kbest_scores = dist.kbest(k)
    for b, n in enumerate(lengths.tolist()):
        vectors, vector_scores, log_z, marginals, entropy = _brute(scores[b] / 0.8, n, None)
        torch.testing.assert_close(dist.log_partition[b], log_z)
        torch.testing.assert_close(dist.marginals[b], marginals)
        torch.testing.assert_close(dist.entropy[b], entropy)
        finite = torch.isfinite(vector_scores)
        expected = vector_scores[finite].sort(descending=True).values[:k]
        count = len(expected)
        torch.testing.assert_close(kbest_scores[:count, b], expected)
        assert torch.isneginf(kbest_scores[count:, b]).all() and (values[count:, b] == -1).all()
        assert len({tuple(v.tolist()) for v in values[:count, b]}) == count
        best = vectors[finite][vector_scores[finite].argmax()]
        assert dist.argmax[b].tolist() == best.tolist()
        heads = dist.argmax.unsqueeze(0).repeat(len(vectors), 1, 1)
        heads[:, b] = vectors
        log_prob = dist.log_prob(heads)[:, b]
        torch.testing.assert_close(log_prob[finite], (vector_scores - log_z)[finite])
    valid = torch.isfinite(kbest_scores)
    rescored = dist.score(torch.where(valid.unsqueeze(-1), values, dist.argmax.expand_as(values)))
    torch.testing.assert_close(rescored[valid], kbest_scores[valid])


def test_head_selection_gradient_foreign_marginals_and_samples():
    lengths = torch.tensor([3, 2])
    scores = _scores(2, 4, seed=21).requires_grad_()
    dist = HeadSelection(scores, lengths, temperature=2.0)
    (gradient,) = torch.autograd.grad(dist.log_partition.sum(), scores)
    torch.testing.assert_close(gradient * 2.0, dist.marginals.detach())
    (second,) = torch.autograd.grad((dist.marginals * scores.detach()).sum(), scores)
    assert torch.isfinite(second).all()
    teacher = DependencyCRF(_scores(2, 4, seed=22), lengths)
    mu = teacher.marginals
    expected = (mu * scores.detach() / 2.0).sum((-2, -1))
    torch.testing.assert_close(dist.expected_score(mu).detach(), expected)
    plain = HeadSelection(scores.detach(), lengths, temperature=2.0)
    samples = plain.sample(3000, generator=torch.Generator().manual_seed(23))
    assert samples.shape == (3000, 2, 4)
    structures, probs = [], []
    for b, n in enumerate(lengths.tolist()):
        vectors, values, *_ = _brute(scores.detach()[b] / 2.0, n, None)
        structures.append(vectors)
        probs.append(torch.softmax(values, 0))
    _check_sample_frequencies(plain, structures, probs, samples)
    hotter = plain.tempered(2.0)
    assert isinstance(hotter, HeadSelection) and hotter.temperature == 4.0


def test_head_selection_extreme_scores_and_padding():
    scores = _scores(2, 5, scale=1e4, seed=24)
    scores[1, 4, :] = float("-inf")
    scores[1, :, 4] = 1e4
    dist = HeadSelection(scores, torch.tensor([4, 3]))
    assert torch.isfinite(dist.log_partition).all() and torch.isfinite(dist.marginals).all()
    alone = HeadSelection(scores[1:, :4, :4], torch.tensor([3]))
    torch.testing.assert_close(dist.log_partition[1:], alone.log_partition)
    torch.testing.assert_close(dist.marginals[1, :4, :4], alone.marginals[0])
    assert (dist.marginals[1, 4] == 0).all() and (dist.marginals[1, :, 4] == 0).all()
    assert dist.argmax[1, 4] == -1


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------


@st.composite
def _problems(draw):
    batch = draw(st.integers(1, 3))
    size = draw(st.integers(2, 7))
    lengths = draw(st.lists(st.integers(1, size - 1), min_size=batch, max_size=batch))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0, 1e4]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(KINDS))
    temperature = draw(st.sampled_from([0.5, 1.0, 3.0]))
    scores = (_scores(batch, size, scale, seed)).to(dtype)
    return scores, torch.tensor(lengths), kind, temperature


@settings(max_examples=30, deadline=None)
@given(_problems())
def test_properties_of_tree_crfs(problem):
    scores, lengths, (projective, multiroot), temperature = problem
    dist = DependencyCRF(scores, lengths, projective, multiroot, temperature)
    log_z, marginals = dist.log_partition, dist.marginals
    assert log_z.shape == lengths.shape and marginals.shape == scores.shape
    assert torch.isfinite(log_z).all() and torch.isfinite(marginals).all()
    size = scores.shape[-1]
    words = (torch.arange(size) <= lengths.view(-1, 1)) & (torch.arange(size) >= 1)
    tolerance = 1e-4 if scores.dtype == torch.float32 else 1e-9
    torch.testing.assert_close(marginals.sum(1), words.to(scores.dtype), atol=tolerance, rtol=0)
    assert (marginals >= -tolerance).all() and (marginals <= 1 + tolerance).all()
    best = dist.argmax
    assert is_tree(best, lengths, projective=projective, multiroot=multiroot).all()
    values, tree_scores = dist.kbest(3)
    assert is_tree(values[0], lengths, projective=projective, multiroot=multiroot).all()
    slack = tolerance * tree_scores[0].abs().clamp(min=1)  # float32 charts may break near-ties
    assert (tree_scores[:-1] >= tree_scores[1:] - slack).all()
    torch.testing.assert_close(dist.score(best), tree_scores[0], rtol=tolerance, atol=tolerance)
    assert (dist.log_prob(best) <= tolerance * log_z.abs().clamp(min=1)).all()
    assert torch.isfinite(dist.entropy).all()
    samples = dist.sample(2, generator=torch.Generator().manual_seed(0))
    assert is_tree(samples, lengths, projective=projective, multiroot=multiroot).all()


@settings(max_examples=20, deadline=None)
@given(_problems())
def test_properties_of_head_selection(problem):
    scores, lengths, _, temperature = problem
    dist = HeadSelection(scores, lengths, temperature)
    assert torch.isfinite(dist.log_partition).all() and torch.isfinite(dist.marginals).all()
    size = scores.shape[-1]
    words = (torch.arange(size) <= lengths.view(-1, 1)) & (torch.arange(size) >= 1)
    torch.testing.assert_close(dist.marginals.sum(1), words.to(scores.dtype))
    values, value_scores = dist.kbest(4)
    torch.testing.assert_close(value_scores[0], dist.score(dist.argmax))
    torch.testing.assert_close(dist.score(values[0]), value_scores[0])
    assert (value_scores[:-1] >= value_scores[1:]).all()
    heads = dist.sample(3, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(dist.score(heads)).all()


def test_kbest_beyond_every_structure_of_a_tiny_batch():
    """k larger than the number of trees of every sentence: the tail is -1 and -inf everywhere."""
    scores = _scores(2, 4, seed=25)
    lengths = torch.tensor([3, 2])
    for projective, multiroot in KINDS:
        dist = DependencyCRF(scores, lengths, projective, multiroot)
        values, tree_scores = dist.kbest(20)
        assert torch.isfinite(tree_scores[:, 0]).sum() == len(all_trees(3, projective, multiroot))
        assert torch.isfinite(tree_scores[:, 1]).sum() == len(all_trees(2, projective, multiroot))
        assert (values[torch.isneginf(tree_scores)] == -1).all()
    assert list(all_head_vectors(2)) == [(-1, 0, 0), (-1, 0, 1), (-1, 2, 0), (-1, 2, 1)]


@pytest.mark.parametrize("multiroot", [True, False])
@pytest.mark.parametrize("scale", [30.0, 100.0])
def test_matrix_tree_marginals_are_probabilities_at_large_scores(multiroot, scale):
    """Each matrix-tree marginal is a difference (LU) or a gradient through divisions (exact):
    near-0 probabilities come out as roundoff of either sign (at these scales both paths gave
    negatives down to -2e-13 before they were zeroed), and ``x log x`` of a negative one is NaN,
    which reached a fold teacher's target diagnostics. Every marginal must be >= 0, still equal
    the exact elimination, and columns still sum to 1."""
    size = 31
    lengths = torch.tensor([30, 30, 22, 30])
    scores = _scores(4, size, scale=scale, seed=40)
    padding = torch.arange(size) > lengths.unsqueeze(-1)
    marginals = DependencyCRF(scores, lengths, False, multiroot).marginals
    assert float(marginals.min()) >= 0.0
    assert torch.isfinite(torch.special.xlogy(marginals, marginals)).all()
    _, (exact,) = autograd_marginals(
        lambda s: _matrix_tree_log_space(s, lengths, multiroot),
        [_word_log_weights(scores, padding, 1.0)],
    )
    torch.testing.assert_close(marginals, exact, rtol=0, atol=1e-9)
    columns = marginals.sum(1)[:, 1:]
    real = torch.arange(1, size) <= lengths.unsqueeze(-1)
    torch.testing.assert_close(columns[real], torch.ones_like(columns[real]), rtol=0, atol=1e-9)


def test_matrix_tree_raises_on_a_negative_exact_marginal(monkeypatch):
    """A marginal of the exact elimination below 0 beyond roundoff is numerical trouble: raised,
    never zeroed."""
    import structkd.structures.dependency as dependency

    scores = torch.zeros(1, 3, 3, dtype=torch.float64)
    scores[0, 1, 2] = scores[0, 2, 1] = 60.0  # a costly cycle: the exact path
    real = dependency.autograd_marginals

    def broken(function, inputs):
        log_z, (marginals,) = real(function, inputs)
        return log_z, (marginals - 1e-3,)

    monkeypatch.setattr(dependency, "autograd_marginals", broken)
    with pytest.raises(NumericalError, match="below 0 beyond roundoff"):
        _ = DependencyCRF(scores, torch.tensor([2]), projective=False).marginals
