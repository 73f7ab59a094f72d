"""Bridges: projected teacher marginals against enumeration; dispatch and registration."""

from __future__ import annotations

import pytest
import torch

from structkd.distill import (
    BRIDGES,
    STUDENT_CLASSES,
    STUDENT_KINDS,
    ChainTargets,
    crf_to_crf,
    crf_to_factorized,
    factorized_to_crf,
    factorized_to_factorized,
    find_bridge,
    mix_targets,
    project_teacher,
    register_bridge,
    spans_to_crf,
    spans_to_factorized,
    structural_kd_loss,
    student_kind_of,
)
from structkd.distill.temperature import local_temper
from structkd.structures.base import StructDistribution
from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF
from tests.distill.enumeration import (
    LENGTHS,
    PAIRS,
    RawCRF,
    enumerated_marginals,
    make_pair,
    with_grad,
)

EXPECTED_BRIDGE = {
    ("crf", "crf"): crf_to_crf,
    ("crf", "factorized"): crf_to_factorized,
    ("factorized", "crf"): factorized_to_crf,
    ("factorized", "factorized"): factorized_to_factorized,
    ("spans", "factorized"): spans_to_factorized,
    ("spans", "crf"): spans_to_crf,
}


@pytest.mark.parametrize(("teacher_kind", "student_kind"), PAIRS)
def test_projected_marginals_equal_enumerated(teacher_kind, student_kind):
    raw_teacher, raw_student = make_pair(teacher_kind, student_kind, seed=21)
    raw_teacher = with_grad(raw_teacher)
    teacher, student = raw_teacher.build(), raw_student.build()
    assert find_bridge(teacher, student) is EXPECTED_BRIDGE[(teacher_kind, student_kind)]

    targets = project_teacher(teacher, student)
    tokens, pairs = enumerated_marginals(raw_teacher)
    torch.testing.assert_close(targets.marginals, tokens, rtol=1e-9, atol=1e-12)
    assert not targets.marginals.requires_grad
    if isinstance(raw_student, RawCRF):
        assert targets.pair_marginals is not None
        torch.testing.assert_close(targets.pair_marginals, pairs, rtol=1e-9, atol=1e-12)
        assert not targets.pair_marginals.requires_grad
    else:
        assert targets.pair_marginals is None


@pytest.mark.parametrize("student_kind", ["crf", "factorized"])
def test_span_bridge_with_two_labels(student_kind):
    raw_teacher, raw_student = make_pair(
        "spans", student_kind, seed=22, lengths=[3, 1, 2], n_span_labels=2
    )
    targets = project_teacher(raw_teacher.build(), raw_student.build())
    tokens, pairs = enumerated_marginals(raw_teacher)
    torch.testing.assert_close(targets.marginals, tokens, rtol=1e-9, atol=1e-12)
    if student_kind == "crf":
        torch.testing.assert_close(targets.pair_marginals, pairs, rtol=1e-9, atol=1e-12)


def test_bridges_table_has_the_six_pairs():
    assert len(BRIDGES) >= 6
    assert set(EXPECTED_BRIDGE.values()) <= set(BRIDGES.values())


def test_subclasses_inherit_bridges():
    class MyCRF(LinearChainCRF):
        pass

    raw_teacher, raw_student = make_pair("crf", "factorized", seed=23)
    teacher = MyCRF(
        emissions=raw_teacher.emissions,
        transitions=raw_teacher.transitions,
        start=raw_teacher.start,
        end=raw_teacher.end,
        lengths=raw_teacher.lengths,
    )
    assert find_bridge(teacher, raw_student.build()) is crf_to_factorized


def test_a_registered_bridge_serves_a_new_teacher_kind():
    """The room left for later bridges: a teacher that is not over tag sequences (as a dependency
    parser) gets a bridge onto a tag student, and the loss runs through it."""

    class UniformTeacher(StructDistribution):
        """A stand-in teacher that puts uniform mass on every one of 3 tags of every token."""

        def tempered(self, temperature):
            return self

    _, raw_student = make_pair("factorized", "factorized", seed=25)
    student = raw_student.build()
    teacher = UniformTeacher(student.lengths, 1.0, student.batch_size, student.max_len)
    try:

        @register_bridge(UniformTeacher, "factorized")
        def uniform_to_factorized(teacher, **context):
            uniform = teacher.mask.unsqueeze(-1) / 3.0
            return ChainTargets(uniform.double().expand(-1, -1, 3))

        assert find_bridge(teacher, "factorized") is uniform_to_factorized
        assert find_bridge(teacher, student) is uniform_to_factorized
        loss = structural_kd_loss(teacher, student, reduction="none")
        log_softmax = torch.log_softmax(raw_student.logits, -1)
        expected = torch.stack([-log_softmax[b, :n].mean(-1).sum() for b, n in enumerate(LENGTHS)])
        torch.testing.assert_close(loss, expected)
        with pytest.raises(ValueError, match="already exists"):
            register_bridge(UniformTeacher, "factorized")(uniform_to_factorized)
        with pytest.raises(TypeError, match="UniformTeacher"):
            find_bridge(teacher, "crf")
    finally:
        BRIDGES.pop((UniformTeacher, "factorized"), None)


def test_register_bridge_needs_a_kind_name():
    with pytest.raises(ValueError, match="student_kind"):
        register_bridge(LinearChainCRF, Factorized)


def test_find_bridge_names_both_types():
    with pytest.raises(TypeError, match=r"no bridge from a int teacher to a 'x' student"):
        find_bridge(1, "x")
    raw_teacher, _ = make_pair("crf", "crf", seed=26)
    with pytest.raises(TypeError, match=r"LinearChainCRF teacher to a int student"):
        find_bridge(raw_teacher.build(), 1)


@pytest.mark.parametrize(("teacher_kind", "student_kind"), PAIRS)
def test_bridges_are_found_by_student_kind(teacher_kind, student_kind):
    """The kind alone picks the bridge (no student object), and ``project_teacher`` with a kind
    gives the targets it gives with a student distribution of that kind."""
    raw_teacher, raw_student = make_pair(teacher_kind, student_kind, seed=27)
    teacher, student = raw_teacher.build(), raw_student.build()
    assert student_kind_of(student) == student_kind
    assert find_bridge(teacher, student_kind) is EXPECTED_BRIDGE[(teacher_kind, student_kind)]
    assert BRIDGES[(type(teacher), student_kind)] is find_bridge(teacher, student)
    by_kind = project_teacher(teacher, student_kind)
    by_student = project_teacher(teacher, student)
    torch.testing.assert_close(by_kind.marginals, by_student.marginals, rtol=0, atol=0)
    if student_kind == "crf":
        torch.testing.assert_close(by_kind.pair_marginals, by_student.pair_marginals)
    else:
        assert by_kind.pair_marginals is None


def test_student_kind_of_subclasses_and_unknown_students():
    class MyFactorized(Factorized):
        pass

    _, raw_student = make_pair("crf", "factorized", seed=28)
    student = MyFactorized(raw_student.logits, raw_student.lengths)
    assert student_kind_of(student) == "factorized"
    assert set(STUDENT_CLASSES.values()) <= set(STUDENT_KINDS)
    assert {"crf", "factorized", "dep-labels"} <= set(STUDENT_KINDS)
    with pytest.raises(TypeError, match="SemiMarkovSpans"):
        student_kind_of(make_pair("spans", "crf", seed=28)[0].build())


def test_local_temper_refuses_pair_targets_and_keeps_them_at_t1():
    raw_teacher, raw_student = make_pair("crf", "crf", seed=24)
    targets = project_teacher(raw_teacher.build(), raw_student.build())
    assert local_temper(targets, 1.0, torch.tensor(LENGTHS)) is targets
    with pytest.raises(ValueError, match="global"):
        local_temper(targets, 2.0, torch.tensor(LENGTHS))


def test_mix_targets_rejects_mixed_kinds():
    with_pairs = ChainTargets(torch.ones(1, 2, 2), torch.ones(1, 1, 2, 2))
    without = ChainTargets(torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="pair"):
        mix_targets([with_pairs, without], torch.tensor([0.5, 0.5]))


def test_local_temper_keeps_tables_normalized_and_padding_zero():
    raw_teacher, raw_student = make_pair("crf", "factorized", seed=24)
    targets = project_teacher(raw_teacher.build(), raw_student.build())
    tempered = local_temper(targets, 3.0, torch.tensor(LENGTHS))
    mask = torch.arange(4) < torch.tensor(LENGTHS).unsqueeze(-1)
    torch.testing.assert_close(tempered.marginals.sum(-1), mask.double())
    assert tempered.pair_marginals is None

    # a higher temperature flattens: the entropy of every real token table grows
    def entropy(p):
        return -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)

    assert (entropy(tempered.marginals)[mask] >= entropy(targets.marginals)[mask] - 1e-12).all()
