"""Output sinks of the CLI: JSON lines on stdout, AMULET's JSON, a progress line on stderr."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

Record = dict[str, Any]


class JsonLines:
    """One JSON object per line, flushed at once (for pipes and live monitoring)."""

    def __init__(self, scores: bool, stream: TextIO | None = None) -> None:
        self.scores = scores
        self._out = stream or sys.stdout

    def emit(self, record: Record) -> None:
        """Write an event (always) or a score line (with --scores)."""
        if record["event"] == "score" and not self.scores:
            return
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()


def amulet_name(start: float, end: float) -> str:
    """AMULET's row name: start and end in seconds, rounded to one decimal ('5.3-5.4')."""
    return f"{round(start, 1)}-{round(end, 1)}"


def amulet_json(
    score_records: list[Record], problem: str | None = None, verdict: str = "too_short"
) -> dict[str, Any]:
    """AMULET's /submit answer: the anomalous rows, or its 'No anomalies detected' entry; for
    a recording nothing could be scored of, no rows, the verdict ('too_short' or
    'unscorable') and the reason."""
    if problem is not None:
        return {"Analysis": [], "verdict": verdict, "error": problem}
    rows = [
        {"Anomaly": True, "filename": amulet_name(r["start"], r["end"]), "value": r["score"]}
        for r in score_records
        if r["anomaly"]
    ]
    return {"Analysis": rows or [{"Anomaly": "No anomalies detected"}]}


class Progress:
    """A single self-overwriting line on stderr, only when stderr is a terminal."""

    def __init__(self, total_seconds: float, label: str, stream: TextIO | None = None) -> None:
        self._err = stream or sys.stderr
        self.enabled = self._err.isatty()
        self.total = total_seconds
        self.label = label
        self._t0 = time.monotonic()
        self._last = 0.0

    def update(self, done_seconds: float) -> None:
        """Redraw at most 5 times a second."""
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.2:
            return
        self._last = now
        pct = 100.0 * done_seconds / self.total if self.total else 100.0
        speed = done_seconds / max(now - self._t0, 1e-9)
        self._err.write(
            f"\r{self.label}: {done_seconds:7.1f}/{self.total:.1f} s audio "
            f"({pct:5.1f} %, {speed:6.0f}x real time)"
        )
        self._err.flush()

    def close(self) -> None:
        """Clear the line."""
        if self.enabled:
            self._err.write("\r\033[K")
            self._err.flush()
