"""The structural KD objective.

    L_KD = - sum_y P_t(y) log P_s(y) = - sum_{u in U_s} P_t(u) s(u) + log Z_s

``P_t(u)`` are the teacher's marginals on the student's substructures (a bridge computes them,
:mod:`structkd.distill.bridges`), detached; ``s(u)`` and ``log Z_s`` are the student's. The gradient
w.r.t. a student potential ``s(u)`` is ``P_s(u) - P_t(u)`` (divided by ``T`` under a global
temperature, since the potentials are ``s(u) / T`` there).

:func:`structural_kd_loss` runs the two halves of :mod:`structkd.distill.halves` (the teacher half
per teacher, then the student half on their mixture), the same functions training runs on cached
teacher outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from structkd.distill.bridges import (
    check_compatible,
    check_weights,
    find_bridge,
    student_kind_of,
    tag_count,
)
from structkd.distill.halves import student_half, teacher_half
from structkd.distill.losses import (
    NEGATIVE_TOLERANCE,
    REDUCTIONS,
    Reduction,
    check_cross_entropy,
    check_reduction,
    kd_loss_from_targets,
    reduce_loss,
)
from structkd.distill.temperature import check_temperature_mode, globally_tempered
from structkd.structures.base import StructDistribution, check_temperature

__all__ = [
    "NEGATIVE_TOLERANCE",
    "REDUCTIONS",
    "Reduction",
    "check_cross_entropy",
    "check_reduction",
    "cross_entropy_lower_bound",
    "kd_loss_from_targets",
    "reduce_loss",
    "structural_kd_loss",
]


def structural_kd_loss(
    teacher: StructDistribution | Sequence[StructDistribution],
    student: StructDistribution,
    temperature: float = 1.0,
    temperature_mode: str = "global",
    weights: Sequence[float] | Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Structural KD loss: the cross-entropy from the teacher's distribution over whole structures
    to the student's, ``- sum_u P_t(u) s(u) + log Z_s`` per sentence.

    Args:
        teacher: one distribution, or a list of them (an ensemble), each with a bridge in
            :data:`structkd.distill.bridges.BRIDGES` to the student's kind; all must describe the
            same sentences (batch size, padded length, lengths, number of tag labels) as the
            student.
        student: the student distribution; its potentials may require grad.
        temperature: ``T > 0``.
        temperature_mode: ``"global"``: both teacher and student are tempered (``.tempered(T)``)
            and inference is exact, a true cross-entropy between tempered distributions.
            ``"local"`` (the authors' code): the teacher's token tables raised to ``1 / T`` and
            renormalized per position (:func:`structkd.distill.temperature.local_temper`); the
            student stays at its own temperature (``T = 1`` unless built tempered). Refused
            (``ValueError``) at ``T != 1`` for a student that scores tag pairs (a CRF): tempered
            token and pair tables are inconsistent and the loss would be unbounded below.
            No ``T^2`` factor is applied in either mode: the trainer multiplies the KD term by
            :func:`structkd.distill.temperature.kd_scale`.
        weights: ensemble weights ``[n_teachers]``, non-negative, summing to 1; default uniform.
            The loss is linear in ``P_t``, so the projected marginals are averaged: the exact loss
            of the mixture of teachers. With a temperature each teacher is tempered first (either
            mode), then the tempered marginals are mixed.
        reduction: ``"mean"`` over sentences (not tokens), ``"sum"``, or ``"none"`` (``[batch]``).

    Returns:
        The loss: a scalar, or ``[batch]`` with ``reduction="none"``.

    Raises:
        TypeError: an unsupported teacher/student pair.
        ValueError: mismatched shapes, bad weights, temperature, mode or reduction; local
            temperature ``T != 1`` with a CRF student.
        NumericalError: a sentence's loss is NaN, infinite (the teacher puts mass on a structure
            the student forbids), or below ``-1e-4 * (1 + |log Z_s|)``.
    """
    teachers = _as_teacher_list(teacher)
    weights = check_weights(weights, len(teachers))
    temperature = check_temperature(temperature)
    temperature_mode = check_temperature_mode(temperature_mode)
    reduction = check_reduction(reduction)
    for one_teacher in teachers:
        find_bridge(one_teacher, student)
    for one_teacher in teachers:
        check_compatible(one_teacher, student)
    student_kind, n_labels = student_kind_of(student), tag_count(student)
    per_teacher = [
        teacher_half(
            "struct",
            one_teacher,
            student_kind=student_kind,
            n_labels=n_labels,
            temperature=temperature,
            temperature_mode=temperature_mode,
        )
        for one_teacher in teachers
    ]
    loss = student_half(
        "struct",
        student,
        per_teacher,
        weights,
        temperature=temperature,
        temperature_mode=temperature_mode,
    )
    return reduce_loss(loss, reduction)


def cross_entropy_lower_bound(
    teacher: StructDistribution | Sequence[StructDistribution],
    temperature: float = 1.0,
    weights: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """``[batch]`` lower bound of the global-temperature KD loss of any student:
    ``sum_k w_k H(P_{t,k}^T)``.

    ``- sum_y P_t(y) log P_s(y) = H(P_t) + KL(P_t || P_s) >= H(P_t)``, and the loss of a mixture is
    the weighted sum of the teachers' losses. For a single teacher, equality holds exactly when the
    student's distribution equals the teacher's. Detached.
    """
    teachers = _as_teacher_list(teacher)
    weights = check_weights(weights, len(teachers))
    temperature = check_temperature(temperature)
    entropies = [
        globally_tempered(one_teacher, temperature).entropy.detach() for one_teacher in teachers
    ]
    weights = weights.to(entropies[0])
    return sum(w * entropy for w, entropy in zip(weights, entropies, strict=True))


def _as_teacher_list(
    teacher: StructDistribution | Sequence[StructDistribution],
) -> list[StructDistribution]:
    """One teacher or an ensemble, as a non-empty list."""
    if isinstance(teacher, StructDistribution):
        return [teacher]
    if isinstance(teacher, Sequence) and not isinstance(teacher, str):
        teachers = list(teacher)
        if not teachers:
            raise ValueError("teacher must be a distribution or a non-empty list of them")
        return teachers
    raise TypeError(
        f"teacher must be a StructDistribution or a list of them, got {type(teacher).__name__}"
    )
