"""The KD baselines the paper compares against, as losses on the same distribution objects.

* :func:`token_kd_loss` (Token KD): ``sum_i KL(softmax(e_t,i / T) || softmax(e_s,i / T))`` between
  the teacher's and the student's per-token emission softmaxes, ignoring transitions.
* :func:`topk_kd_loss` (Top-K / Top-WK KD): ``- sum_j w_j log P_s(y_j)`` over the teacher's k best
  structures ``y_j``, uniformly weighted or weighted by the teacher's renormalized probabilities.
* :func:`posterior_kd_loss` (Posterior KD): ``sum_i KL(P_t(y_i) || P_s(y_i))`` between teacher and
  student token marginals.

Every loss is the two halves of :mod:`structkd.distill.halves` run back to back (what training
runs on cached teacher outputs): per sentence, summed over its real tokens, reduced over sentences
like :func:`structkd.distill.objective.structural_kd_loss` (``"mean"`` over sentences); it takes a
``temperature`` and applies no ``T^2`` factor (the trainer does). The teacher side is detached.
"""

from __future__ import annotations

from torch import Tensor

from structkd.distill.bridges import check_compatible, tag_count
from structkd.distill.halves import student_half, student_targets, teacher_half
from structkd.distill.losses import check_reduction, reduce_loss, token_emissions
from structkd.structures.base import StructDistribution, check_temperature

__all__ = ["posterior_kd_loss", "token_emissions", "token_kd_loss", "topk_kd_loss"]


def _both_halves(
    method: str,
    teacher: StructDistribution,
    student: StructDistribution,
    temperature: float,
    k: int = 1,
) -> Tensor:
    """The student half on the teacher half of one teacher: ``[batch]``."""
    targets = teacher_half(
        method,
        teacher,
        student_kind="factorized",  # what these methods read does not depend on the kind
        n_labels=tag_count(student),
        temperature=temperature,
        k=k,
    )
    return student_half(method, student, [student_targets(targets)], None, temperature=temperature)


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
    token_emissions(teacher, "teacher")
    token_emissions(student, "student")
    check_compatible(teacher, student)
    return reduce_loss(_both_halves("token", teacher, student, temperature), reduction)


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
    method = "topwk" if weighted else "topk"
    return reduce_loss(_both_halves(method, teacher, student, temperature, k), reduction)


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
    check_compatible(teacher, student)
    return reduce_loss(_both_halves("posterior", teacher, student, temperature), reduction)
