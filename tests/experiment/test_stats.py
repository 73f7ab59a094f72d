"""Paired differences over seeds and their t intervals: hand-computed values, scipy's, and the
table used without scipy."""

from __future__ import annotations

import math
import sys

import pytest

from structkd.experiment.stats import (
    T_975,
    PairedDifference,
    confidence_interval,
    paired_differences,
    t_quantile,
)


@pytest.fixture
def without_scipy(monkeypatch):
    """``import scipy.stats`` raises ``ImportError`` (as on an install without scipy)."""
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    monkeypatch.setitem(sys.modules, "scipy", None)


def test_the_table_and_the_expansion_match_scipy() -> None:
    student_t = pytest.importorskip("scipy.stats").t
    for df in range(1, 31):
        exact = float(student_t.ppf(0.975, df))
        assert T_975[df - 1] == pytest.approx(exact, abs=1e-6)
        assert t_quantile(0.975, df, use_scipy=False) == pytest.approx(exact, abs=1e-6)
        assert t_quantile(0.025, df, use_scipy=False) == pytest.approx(-exact, abs=1e-6)
        assert t_quantile(0.975, df) == pytest.approx(exact, rel=1e-12)
    for df in (31, 40, 60, 100, 1000):
        for probability in (0.001, 0.05, 0.9, 0.95, 0.975, 0.995, 0.999):
            exact = float(student_t.ppf(probability, df))
            assert t_quantile(probability, df, use_scipy=False) == pytest.approx(exact, abs=2e-6)


def test_known_t_quantiles() -> None:
    # textbook values: t_{0.975} with 1, 2, 4, 9 and 30 degrees of freedom
    for df, value in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)]:
        assert t_quantile(0.975, df, use_scipy=False) == pytest.approx(value, abs=5e-4)
    with pytest.raises(ValueError, match="needs scipy"):
        t_quantile(0.95, 5, use_scipy=False)
    with pytest.raises(ValueError, match="degree of freedom"):
        t_quantile(0.975, 0)
    with pytest.raises(ValueError, match=r"probability in \(0, 1\)"):
        t_quantile(1.0, 3)


@pytest.mark.parametrize("use_scipy", [True, False])
def test_confidence_interval_by_hand(use_scipy: bool) -> None:
    # [1, 2, 3]: mean 2, sample std 1, n 3: 2 -+ 4.302653 / sqrt(3) = 2 -+ 2.484138
    low, high = confidence_interval([1.0, 2.0, 3.0], use_scipy=use_scipy)
    assert low == pytest.approx(2 - 2.484138, abs=1e-6)
    assert high == pytest.approx(2 + 2.484138, abs=1e-6)
    # two values: t with 1 degree of freedom, 12.706205 * s / sqrt(2), s = |a - b| / sqrt(2)
    low, high = confidence_interval([0.5, 1.5], use_scipy=use_scipy)
    assert (low, high) == pytest.approx((1 - 6.353102, 1 + 6.353102), abs=1e-6)
    # no spread: the interval is the point
    assert confidence_interval([3.0, 3.0, 3.0], use_scipy=use_scipy) == (3.0, 3.0)
    assert confidence_interval([1.0], use_scipy=use_scipy) is None
    assert confidence_interval([], use_scipy=use_scipy) is None


def test_confidence_interval_matches_scipy_paired_t_test() -> None:
    stats = pytest.importorskip("scipy.stats")
    ours = [88.26, 88.24, 88.61, 87.9, 88.75]
    theirs = [88.39, 88.12, 88.05, 87.7, 88.3]
    for level in (0.9, 0.95, 0.99):
        reference = stats.ttest_rel(ours, theirs).confidence_interval(confidence_level=level)
        interval = confidence_interval([a - b for a, b in zip(ours, theirs, strict=True)], level)
        assert interval == pytest.approx((reference.low, reference.high), abs=1e-9)
    with pytest.raises(ValueError, match="confidence level"):
        confidence_interval([1.0, 2.0], level=95)


def test_without_scipy_the_table_gives_the_same_95_interval(without_scipy) -> None:
    values = [0.4, 0.5, 0.6, 0.2]
    mean, std = 0.425, math.sqrt(sum((v - 0.425) ** 2 for v in values) / 3)
    half = 3.182446 * std / 2
    assert confidence_interval(values) == pytest.approx((mean - half, mean + half), abs=1e-9)
    with pytest.raises(ValueError, match="needs scipy"):
        confidence_interval(values, level=0.9)


def test_paired_differences_pair_by_seed() -> None:
    ours = {1: 85.0, 2: 86.0, 3: 87.0, 4: 90.0}
    theirs = {3: 86.5, 1: 84.0, 2: 85.0, 5: 70.0}
    paired = paired_differences(ours, theirs)
    # seeds 4 and 5 have no partner
    assert paired.seeds == (1, 2, 3) and paired.n == 3
    assert paired.differences == pytest.approx((1.0, 1.0, 0.5))
    assert paired.mean == pytest.approx(2.5 / 3)
    assert paired.std == pytest.approx(math.sqrt(1 / 12))
    half = 4.302653 * math.sqrt(1 / 12) / math.sqrt(3)
    assert paired.interval == pytest.approx((2.5 / 3 - half, 2.5 / 3 + half), abs=1e-6)
    assert paired.verdict == "higher"  # [0.12, 1.55]
    assert paired.text() == "+0.83 [+0.12, +1.55] (n=3)"
    # the same differences the other way round: a loss
    reverse = paired_differences(theirs, ours)
    assert reverse.verdict == "lower" and reverse.text() == "-0.83 [-1.55, -0.12] (n=3)"


def test_verdicts_and_texts() -> None:
    # a mean gain of 1 whose interval includes 0: unresolved
    noisy = paired_differences({1: 3.0, 2: -1.0, 3: 1.0}, {1: 0.0, 2: 0.0, 3: 0.0})
    assert noisy.verdict == "unresolved"
    assert noisy.text() == "+1.00 [-3.97, +5.97] (n=3)"
    # one paired seed: no interval, nothing called
    single = paired_differences({1: 88.5, 2: 90.0}, {1: 88.33})
    assert single.n == 1 and single.std is None and single.interval is None
    assert single.verdict == "unresolved" and single.text() == "+0.17 (n=1: no interval)"
    # no common seed
    empty = paired_differences({1: 1.0}, {2: 1.0})
    assert empty.n == 0 and empty.mean is None and empty.text() == "-"
    assert empty.verdict == "unresolved"
    # an interval touching 0 does not exclude it; -0.00 is written +0.00
    touching = PairedDifference(seeds=(1, 2), differences=(-0.001, 0.001), interval=(0.0, 1.0))
    assert touching.verdict == "unresolved"
    assert touching.text() == "+0.00 [+0.00, +1.00] (n=2)"
