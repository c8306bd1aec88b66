"""Loudness as a signal: each window's level from its log-mel features, against the range of
levels the model heard in training; a level outside it (by more than a tolerance) is scored
like a reconstruction error, so a machine heard 5 dB louder or quieter alerts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
DB_FEATURES = frozenset({"logmel-v1"})
"""Profiles whose features are log-mel bands in dB: their level can be read off the vectors."""


def vector_power(vectors: F32, frame_dim: int) -> F32:
    """Mean linear power of the log-mel bands (dB) of each vector's first frame: (M,) float32.
    A window's level is 10 log10 of the mean over its vectors (WindowMeans, as for scores)."""
    first = np.clip(vectors[:, :frame_dim].astype(np.float64), -300.0, 300.0)  # no overflow
    return np.asarray(np.mean(np.power(10.0, first / 10.0), axis=1), np.float32)


def power_db(power: F64) -> F64:
    """Linear power -> dB (floor -200 dB; NaN stays NaN)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(10.0 * np.log10(np.maximum(power, 1e-20)), np.float64)


def summary(levels: F64) -> dict[str, float]:
    """The model's level range from training window levels (dB, log-mel power): p0.5, median,
    p99.5, rounded to 0.01 dB."""
    finite = levels[np.isfinite(levels)]
    if finite.size == 0:
        raise ValueError("no window of audio to measure the level on")
    low, median, high = np.percentile(finite, [0.5, 50.0, 99.5])
    values = {"low_db": low, "median_db": median, "high_db": high}
    return {k: round(float(v), 2) for k, v in values.items()}


@dataclass(frozen=True)
class LevelBand:
    """The window levels (dB of log-mel power) a model was trained on: [low, high], median."""

    low_db: float
    high_db: float
    median_db: float
    margin_db: float = 0.0
    """How far held-out training recordings went beyond the range (learned tolerance)."""

    @property
    def half_db(self) -> float:
        """Half the width of the trained range: its own part of the tolerance."""
        return (self.high_db - self.low_db) / 2.0

    def tolerance_db(self, floor_db: float) -> float:
        """How far outside the range a level may go: the learned margin, at least `floor_db`."""
        return max(floor_db, self.margin_db)

    def term(self, level_db: float, threshold: float, floor_db: float) -> float:
        """The level's score: `threshold` x the distance from the range's middle over (half its
        width + tolerance): above `threshold` exactly when the level is further outside the
        trained range than the tolerance."""
        middle = (self.low_db + self.high_db) / 2.0
        return threshold * abs(level_db - middle) / (self.half_db + self.tolerance_db(floor_db))


def level_band(meta_raw: dict[str, Any]) -> LevelBand | None:
    """The model's trained level range from its metadata ('level'); None for models without
    it (older models, AMULET imports). Raises ValueError when it is malformed."""
    doc = meta_raw.get("level")
    if doc is None:
        return None
    keys = ("low_db", "high_db", "median_db")
    values = [doc.get(k) if isinstance(doc, dict) else None for k in keys]
    if not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise ValueError(
            f"level in the model metadata needs numbers {', '.join(keys)}, got {doc!r}"
        )
    low, high, median = (float(v) for v in values)  # type: ignore[arg-type]
    if not low <= median <= high:
        raise ValueError(
            f"level in the model metadata needs low_db <= median_db <= high_db: {doc!r}"
        )
    margin = doc.get("margin_db", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 100:
        raise ValueError(f"level margin_db in the model metadata must be 0 to 100 dB: {doc!r}")
    return LevelBand(low, high, median, float(margin))
