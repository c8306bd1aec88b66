"""What the console shows live: each stream's state, model, threshold, input level, last alert
and its score over the last 10 minutes (at most one point a second: the highest), and the last
events when no history is kept. Fed by the processing loop, read by the HTTP threads."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from amulet_stream.outputs.history import KEPT
from amulet_stream.scoring.commission import Learned
from amulet_stream.scoring.model import Model

SERIES_SECONDS = 600.0
"""How far back the score series goes, s."""
RECENT = 200
"""Events kept in memory when there is no history file."""


@dataclass
class _Stream:
    model: dict[str, Any]
    threshold: float
    state: str = "starting"
    since: float = field(default_factory=time.time)
    level_dbfs: float | None = None
    last_alert: dict[str, Any] | None = None
    series: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=720))
    """(UTC seconds, highest score in that second)."""


class Board:
    """The live state of every stream; thread-safe."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._lock = threading.Lock()

    def stream_started(self, stream: str, model: dict[str, Any], threshold: float) -> None:
        """A stream begins (or its model or threshold changed): `model` says which it is."""
        with self._lock:
            old = self._streams.get(stream)
            if old is None:
                self._streams[stream] = _Stream(model, threshold)
            else:
                old.model, old.threshold = model, threshold

    def stream_removed(self, stream: str) -> None:
        """A stream left the config."""
        with self._lock:
            self._streams.pop(stream, None)

    def level(self, stream: str, dbfs: float) -> None:
        """The latest input level of a stream, dBFS."""
        with self._lock:
            if stream in self._streams:
                self._streams[stream].level_dbfs = round(dbfs, 1)

    def record(self, rec: dict[str, Any]) -> None:
        """A score (into the series) or a state change (the stream's state, the recent list)."""
        now = time.time()
        with self._lock:
            s = self._streams.get(rec.get("stream", ""))
            if s is None:
                return
            if rec.get("event") == "score" and rec.get("score") is not None:
                second = float(int(now))
                if s.series and s.series[-1][0] == second:
                    s.series[-1] = (second, max(s.series[-1][1], float(rec["score"])))
                else:
                    s.series.append((second, float(rec["score"])))
                if rec.get("threshold") is not None:
                    s.threshold = float(rec["threshold"])
            elif rec.get("event") in KEPT:
                s.state, s.since = str(rec["event"]), now
                if rec["event"] == "anomaly":
                    s.last_alert = dict(rec)
                self._recent.appendleft(dict(rec))

    def streams(self) -> list[dict[str, Any]]:
        """Every stream as the console's JSON shows it, in the order they started."""
        cut = time.time() - SERIES_SECONDS
        with self._lock:
            return [
                {
                    "id": sid,
                    "state": s.state,
                    "since": round(s.since, 3),
                    "threshold": s.threshold,
                    "level_dbfs": s.level_dbfs,
                    "model": s.model,
                    "last_alert": s.last_alert,
                    "series": [[t, round(v, 6)] for t, v in s.series if t >= cut],
                }
                for sid, s in self._streams.items()
            ]

    def recent(self) -> list[dict[str, Any]]:
        """The last state changes, newest first (what the console lists without a history)."""
        with self._lock:
            return [{**r, "label": None} for r in self._recent]


def describe(model: Model, learned: Learned | None = None) -> dict[str, object]:
    """What the console says of a model (and of what its stream learned on site), with a
    sentence for people in "words"."""
    raw = model.meta.raw
    training = raw.get("training", {}) if isinstance(raw.get("training"), dict) else {}
    details = raw.get("threshold_details", {})
    over = details.get("over") if isinstance(details, dict) else None
    files = len(training.get("files", []))
    words = (
        f"trained on {training.get('seconds', 0):g} s of audio in {files} file(s); threshold "
        f"{model.threshold:.4g} ({model.meta.threshold_method}{', over ' + over if over else ''})"
    )
    if "adapted" in raw:
        words += f"; adapted: {', '.join(raw['adapted'].get('changes', []))}"
    if learned is not None:
        words += f"; learned on site from {learned.seconds:g} s: threshold {learned.threshold:.4g}"
        if learned.suspect:
            words += f" (suspect: {learned.suspect})"
    return {
        "file": model.path.name,
        "sha256": model.sha256[:12],
        "profile": model.profile.name,
        "architecture": raw.get("architecture", {}).get("kind"),
        "threshold_method": model.meta.threshold_method,
        "words": words,
    }
