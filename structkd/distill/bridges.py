"""Bridges: a teacher's distribution projected onto the substructures its student scores.

The structural KD loss (:mod:`structkd.distill.objective`) needs only the teacher's marginal
``P_t(u)`` of every substructure ``u`` that the student scores:

    L_KD = - sum_{u in U_s} P_t(u) s(u) + log Z_s,    P_t(u) = sum_{y containing u} P_t(y)

A bridge computes these marginals for one teacher type and one *student kind*, the name of what
the student scores (:data:`STUDENT_KINDS`); it never needs the student itself, so a cache can run
it with the teacher alone. ``bridge(teacher, **context) -> targets``: shapes come from the
teacher, ``context`` carries what a bridge needs beyond the teacher (the dependency bridge's label
maps; the chain bridges need none).

=================  ============  =====================================================  ======
teacher            student kind  marginals                                              case
=================  ============  =====================================================  ======
LinearChainCRF     crf           token + pair marginals by forward-backward             1a
LinearChainCRF     factorized    token marginals by forward-backward                    2a
Factorized         crf           token softmax; pair = p_i(a) p_{i+1}(c)                3
Factorized         factorized    token softmax
SemiMarkovSpans    factorized    BIOES token marginals (semi-Markov forward-backward)   4
SemiMarkovSpans    crf           BIOES token + pair marginals
DepTeacherOutput   dep-labels    ``P(head) * P(relation)`` of each label                5
=================  ============  =====================================================  ======

The chain bridges return :class:`ChainTargets`; the dependency bridge
(:mod:`structkd.distill.dep_bridges`, registered there) returns ``DepLabelTargets``. A span
teacher's BIOES marginals live in the BIOES label layout of ``docs/structures-contract.md``
(``O = 0``, ``B-r = 1 + 4r``, ``I-r = 2 + 4r``, ``E-r = 3 + 4r``, ``S-r = 4 + 4r``), so its student
must use that layout (``1 + 4R`` labels).

:data:`BRIDGES` maps ``(teacher class, student kind)`` to the bridge; :func:`find_bridge` walks the
teacher class's MRO, so subclasses inherit their parent's bridge. :func:`student_kind_of` names the
kind of a student distribution (``LinearChainCRF`` -> ``"crf"``, ``Factorized`` ->
``"factorized"``). A new bridge is one function decorated with :func:`register_bridge`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from structkd.structures.base import StructDistribution, length_mask
from structkd.structures.factorized import Factorized
from structkd.structures.linear_chain import LinearChainCRF
from structkd.structures.semimarkov import SemiMarkovSpans

STUDENT_KINDS: dict[str, str] = {
    "crf": "tag pairs and tokens (LinearChainCRF)",
    "factorized": "tokens (Factorized)",
    "dep-labels": "one dependency label per word (a Factorized over DepLabelScheme labels)",
}
"""Student kind -> what such a student scores. ``"crf"`` and ``"factorized"`` are part of on-disk
cache keys: never rename them."""

CHAIN_KINDS: tuple[str, ...] = ("crf", "factorized")
"""The kinds of sequence-labeling students (targets: :class:`ChainTargets`)."""

STUDENT_CLASSES: dict[type, str] = {LinearChainCRF: "crf", Factorized: "factorized"}
"""Student distribution class -> its kind (subclasses inherit it; see :func:`student_kind_of`)."""


@dataclass(frozen=True)
class ChainTargets:
    """Teacher marginals on the substructures of a sequence-labeling student.

    Attributes:
        marginals: ``[batch, seq_len, n_labels]``, ``P_t(y_i = l)``; 0 at padded positions.
        pair_marginals: ``[batch, seq_len - 1, n_labels, n_labels]``,
            ``[b, i, a, c] = P_t(y_i = a, y_{i+1} = c)``; 0 where ``i + 1 >= length``.
            ``None`` for a student that scores no pairs (kind ``"factorized"``).
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


Bridge = Callable[..., Any]
"""``bridge(teacher, **context) -> targets`` (``ChainTargets`` for the chain kinds)."""


def student_kind_of(student: object) -> str:
    """The kind of a student distribution (:data:`STUDENT_CLASSES`, searched along its MRO):
    ``"crf"`` for a ``LinearChainCRF``, ``"factorized"`` for a ``Factorized``.

    Raises ``TypeError`` for a distribution of no known kind (e.g. ``SemiMarkovSpans``).
    """
    for cls in type(student).__mro__:
        kind = STUDENT_CLASSES.get(cls)
        if kind is not None:
            return kind
    known = ", ".join(f"{cls.__name__} -> {kind!r}" for cls, kind in STUDENT_CLASSES.items())
    raise TypeError(f"a {type(student).__name__} student has no student kind; known: {known}")


def crf_to_crf(teacher: LinearChainCRF, **context: Any) -> ChainTargets:
    """Case 1a: token marginals ``[batch, seq_len, n_labels]`` and pair marginals
    ``[batch, seq_len - 1, n_labels, n_labels]`` of a CRF teacher, by forward-backward."""
    return ChainTargets(teacher.marginals, teacher.pair_marginals)


def crf_to_factorized(teacher: LinearChainCRF, **context: Any) -> ChainTargets:
    """Case 2a: token marginals ``[batch, seq_len, n_labels]`` of a CRF teacher."""
    return ChainTargets(teacher.marginals)


def factorized_to_crf(teacher: Factorized, **context: Any) -> ChainTargets:
    """Case 3: the teacher's token softmax ``p_i`` ``[batch, seq_len, n_labels]`` and pair
    marginals ``P(y_i = a, y_{i+1} = c) = p_i(a) p_{i+1}(c)`` ``[batch, seq_len - 1, n_labels,
    n_labels]`` (tokens are independent under a factorized teacher); pairs past the end are 0."""
    token = teacher.marginals
    pair = token[:, :-1, :, None] * token[:, 1:, None, :]
    pair_inside = length_mask(teacher.lengths, teacher.max_len)[:, 1:]
    pair = pair * pair_inside[:, :, None, None].to(pair.dtype)
    return ChainTargets(token, pair)


def factorized_to_factorized(teacher: Factorized, **context: Any) -> ChainTargets:
    """Token softmax ``[batch, seq_len, n_labels]`` of a factorized teacher."""
    return ChainTargets(teacher.marginals)


def spans_to_factorized(teacher: SemiMarkovSpans, **context: Any) -> ChainTargets:
    """Case 4: BIOES token marginals ``[batch, seq_len, 1 + 4R]`` of a span teacher, by
    semi-Markov forward-backward: ``P(y_i = B-r)`` is the mass of the spans of label ``r`` that
    start at ``i`` (and ``I``, ``E``, ``S``, ``O`` alike)."""
    return ChainTargets(teacher.bioes_marginals)


def spans_to_crf(teacher: SemiMarkovSpans, **context: Any) -> ChainTargets:
    """BIOES token marginals ``[batch, seq_len, 1 + 4R]`` and BIOES pair marginals
    ``[batch, seq_len - 1, 1 + 4R, 1 + 4R]`` of a span teacher."""
    return ChainTargets(teacher.bioes_marginals, teacher.bioes_pair_marginals)


BRIDGES: dict[tuple[type, str], Bridge] = {
    (LinearChainCRF, "crf"): crf_to_crf,
    (LinearChainCRF, "factorized"): crf_to_factorized,
    (Factorized, "crf"): factorized_to_crf,
    (Factorized, "factorized"): factorized_to_factorized,
    (SemiMarkovSpans, "factorized"): spans_to_factorized,
    (SemiMarkovSpans, "crf"): spans_to_crf,
}
"""The dispatch table: ``(teacher class, student kind) -> bridge``."""


def register_bridge(teacher_cls: type, student_kind: str) -> Callable[[Bridge], Bridge]:
    """Decorator adding a bridge to :data:`BRIDGES` for ``(teacher_cls, student_kind)``.

    Raises ``ValueError`` if ``student_kind`` is not a non-empty string or that pair already has a
    bridge. A kind not yet in :data:`STUDENT_KINDS` is added to it (described by the bridge's
    name).
    """
    if not isinstance(student_kind, str) or not student_kind:
        raise ValueError(f"student_kind must be a non-empty string, got {student_kind!r}")

    def register(bridge: Bridge) -> Bridge:
        key = (teacher_cls, student_kind)
        if key in BRIDGES:
            raise ValueError(
                f"a bridge from {teacher_cls.__name__} to student kind {student_kind!r} already "
                f"exists: {BRIDGES[key].__name__}"
            )
        BRIDGES[key] = bridge
        STUDENT_KINDS.setdefault(student_kind, f"the targets of {bridge.__name__}")
        return bridge

    return register


def find_bridge(teacher: object, student: str | StructDistribution) -> Bridge:
    """The bridge from ``teacher`` to a student of kind ``student`` (a kind name, or a student
    distribution whose kind :func:`student_kind_of` derives), searching the teacher class's MRO
    (subclasses first).

    Raises ``TypeError`` naming the teacher class and the student when no bridge exists.
    """
    if isinstance(student, str):
        kind, described = student, f"{student!r}"
    else:
        try:
            kind = student_kind_of(student)
        except TypeError as error:
            raise TypeError(
                f"no bridge from a {type(teacher).__name__} teacher to a "
                f"{type(student).__name__} student: {error}"
            ) from None
        described = f"{type(student).__name__} ({kind!r})"
    for teacher_cls in type(teacher).__mro__:
        bridge = BRIDGES.get((teacher_cls, kind))
        if bridge is not None:
            return bridge
    supported = ", ".join(f"{t.__name__} -> {k!r}" for t, k in BRIDGES)
    raise TypeError(
        f"no bridge from a {type(teacher).__name__} teacher to a {described} student; "
        f"supported pairs: {supported}"
    )


def tag_count(distribution: object) -> int | None:
    """The number of tag labels of a distribution over tag sequences: ``n_labels`` for
    ``LinearChainCRF`` and ``Factorized``, ``1 + 4R`` (BIOES) for ``SemiMarkovSpans``; ``None`` for
    any other teacher (e.g. a dependency teacher, whose bridge maps heads onto labels)."""
    if isinstance(distribution, LinearChainCRF):
        return int(distribution.emissions.shape[-1])
    if isinstance(distribution, Factorized):
        return int(distribution.logits.shape[-1])
    if isinstance(distribution, SemiMarkovSpans):
        return 1 + 4 * int(distribution.span_scores.shape[-1])
    return None


def tag_potentials(distribution: object) -> Tensor | None:
    """A potentials tensor of a tag-sequence distribution (for its dtype and device): a CRF's
    emissions, a factorized tagger's logits, a span model's span scores; ``None`` otherwise."""
    if isinstance(distribution, LinearChainCRF):
        return distribution.emissions
    if isinstance(distribution, Factorized):
        return distribution.logits
    if isinstance(distribution, SemiMarkovSpans):
        return distribution.span_scores
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


def project_teacher(teacher: object, student: str | StructDistribution, **context: Any) -> Any:
    """The teacher's marginals on the substructures of a student, detached.

    ``student`` is a student kind (``"crf"``, ``"factorized"``, ``"dep-labels"``, ...: the targets
    keep the teacher's dtype and device) or a student distribution (its kind is derived; teacher
    and student must describe the same sentences, ``ValueError`` otherwise, and the targets come
    in the student's dtype and on its device). ``context`` goes to the bridge. Raises
    ``TypeError`` when no bridge exists.
    """
    bridge = find_bridge(teacher, student)
    if isinstance(student, str):
        return bridge(teacher, **context).detach()
    check_compatible(teacher, student)
    targets = bridge(teacher, **context).detach()
    student_tags = tag_count(student)
    if student_tags is not None:
        expected_shape = (student.batch_size, student.max_len, student_tags)
        if tuple(targets.marginals.shape) != expected_shape:
            raise ValueError(
                f"bridge {bridge.__name__} returned marginals of shape "
                f"{list(targets.marginals.shape)}, expected {list(expected_shape)}"
            )
    potentials = tag_potentials(student)
    return targets if potentials is None else targets.to(potentials)


def mix_targets(targets: Sequence[ChainTargets], weights: Tensor) -> ChainTargets:
    """The weighted mixture ``sum_k w_k targets_k`` of several teachers' targets.

    ``weights`` ``[n_teachers]`` are non-negative and sum to 1 (see :func:`check_weights`). The KD
    loss is linear in ``P_t``, so mixed marginals give the exact loss of the mixture of teachers.
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
