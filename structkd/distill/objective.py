"""The structural KD objective (DESIGN.md section 1).

    L_KD = - sum_y P_t(y) log P_s(y) = - sum_{u in U_s} P_t(u) s(u) + log Z_s

``P_t(u)`` are the teacher's marginals on the student's substructures (a bridge computes them,
:mod:`structkd.distill.bridges`), detached; ``s(u)`` and ``log Z_s`` are the student's. The gradient
w.r.t. a student potential ``s(u)`` is ``P_s(u) - P_t(u)`` (divided by ``T`` under a global
temperature, since the potentials are ``s(u) / T`` there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from structkd.distill.bridges import (
    ChainTargets,
    check_weights,
    find_bridge,
    mix_targets,
    project_teacher,
)
from structkd.distill.temperature import check_temperature_mode, local_temper
from structkd.structures.base import NumericalError, StructDistribution, check_temperature

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")
NEGATIVE_TOLERANCE = 1e-4
"""A cross-entropy below ``-NEGATIVE_TOLERANCE * (1 + |log Z_s|)`` is a bug, not rounding."""


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
        teacher: one distribution, or a list of them (an ensemble). Any teacher/student pair of
            :data:`structkd.distill.bridges.BRIDGES`; all must describe the same sentences (batch
            size, padded length, lengths, number of tag labels) as the student.
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
            ``T^2``.
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

    if temperature_mode == "global":
        if temperature != 1.0:
            teachers = [one_teacher.tempered(temperature) for one_teacher in teachers]
            student = student.tempered(temperature)
        targets = [project_teacher(one_teacher, student) for one_teacher in teachers]
    else:
        targets = [
            local_temper(project_teacher(one_teacher, student), temperature, student.lengths)
            for one_teacher in teachers
        ]
    return kd_loss_from_targets(mix_targets(targets, weights), student, reduction=reduction)


def kd_loss_from_targets(
    targets: ChainTargets, student: StructDistribution, reduction: str = "mean"
) -> Tensor:
    """The structural KD loss from teacher marginals already projected onto the student's
    substructures (e.g. read from a cache): ``log Z_s - sum_u P_t(u) s(u)`` per sentence.

    ``targets`` must match the student (``[batch, seq_len, n_labels]`` token marginals, plus
    ``[batch, seq_len - 1, n_labels, n_labels]`` pair marginals for a CRF student) and already
    carry any temperature: with a global temperature, pass ``student.tempered(T)`` and targets
    projected from the tempered teacher. Raises ``NumericalError`` like
    :func:`structural_kd_loss`.
    """
    reduction = check_reduction(reduction)
    log_partition = student.log_partition
    loss = log_partition - student.expected_score(**targets.as_kwargs())
    check_cross_entropy(loss, log_partition)
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
        (one_teacher.tempered(temperature) if temperature != 1.0 else one_teacher).entropy.detach()
        for one_teacher in teachers
    ]
    weights = weights.to(entropies[0])
    return sum(w * entropy for w, entropy in zip(weights, entropies, strict=True))


def check_reduction(reduction: str) -> str:
    """Validate a reduction: ``"mean"``, ``"sum"`` or ``"none"``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """Reduce a per-sentence loss ``[batch]``: mean over sentences, sum, or none."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def check_cross_entropy(loss: Tensor, scale: Tensor | float = 0.0, what: str = "KD loss") -> None:
    """Raise ``NumericalError`` if any sentence's cross-entropy ``loss`` ``[batch]`` is NaN,
    infinite, or below ``-1e-4 * (1 + |scale|)`` (``scale``: the student's ``log Z`` ``[batch]``, or
    0 for a divergence); never clamps."""
    values = loss.detach()
    scale = torch.as_tensor(scale, dtype=values.dtype, device=values.device).detach()
    tolerance = NEGATIVE_TOLERANCE * (1.0 + scale.abs())
    if torch.isnan(values).any() or torch.isnan(scale).any():
        bad = torch.nonzero(torch.isnan(values) | torch.isnan(scale.expand_as(values)))
        raise NumericalError(
            f"{what} is NaN for sentences {bad.flatten().tolist()}: loss {values.tolist()}, "
            f"student log Z {scale.tolist()}"
        )
    if torch.isinf(values).any():
        bad = torch.nonzero(torch.isinf(values)).flatten().tolist()
        raise NumericalError(
            f"{what} is infinite for sentences {bad}: loss {values.tolist()}; the teacher puts "
            "mass on structures the student forbids (-inf potentials), or log Z overflowed"
        )
    negative = values < -tolerance
    if negative.any():
        bad = torch.nonzero(negative).flatten().tolist()
        raise NumericalError(
            f"{what} is negative for sentences {bad}: loss {values[negative].tolist()}, "
            f"student log Z {scale.expand_as(values)[negative].tolist()}; a cross-entropy cannot "
            f"be negative (wrong log-partition or marginals)"
        )


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
