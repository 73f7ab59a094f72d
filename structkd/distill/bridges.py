"""Bridges: a teacher's distribution projected onto the student's substructures.

The structural KD loss (DESIGN.md section 1) needs only the teacher's marginal ``P_t(u)`` of every
substructure ``u`` that the student scores:

    L_KD = - sum_{u in U_s} P_t(u) s(u) + log Z_s,    P_t(u) = sum_{y containing u} P_t(y)

A bridge computes these marginals for one (teacher kind, student kind) pair and returns them as a
small dataclass. The sequence-labeling students score tokens (``Factorized``) or tokens and adjacent
pairs (``LinearChainCRF``), so every bridge here returns :class:`ChainTargets`:

=================  =================  =====================================================  ======
teacher            student            marginals                                              case
=================  =================  =====================================================  ======
LinearChainCRF     LinearChainCRF     token + pair marginals by forward-backward             1a
LinearChainCRF     Factorized         token marginals by forward-backward                    2a
Factorized         LinearChainCRF     token softmax; pair = p_i(a) p_{i+1}(c)                3
Factorized         Factorized         token softmax
SemiMarkovSpans    Factorized         BIOES token marginals (semi-Markov forward-backward)   4
SemiMarkovSpans    LinearChainCRF     BIOES token + pair marginals
=================  =================  =====================================================  ======

A span teacher's BIOES marginals live in the BIOES label layout of ``docs/structures-contract.md``
(``O = 0``, ``B-r = 1 + 4r``, ``I-r = 2 + 4r``, ``E-r = 3 + 4r``, ``S-r = 4 + 4r``), so its student
must use that layout (``1 + 4R`` labels).

:data:`BRIDGES` maps ``(teacher class, student class)`` to the bridge; :func:`find_bridge` walks
both classes' MROs, so subclasses inherit their parent's bridge. The dependency bridges of a later
issue (first-order trees, head selection, second-order -> dependency as sequence labeling) plug in
with :func:`register_bridge`: a bridge receives the student too, so one that needs the student's
label encoding can read it there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from structkd.structures.base import StructDistribution, length_mask
from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF
from structkd.structures.semimarkov import SemiMarkovSpans


@dataclass(frozen=True)
class ChainTargets:
    """Teacher marginals on the substructures of a sequence-labeling student.

    Attributes:
        marginals: ``[batch, seq_len, n_labels]``, ``P_t(y_i = l)``; 0 at padded positions.
        pair_marginals: ``[batch, seq_len - 1, n_labels, n_labels]``,
            ``[b, i, a, c] = P_t(y_i = a, y_{i+1} = c)``; 0 where ``i + 1 >= length``.
            ``None`` for a student that scores no pairs (``Factorized``).
    """

    marginals: Tensor
    pair_marginals: Tensor | None = None

    def detach(self) -> ChainTargets:
        """The same targets cut from any autograd graph."""
        pair = None if self.pair_marginals is None else self.pair_marginals.detach()
        return ChainTargets(self.marginals.detach(), pair)

    def to(self, like: Tensor) -> ChainTargets:
        """The same targets in the dtype and on the device of ``like``."""
        pair = None if self.pair_marginals is None else self.pair_marginals.to(like)
        return ChainTargets(self.marginals.to(like), pair)

    def as_kwargs(self) -> dict[str, Tensor]:
        """Keyword arguments of the student's ``expected_score`` (pairs only if present)."""
        kwargs = {"marginals": self.marginals}
        if self.pair_marginals is not None:
            kwargs["pair_marginals"] = self.pair_marginals
        return kwargs


Bridge = Callable[[StructDistribution, StructDistribution], ChainTargets]


def crf_to_crf(teacher: LinearChainCRF, student: LinearChainCRF) -> ChainTargets:
    """Case 1a: token marginals ``[batch, seq_len, n_labels]`` and pair marginals
    ``[batch, seq_len - 1, n_labels, n_labels]`` of a CRF teacher, by forward-backward."""
    return ChainTargets(teacher.marginals, teacher.pair_marginals)


def crf_to_factorized(teacher: LinearChainCRF, student: Factorized) -> ChainTargets:
    """Case 2a: token marginals ``[batch, seq_len, n_labels]`` of a CRF teacher."""
    return ChainTargets(teacher.marginals)


def factorized_to_crf(teacher: Factorized, student: LinearChainCRF) -> ChainTargets:
    """Case 3: the teacher's token softmax ``p_i`` ``[batch, seq_len, n_labels]`` and pair
    marginals ``P(y_i = a, y_{i+1} = c) = p_i(a) p_{i+1}(c)`` ``[batch, seq_len - 1, n_labels,
    n_labels]`` (tokens are independent under a factorized teacher); pairs past the end are 0."""
    token = teacher.marginals
    pair = token[:, :-1, :, None] * token[:, 1:, None, :]
    pair_inside = length_mask(teacher.lengths, teacher.max_len)[:, 1:]
    pair = pair * pair_inside[:, :, None, None].to(pair.dtype)
    return ChainTargets(token, pair)


def factorized_to_factorized(teacher: Factorized, student: Factorized) -> ChainTargets:
    """Token softmax ``[batch, seq_len, n_labels]`` of a factorized teacher."""
    return ChainTargets(teacher.marginals)


def spans_to_factorized(teacher: SemiMarkovSpans, student: Factorized) -> ChainTargets:
    """Case 4: BIOES token marginals ``[batch, seq_len, 1 + 4R]`` of a span teacher
    (semi-Markov forward-backward, DESIGN.md section 2)."""
    return ChainTargets(teacher.bioes_marginals)


def spans_to_crf(teacher: SemiMarkovSpans, student: LinearChainCRF) -> ChainTargets:
    """BIOES token marginals ``[batch, seq_len, 1 + 4R]`` and BIOES pair marginals
    ``[batch, seq_len - 1, 1 + 4R, 1 + 4R]`` of a span teacher."""
    return ChainTargets(teacher.bioes_marginals, teacher.bioes_pair_marginals)


BRIDGES: dict[tuple[type, type], Bridge] = {
    (LinearChainCRF, LinearChainCRF): crf_to_crf,
    (LinearChainCRF, Factorized): crf_to_factorized,
    (Factorized, LinearChainCRF): factorized_to_crf,
    (Factorized, Factorized): factorized_to_factorized,
    (SemiMarkovSpans, Factorized): spans_to_factorized,
    (SemiMarkovSpans, LinearChainCRF): spans_to_crf,
}
"""The dispatch table: ``(teacher class, student class) -> bridge``."""


def register_bridge(teacher_cls: type, student_cls: type) -> Callable[[Bridge], Bridge]:
    """Decorator adding a bridge to :data:`BRIDGES` for ``(teacher_cls, student_cls)``.

    Raises ``ValueError`` if that pair already has a bridge.
    """

    def register(bridge: Bridge) -> Bridge:
        key = (teacher_cls, student_cls)
        if key in BRIDGES:
            raise ValueError(
                f"a bridge from {teacher_cls.__name__} to {student_cls.__name__} already exists: "
                f"{BRIDGES[key].__name__}"
            )
        BRIDGES[key] = bridge
        return bridge

    return register


def find_bridge(teacher: object, student: object) -> Bridge:
    """The bridge for this teacher and student, searching both classes' MROs (subclasses first).

    Raises ``TypeError`` naming both classes when no bridge exists.
    """
    for teacher_cls in type(teacher).__mro__:
        for student_cls in type(student).__mro__:
            bridge = BRIDGES.get((teacher_cls, student_cls))
            if bridge is not None:
                return bridge
    supported = ", ".join(f"{t.__name__} -> {s.__name__}" for t, s in BRIDGES)
    raise TypeError(
        f"no bridge from a {type(teacher).__name__} teacher to a {type(student).__name__} "
        f"student; supported pairs: {supported}"
    )


def tag_count(distribution: StructDistribution) -> int | None:
    """The number of tag labels of a distribution over tag sequences: ``n_labels`` for
    ``LinearChainCRF`` and ``Factorized``, ``1 + 4R`` (BIOES) for ``SemiMarkovSpans``; ``None`` for
    any other distribution (e.g. a dependency teacher, whose bridge maps heads onto labels)."""
    if isinstance(distribution, LinearChainCRF):
        return int(distribution.emissions.shape[-1])
    if isinstance(distribution, Factorized):
        return int(distribution.logits.shape[-1])
    if isinstance(distribution, SemiMarkovSpans):
        return 1 + 4 * int(distribution.span_scores.shape[-1])
    return None


def check_compatible(teacher: StructDistribution, student: StructDistribution) -> None:
    """Check that teacher and student describe the same sentences and the same tag labels.

    Compares batch size, padded length, per-sentence lengths and, when both are distributions over
    tag sequences, the number of tag labels; raises ``ValueError`` naming the first mismatch.
    """
    if teacher.batch_size != student.batch_size:
        raise ValueError(
            f"teacher and student batch sizes differ: {teacher.batch_size} vs {student.batch_size}"
        )
    if teacher.max_len != student.max_len:
        raise ValueError(
            f"teacher and student padded lengths differ: {teacher.max_len} vs {student.max_len}"
        )
    if not torch.equal(teacher.lengths.cpu(), student.lengths.cpu()):
        raise ValueError(
            f"teacher and student lengths differ: {teacher.lengths.tolist()} vs "
            f"{student.lengths.tolist()}"
        )
    teacher_tags, student_tags = tag_count(teacher), tag_count(student)
    if teacher_tags is not None and student_tags is not None and teacher_tags != student_tags:
        raise ValueError(
            f"teacher and student label counts differ: {type(teacher).__name__} has "
            f"{teacher_tags} tag labels, {type(student).__name__} has {student_tags}"
        )


def project_teacher(teacher: StructDistribution, student: StructDistribution) -> ChainTargets:
    """The teacher's marginals on the student's substructures, detached, in the student's dtype
    and on its device.

    Picks the bridge from :data:`BRIDGES` (``TypeError`` for an unsupported pair), checks that
    both describe the same sentences (``ValueError`` otherwise), then runs the bridge.
    """
    bridge = find_bridge(teacher, student)
    check_compatible(teacher, student)
    targets = bridge(teacher, student).detach()
    student_tags = tag_count(student)
    if student_tags is not None:
        expected_shape = (student.batch_size, student.max_len, student_tags)
        if tuple(targets.marginals.shape) != expected_shape:
            raise ValueError(
                f"bridge {bridge.__name__} returned marginals of shape "
                f"{list(targets.marginals.shape)}, expected {list(expected_shape)}"
            )
    potentials = _tag_potentials(student)
    return targets if potentials is None else targets.to(potentials)


def mix_targets(targets: Sequence[ChainTargets], weights: Tensor) -> ChainTargets:
    """The weighted mixture ``sum_k w_k targets_k`` of several teachers' targets.

    ``weights`` ``[n_teachers]`` are non-negative and sum to 1 (see ``check_weights``). The KD loss
    is linear in ``P_t``, so mixed marginals give the exact loss of the mixture of teachers.
    """
    if len(targets) != weights.shape[0]:
        raise ValueError(f"got {len(targets)} targets but {weights.shape[0]} weights")
    if len(targets) == 1:
        return targets[0]
    has_pairs = {t.pair_marginals is not None for t in targets}
    if len(has_pairs) != 1:
        raise ValueError("cannot mix targets with and without pair marginals")
    weights = weights.to(targets[0].marginals)
    marginals = sum(w * t.marginals for w, t in zip(weights, targets, strict=True))
    pair = None
    if has_pairs.pop():
        pair = sum(w * t.pair_marginals for w, t in zip(weights, targets, strict=True))
    return ChainTargets(marginals, pair)


def check_weights(weights: Sequence[float] | Tensor | None, n_teachers: int) -> Tensor:
    """Validate ensemble weights: one per teacher, finite, non-negative, summing to 1 (within
    ``1e-6``); ``None`` gives uniform weights. Returns a float64 tensor ``[n_teachers]``."""
    if weights is None:
        return torch.full((n_teachers,), 1.0 / n_teachers, dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
    if weights.dim() != 1 or weights.shape[0] != n_teachers:
        raise ValueError(
            f"weights must have one entry per teacher ({n_teachers}), got shape "
            f"{list(weights.shape)}"
        )
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"weights must be finite and non-negative, got {weights.tolist()}")
    if abs(float(weights.sum()) - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1, got {weights.tolist()} (sum {weights.sum()})")
    return weights


def _tag_potentials(distribution: StructDistribution) -> Tensor | None:
    """A potentials tensor of a tag-sequence distribution (for its dtype and device), or None."""
    if isinstance(distribution, LinearChainCRF):
        return distribution.emissions
    if isinstance(distribution, Factorized):
        return distribution.logits
    if isinstance(distribution, SemiMarkovSpans):
        return distribution.span_scores
    return None
