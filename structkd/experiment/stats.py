"""Paired statistics over seeds: can a difference between two methods be told from noise?

The experiment gives every method the same seeds, and the same seed gives the same initialization
and batch order, so two methods are compared **per seed**: ``paired_differences(ours, theirs)``
pairs the scores of the seeds both have and returns the per-seed differences with their mean,
sample standard deviation and a confidence interval of the mean (``confidence_interval``: Student
t with ``n - 1`` degrees of freedom, ``n`` the number of paired seeds). A difference is called a
gain (or a loss) only when the interval excludes 0 (``PairedDifference.verdict``); with one
paired seed there is no interval and nothing is called.

The t quantile comes from ``scipy.stats.t.ppf`` when scipy is importable (it is not a dependency
of structkd); without it, from ``T_975`` (the 0.975 quantiles for 1 to 30 degrees of freedom:
95% intervals) and, beyond 30 degrees of freedom, from the Cornish-Fisher expansion around the
normal quantile (within 2e-6 of the exact value there, for the 0.9 to 0.999 quantiles).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "T_975",
    "PairedDifference",
    "Verdict",
    "confidence_interval",
    "paired_differences",
    "t_quantile",
]

T_975 = (
    12.706205,
    4.302653,
    3.182446,
    2.776445,
    2.570582,
    2.446912,
    2.364624,
    2.306004,
    2.262157,
    2.228139,
    2.200985,
    2.178813,
    2.160369,
    2.144787,
    2.131450,
    2.119905,
    2.109816,
    2.100922,
    2.093024,
    2.085963,
    2.079614,
    2.073873,
    2.068658,
    2.063899,
    2.059539,
    2.055529,
    2.051831,
    2.048407,
    2.045230,
    2.042272,
)
"""The 0.975 quantile of Student's t with ``1 .. 30`` degrees of freedom (``T_975[df - 1]``):
the half-width of a 95% interval in standard errors, used when scipy is missing."""

Verdict = Literal["higher", "lower", "unresolved"]


def t_quantile(probability: float, df: int, *, use_scipy: bool = True) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom.

    With scipy importable (and ``use_scipy``): ``scipy.stats.t.ppf``. Without: the table
    ``T_975`` for ``probability`` 0.975 and ``df <= 30``, the Cornish-Fisher expansion for
    ``df > 30`` (any probability); other cases raise ``ValueError`` (they need scipy)."""
    if not 0 < probability < 1:
        raise ValueError(f"a quantile needs a probability in (0, 1); got {probability}")
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom; got {df}")
    if use_scipy:
        try:
            from scipy.stats import t as student_t
        except ImportError:
            pass
        else:
            return float(student_t.ppf(probability, df))
    if df > len(T_975):
        return _cornish_fisher(probability, df)
    if math.isclose(probability, 0.975):
        return T_975[df - 1]
    if math.isclose(probability, 0.025):
        return -T_975[df - 1]
    raise ValueError(
        f"the t quantile {probability} with {df} degrees of freedom needs scipy (without it, "
        "only 95% intervals are tabulated)"
    )


def _cornish_fisher(probability: float, df: int) -> float:
    """The t quantile from the normal one, ``z + g1(z)/df + ... + g4(z)/df^4`` (Abramowitz and
    Stegun 26.7.5)."""
    z = statistics.NormalDist().inv_cdf(probability)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def confidence_interval(
    values: Sequence[float], level: float = 0.95, *, use_scipy: bool = True
) -> tuple[float, float] | None:
    """The ``level`` confidence interval of the mean of ``values``: ``mean -+ t * s / sqrt(n)``,
    ``s`` the sample standard deviation, ``t`` the ``(1 + level) / 2`` quantile of Student's t
    with ``n - 1`` degrees of freedom. ``None`` for fewer than two values (no interval)."""
    if not 0 < level < 1:
        raise ValueError(f"a confidence level is in (0, 1); got {level}")
    n = len(values)
    if n < 2:
        return None
    mean = statistics.fmean(values)
    half = t_quantile((1 + level) / 2, n - 1, use_scipy=use_scipy) * statistics.stdev(values)
    half /= math.sqrt(n)
    return (mean - half, mean + half)


def _signed(value: float) -> str:
    """``+0.42`` / ``-0.10`` (``+0.00`` for a value that rounds to zero)."""
    text = f"{value:+.2f}"
    return "+0.00" if text == "-0.00" else text


@dataclass(frozen=True)
class PairedDifference:
    """The per-seed differences ``ours - theirs`` over the ``seeds`` both sides have.

    ``mean`` is ``None`` without a paired seed; ``std`` (sample) and ``interval`` (``level``
    confidence interval of the mean) are ``None`` with fewer than two."""

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    level: float = 0.95
    interval: tuple[float, float] | None = None

    @property
    def n(self) -> int:
        """The number of paired seeds."""
        return len(self.differences)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.differences) if self.differences else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.differences) if self.n > 1 else None

    @property
    def verdict(self) -> Verdict:
        """``higher`` when the interval lies above 0, ``lower`` when below, else (0 inside
        the interval, or no interval) ``unresolved``."""
        if self.interval is None:
            return "unresolved"
        low, high = self.interval
        if low > 0:
            return "higher"
        if high < 0:
            return "lower"
        return "unresolved"

    def text(self) -> str:
        """``+0.42 [-0.10, +0.94] (n=3)``; ``+0.17 (n=1: no interval)``; ``-`` without a
        paired seed."""
        if self.mean is None:
            return "-"
        if self.interval is None:
            return f"{_signed(self.mean)} (n={self.n}: no interval)"
        low, high = self.interval
        return f"{_signed(self.mean)} [{_signed(low)}, {_signed(high)}] (n={self.n})"


def paired_differences(
    ours: Mapping[int, float],
    theirs: Mapping[int, float],
    level: float = 0.95,
    *,
    use_scipy: bool = True,
) -> PairedDifference:
    """Pair ``ours`` and ``theirs`` (score by seed) on the seeds both have (in sorted order) and
    return the differences ``ours[seed] - theirs[seed]`` with their ``level`` interval. Seeds
    only one side has are left out."""
    seeds = tuple(sorted(set(ours) & set(theirs)))
    differences = tuple(float(ours[seed]) - float(theirs[seed]) for seed in seeds)
    return PairedDifference(
        seeds=seeds,
        differences=differences,
        level=level,
        interval=confidence_interval(differences, level, use_scipy=use_scipy),
    )
