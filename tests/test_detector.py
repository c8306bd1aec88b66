"""Detector: AMULET's sensitivity, k-of-n trigger, hysteresis back to normal."""

from __future__ import annotations

import pytest

from amulet_stream.detector import Detector, DetectorSettings, effective_threshold


def test_sensitivity_moves_threshold_30_percent_per_step() -> None:
    assert effective_threshold(0.4226, 8) == pytest.approx(0.4226)
    assert effective_threshold(0.4226, 10) == pytest.approx(0.4226 * 0.4)
    assert effective_threshold(1.0, 5) == pytest.approx(1.9)


def test_k_of_n_trigger_and_hysteresis() -> None:
    det = Detector(1.0, DetectorSettings(k=3, n=5, clear=2, clear_ratio=0.8))
    seq = [2.0, 0.5, 2.0, 0.5, 0.5]  # 2 of 5 above: stays normal
    assert [det.update(s) for s in seq] == [None] * 5
    assert det.update(2.0) is None  # window: 0.5 2.0 0.5 0.5 2.0 -> still 2 of 5
    assert det.update(2.0) == "anomaly"  # 3 of the last 5
    assert det.update(0.9) is None  # below threshold but above 0.8 x threshold: not calm
    assert det.update(0.7) is None  # calm 1
    assert det.update(0.7) == "normal"  # calm 2
    assert det.state == "normal"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="k-of-n"):
        DetectorSettings(k=6, n=5)
    with pytest.raises(ValueError, match="sensitivity"):
        DetectorSettings(sensitivity=0)
