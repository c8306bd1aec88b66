"""Detector: AMULET's sensitivity, alert on what lasts (seconds), hysteresis back to normal."""

from __future__ import annotations

import pytest

from amulet_stream.scoring.detector import Detector, DetectorSettings, effective_threshold


def test_sensitivity_moves_threshold_30_percent_per_step() -> None:
    assert effective_threshold(0.4226, 8) == pytest.approx(0.4226)
    assert effective_threshold(0.4226, 10) == pytest.approx(0.4226 * 0.4)
    assert effective_threshold(1.0, 5) == pytest.approx(1.9)


def test_seconds_above_within_lookback_and_hysteresis() -> None:
    # windows every 0.25 s: alert on 0.75 s (3 windows) above within 1.25 s (5 windows)
    settings = DetectorSettings(
        alert_seconds=0.75,
        within_seconds=1.25,
        burst_ratio=float("inf"),
        clear_seconds=0.5,
        clear_ratio=0.8,
    )
    det = Detector(1.0, 0.25, settings)
    assert det.state is None  # no state before within_seconds of windows were seen
    seq = [2.0, 0.5, 2.0, 0.5, 0.5]  # 0.5 s above in 1.25 s: normal, once 1.25 s were seen
    assert [det.update(s) for s in seq] == [None] * 4 + ["normal"]
    assert det.update(2.0) is None  # 0.5 2.0 0.5 0.5 2.0 -> still 0.5 s
    assert det.update(2.0) == "anomaly"  # 0.75 s of the last 1.25 s
    assert det.update(0.9) is None  # below threshold but above 0.8 x threshold: not calm
    assert det.update(0.7) is None  # calm 0.25 s
    assert det.update(0.7) == "normal"  # calm 0.5 s
    assert det.state == "normal"


def test_same_seconds_at_another_hop() -> None:
    # the same rule at a 0.5 s hop: 2 windows above within 3 alert; a single one does not
    settings = DetectorSettings(
        alert_seconds=1.0, within_seconds=1.5, burst_ratio=float("inf"), clear_seconds=1.0
    )
    det = Detector(1.0, 0.5, settings)
    seq = (2.0, 0.5, 0.5, 2.0, 0.5, 2.0)
    assert [det.update(s) for s in seq] == [None] * 2 + ["normal"] + [None] * 2 + ["anomaly"]


def test_defaults_mild_and_long_or_strong_and_short() -> None:
    # at a 0.256 s hop: 1.5 s (6 windows) above threshold within 2 s (8 windows) ...
    det = Detector(1.0, 0.256)
    mild = [1.1] * 5 + [0.5] * 3
    assert [det.update(s) for s in mild] == [None] * 7 + ["normal"]
    assert [det.update(1.1) for _ in range(6)][-1] == "anomaly"
    # ... or 0.25 s (one window) above 1.2 x threshold: a motor stopping for half a second
    det = Detector(1.0, 0.256)
    assert [det.update(s) for s in (0.5, 1.15, 0.5, 1.15, 0.5, 0.5, 0.5)] == [None] * 7
    assert det.update(1.3) == "anomaly"  # before the 8 windows that would announce 'normal'


def test_reset_forgets_the_state() -> None:
    settings = DetectorSettings(alert_seconds=0.5, within_seconds=0.5, burst_ratio=float("inf"))
    det = Detector(1.0, 0.25, settings)
    assert [det.update(2.0), det.update(2.0)] == [None, "anomaly"]
    det.reset()  # e.g. the input was not the motor's for a while
    assert det.state is None
    assert [det.update(0.5), det.update(0.5)] == [None, "normal"]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="alert_seconds <= within_seconds"):
        DetectorSettings(alert_seconds=3, within_seconds=2)
    with pytest.raises(ValueError, match="burst_ratio"):
        DetectorSettings(burst_ratio=0.9)
    with pytest.raises(ValueError, match="clear_seconds"):
        DetectorSettings(clear_seconds=0)
    with pytest.raises(ValueError, match="sensitivity"):
        DetectorSettings(sensitivity=0)
