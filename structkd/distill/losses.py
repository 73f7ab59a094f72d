"""The student side of every KD loss: per-sentence losses ``[batch]`` from teacher targets that
are already computed (projected, tempered, possibly read from a cache), plus the checks and
reductions every loss of :mod:`structkd.distill` shares.

* :func:`kd_loss_from_targets` (structural KD): ``log Z_s - sum_u P_t(u) s(u)``.
* :func:`token_loss_from_targets` (Token KD):
  ``sum_i KL(softmax(e_t,i / T) || softmax(e_s,i / T))``.
* :func:`topk_loss_from_targets` (Top-K / Top-WK KD): ``- sum_j w_j log P_s(y_j)``.
* :func:`posterior_loss_from_targets` (Posterior KD): ``sum_i KL(P_t(y_i) || P_s(y_i))``.

None applies a ``T^2`` factor (:func:`structkd.distill.temperature.kd_scale` is the trainer's).
Every loss is a cross-entropy or a divergence, checked by :func:`check_cross_entropy` (NaN,
infinite or negative values raise ``NumericalError``; nothing is clamped).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from structkd.distill.bridges import ChainTargets
from structkd.structures.base import NumericalError, StructDistribution, check_temperature
from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF

__all__ = [
    "NEGATIVE_TOLERANCE",
    "REDUCTIONS",
    "Reduction",
    "check_cross_entropy",
    "check_reduction",
    "kd_loss_from_targets",
    "posterior_loss_from_targets",
    "reduce_loss",
    "token_emissions",
    "token_loss_from_targets",
    "topk_loss_from_targets",
]

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")
NEGATIVE_TOLERANCE = 1e-4
"""A cross-entropy below ``-NEGATIVE_TOLERANCE * (1 + |log Z_s|)`` is a bug, not rounding."""


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


def kd_loss_from_targets(
    targets: ChainTargets, student: StructDistribution, reduction: str = "mean"
) -> Tensor:
    """The structural KD loss from teacher marginals already projected onto the student's
    substructures (e.g. read from a cache): ``log Z_s - sum_u P_t(u) s(u)`` per sentence.

    ``targets`` must match the student (``[batch, seq_len, n_labels]`` token marginals, plus
    ``[batch, seq_len - 1, n_labels, n_labels]`` pair marginals for a CRF student) and already
    carry any temperature: with a global temperature, pass ``student.tempered(T)`` and targets
    projected from the tempered teacher. Raises ``NumericalError`` for a NaN, infinite or
    negative sentence loss.
    """
    reduction = check_reduction(reduction)
    log_partition = student.log_partition
    loss = log_partition - student.expected_score(**targets.as_kwargs())
    check_cross_entropy(loss, log_partition)
    return reduce_loss(loss, reduction)


def token_emissions(distribution: object, role: str) -> Tensor:
    """``[batch, seq_len, n_labels]`` per-token scores of a distribution, divided by its own
    temperature: a CRF's emissions or a factorized tagger's logits.

    Raises ``TypeError`` (naming the ``role``, e.g. ``"teacher"``) for a distribution without token
    emissions (e.g. ``SemiMarkovSpans``).
    """
    if isinstance(distribution, LinearChainCRF):
        return distribution.emissions / distribution.temperature
    if isinstance(distribution, Factorized):
        return distribution.logits / distribution.temperature
    raise TypeError(
        f"token KD needs token emissions, but the {role} is a {type(distribution).__name__}, which "
        "has none (only LinearChainCRF emissions and Factorized logits qualify)"
    )


def token_loss_from_targets(
    emissions: Tensor, student: StructDistribution, temperature: float = 1.0
) -> Tensor:
    """Token KD ``[batch]``: ``sum_{i < length} KL(softmax(e_t[i] / T) || softmax(e_s[i] / T))``.

    ``emissions`` ``[batch, seq_len, n_labels]`` are the teacher's token scores divided by its own
    temperature (:func:`token_emissions`; detached here), ``e_s`` the student's
    (:func:`token_emissions` of ``student``, which is not tempered beforehand). Padded rows are
    ignored.
    """
    temperature = check_temperature(temperature)
    student_emissions = token_emissions(student, "student")
    teacher_emissions = emissions.detach().to(student_emissions)
    if teacher_emissions.shape != student_emissions.shape:
        raise ValueError(
            f"teacher emissions have shape {list(teacher_emissions.shape)}, the student's "
            f"{list(student_emissions.shape)}"
        )
    # Padded rows are ignored potentials: zero them so that no -inf row turns into NaN.
    inside = student.mask.unsqueeze(-1)
    teacher_emissions = torch.where(inside, teacher_emissions, torch.zeros_like(teacher_emissions))
    student_emissions = torch.where(inside, student_emissions, torch.zeros_like(student_emissions))
    teacher_log_probs = torch.log_softmax(teacher_emissions / temperature, dim=-1)
    student_log_probs = torch.log_softmax(student_emissions / temperature, dim=-1)
    teacher_probs = teacher_log_probs.exp()
    has_mass = teacher_probs > 0
    pointwise = torch.where(
        has_mass,
        teacher_probs * (teacher_log_probs - student_log_probs),
        torch.zeros_like(student_log_probs),
    )
    loss = pointwise.sum(-1).masked_fill(~student.mask, 0.0).sum(-1)
    check_cross_entropy(loss, what="token KD loss")
    return loss


def topk_loss_from_targets(
    tags: Tensor, log_probs: Tensor, student: StructDistribution, weighted: bool
) -> Tensor:
    """Top-K / Top-WK KD ``[batch]`` from the teacher's k best structures:
    ``- sum_j w_j log P_s(y_j)``.

    ``tags`` ``[k, batch, seq_len]`` (``-1`` at padding and for missing structures),
    ``log_probs`` ``[k, batch]`` the teacher's (tempered) log-probabilities (``-inf`` where
    missing), ``student`` already tempered. ``w_j = 1 / k'`` (uniform over the ``k'`` structures
    that exist) or ``softmax_j(log_probs)`` (``weighted``). A missing structure is replaced by the
    best one with weight 0, so that the student can score every row.
    """
    tags = tags.long()
    exists = (tags[:, :, 0] >= 0) & torch.isfinite(log_probs)
    if weighted:
        weights = torch.softmax(log_probs.masked_fill(~exists, float("-inf")), dim=0)
    else:
        weights = exists.to(log_probs.dtype) / exists.sum(0, keepdim=True).to(log_probs.dtype)
    tags = torch.where(exists.unsqueeze(-1), tags, tags[:1])
    student_log_probs = student.log_prob(tags)
    weights = weights.to(student_log_probs)
    loss = -torch.where(exists, weights * student_log_probs, torch.zeros_like(student_log_probs))
    loss = loss.sum(0)
    check_cross_entropy(loss, student.log_partition, what="top-k KD loss")
    return loss


def posterior_loss_from_targets(marginals: Tensor, student: StructDistribution) -> Tensor:
    """Posterior KD ``[batch]``: ``sum_i KL(P_t(y_i) || P_s(y_i))`` from the teacher's token
    marginals ``[batch, seq_len, n_labels]`` and the (tempered) student's token marginals;
    differentiable through the student's. Terms where ``P_t = 0`` are 0 (no NaN, no gradient)."""
    if not isinstance(student, LinearChainCRF | Factorized):
        raise TypeError(f"posterior KD needs a tag-sequence student, got {type(student).__name__}")
    student_marginals = student.marginals
    marginals = marginals.to(student_marginals)
    has_mass = marginals > 0
    # log only where the teacher has mass, so that 0 * log 0 neither gives nor backpropagates NaN.
    safe_teacher = torch.where(has_mass, marginals, torch.ones_like(marginals))
    safe_student = torch.where(has_mass, student_marginals, torch.ones_like(student_marginals))
    loss = (marginals * (torch.log(safe_teacher) - torch.log(safe_student))).sum((-1, -2))
    check_cross_entropy(loss, what="posterior KD loss")
    return loss
