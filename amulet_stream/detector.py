"""Detector: window scores -> anomaly/normal state changes (sensitivity, k-of-n, hysteresis)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

NORMAL = "normal"
ANOMALY = "anomaly"


@dataclass(frozen=True)
class DetectorSettings:
    """How window flags become state changes."""

    sensitivity: float = 8.0
    """AMULET's sensitivity 1..10: each step below 8 raises the threshold by 30 %."""
    k: int = 3
    """Anomalous windows among the last n that switch to anomaly."""
    n: int = 5
    clear: int = 5
    """Consecutive windows below threshold x clear_ratio that switch back to normal."""
    clear_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"k-of-n needs 1 <= k <= n (k={self.k}, n={self.n})")
        if self.clear < 1 or not 0 < self.clear_ratio <= 1:
            raise ValueError("clear must be >= 1 and clear_ratio in (0, 1]")
        if not 0 < self.sensitivity <= 10:
            raise ValueError(f"sensitivity must be in (0, 10], got {self.sensitivity}")


def effective_threshold(threshold: float, sensitivity: float) -> float:
    """AMULET's rule: t' = t + t * (8 - s) * 0.30."""
    return threshold + threshold * (8.0 - sensitivity) * 0.30


class Detector:
    """Per-stream state machine; feed scores in time order. Not thread-safe."""

    def __init__(self, threshold: float, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self.threshold = effective_threshold(threshold, self.settings.sensitivity)
        self.state = NORMAL
        self._recent: deque[bool] = deque(maxlen=self.settings.n)
        self._calm = 0

    def is_anomalous(self, score: float) -> bool:
        """A single window's flag: score above the effective threshold."""
        return score > self.threshold

    def update(self, score: float) -> str | None:
        """Add one window score; return the new state if it changed, else None."""
        flag = self.is_anomalous(score)
        self._recent.append(flag)
        if self.state == NORMAL:
            if sum(self._recent) >= self.settings.k:
                self.state = ANOMALY
                self._calm = 0
                return ANOMALY
            return None
        calm = score <= self.threshold * self.settings.clear_ratio
        self._calm = self._calm + 1 if calm else 0
        if self._calm >= self.settings.clear:
            self.state = NORMAL
            self._recent.clear()
            return NORMAL
        return None
