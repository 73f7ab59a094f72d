"""The KD weight schedules of ``KDSettings``."""

from __future__ import annotations

import pytest

from structkd.train.module import KDSettings
from structkd.train.options import DistillOptions


def test_schedules() -> None:
    linear = KDSettings("struct", kd_weight=1.0, kd_weight_end=0.0, schedule="linear")
    assert linear.weight(0, 11) == 1.0 and linear.weight(5, 11) == pytest.approx(0.5)
    assert linear.weight(10, 11) == 0.0 and linear.weight(20, 11) == 0.0
    constant = KDSettings("struct", kd_weight=0.7, schedule="constant")
    assert {constant.weight(step, 100, epoch) for step, epoch in ((0, 0), (99, 9))} == {0.7}
    # the authors' recipe: max(0, 1 - 0.005 * epoch), whatever the step
    reference = KDSettings("struct", schedule="reference")
    assert reference.weight(0, 100, 0) == 1.0
    assert reference.weight(99, 100, 14) == pytest.approx(0.93)
    assert reference.weight(0, 100, 200) == 0.0 and reference.weight(0, 100, 300) == 0.0
    half = KDSettings("struct", kd_weight=0.5, schedule="reference")
    assert half.weight(0, 1, 10) == pytest.approx(0.5 * 0.95)


def test_settings_of_options_and_refusals() -> None:
    options = DistillOptions(train="t", dev="d", out="o", teachers=["x"], kd_schedule="reference")
    settings = KDSettings.of(options)
    assert settings is not None and settings.schedule == "reference"
    assert KDSettings.of(DistillOptions(train="t", dev="d", out="o", method="none")) is None
    with pytest.raises(ValueError, match="kd_schedule"):
        KDSettings("struct", schedule="cosine")
    with pytest.raises(ValueError, match="kd_weight"):
        KDSettings("struct", kd_weight=1.5)
