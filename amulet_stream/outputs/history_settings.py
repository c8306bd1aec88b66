"""[history]: how much of the event history is kept (plain settings: no SQLite)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class HistorySettings:
    """How much history is kept (config [history])."""

    keep_days: float = 90.0
    """Events older than this many days are deleted."""
    max_mb: float = 100.0
    """And the oldest events beyond this file size, MB (1 MB = 1,000,000 bytes)."""

    def __post_init__(self) -> None:
        for name, low, high in (("keep_days", 0.01, 36500.0), ("max_mb", 0.1, 1e6)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"{name} must be within {low:g}..{high:g}, got {value:g}")
