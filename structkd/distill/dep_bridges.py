"""Bridge from a dependency-parser teacher to a "dependency parsing as sequence labeling" student.

The student (Strzyz et al. 2019; ``structkd.data.dep_encodings``) gives word ``i`` (1-based) one
label ``l = (head code c, relation r)``; for a given sentence the code denotes one head
``head(c, i)`` (``0`` = root) or none. A first-order teacher (a tree CRF, head selection, or the
arc marginals of a second-order parser) gives ``P(head_i = h)`` and a relation distribution per
arc ``P(r | i, h)``, so the teacher's marginal of the student's substructure ``(i, l)`` is

    P_t(label_i = (c, r)) = P(head_i = head(c, i)) * P(r | i, head(c, i)),   0 if head(c, i) = -1.

Distinct labels of a word denote distinct ``(head, relation)`` pairs, so these probabilities sum to
at most 1; the rest, ``lost_mass_i = 1 - sum_l P_t(label_i = l)``, is teacher mass on heads (or
head-relation pairs) that no label of the vocabulary expresses.

:func:`label_marginals` computes both in one batched gather; :func:`local_head_probs` is the local
(head selection) teacher of Token KD; :func:`lost_mass_summary` reports how much mass the label
vocabulary loses.

Registry: the bridge is registered like the chain bridges (:mod:`structkd.distill.bridges`), for the
teacher type :class:`DepTeacherOutput` (a parser's arc marginals and relation log-probabilities,
already tempered) and the student kind ``"dep-labels"``; the student's label -> head map and
relation map of the batch are its context::

    project_teacher(DepTeacherOutput(arcs, rel_log_probs, lengths), "dep-labels",
                    label_heads=label_heads, label_relations=label_relations)

gives the same :class:`DepLabelTargets` as :func:`label_marginals`, detached. For a ``Factorized``
student, pass :meth:`DepLabelTargets.as_chain_targets` to ``kd_loss_from_targets``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from structkd.distill.bridges import ChainTargets, register_bridge
from structkd.structures.base import NumericalError, check_lengths, length_mask
from structkd.structures.dependency import HeadSelection

__all__ = [
    "DEP_LABELS",
    "DepLabelTargets",
    "DepTeacherOutput",
    "arcs_to_dep_labels",
    "label_marginals",
    "local_head_probs",
    "lost_mass_summary",
]

DEP_LABELS = "dep-labels"
"""The student kind of a dependency-as-sequence-labeling student (one label per word)."""

MIN_EXPRESSIBLE_MASS = 1e-12
"""Below this expressible mass a word has no target (``has_target`` False, probabilities 0)."""


class DepLabelTargets(NamedTuple):
    """Teacher marginals on the labels of a dependency-as-sequence-labeling student.

    Attributes:
        probs: ``[batch, seq_len, n_labels]``, ``[b, i - 1, l] = P_t(label_i = l)`` for word ``i``
            (renormalized per word when built with ``renormalize=True``); 0 at padding and at
            words without a target.
        lost_mass: ``[batch, seq_len]``, ``1 - sum_l P_t(label_i = l)`` before any
            renormalization: the teacher mass no label expresses; 0 at padding. Rounding may
            leave it slightly negative (about 1e-7 in float32): it is not clamped.
        has_target: ``[batch, seq_len]`` bool, True at words whose expressible mass is at least
            ``min_mass``; False at padding and at words whose teacher mass is (all but) entirely
            lost. A loss must skip the words where it is False.
        renormalized: whether ``probs`` were divided by each word's expressible mass.
    """

    probs: Tensor
    lost_mass: Tensor
    has_target: Tensor
    renormalized: bool

    def detach(self) -> DepLabelTargets:
        """The same targets cut from any autograd graph."""
        return self._replace(probs=self.probs.detach(), lost_mass=self.lost_mass.detach())

    def as_chain_targets(self, lengths: Tensor) -> ChainTargets:
        """``ChainTargets(probs)`` for a ``Factorized`` student (``kd_loss_from_targets``).

        The KD loss ``log Z_s - sum_l P_t(l) s(l)`` is a cross-entropy only where every word's
        targets sum to 1, so this requires renormalized targets and a target at every word
        ``< lengths`` (``[batch]``); otherwise ``ValueError`` (a word without a target would add its
        ``logsumexp`` of student scores to the loss: mask it in a per-word loss instead).
        """
        if not self.renormalized:
            raise ValueError(
                "as_chain_targets needs renormalized targets (label_marginals(renormalize=True)): "
                "targets summing to less than 1 do not give a cross-entropy"
            )
        batch, max_len = self.has_target.shape
        lengths = check_lengths(torch.as_tensor(lengths), batch, max_len)
        words = length_mask(lengths.to(self.has_target.device), max_len)
        missing = words & ~self.has_target
        if missing.any():
            sentence, word = (int(x) for x in torch.nonzero(missing)[0])
            raise ValueError(
                f"word {word + 1} of sentence {sentence} (and {int(missing.sum()) - 1} more) has "
                "no expressible teacher mass; its loss must be masked with has_target"
            )
        return ChainTargets(self.probs)


class DepTeacherOutput(NamedTuple):
    """What a first-order dependency teacher gives the ``"dep-labels"`` bridge, already tempered.

    Attributes:
        arc_marginals: ``[batch, seq_len + 1, seq_len + 1]`` as ``[head, dependent]``, position 0
            the root: ``P(head_d = h)`` (tree marginals, or :func:`local_head_probs`).
        rel_log_probs: ``[batch, seq_len + 1, seq_len + 1, n_relations]``: ``log P(r | d, h)``.
        lengths: ``[batch]`` words per sentence.
    """

    arc_marginals: Tensor
    rel_log_probs: Tensor
    lengths: Tensor


def _check_integer(name: str, tensor: Tensor, shape: str) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape}, got {type(tensor).__name__}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor {shape}, got {tensor.dtype}")


def _check_float(name: str, tensor: Tensor, shape: str) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape}, got {type(tensor).__name__}")
    if not tensor.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor {shape}, got {tensor.dtype}")


def label_marginals(
    arc_marginals: Tensor,
    rel_log_probs: Tensor,
    label_heads: Tensor,
    label_relations: Tensor,
    lengths: Tensor,
    *,
    renormalize: bool = True,
    min_mass: float = MIN_EXPRESSIBLE_MASS,
) -> DepLabelTargets:
    """The teacher's probability of every student label of every word, and the mass lost.

    ``P(label_i = l) = P(head_i = h_l) * exp(rel_log_probs[h_l, i, r_l])`` with
    ``h_l = label_heads[b, i - 1, l]`` and ``r_l = label_relations[l]``; 0 where ``h_l = -1``.
    ``lost_mass_i = 1 - sum_l P(label_i = l)``.

    With ``renormalize=True`` each word's probabilities are divided by their sum (the student's
    labels can hold only the expressible part of the teacher's distribution). A word whose
    expressible mass is below ``min_mass`` (e.g. every head it can take is one no label reaches)
    gets no target either way: probabilities 0 and ``has_target`` False, so that the loss skips it
    (no division by 0, no NaN). With ``renormalize=False`` the probabilities sum to
    ``1 - lost_mass`` per word: exact marginals for analysis, not a distribution to train on.

    Args:
        arc_marginals: ``[batch, seq_len + 1, seq_len + 1]`` as ``[head, dependent]``, position 0
            the root: ``P(head_d = h)`` (each word's column sums to 1), e.g. ``marginals`` of a
            ``DependencyCRF`` or ``HeadSelection`` (see :func:`local_head_probs`).
        rel_log_probs: ``[batch, seq_len + 1, seq_len + 1, n_relations]`` as
            ``[head, dependent, relation]``: ``log P(r | d, head h)`` (a log-softmax over the
            teacher's relations); only the entries that some label reaches are read.
        label_heads: ``[batch, seq_len, n_labels]`` int64, row ``i - 1`` for word ``i``: the head
            (0 = root, 1..length) label ``l`` denotes, ``-1`` for none
            (``DepLabelScheme.label_heads``); padding rows are ignored.
        label_relations: ``[n_labels]`` int64, the index in the teacher's ``n_relations`` of each
            label's relation (``DepLabelScheme.label_relation`` when both share the relation list).
        lengths: ``[batch]`` words per sentence.
        renormalize: divide each word's probabilities by its expressible mass.
        min_mass: expressible mass below which a word has no target.

    Returns:
        :class:`DepLabelTargets` with ``probs`` ``[batch, seq_len, n_labels]`` in the dtype of
        ``arc_marginals``, ``lost_mass`` and ``has_target`` ``[batch, seq_len]``.

    Raises:
        ValueError: a shape, dtype or index out of range, or a word whose label probabilities sum
            to more than 1 (inputs that are not normalized distributions).
        NumericalError: NaN in the probabilities.
    """
    _check_float("arc_marginals", arc_marginals, "[batch, seq_len + 1, seq_len + 1]")
    _check_float("rel_log_probs", rel_log_probs, "[batch, seq_len + 1, seq_len + 1, n_relations]")
    _check_integer("label_heads", label_heads, "[batch, seq_len, n_labels]")
    _check_integer("label_relations", label_relations, "[n_labels]")
    if arc_marginals.dim() != 3 or arc_marginals.shape[1] != arc_marginals.shape[2]:
        raise ValueError(
            "arc_marginals must have shape [batch, seq_len + 1, seq_len + 1] as [head, dependent], "
            f"got {list(arc_marginals.shape)}"
        )
    batch, size, _ = arc_marginals.shape
    if size < 2:
        raise ValueError(
            f"arc_marginals must cover at least one word, got {list(arc_marginals.shape)}"
        )
    max_len = size - 1
    if rel_log_probs.dim() != 4 or tuple(rel_log_probs.shape[:3]) != (batch, size, size):
        raise ValueError(
            f"rel_log_probs must have shape [batch, seq_len + 1, seq_len + 1, n_relations]="
            f"[{batch}, {size}, {size}, n_relations], got {list(rel_log_probs.shape)}"
        )
    n_relations = rel_log_probs.shape[3]
    if n_relations < 1:
        raise ValueError("rel_log_probs must have at least one relation")
    if label_heads.dim() != 3 or tuple(label_heads.shape[:2]) != (batch, max_len):
        raise ValueError(
            f"label_heads must have shape [batch, seq_len, n_labels]=[{batch}, {max_len}, "
            f"n_labels], got {list(label_heads.shape)}"
        )
    n_labels = label_heads.shape[2]
    if label_relations.dim() != 1 or label_relations.shape[0] != n_labels:
        raise ValueError(
            f"label_relations must have shape [n_labels]=[{n_labels}], "
            f"got {list(label_relations.shape)}"
        )
    if n_labels and (int(label_relations.min()) < 0 or int(label_relations.max()) >= n_relations):
        raise ValueError(
            f"label_relations must lie in 0..{n_relations - 1} (the relations of rel_log_probs), "
            f"got {label_relations.min().item()}..{label_relations.max().item()}"
        )
    if not isinstance(renormalize, bool):
        raise ValueError(f"renormalize must be a bool, got {renormalize!r}")
    if not float(min_mass) > 0.0:
        raise ValueError(f"min_mass must be > 0, got {min_mass}")
    device = arc_marginals.device
    lengths = check_lengths(torch.as_tensor(lengths), batch, max_len).to(device)
    words = length_mask(lengths, max_len)  # [batch, max_len], word i at i - 1
    label_heads = label_heads.to(device).long()
    label_relations = label_relations.to(device).long()
    word_heads = label_heads.masked_fill(~words[:, :, None], -1)
    out_of_range = (word_heads < -1) | (word_heads > lengths[:, None, None])
    if out_of_range.any():
        sentence, word, label = (int(x) for x in torch.nonzero(out_of_range)[0])
        raise ValueError(
            f"label_heads[{sentence}, {word}, {label}] = {int(word_heads[sentence, word, label])} "
            f"is not -1 or a head in 0..{int(lengths[sentence])} of that sentence"
        )

    valid = word_heads >= 0  # [batch, max_len, n_labels]
    heads = word_heads.clamp(min=0)
    dependents = torch.arange(1, size, device=device)[None, :, None]  # word i at row i - 1
    # P(head_i = h) at arc_marginals[b, h, i]: flat index h * size + i
    head_probs = arc_marginals.reshape(batch, -1).gather(
        1, (heads * size + dependents).reshape(batch, -1)
    )
    # log P(r | i, h) at rel_log_probs[b, h, i, r]: flat index (h * size + i) * R + r
    rel_index = (heads * size + dependents) * n_relations + label_relations
    rel_log = rel_log_probs.reshape(batch, -1).gather(1, rel_index.reshape(batch, -1))
    joint = head_probs * rel_log.to(head_probs.dtype).exp()
    probs = torch.where(valid.reshape(batch, -1), joint, 0.0).reshape(batch, max_len, n_labels)
    if torch.isnan(probs).any():
        raise NumericalError(
            "label probabilities contain NaN (NaN in arc_marginals or rel_log_probs)"
        )

    expressible = probs.sum(-1)  # [batch, max_len]
    tolerance = max(1e-4, 100 * torch.finfo(probs.dtype).eps)
    too_much = words & ~(expressible <= 1.0 + tolerance)
    if too_much.any():
        sentence, word = (int(x) for x in torch.nonzero(too_much)[0])
        raise ValueError(
            f"the label probabilities of word {word + 1} of sentence {sentence} sum to "
            f"{float(expressible[sentence, word])} > 1: arc_marginals must hold P(head_d = h) "
            "(columns summing to 1) and rel_log_probs log-probabilities over relations"
        )
    lost_mass = torch.where(words, 1.0 - expressible, 0.0)
    has_target = words & (expressible >= min_mass)
    if renormalize:
        denominator = torch.where(has_target, expressible, 1.0)
        probs = probs / denominator[:, :, None]
    probs = torch.where(has_target[:, :, None], probs, 0.0)
    return DepLabelTargets(probs, lost_mass, has_target, renormalize)


@register_bridge(DepTeacherOutput, DEP_LABELS)
def arcs_to_dep_labels(
    teacher: DepTeacherOutput,
    *,
    label_heads: Tensor,
    label_relations: Tensor,
    renormalize: bool = True,
    min_mass: float = MIN_EXPRESSIBLE_MASS,
) -> DepLabelTargets:
    """Case 5, the registered bridge: :func:`label_marginals` of the teacher's arcs and relations
    for the student's ``label_heads`` ``[batch, seq_len, n_labels]`` and ``label_relations``
    ``[n_labels]``: ``P_t(label_i = (c, r)) = P(head_i = head(c, i)) * P(r | i, head(c, i))``."""
    return label_marginals(
        teacher.arc_marginals,
        teacher.rel_log_probs,
        label_heads,
        label_relations,
        teacher.lengths,
        renormalize=renormalize,
        min_mass=min_mass,
    )


def local_head_probs(arc_scores: Tensor, lengths: Tensor, temperature: float = 1.0) -> Tensor:
    """The teacher's local head distribution (the head selection teacher of Token KD).

    ``[b, h, d] = softmax_{h' in 0..len, h' != d}(arc_scores[b, :, d] / T)[h]``: every word's
    independent softmax over its possible heads; column 0 (the root), the diagonal and padding are
    0. These are the arc marginals of ``HeadSelection(arc_scores, lengths, temperature)``, ready
    for :func:`label_marginals`; with ``rel_log_probs = log_softmax(relation scores / T)`` this
    gives the teacher's local head-and-relation softmax projected onto the student's labels.

    Args:
        arc_scores: ``[batch, seq_len + 1, seq_len + 1]`` as ``[head, dependent]``, position 0 the
            root; ``-inf`` forbids an arc.
        lengths: ``[batch]`` words per sentence.
        temperature: divides every score before the softmax.

    Returns:
        ``[batch, seq_len + 1, seq_len + 1]`` ``P(head_d = h)``.
    """
    return HeadSelection(arc_scores, lengths, temperature).marginals


def lost_mass_summary(
    targets: DepLabelTargets, lengths: Tensor, threshold: float = 0.01
) -> dict[str, float | int]:
    """How much teacher mass the student's labels cannot express, over the words ``< lengths``.

    Returns ``{"words": number of words, "mean_lost_mass": mean of lost_mass per word,
    "lossy_word_rate": fraction of words with lost_mass > threshold, "no_target_rate": fraction of
    words without a target, "threshold": threshold}`` (fractions, 0 when there is no word).
    """
    batch, max_len = targets.lost_mass.shape
    lengths = check_lengths(torch.as_tensor(lengths), batch, max_len)
    words = length_mask(lengths.to(targets.lost_mass.device), max_len)
    n_words = int(words.sum())
    if n_words == 0:
        return {
            "words": 0,
            "mean_lost_mass": 0.0,
            "lossy_word_rate": 0.0,
            "no_target_rate": 0.0,
            "threshold": float(threshold),
        }
    lost = targets.lost_mass.detach()[words].double()
    return {
        "words": n_words,
        "mean_lost_mass": float(lost.mean()),
        "lossy_word_rate": float((lost > threshold).double().mean()),
        "no_target_rate": float((~targets.has_target[words]).double().mean()),
        "threshold": float(threshold),
    }
