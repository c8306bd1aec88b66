"""Detector: window scores -> anomaly/normal state changes, with durations in seconds."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

NORMAL = "normal"
ANOMALY = "anomaly"
RENAMED = {
    "k": "alert_seconds",
    "n": "within_seconds",
    "clear": "clear_seconds",
}
"""Window-count settings of earlier versions and the settings in seconds that replace them."""


@dataclass(frozen=True)
class DetectorSettings:
    """How window scores become state changes; durations in seconds of stream time."""

    sensitivity: float = 8.0
    """AMULET's sensitivity 1..10: each step below 8 raises the threshold by 30 %."""
    alert_seconds: float = 1.5
    """Anomaly when windows above threshold cover at least this much of the last
    `within_seconds` (each window stands for one hop of time). Defaults: the evaluation's
    choice for the default model, at most 1 false alarm per 24 h (docs/evaluation.md)."""
    within_seconds: float = 2.0
    burst_ratio: float = 1.2
    burst_seconds: float = 0.25
    """Also anomaly when windows above threshold x burst_ratio cover at least burst_seconds
    of the last within_seconds: a short, strong fault (a motor stopping for half a second)
    alerts without waiting for alert_seconds."""
    clear_seconds: float = 3.0
    """Back to normal after this long with every window at or below threshold x clear_ratio."""
    clear_ratio: float = 1.0
    level_floor_db: float = 1.5
    """A window level this many dB outside the range the model was trained on scores as high
    as the threshold (models with a trained level range; the tolerance is this plus half the
    range's width)."""
    learn_seconds: float = 0.0
    """Commissioning: score this many seconds of audio at the start without alerting, then
    set the stream's threshold and level range from them (0: no commissioning)."""

    def __post_init__(self) -> None:
        if not 0 < self.alert_seconds <= self.within_seconds <= 3600:
            raise ValueError(
                "alert_seconds and within_seconds need 0 < alert_seconds <= within_seconds "
                f"<= 3600 (got {self.alert_seconds}, {self.within_seconds})"
            )
        if not self.burst_ratio >= 1 or not 0 < self.burst_seconds <= self.within_seconds:
            raise ValueError(
                "burst_ratio must be at least 1 and burst_seconds in (0, within_seconds] "
                f"(got {self.burst_ratio}, {self.burst_seconds})"
            )
        if not 0 < self.clear_seconds <= 3600 or not 0 < self.clear_ratio <= 1:
            raise ValueError("clear_seconds must be in (0, 3600] and clear_ratio in (0, 1]")
        if not 0 <= self.learn_seconds <= 86400:
            raise ValueError(f"learn_seconds must be in [0, 86400] s, got {self.learn_seconds}")
        if not 0 < self.level_floor_db <= 60:
            raise ValueError(f"level_floor_db must be in (0, 60] dB, got {self.level_floor_db}")
        if not 0 < self.sensitivity <= 10:
            raise ValueError(f"sensitivity must be in (0, 10], got {self.sensitivity}")


def effective_threshold(threshold: float, sensitivity: float) -> float:
    """AMULET's rule: t' = t + t * (8 - s) * 0.30."""
    return threshold + threshold * (8.0 - sensitivity) * 0.30


def windows_for(seconds: float, hop_seconds: float) -> int:
    """Whole windows (at least 1) that cover `seconds` when each stands for `hop_seconds`."""
    return max(1, math.ceil(seconds / hop_seconds - 1e-9))


class Detector:
    """Per-stream state machine; feed window scores in time order. Not thread-safe."""

    def __init__(
        self, threshold: float, hop_seconds: float, settings: DetectorSettings | None = None
    ) -> None:
        self.settings = s = settings or DetectorSettings()
        self.threshold = effective_threshold(threshold, s.sensitivity)
        self.state: str | None = None
        """None until within_seconds of windows were seen: no made-up 'normal' at start."""
        self._need = windows_for(s.alert_seconds, hop_seconds)
        self._need_burst = windows_for(s.burst_seconds, hop_seconds)
        self._recent: deque[int] = deque(
            maxlen=max(self._need, windows_for(s.within_seconds, hop_seconds))
        )
        self._clear = windows_for(s.clear_seconds, hop_seconds)
        self._calm = 0
        self._why: deque[tuple[bool, bool]] = deque(maxlen=self._recent.maxlen)
        """(spectrum above, level above) of the recent windows, for the alert's cause."""

    def set_threshold(self, threshold: float) -> None:
        """A new base threshold (commissioning learned one); sensitivity applies to it."""
        self.threshold = effective_threshold(threshold, self.settings.sensitivity)

    def reset(self) -> None:
        """Forget everything (the audio was not the motor's): no state until enough windows."""
        self.state = None
        self._recent.clear()
        self._why.clear()
        self._calm = 0

    def cause(self) -> str:
        """What the recent windows above the threshold showed: 'spectrum', 'level' or 'both'
        (a kind counts when at least half as many windows showed it as the other)."""
        spectrum = sum(s for s, _ in self._why)
        level = sum(lv for _, lv in self._why)
        most = max(spectrum, level)
        kinds = [k for k, n in (("spectrum", spectrum), ("level", level)) if n and 2 * n >= most]
        return kinds[0] if len(kinds) == 1 else "both" if kinds else "spectrum"

    def is_anomalous(self, score: float) -> bool:
        """A single window's flag: score above the effective threshold."""
        return score > self.threshold

    def update(self, score: float, level: float | None = None) -> str | None:
        """Add one window's score; return the new state if it changed, else None. With a level
        term, `score` is the spectral score and the window counts the larger of the two."""
        why = (self.is_anomalous(score), level is not None and self.is_anomalous(level))
        score = score if level is None else max(score, level)
        self._why.append(why)
        strong = score > self.threshold * self.settings.burst_ratio
        self._recent.append(int(self.is_anomalous(score)) + int(strong))  # 0, 1 or 2
        if self.state != ANOMALY:
            above = sum(x > 0 for x in self._recent)
            if above >= self._need or sum(x > 1 for x in self._recent) >= self._need_burst:
                self.state = ANOMALY
                self._calm = 0
                return ANOMALY
            if self.state is None and len(self._recent) == self._recent.maxlen:
                self.state = NORMAL
                return NORMAL
            return None
        calm = score <= self.threshold * self.settings.clear_ratio
        self._calm = self._calm + 1 if calm else 0
        if self._calm >= self._clear:
            self.state = NORMAL
            self._recent.clear()
            return NORMAL
        return None
