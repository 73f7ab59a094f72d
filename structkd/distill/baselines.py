"""The KD baselines the paper compares against, as losses on the same distribution objects.

* :func:`token_kd_loss` (Token KD): ``sum_i KL(softmax(e_t,i / T) || softmax(e_s,i / T))`` between
  the teacher's and the student's per-token emission softmaxes, ignoring transitions.
* :func:`topk_kd_loss` (Top-K / Top-WK KD): ``- sum_j w_j log P_s(y_j)`` over the teacher's k best
  structures ``y_j``, uniformly weighted or weighted by the teacher's renormalized probabilities.
* :func:`posterior_kd_loss` (Posterior KD): ``sum_i KL(P_t(y_i) || P_s(y_i))`` between teacher and
  student token marginals.

Every loss is per sentence, summed over its real tokens, reduced over sentences like
:func:`structkd.distill.objective.structural_kd_loss` (``"mean"`` over sentences), takes a
``temperature`` and applies no ``T^2`` factor (the trainer does). The teacher side is detached.
"""

from __future__ import annotations

import torch
from torch import Tensor

from structkd.distill.bridges import check_compatible, project_teacher
from structkd.distill.objective import check_cross_entropy, check_reduction, reduce_loss
from structkd.structures.base import StructDistribution, check_temperature
from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF


def token_kd_loss(
    teacher: StructDistribution,
    student: StructDistribution,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Token KD: ``sum_{i < length} KL(softmax(e_t[i] / T) || softmax(e_s[i] / T))`` per sentence.

    ``e`` ``[batch, seq_len, n_labels]`` are a ``LinearChainCRF``'s emissions or a ``Factorized``'s
    logits, each divided by its distribution's own temperature (so a distribution built tempered
    counts as such), then by ``T``. A ``SemiMarkovSpans`` teacher has no token emissions
    (``TypeError``). Returns a scalar, or ``[batch]`` with ``reduction="none"``.
    """
    temperature = check_temperature(temperature)
    reduction = check_reduction(reduction)
    teacher_emissions = token_emissions(teacher, "teacher").detach()
    student_emissions = token_emissions(student, "student")
    check_compatible(teacher, student)
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
    return reduce_loss(loss, reduction)


def topk_kd_loss(
    teacher: StructDistribution,
    student: StructDistribution,
    k: int,
    weighted: bool = False,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Top-K (``weighted=False``) or Top-WK (``weighted=True``) KD:
    ``- sum_{j < k'} w_j log P_s(y_j)`` per sentence over the teacher's ``k' <= k`` best structures.

    ``y_j`` come from ``teacher.kbest(k)``; a sentence with fewer than ``k`` structures uses the
    ``k'`` that exist. Top-K: ``w_j = 1 / k'``.
    Top-WK: ``w_j = P_t(y_j) / sum_{j' < k'} P_t(y_j')``.
    With ``T != 1`` both sides are tempered (``.tempered(T)``): the teacher's weights and the
    student's ``log P_s``; the k best themselves do not depend on ``T``. A span teacher's k best are
    BIOES tag sequences, so its student must use the BIOES label layout. Returns a scalar, or
    ``[batch]`` with ``reduction="none"``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    temperature = check_temperature(temperature)
    reduction = check_reduction(reduction)
    check_compatible(teacher, student)
    if temperature != 1.0:
        teacher = teacher.tempered(temperature)
        student = student.tempered(temperature)
    with torch.no_grad():
        values, scores = teacher.kbest(k)
    exists = (values[:, :, 0] >= 0) & torch.isfinite(scores)
    if weighted:
        weights = torch.softmax(scores.masked_fill(~exists, float("-inf")), dim=0)
    else:
        weights = exists.to(scores.dtype) / exists.sum(0, keepdim=True).to(scores.dtype)
    # Rows past a sentence's last structure hold -1 values: replace them by its best structure
    # (weight 0) so that the student can score every row.
    values = torch.where(exists.unsqueeze(-1), values, values[:1])
    log_probs = student.log_prob(values)
    weights = weights.to(log_probs)
    loss = -torch.where(exists, weights * log_probs, torch.zeros_like(log_probs)).sum(0)
    check_cross_entropy(loss, student.log_partition, what="top-k KD loss")
    return reduce_loss(loss, reduction)


def posterior_kd_loss(
    teacher: StructDistribution,
    student: StructDistribution,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Posterior KD: ``sum_{i < length} KL(P_t(y_i) || P_s(y_i))`` per sentence, between the
    teacher's token marginals projected on the student's labels (the bridge's token marginals,
    ``[batch, seq_len, n_labels]``) and the student's token marginals.

    Differentiable through the student's marginals. With ``T != 1`` both distributions are
    tempered (``.tempered(T)``) before taking marginals. Returns a scalar, or ``[batch]`` with
    ``reduction="none"``.
    """
    temperature = check_temperature(temperature)
    reduction = check_reduction(reduction)
    if temperature != 1.0:
        teacher = teacher.tempered(temperature)
        student = student.tempered(temperature)
    teacher_marginals = project_teacher(teacher, student).marginals
    student_marginals = _token_marginals(student)
    has_mass = teacher_marginals > 0
    # log only where the teacher has mass, so that 0 * log 0 neither gives nor backpropagates NaN.
    safe_teacher = torch.where(has_mass, teacher_marginals, torch.ones_like(teacher_marginals))
    safe_student = torch.where(has_mass, student_marginals, torch.ones_like(student_marginals))
    pointwise = teacher_marginals * (torch.log(safe_teacher) - torch.log(safe_student))
    loss = pointwise.sum((-1, -2))
    check_cross_entropy(loss, what="posterior KD loss")
    return reduce_loss(loss, reduction)


def token_emissions(distribution: StructDistribution, role: str) -> Tensor:
    """``[batch, seq_len, n_labels]`` per-token scores of a distribution, divided by its own
    temperature: a CRF's emissions or a factorized tagger's logits.

    Raises ``TypeError`` for a distribution without token emissions (e.g. ``SemiMarkovSpans``).
    """
    if isinstance(distribution, LinearChainCRF):
        return distribution.emissions / distribution.temperature
    if isinstance(distribution, Factorized):
        return distribution.logits / distribution.temperature
    raise TypeError(
        f"token KD needs token emissions, but the {role} is a {type(distribution).__name__}, which "
        "has none (only LinearChainCRF emissions and Factorized logits qualify)"
    )


def _token_marginals(student: StructDistribution) -> Tensor:
    """``[batch, seq_len, n_labels]`` token marginals of a tag-sequence student."""
    if isinstance(student, LinearChainCRF | Factorized):
        return student.marginals
    raise TypeError(f"posterior KD needs a tag-sequence student, got {type(student).__name__}")
