"""Every KD method split in two halves: what is computed from the teacher (and cached), and the
loss of the student from it. Training, the cache and the library losses
(:func:`structkd.distill.structural_kd_loss` and the baselines) all run these two functions, so a
method's temperature rule is written once.

* :func:`cached_quantities`: what :func:`teacher_half` returns for a method, per sentence.
* :func:`teacher_half`: the teacher's quantities for one batch (no student needed).
* :func:`student_half`: the per-sentence loss ``[batch]`` of a student from one dict per teacher
  and the ensemble weights (no ``T^2`` factor: see
  :func:`structkd.distill.temperature.kd_scale`).

The teacher half returns *padded rows*: quantity ``name`` with ``(rule, row_shape, dtype)`` in
:func:`cached_quantities` is a tensor ``[batch, rows, *row_shape]`` with ``rows =``
:func:`padded_rows` ``(rule, seq_len)``: ``seq_len`` for ``"tokens"``, ``seq_len - 1`` for
``"pairs"``, 1 for ``"sentence"``. Sentence ``b`` owns its first ``length_b``, ``length_b - 1`` or 1
rows; the rest is padding, never read by the student half: :data:`PAD_VALUES` (0 for floats, ``-1``
for ``kbest_tags``, ``-inf`` for ``kbest_log_probs``; the teacher half's padded ``emissions`` are
the teacher's own values). A cache stores each sentence's own rows and gathers a batch back into
this layout, padded with :data:`PAD_VALUES`. The student half reads the same tensors except the
k best, which it takes structure-first (``kbest_tags`` ``[k, B, N]`` int64, ``kbest_log_probs``
``[k, B]``): :func:`student_targets` converts one layout into the other.

=========  ==========================================  =========================================
method     teacher half (cached)                       student half
=========  ==========================================  =========================================
struct     ``marginals [N, L]`` (+ ``pair_marginals     ``log Z_s - sum_u P_mix(u) s(u)``,
           [N - 1, L, L]`` for a ``"crf"`` student):   ``P_mix = sum_k w_k P_t,k``
           the tempered teacher on the student's
           substructures
posterior  ``marginals [N, L]`` of the tempered        ``sum_k w_k sum_i KL(P_t,k(y_i) ||
           teacher                                     P_s(y_i))``
token      ``emissions [N, L]`` / the teacher's own T  ``sum_k w_k sum_i KL`` of the token
                                                       softmaxes at ``T``
topk,      ``kbest_tags [N, k]``, ``kbest_log_probs    ``- sum_k w_k sum_j w_kj log P_s(y_kj)``
topwk      [1, k]`` of the tempered teacher
=========  ==========================================  =========================================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from structkd.distill.bridges import (
    CHAIN_KINDS,
    ChainTargets,
    check_weights,
    mix_targets,
    project_teacher,
    student_kind_of,
    tag_count,
    tag_potentials,
)
from structkd.distill.losses import (
    kd_loss_from_targets,
    posterior_loss_from_targets,
    token_emissions,
    token_loss_from_targets,
    topk_loss_from_targets,
)
from structkd.distill.methods import method as method_named
from structkd.distill.temperature import check_temperature_mode, globally_tempered, local_temper
from structkd.structures.base import StructDistribution, check_temperature

__all__ = [
    "PAD_VALUES",
    "ROW_RULES",
    "Quantity",
    "cached_quantities",
    "padded_rows",
    "student_half",
    "student_targets",
    "teacher_half",
]

Quantity = tuple[str, tuple[int, ...], str]
"""``(rows rule, row shape, dtype)`` of one cached quantity."""

ROW_RULES: tuple[str, ...] = ("tokens", "pairs", "sentence")
"""Rows per sentence of ``n`` tokens: ``n``, ``n - 1``, 1."""

PAD_VALUES: dict[str, float] = {
    "marginals": 0.0,
    "pair_marginals": 0.0,
    "emissions": 0.0,
    "kbest_tags": -1,
    "kbest_log_probs": float("-inf"),
}
"""The value of every padded row of each quantity."""


def padded_rows(rule: str, seq_len: int) -> int:
    """The rows of a batch padded to ``seq_len`` tokens under ``rule`` (:data:`ROW_RULES`)."""
    if rule == "tokens":
        return seq_len
    if rule == "pairs":
        return seq_len - 1
    if rule == "sentence":
        return 1
    raise ValueError(f"rows rule must be one of {ROW_RULES}, got {rule!r}")


def _kd_method(name: str) -> str:
    """Validate a method that reads a teacher (``ValueError`` otherwise)."""
    if not method_named(name).uses_teacher:
        raise ValueError(f"KD method {name!r} reads no teacher: it has no KD halves")
    return name


def _chain_kind(student_kind: str) -> str:
    if student_kind not in CHAIN_KINDS:
        raise ValueError(
            f"student_kind must be one of {', '.join(CHAIN_KINDS)}; got {student_kind!r}"
        )
    return student_kind


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return k


def cached_quantities(
    method: str, student_kind: str, n_labels: int, k: int = 1
) -> dict[str, Quantity]:
    """``name -> (rows rule "tokens" | "pairs" | "sentence", row shape, dtype)`` of what
    :func:`teacher_half` returns for ``method`` and a student of ``student_kind`` (``"crf"`` or
    ``"factorized"``) with ``n_labels`` tags; ``k``: structures kept by topk and topwk.

    struct: ``marginals`` (tokens, ``[L]``) and, for a ``"crf"`` student, ``pair_marginals``
    (pairs, ``[L, L]``); posterior: ``marginals``; token: ``emissions`` (tokens, ``[L]``); topk,
    topwk: ``kbest_tags`` (tokens, ``[k]``, int32) and ``kbest_log_probs`` (sentence, ``[k]``).
    Floats are float32 (what a cache stores).
    """
    method = _kd_method(method)
    student_kind = _chain_kind(student_kind)
    if method == "struct":
        found = {"marginals": ("tokens", (n_labels,), "float32")}
        if student_kind == "crf":
            found["pair_marginals"] = ("pairs", (n_labels, n_labels), "float32")
        return found
    if method == "posterior":
        return {"marginals": ("tokens", (n_labels,), "float32")}
    if method == "token":
        return {"emissions": ("tokens", (n_labels,), "float32")}
    k = _check_k(k)
    return {
        "kbest_tags": ("tokens", (k,), "int32"),
        "kbest_log_probs": ("sentence", (k,), "float32"),
    }


def teacher_half(
    method: str,
    teacher: StructDistribution,
    *,
    student_kind: str,
    n_labels: int | None,
    temperature: float = 1.0,
    temperature_mode: str = "global",
    k: int = 1,
) -> dict[str, Tensor]:
    """The teacher's quantities of ``method`` for one batch, detached, padded rows (see the
    module docstring), in the teacher's dtype (``kbest_tags`` int64):

    * struct: the bridge's marginals on a ``student_kind`` student: ``marginals`` ``[B, N, L]``
      and, for ``"crf"``, ``pair_marginals`` ``[B, N - 1, L, L]``. Global temperature: of
      ``teacher.tempered(T)``; local: of the teacher, then
      :func:`structkd.distill.temperature.local_temper` (``ValueError`` for a ``"crf"`` student at
      ``T != 1``).
    * posterior: token ``marginals`` ``[B, N, L]`` of ``teacher.tempered(T)``.
    * token: ``emissions`` ``[B, N, L]``, the teacher's token scores divided by its own
      temperature (``T`` is applied by the student half).
    * topk, topwk: ``kbest_tags`` ``[B, N, k]`` (``-1`` at padding and where fewer than ``k``
      structures exist) and ``kbest_log_probs`` ``[B, 1, k]``, ``log P_t^T(y_j)`` of the k best
      structures of ``teacher.tempered(T)`` (``-inf`` where missing).

    ``n_labels``: the student's tag count; a teacher over tag sequences must have as many
    (``ValueError`` otherwise; ``None``: not checked). ``temperature_mode`` matters for struct only.

    Raises:
        TypeError: no bridge from this teacher (struct, posterior), no token emissions (token).
        ValueError: a bad method, kind, temperature, mode, ``k`` or label count.
    """
    method = _kd_method(method)
    student_kind = _chain_kind(student_kind)
    temperature = check_temperature(temperature)
    temperature_mode = check_temperature_mode(temperature_mode)
    if method_named(method).uses_k:
        k = _check_k(k)
    if method == "token":
        found = {"emissions": token_emissions(teacher, "teacher")}
    elif method in ("struct", "posterior"):
        kind = student_kind if method == "struct" else "factorized"
        if method == "struct" and temperature_mode == "local":
            projected = project_teacher(teacher, kind)
            targets = local_temper(projected, temperature, teacher.lengths)
        else:
            targets = project_teacher(globally_tempered(teacher, temperature), kind)
        found = {"marginals": targets.marginals}
        if kind == "crf":
            found["pair_marginals"] = targets.pair_marginals
    else:
        tempered = globally_tempered(teacher, temperature)
        with torch.no_grad():
            values, scores = tempered.kbest(k)
            log_probs = scores - tempered.log_partition.unsqueeze(0)
        found = {
            "kbest_tags": values.permute(1, 2, 0),
            "kbest_log_probs": log_probs.transpose(0, 1).unsqueeze(1),
        }
    teacher_tags = tag_count(teacher)
    if n_labels is not None and teacher_tags is not None and teacher_tags != n_labels:
        raise ValueError(
            f"teacher and student label counts differ: {type(teacher).__name__} has "
            f"{teacher_tags} tag labels, the student {n_labels}"
        )
    return {name: value.detach() for name, value in found.items()}


def student_targets(rows: dict[str, Tensor]) -> dict[str, Tensor]:
    """One teacher's quantities from the padded-row layout of :func:`teacher_half` (and of a cache)
    to the layout :func:`student_half` reads: ``kbest_tags`` ``[B, N, k]`` -> ``[k, B, N]`` int64,
    ``kbest_log_probs`` ``[B, 1, k]`` -> ``[k, B]``; every other quantity unchanged."""
    found = dict(rows)
    if "kbest_tags" in found:
        found["kbest_tags"] = found["kbest_tags"].long().permute(2, 0, 1)
    if "kbest_log_probs" in found:
        found["kbest_log_probs"] = found["kbest_log_probs"][:, 0, :].transpose(0, 1)
    return found


def student_half(
    method: str,
    student: StructDistribution,
    per_teacher: Sequence[dict[str, Tensor]],
    weights: Sequence[float] | Tensor | None,
    *,
    temperature: float = 1.0,
    temperature_mode: str = "global",
) -> Tensor:
    """The KD loss ``[batch]`` of ``student`` (untempered; its potentials may require grad) from
    ``per_teacher``, one dict of :func:`teacher_half` quantities per teacher (padded rows, any
    float dtype and device: cast to the student's; the k best structure-first, ``kbest_tags``
    ``[k, B, N]`` and ``kbest_log_probs`` ``[k, B]``, see :func:`student_targets`), and the ensemble
    ``weights`` ``[n_teachers]`` (non-negative, summing to 1; ``None``: uniform). No ``T^2``
    factor.

    * struct: ``log Z_s - sum_u P_mix(u) s(u)`` with ``P_mix = sum_k w_k P_t,k`` (each teacher's
      marginals cast to the student's dtype, then mixed): the exact cross-entropy of the mixture
      of teachers. Global temperature: against ``student.tempered(T)``; local: against the
      student as built.
    * token, topk, topwk, posterior: ``sum_k w_k loss_k``, each teacher's loss computed against
      ``student.tempered(T)`` (token: softmax of emissions / ``T`` on both sides).

    Raises:
        ValueError: a bad method, temperature, mode or weights, targets that do not fit the
            student (shape, or pair marginals present for a student that scores none, or absent
            for one that does).
        NumericalError: a NaN, infinite or negative sentence loss.
    """
    method = _kd_method(method)
    temperature = check_temperature(temperature)
    temperature_mode = check_temperature_mode(temperature_mode)
    if not per_teacher:
        raise ValueError("per_teacher must hold the targets of at least one teacher")
    weights = check_weights(weights, len(per_teacher))
    local = method == "struct" and temperature_mode == "local"
    tempered = student if local else globally_tempered(student, temperature)
    if method == "struct":
        chains = [_chain_targets(targets, student, pairs=True) for targets in per_teacher]
        return kd_loss_from_targets(mix_targets(chains, weights), tempered, reduction="none")
    losses = []
    for targets in per_teacher:
        if method == "token":
            losses.append(token_loss_from_targets(targets["emissions"], student, temperature))
        elif method == "posterior":
            marginals = _chain_targets(targets, student, pairs=False).marginals
            losses.append(posterior_loss_from_targets(marginals, tempered))
        else:
            losses.append(
                topk_loss_from_targets(
                    targets["kbest_tags"],
                    targets["kbest_log_probs"],
                    tempered,
                    weighted=method == "topwk",
                )
            )
    weights = weights.to(losses[0])
    return sum(weight * loss for weight, loss in zip(weights, losses, strict=True))


def _chain_targets(
    targets: dict[str, Tensor], student: StructDistribution, *, pairs: bool
) -> ChainTargets:
    """``targets``' marginals (and, with ``pairs``, the pair marginals a ``"crf"`` student
    scores) as ``ChainTargets`` in the student's dtype and on its device, after checking that
    they fit the student."""
    potentials = tag_potentials(student)
    if potentials is None:
        raise TypeError(f"a {type(student).__name__} student has no tag potentials")
    marginals = targets["marginals"]
    expected = (student.batch_size, student.max_len, tag_count(student))
    if tuple(marginals.shape) != expected:
        raise ValueError(
            f"teacher marginals have shape {list(marginals.shape)}, the student needs "
            f"{list(expected)} (targets of other sentences or labels?)"
        )
    pair = None
    if pairs:
        kind = student_kind_of(student)
        pair = targets.get("pair_marginals")
        if (pair is not None) != (kind == "crf"):
            raise ValueError(
                f"targets {'with' if pair is not None else 'without'} pair marginals do not fit a "
                f"{kind!r} student: cache them for student_kind={kind!r}"
            )
    return ChainTargets(marginals, pair).to(potentials)
