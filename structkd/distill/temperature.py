"""The temperature rule of every KD method, in one place: the two temperatures of the KD term,
both named, both exact to their definition, and the ``T^2`` factor of the training loss.

* ``"global"``: divide every potential of the teacher and of the student by ``T`` and run exact
  inference, ``P^T(y) ∝ exp(Score(y) / T)``. The loss is then a true cross-entropy between the two
  tempered distributions, ``- sum_y P_t^T(y) log P_s^T(y) >= H(P_t^T) >= 0``.
* ``"local"``: the authors' code. Compute the teacher's marginals at its own temperature, then raise
  each per-position table to ``1 / T`` and renormalize it (:func:`local_temper`); the student stays
  at its own temperature (``T = 1`` unless built tempered). For a token-factorized student this is
  a sum of per-token cross-entropies to the sharpened/flattened token distributions. A student
  that scores pairs (a CRF) is refused at ``T != 1``: tempering its token and pair tables
  separately leaves them inconsistent (``sum_c pair_i(a, c) != token_i(a)``), no distribution has
  them as marginals, and the "loss" is unbounded below (a student fitting them drives it
  negative: measured on random CRFs, at T=2 within a few hundred Adam steps). Use ``"global"``.

Neither definition multiplies by ``T^2``: the trainer scales the KD term by :func:`kd_scale`
(``T^2``, so that its gradient keeps its magnitude as ``T`` grows, as in the paper's recipe).

Which side is tempered, per method (:mod:`structkd.distill.halves` applies it):

=========  =========================================  ==========================================
method     teacher (cached)                           student
=========  =========================================  ==========================================
struct     global: ``teacher.tempered(T)``;           global: ``student.tempered(T)``;
           local: :func:`local_temper` of its         local: as built
           marginals
posterior  ``teacher.tempered(T)``                    ``student.tempered(T)``
topk(w)    k best of ``teacher.tempered(T)``          ``student.tempered(T)``
token      emissions as built (``/ T`` at the loss)   emissions / ``T`` at the loss
=========  =========================================  ==========================================
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from structkd.distill.bridges import ChainTargets
from structkd.distill.methods import TEMPERATURE_MODES
from structkd.structures.base import StructDistribution, check_temperature, length_mask

__all__ = [
    "TEMPERATURE_MODES",
    "TemperatureMode",
    "check_temperature_mode",
    "globally_tempered",
    "kd_scale",
    "local_temper",
    "temper_table",
]

TemperatureMode = Literal["global", "local"]


def kd_scale(temperature: float) -> float:
    """The factor ``T^2`` of the KD term in the training loss
    (``lambda * T^2 * L_KD + (1 - lambda) * L_gold``): a KD gradient scales as ``1 / T^2`` with
    tempered potentials ``s / T``, so this keeps its magnitude as ``T`` grows. ``1`` at ``T = 1``.
    No loss of :mod:`structkd.distill` applies it."""
    return check_temperature(temperature) ** 2


def globally_tempered(distribution: StructDistribution, temperature: float) -> StructDistribution:
    """The global temperature: ``distribution.tempered(T)`` (every potential divided by ``T``,
    ``P^T(y) ∝ exp(Score(y) / T)``); the distribution itself at ``T = 1``."""
    temperature = check_temperature(temperature)
    return distribution.tempered(temperature) if temperature != 1.0 else distribution


def check_temperature_mode(temperature_mode: str) -> str:
    """Validate a temperature mode: ``"global"`` or ``"local"``."""
    if temperature_mode not in TEMPERATURE_MODES:
        raise ValueError(
            f"temperature_mode must be one of {TEMPERATURE_MODES}, got {temperature_mode!r}"
        )
    return temperature_mode


def temper_table(
    probabilities: Tensor, temperature: float, table_dims: int, inside: Tensor
) -> Tensor:
    """Raise each probability table to ``1 / T`` and renormalize it to sum to 1.

    ``probabilities`` ``[batch, positions, *table]`` with ``table_dims`` trailing table dimensions;
    ``inside`` ``[batch, positions]`` bool marks the tables to temper; the others come back 0.
    ``out[b, i, t] = p[b, i, t] ** (1 / T) / sum_t' p[b, i, t'] ** (1 / T)`` (computed in log
    space; zero entries stay zero).
    """
    temperature = check_temperature(temperature)
    flat = probabilities.flatten(start_dim=probabilities.dim() - table_dims)
    tempered = torch.softmax(torch.log(flat) / temperature, dim=-1)
    tempered = torch.where(inside.unsqueeze(-1), tempered, torch.zeros_like(tempered))
    return tempered.reshape(probabilities.shape)


def local_temper(targets: ChainTargets, temperature: float, lengths: Tensor) -> ChainTargets:
    """Local temperature of teacher targets (the authors' definition).

    ``marginals`` ``[batch, seq_len, n_labels]``: at each real token ``i``,
    ``P(y_i = l) ** (1 / T)`` renormalized over the labels ``l``; padded positions stay 0.
    ``lengths`` ``[batch]``. At ``T = 1`` the targets come back unchanged.

    Raises ``ValueError`` for targets with ``pair_marginals`` (a CRF student) at ``T != 1``: see
    the module docstring.
    """
    temperature = check_temperature(temperature)
    if temperature == 1.0:
        return targets
    if targets.pair_marginals is not None:
        raise ValueError(
            "temperature_mode='local' with T != 1 is not defined for a student that scores tag "
            "pairs (a CRF): the separately tempered token and pair targets are inconsistent and "
            "the loss is unbounded below; use temperature_mode='global'"
        )
    token_inside = length_mask(lengths, targets.marginals.shape[1]).to(targets.marginals.device)
    return ChainTargets(temper_table(targets.marginals, temperature, 1, token_inside), None)
