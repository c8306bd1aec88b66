"""What a stream's records carry: the time stamps, the counts of a stream since it started, and
a file's verdict."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Record = dict[str, Any]
"""One output record (a JSON object): a score, a state change, a summary."""


def utc_iso(ts: float | None = None) -> str:
    """UTC ISO 8601 time with milliseconds; now if ts is None."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class StreamStats:
    """Counts of one stream since it started."""

    windows: int = 0
    anomalous_windows: int = 0
    skipped_windows: int = 0
    """Windows with NaN or infinite samples: not scored."""
    too_short: bool = False
    """The stream ended before its first window was complete."""
    anomaly_events: int = 0
    input_problems: int = 0
    """input_problem events raised."""
    audio_seconds: float = 0.0
    max_score: float = 0.0
    level_dbfs: float = -120.0
    """RMS level of the latest block."""
    clipped: int = 0
    """Samples at or beyond full scale."""
    inference: list[float] = field(default_factory=list)
    """Seconds each batch took in features + model (drained by the metrics sink)."""
    lags: list[float] = field(default_factory=list)
    """Seconds from the end of each window's audio to its decision (live input only)."""


def verdict(stats: StreamStats) -> str:
    """A file's verdict: 'defect' if an alert was raised, 'input_problem' if the input was not
    a motor's for a while (silence, clipping...), 'too_short' if the audio was shorter than a
    window, 'unscorable' if every window had NaN or infinite samples, else 'good'."""
    if stats.anomaly_events:
        return "defect"
    if stats.too_short:
        return "too_short"
    if stats.windows == 0:
        return "unscorable"
    return "input_problem" if stats.input_problems else "good"
