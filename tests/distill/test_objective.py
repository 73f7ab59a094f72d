"""The structural KD loss against brute-force enumeration of all tag sequences."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structkd.distill import cross_entropy_lower_bound, structural_kd_loss
from structkd.structures.base import NumericalError
from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF
from structkd.structures.semimarkov import SemiMarkovSpans
from tests.distill.enumeration import (
    DTYPE,
    LENGTHS,
    PAIRS,
    RawCRF,
    RawFactorized,
    enumerated_loss,
    enumerated_marginals,
    enumerated_mixture_loss,
    log_probs,
    make_pair,
    random_raw,
    with_grad,
)

# --- exactness ------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
@pytest.mark.parametrize(("teacher_kind", "student_kind"), PAIRS)
def test_loss_equals_enumerated_cross_entropy(teacher_kind, student_kind, temperature):
    raw_teacher, raw_student = make_pair(teacher_kind, student_kind, seed=1)
    loss = structural_kd_loss(
        raw_teacher.build(), raw_student.build(), temperature=temperature, reduction="none"
    )
    expected = enumerated_loss(raw_teacher, raw_student, temperature)
    assert loss.shape == (len(LENGTHS),)
    assert loss.dtype == DTYPE
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("student_kind", ["crf", "factorized"])
def test_span_teacher_with_two_labels_uses_the_bioes_layout(student_kind):
    raw_teacher, raw_student = make_pair(
        "spans", student_kind, seed=2, lengths=[3, 1, 2], n_span_labels=2
    )
    loss = structural_kd_loss(raw_teacher.build(), raw_student.build(), reduction="none")
    torch.testing.assert_close(
        loss, enumerated_loss(raw_teacher, raw_student), rtol=1e-9, atol=1e-9
    )


def test_reductions_mean_over_sentences_and_sum():
    raw_teacher, raw_student = make_pair("crf", "crf", seed=3)
    teacher, student = raw_teacher.build(), raw_student.build()
    per_sentence = structural_kd_loss(teacher, student, reduction="none")
    torch.testing.assert_close(structural_kd_loss(teacher, student), per_sentence.mean())
    torch.testing.assert_close(
        structural_kd_loss(teacher, student, reduction="sum"), per_sentence.sum()
    )


# --- gradients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("teacher_kind", "student_kind"), PAIRS)
def test_gradient_is_student_minus_teacher_marginals(teacher_kind, student_kind, temperature):
    raw_teacher, raw_student = make_pair(teacher_kind, student_kind, seed=4)
    raw_student = with_grad(raw_student)
    loss = structural_kd_loss(
        raw_teacher.build(), raw_student.build(), temperature=temperature, reduction="sum"
    )
    grads = torch.autograd.grad(loss, raw_student.potentials())

    # The enumerated loss, differentiated by autograd.
    enumerated = enumerated_loss(raw_teacher, raw_student, temperature).sum()
    enumerated_grads = torch.autograd.grad(enumerated, raw_student.potentials())
    for grad, expected in zip(grads, enumerated_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-8, atol=1e-10)

    # d L / d s(u) = (P_s(u) - P_t(u)) / T, with both marginals enumerated.
    teacher_tokens, teacher_pairs = enumerated_marginals(raw_teacher, temperature)
    student_tokens, student_pairs = enumerated_marginals(raw_student, temperature)
    token_diff = (student_tokens - teacher_tokens) / temperature
    torch.testing.assert_close(grads[0], token_diff, rtol=1e-8, atol=1e-10)
    if isinstance(raw_student, RawCRF):
        last = torch.tensor(LENGTHS) - 1
        expected_transitions = ((student_pairs - teacher_pairs) / temperature).sum((0, 1))
        expected_start = token_diff[:, 0].sum(0)
        expected_end = token_diff[torch.arange(len(LENGTHS)), last].sum(0)
        torch.testing.assert_close(grads[1], expected_transitions, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(grads[2], expected_start, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(grads[3], expected_end, rtol=1e-8, atol=1e-10)


def test_teacher_side_is_detached():
    raw_teacher, raw_student = make_pair("crf", "crf", seed=5)
    raw_teacher, raw_student = with_grad(raw_teacher), with_grad(raw_student)
    structural_kd_loss(raw_teacher.build(), raw_student.build()).backward()
    assert all(p.grad is None for p in raw_teacher.potentials())
    assert all(p.grad is not None for p in raw_student.potentials())


# --- ensembles ------------------------------------------------------------------------------------

ENSEMBLES = [
    (("crf", "factorized"), "crf", 3),
    (("crf", "factorized"), "factorized", 3),
    (("spans", "crf"), "crf", 5),
    (("factorized", "spans"), "factorized", 5),
]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("teacher_kinds", "student_kind", "n_tags"), ENSEMBLES)
def test_ensemble_equals_mixture_cross_entropy(teacher_kinds, student_kind, n_tags, temperature):
    generator = torch.Generator().manual_seed(6)
    raw_teachers = [random_raw(kind, LENGTHS, n_tags, generator) for kind in teacher_kinds]
    raw_student = random_raw(student_kind, LENGTHS, n_tags, generator)
    weights = [0.3, 0.7]
    loss = structural_kd_loss(
        [raw.build() for raw in raw_teachers],
        raw_student.build(),
        temperature=temperature,
        weights=weights,
        reduction="none",
    )
    expected = enumerated_mixture_loss(raw_teachers, weights, raw_student, temperature)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)


def test_ensemble_default_weights_are_uniform():
    generator = torch.Generator().manual_seed(7)
    raw_teachers = [random_raw("crf", LENGTHS, 3, generator) for _ in range(3)]
    raw_student = random_raw("crf", LENGTHS, 3, generator)
    teachers = [raw.build() for raw in raw_teachers]
    uniform = structural_kd_loss(teachers, raw_student.build(), reduction="none")
    expected = enumerated_mixture_loss(raw_teachers, [1 / 3] * 3, raw_student)
    torch.testing.assert_close(uniform, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "weights", [[0.5, 0.6], [-0.1, 1.1], [1.0], [float("nan"), 1.0], [[0.5, 0.5]]]
)
def test_bad_ensemble_weights_raise(weights):
    raw_teacher, raw_student = make_pair("crf", "crf", seed=8)
    teacher = raw_teacher.build()
    with pytest.raises(ValueError, match="weights"):
        structural_kd_loss([teacher, teacher], raw_student.build(), weights=weights)


def test_empty_ensemble_raises():
    _, raw_student = make_pair("crf", "crf", seed=8)
    with pytest.raises(ValueError, match="non-empty"):
        structural_kd_loss([], raw_student.build())


# --- never negative, and the entropy bound --------------------------------------------------------


@pytest.mark.parametrize("same_object", [True, False])
@pytest.mark.parametrize("kind", ["crf", "factorized"])
def test_teacher_equal_to_student_gives_its_entropy(kind, same_object):
    _, raw = make_pair(kind, kind, seed=9)
    student = raw.build()
    teacher = student if same_object else raw.build()
    loss = structural_kd_loss(teacher, student, reduction="none")
    torch.testing.assert_close(loss, student.entropy, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(loss, cross_entropy_lower_bound(teacher), rtol=1e-9, atol=1e-9)
    # and the enumerated entropy
    torch.testing.assert_close(loss, enumerated_loss(raw, raw), rtol=1e-9, atol=1e-9)


def test_lower_bound_of_an_ensemble_is_the_weighted_entropy():
    generator = torch.Generator().manual_seed(10)
    teachers = [random_raw("crf", LENGTHS, 3, generator).build() for _ in range(2)]
    bound = cross_entropy_lower_bound(teachers, temperature=2.0, weights=[0.25, 0.75])
    expected = 0.25 * teachers[0].tempered(2.0).entropy + 0.75 * teachers[1].tempered(2.0).entropy
    torch.testing.assert_close(bound, expected)


@settings(max_examples=40, deadline=None)
@given(
    pair=st.sampled_from(PAIRS),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 1.0, 10.0, 1e4]),
    temperature=st.sampled_from([0.3, 1.0, 4.0]),
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=4),
)
def test_loss_is_never_below_the_teacher_entropy(pair, seed, scale, temperature, lengths):
    teacher_kind, student_kind = pair
    raw_teacher, raw_student = make_pair(teacher_kind, student_kind, seed, scale, lengths)
    teacher, student = raw_teacher.build(), raw_student.build()
    loss = structural_kd_loss(teacher, student, temperature=temperature, reduction="none")
    log_z = student.tempered(temperature).log_partition
    bound = cross_entropy_lower_bound(teacher, temperature)
    assert torch.isfinite(loss).all()
    tolerance = 1e-9 * (1 + log_z.abs() + loss.abs())
    assert (loss >= -tolerance).all()
    assert (loss >= bound - tolerance).all()
    if student_kind == "factorized":  # local temperature is a true cross-entropy for it too
        local = structural_kd_loss(
            teacher, student, temperature, temperature_mode="local", reduction="none"
        )
        assert torch.isfinite(local).all()
        assert (local >= -1e-9 * (1 + student.log_partition.abs() + local.abs())).all()


class ShiftedPartitionCRF(LinearChainCRF):
    """A deliberately wrong student: its log-partition is 5 nats too small."""

    @property
    def log_partition(self):
        return super().log_partition - 5.0


class NaNPartitionFactorized(Factorized):
    """A deliberately broken student: its log-partition is NaN."""

    @property
    def log_partition(self):
        return super().log_partition * float("nan")


def test_negative_loss_raises_numerical_error():
    raw_teacher, _ = make_pair("crf", "crf", seed=11, scale=3.0)
    student = ShiftedPartitionCRF(
        emissions=raw_teacher.emissions,
        transitions=raw_teacher.transitions,
        start=raw_teacher.start,
        end=raw_teacher.end,
        lengths=raw_teacher.lengths,
    )
    # The true loss is the entropy (< 5 nats for 3 tags and 4 tokens); the stub makes it negative.
    assert (raw_teacher.build().entropy < 5.0).all()
    with pytest.raises(NumericalError, match="negative"):
        structural_kd_loss(raw_teacher.build(), student)


def test_nan_loss_raises_numerical_error():
    raw_teacher, raw_student = make_pair("crf", "factorized", seed=12)
    assert isinstance(raw_student, RawFactorized)
    student = NaNPartitionFactorized(logits=raw_student.logits, lengths=raw_student.lengths)
    with pytest.raises(NumericalError, match="NaN"):
        structural_kd_loss(raw_teacher.build(), student)


def test_mass_on_a_forbidden_student_structure_raises_numerical_error():
    raw_teacher, raw_student = make_pair("crf", "crf", seed=13)
    allowed = torch.ones(3, 3, dtype=torch.bool)
    allowed[0, 1] = False
    student = LinearChainCRF(
        emissions=raw_student.emissions,
        transitions=raw_student.transitions,
        start=raw_student.start,
        end=raw_student.end,
        lengths=raw_student.lengths,
        allowed_transitions=allowed,
    )
    with pytest.raises(NumericalError, match="infinite"):
        structural_kd_loss(raw_teacher.build(), student)


# --- local temperature ----------------------------------------------------------------------------


def test_local_temperature_hand_computed():
    # One token; teacher probabilities (1/2, 1/4, 1/4), T = 2 -> (sqrt(1/2), 1/2, 1/2) / 1.7071...
    teacher = Factorized(
        logits=torch.tensor([[[0.5, 0.25, 0.25]]], dtype=DTYPE).log(), lengths=torch.tensor([1])
    )
    student = Factorized(
        logits=torch.tensor([[[1.0, 0.0, 0.0]]], dtype=DTYPE), lengths=torch.tensor([1])
    )
    loss = structural_kd_loss(teacher, student, temperature=2.0, temperature_mode="local")
    # log(e + 2) - 0.70711 / 1.70711 = 1.5514447 - 0.4142136
    torch.testing.assert_close(loss, torch.tensor(1.1372311, dtype=DTYPE), rtol=0, atol=1e-7)


def _temper_by_hand(table: torch.Tensor, temperature: float) -> torch.Tensor:
    powered = table ** (1.0 / temperature)
    return powered / powered.sum()


@pytest.mark.parametrize("teacher_kind", ["crf", "factorized", "spans"])
def test_local_temperature_refused_for_a_crf_student(teacher_kind):
    raw_teacher, raw_student = make_pair(teacher_kind, "crf", seed=14)
    with pytest.raises(ValueError, match="unbounded below"):
        structural_kd_loss(
            raw_teacher.build(), raw_student.build(), temperature=2.0, temperature_mode="local"
        )


@pytest.mark.parametrize("teacher_kind", ["crf", "factorized", "spans"])
@pytest.mark.parametrize("student_kind", ["factorized"])
def test_local_temperature_matches_per_position_renormalization(teacher_kind, student_kind):
    temperature = 2.5
    raw_teacher, raw_student = make_pair(teacher_kind, student_kind, seed=14)
    loss = structural_kd_loss(
        raw_teacher.build(),
        raw_student.build(),
        temperature=temperature,
        temperature_mode="local",
        reduction="none",
    )
    teacher_tokens, teacher_pairs = enumerated_marginals(raw_teacher)  # teacher at T = 1
    expected = []
    for b, n in enumerate(LENGTHS):
        tokens = torch.stack([_temper_by_hand(teacher_tokens[b, i], temperature) for i in range(n)])
        pairs = [_temper_by_hand(teacher_pairs[b, i], temperature) for i in range(n - 1)]
        # the student stays at T = 1
        log_z = torch.logsumexp(raw_student.scores(b, log_probs(raw_student, b)[0]), 0)
        if isinstance(raw_student, RawCRF):
            score = (tokens * raw_student.emissions[b, :n]).sum()
            score = score + sum((pair * raw_student.transitions).sum() for pair in pairs)
            score = score + tokens[0] @ raw_student.start + tokens[n - 1] @ raw_student.end
        else:
            score = (tokens * raw_student.logits[b, :n]).sum()
        expected.append(log_z - score)
    torch.testing.assert_close(loss, torch.stack(expected), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("teacher_kind", "student_kind"), PAIRS)
def test_local_and_global_agree_at_temperature_one(teacher_kind, student_kind):
    raw_teacher, raw_student = make_pair(teacher_kind, student_kind, seed=15)
    teacher, student = raw_teacher.build(), raw_student.build()
    torch.testing.assert_close(
        structural_kd_loss(teacher, student, temperature_mode="local", reduction="none"),
        structural_kd_loss(teacher, student, temperature_mode="global", reduction="none"),
    )


# --- bad input ------------------------------------------------------------------------------------


def test_unsupported_pair_raises_type_error_naming_both():
    raw_teacher, _ = make_pair("crf", "crf", seed=16)
    generator = torch.Generator().manual_seed(0)
    spans_student = SemiMarkovSpans(
        torch.randn(4, 4, 4, 1, generator=generator, dtype=DTYPE), torch.tensor(LENGTHS)
    )
    with pytest.raises(TypeError, match=r"LinearChainCRF.*SemiMarkovSpans"):
        structural_kd_loss(raw_teacher.build(), spans_student)
    with pytest.raises(TypeError, match="Tensor"):
        structural_kd_loss(raw_teacher.emissions, raw_teacher.build())


@pytest.mark.parametrize(
    ("teacher_lengths", "teacher_max_len", "teacher_tags", "message"),
    [
        ([4, 1, 3], None, 3, "batch sizes"),
        (LENGTHS, 5, 3, "padded lengths"),
        ([4, 2, 3, 2], None, 3, "lengths differ"),
        (LENGTHS, None, 4, "label counts"),
        (LENGTHS, None, 5, "label counts"),
    ],
)
@pytest.mark.parametrize("teacher_kind", ["crf", "factorized"])
def test_mismatched_teacher_and_student_raise(
    teacher_kind, teacher_lengths, teacher_max_len, teacher_tags, message
):
    generator = torch.Generator().manual_seed(17)
    raw_student = random_raw("crf", LENGTHS, 3, generator)
    raw_teacher = random_raw(
        teacher_kind, teacher_lengths, teacher_tags, generator, max_len=teacher_max_len
    )
    with pytest.raises(ValueError, match=message):
        structural_kd_loss(raw_teacher.build(), raw_student.build())


def test_span_teacher_needs_a_bioes_student():
    generator = torch.Generator().manual_seed(18)
    raw_teacher = random_raw("spans", LENGTHS, 5, generator)
    raw_student = random_raw("factorized", LENGTHS, 3, generator)
    with pytest.raises(ValueError, match="label counts"):
        structural_kd_loss(raw_teacher.build(), raw_student.build())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature_mode": "medium"}, "temperature_mode"),
        ({"reduction": "avg"}, "reduction"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_bad_options_raise(kwargs, message):
    raw_teacher, raw_student = make_pair("crf", "crf", seed=19)
    with pytest.raises(ValueError, match=message):
        structural_kd_loss(raw_teacher.build(), raw_student.build(), **kwargs)


def test_float32_teacher_with_float64_student():
    raw_teacher, raw_student = make_pair("crf", "crf", seed=20)
    teacher32 = LinearChainCRF(
        emissions=raw_teacher.emissions.float(),
        transitions=raw_teacher.transitions.float(),
        start=raw_teacher.start.float(),
        end=raw_teacher.end.float(),
        lengths=raw_teacher.lengths,
    )
    loss = structural_kd_loss(teacher32, raw_student.build(), reduction="none")
    assert loss.dtype == DTYPE
    torch.testing.assert_close(
        loss, enumerated_loss(raw_teacher, raw_student), rtol=1e-5, atol=1e-5
    )
