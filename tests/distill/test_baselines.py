"""Token KD, Top-K / Top-WK KD and Posterior KD against their definitions (by enumeration)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.distill import posterior_kd_loss, token_kd_loss, topk_kd_loss
from structkd.structures.base import NumericalError
from tests.distill.enumeration import (
    LENGTHS,
    PAIRS,
    RawCRF,
    RawFactorized,
    log_probs,
    make_pair,
    token_marginals,
    with_grad,
)

CHAIN_PAIRS = [pair for pair in PAIRS if pair[0] != "spans"]


def emissions_of(raw):
    return raw.emissions if isinstance(raw, RawCRF) else raw.logits


# --- token KD -------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize(("teacher_kind", "student_kind"), CHAIN_PAIRS)
def test_token_kd_equals_per_token_kl(teacher_kind, student_kind, temperature):
    raw_teacher, raw_student = make_pair(teacher_kind, student_kind, seed=31)
    loss = token_kd_loss(
        raw_teacher.build(), raw_student.build(), temperature=temperature, reduction="none"
    )
    expected = []
    for b, n in enumerate(LENGTHS):
        total = torch.zeros((), dtype=torch.float64)
        for i in range(n):
            p = torch.softmax(emissions_of(raw_teacher)[b, i] / temperature, -1)
            q = torch.softmax(emissions_of(raw_student)[b, i] / temperature, -1)
            total = total + (p * (p.log() - q.log())).sum()
        expected.append(total)
    torch.testing.assert_close(loss, torch.stack(expected), rtol=1e-10, atol=1e-12)


def test_token_kd_of_a_distribution_built_tempered_uses_its_temperature():
    raw_teacher, raw_student = make_pair("crf", "factorized", seed=32)
    tempered_teacher = raw_teacher.build(temperature=2.0)
    loss = token_kd_loss(tempered_teacher, raw_student.build(), reduction="none")
    scaled = RawCRF(
        raw_teacher.emissions / 2.0,
        raw_teacher.transitions,
        raw_teacher.start,
        raw_teacher.end,
        raw_teacher.lengths,
    )
    torch.testing.assert_close(
        loss, token_kd_loss(scaled.build(), raw_student.build(), reduction="none")
    )


@pytest.mark.parametrize("student_kind", ["crf", "factorized"])
def test_token_kd_rejects_a_span_teacher(student_kind):
    raw_teacher, raw_student = make_pair("spans", student_kind, seed=33)
    with pytest.raises(TypeError, match="SemiMarkovSpans"):
        token_kd_loss(raw_teacher.build(), raw_student.build())


def test_token_kd_gradient_flows_to_the_student_only():
    raw_teacher, raw_student = make_pair("crf", "crf", seed=34)
    raw_teacher, raw_student = with_grad(raw_teacher), with_grad(raw_student)
    token_kd_loss(raw_teacher.build(), raw_student.build()).backward()
    assert raw_teacher.emissions.grad is None
    assert raw_student.emissions.grad is not None
    # padded emissions get no gradient
    assert (raw_student.emissions.grad[1, 1:] == 0).all()


# --- top-k and top-wk -----------------------------------------------------------------------------


def enumerated_topk(raw_teacher, raw_student, k, weighted, temperature):
    losses = []
    for b in range(len(LENGTHS)):
        _, teacher_log_p = log_probs(raw_teacher, b, temperature)
        _, student_log_p = log_probs(raw_student, b, temperature)
        existing = torch.nonzero(torch.isfinite(teacher_log_p)).flatten()
        order = existing[torch.argsort(teacher_log_p[existing], descending=True)]
        best = order[:k]
        if weighted:
            weights = torch.softmax(teacher_log_p[best], 0)
        else:
            weights = torch.full((len(best),), 1.0 / len(best), dtype=torch.float64)
        losses.append(-(weights * student_log_p[best]).sum())
    return torch.stack(losses)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [1, 3, 50])
@pytest.mark.parametrize(("teacher_kind", "student_kind"), PAIRS)
def test_topk_equals_enumerated_definition(teacher_kind, student_kind, k, weighted, temperature):
    raw_teacher, raw_student = make_pair(teacher_kind, student_kind, seed=35)
    loss = topk_kd_loss(
        raw_teacher.build(),
        raw_student.build(),
        k,
        weighted=weighted,
        temperature=temperature,
        reduction="none",
    )
    expected = enumerated_topk(raw_teacher, raw_student, k, weighted, temperature)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)


def test_topk_gradient_matches_enumeration():
    raw_teacher, raw_student = make_pair("crf", "crf", seed=36)
    raw_student = with_grad(raw_student)
    loss = topk_kd_loss(raw_teacher.build(), raw_student.build(), 4, weighted=True, reduction="sum")
    grads = torch.autograd.grad(loss, raw_student.potentials())
    expected = enumerated_topk(raw_teacher, raw_student, 4, True, 1.0).sum()
    expected_grads = torch.autograd.grad(expected, raw_student.potentials())
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("k", [0, -1, 2.0, True])
def test_topk_rejects_bad_k(k):
    raw_teacher, raw_student = make_pair("crf", "crf", seed=37)
    with pytest.raises(ValueError, match="k must be"):
        topk_kd_loss(raw_teacher.build(), raw_student.build(), k)


def test_topk_checks_shapes():
    raw_teacher, _ = make_pair("crf", "crf", seed=38)
    _, raw_student = make_pair("crf", "crf", seed=38, lengths=[4, 2, 3, 2])
    with pytest.raises(ValueError, match="lengths differ"):
        topk_kd_loss(raw_teacher.build(), raw_student.build(), 2)


# --- posterior KD ---------------------------------------------------------------------------------


def enumerated_posterior(raw_teacher, raw_student, temperature):
    losses = []
    for b, n in enumerate(LENGTHS):
        sequences, teacher_log_p = log_probs(raw_teacher, b, temperature)
        _, student_log_p = log_probs(raw_student, b, temperature)
        p = token_marginals(sequences, teacher_log_p.exp(), raw_teacher.n_tags)
        q = token_marginals(sequences, student_log_p.exp(), raw_student.n_tags)
        terms = torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(q))
        losses.append(terms.sum())
        assert p.shape == (n, raw_student.n_tags)
    return torch.stack(losses)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("teacher_kind", "student_kind"), PAIRS)
def test_posterior_kd_equals_enumerated_token_kl(teacher_kind, student_kind, temperature):
    raw_teacher, raw_student = make_pair(teacher_kind, student_kind, seed=39)
    raw_student = with_grad(raw_student)
    loss = posterior_kd_loss(
        raw_teacher.build(), raw_student.build(), temperature=temperature, reduction="none"
    )
    expected = enumerated_posterior(raw_teacher, raw_student, temperature)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-10)
    grads = torch.autograd.grad(loss.sum(), raw_student.potentials())
    expected_grads = torch.autograd.grad(expected.sum(), raw_student.potentials())
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-7, atol=1e-9)


def test_posterior_kd_of_a_student_equal_to_the_teacher_is_zero():
    _, raw = make_pair("crf", "crf", seed=40)
    loss = posterior_kd_loss(raw.build(), raw.build(), reduction="none")
    torch.testing.assert_close(loss, torch.zeros(len(LENGTHS), dtype=torch.float64))


def test_baselines_raise_on_nan():
    raw_teacher, raw_student = make_pair("crf", "factorized", seed=41)

    class NaNMarginals(type(raw_student.build())):
        @property
        def marginals(self):
            return super().marginals * float("nan")

    assert isinstance(raw_student, RawFactorized)
    student = NaNMarginals(logits=raw_student.logits, lengths=raw_student.lengths)
    with pytest.raises(NumericalError, match="NaN"):
        posterior_kd_loss(raw_teacher.build(), student)


# --- extreme scores -------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    pair=st.sampled_from(PAIRS),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 1.0, 10.0, 1e4]),
    temperature=st.sampled_from([0.3, 1.0, 4.0]),
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=4),
)
def test_baselines_are_finite_and_non_negative(pair, seed, scale, temperature, lengths):
    teacher_kind, student_kind = pair
    raw_teacher, raw_student = make_pair(teacher_kind, student_kind, seed, scale, lengths)
    teacher, student = raw_teacher.build(), raw_student.build()
    losses = [
        topk_kd_loss(teacher, student, 3, temperature=temperature, reduction="none"),
        topk_kd_loss(teacher, student, 3, True, temperature=temperature, reduction="none"),
    ]
    if teacher_kind != "spans":
        losses.append(token_kd_loss(teacher, student, temperature, reduction="none"))
    if scale <= 10.0:  # beyond, a student marginal can underflow to 0 where the teacher's is not
        losses.append(posterior_kd_loss(teacher, student, temperature, reduction="none"))
    for loss in losses:
        assert loss.shape == (len(lengths),)
        assert torch.isfinite(loss).all()
        assert (loss >= -1e-9 * (1 + loss.abs())).all()
