"""The one table of student training methods: every place that names a KD method (the CLI's
choices, the teacher-output cache, the experiment runner, the report) reads it from here.

A method is how a student learns from its teacher(s):

=========  ================  ==============================================================
name       title             what the student is trained on
=========  ================  ==============================================================
none       no KD             gold labels only (no teacher)
token      Token KD          per-token cross-entropy to the teacher's local softmax
topk       Top-K KD          the teacher's k best structures, uniformly weighted
topwk      Top-WK KD         the teacher's k best structures, weighted by their probability
posterior  Posterior KD      KL between teacher and student token marginals
struct     structural KD     the exact cross-entropy from the teacher's distribution over
                             whole structures (the teacher's marginals on the student's
                             substructures)
=========  ================  ==============================================================

The order of the table is the order of reports (weakest idea first, structural KD last).
A task says which of these it implements (``Task.kd_methods``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_METHOD",
    "KD_METHODS",
    "METHODS",
    "METHOD_NAMES",
    "TEMPERATURE_MODES",
    "KDMethod",
    "method",
]


@dataclass(frozen=True)
class KDMethod:
    """One training method: its CLI ``name``, its ``title`` in reports, whether it reads a
    teacher (``uses_teacher``), whether it uses the temperature (``tempered``), a one-line
    ``description``, whether ``temperature_mode`` changes it (``uses_temperature_mode``), and
    ``cache_kind``: methods with the same cache kind cache the same teacher outputs (topk and
    topwk both cache the k best, ``"kbest"``); ``""`` for a method without a teacher; ``uses_k``:
    whether the option ``k`` (structures kept) changes it.

    The teacher and student halves of each method are in :mod:`structkd.distill.halves`."""

    name: str
    title: str
    uses_teacher: bool
    tempered: bool
    description: str
    uses_temperature_mode: bool = False
    cache_kind: str = ""
    uses_k: bool = False


METHODS: dict[str, KDMethod] = {
    m.name: m
    for m in (
        KDMethod("none", "no KD", False, False, "gold labels only"),
        KDMethod(
            "token",
            "Token KD",
            True,
            True,
            "per-token KL to the teacher's local softmax",
            cache_kind="token",
        ),
        KDMethod(
            "topk",
            "Top-K KD",
            True,
            True,
            "the teacher's k best structures, uniform",
            cache_kind="kbest",
            uses_k=True,
        ),
        KDMethod(
            "topwk",
            "Top-WK KD",
            True,
            True,
            "the teacher's k best, probability-weighted",
            cache_kind="kbest",
            uses_k=True,
        ),
        KDMethod(
            "posterior", "Posterior KD", True, True, "KL of token marginals", cache_kind="posterior"
        ),
        KDMethod(
            "struct",
            "structural KD",
            True,
            True,
            "exact cross-entropy over structures",
            uses_temperature_mode=True,
            cache_kind="struct",
        ),
    )
}
"""Every method, in report order."""

METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
"""All method names (``none`` included), in report order."""

KD_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.uses_teacher)
"""The methods that read a teacher."""

DEFAULT_METHOD = "struct"

TEMPERATURE_MODES = ("global", "local")
"""``global``: every potential of teacher and student divided by T, exact inference on both (a true
cross-entropy); ``local``: the authors' form, each teacher marginal raised to 1/T and renormalized
per position (structural KD only)."""


def method(name: str) -> KDMethod:
    """The method called ``name`` (``ValueError`` naming the known ones otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown KD method {name!r}; choose one of {', '.join(METHOD_NAMES)}"
        ) from None
