"""Records -> MQTT payloads: which events are published, the fields every payload carries,
and Home Assistant's score interval (the highest window of each interval)."""

from __future__ import annotations

import json
import logging
import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from amulet_stream import __version__
from amulet_stream.scoring.records import utc_iso
from amulet_stream.text import STREAM_ID

T = TypeVar("T")

_LOGGER = logging.getLogger(__name__)

STATES = ("normal", "anomaly", "input_problem", "down", "learning")
"""Events published as the stream's retained state and as an alert."""


@dataclass
class StreamInfo:
    """What the sink keeps of one stream."""

    model_sha256: str
    last_score_sent: float = float("-inf")
    """time.monotonic() of the last score message (score_interval mode)."""
    pending_score: dict[str, Any] | None = None
    """The highest-scoring window not yet sent (score_interval mode)."""

    def payload(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with the fields every payload carries: time, model_sha256, version."""
        return with_defaults(record, self.model_sha256)

    def offer(self, body: dict[str, Any], interval: float, now: float) -> dict[str, Any] | None:
        """Keep the highest score of the interval; the one to send when `interval` seconds
        have passed since the last (now: time.monotonic()), else None."""
        pending = self.pending_score
        if pending is None or body["score"] > pending["score"]:
            self.pending_score = body
        if now - self.last_score_sent < interval:
            return None
        send, self.pending_score, self.last_score_sent = self.pending_score, None, now
        return send

    def take_pending(self) -> dict[str, Any] | None:
        """The score not yet sent (at a stream's removal and at exit), once."""
        send, self.pending_score = self.pending_score, None
        return send


def with_defaults(record: dict[str, Any], model_sha256: str | None) -> dict[str, Any]:
    """A copy of `record` with time (now, UTC), model_sha256 and version where missing."""
    body = dict(record)
    body.setdefault("time", utc_iso())
    body.setdefault("model_sha256", model_sha256)
    body.setdefault("version", __version__)
    return body


def parse_command(payload: bytes) -> float | None:
    """A command's learn_seconds ({"learn_seconds": N}, 0 < N <= 86400; null: the stream's
    own, given as 0), or None for anything else."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or set(doc) != {"learn_seconds"}:
        return None
    seconds = doc["learn_seconds"]
    if seconds is None:
        return 0.0
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None
    return float(seconds) if 0 < seconds <= 86400 else None


def take_commands(
    received: queue.SimpleQueue[tuple[str, bytes]], prefix: str
) -> list[tuple[str, float]]:
    """The (stream, learn_seconds) of the command messages (topic, payload) received so far;
    malformed ones are logged and dropped."""
    return [(stream, got) for stream, got in _take(received, prefix, "command", parse_command)]


def parse_feedback(payload: bytes) -> tuple[str, str, str] | None:
    """A label's (event_id or 'latest', 'normal' or 'fault', note), cut to 100 and 500
    characters, or None for anything else."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not set(doc) <= {"event_id", "label", "note"}:
        return None
    eid, label, note = doc.get("event_id"), doc.get("label"), doc.get("note", "")
    if not isinstance(eid, str) or label not in ("normal", "fault") or not isinstance(note, str):
        return None
    return eid[:100], str(label), note[:500]


def take_feedback(
    received: queue.SimpleQueue[tuple[str, bytes]], prefix: str
) -> list[tuple[str, str, str, str]]:
    """The (stream, event_id or 'latest', label, note) of the feedback messages received so
    far; malformed ones are logged and dropped."""
    return [(stream, *got) for stream, got in _take(received, prefix, "feedback", parse_feedback)]


def _take(
    received: queue.SimpleQueue[tuple[str, bytes]],
    prefix: str,
    kind: str,
    parse: Callable[[bytes], T | None],
) -> list[tuple[str, T]]:
    """(stream, parsed payload) of the messages on <prefix>/<stream>/<kind> received so far;
    those `parse` refuses, or of a malformed stream id, are logged and dropped."""
    out: list[tuple[str, T]] = []
    while True:
        try:
            topic, payload = received.get_nowait()
        except queue.Empty:
            return out
        stream = topic[len(prefix) + 1 : -len(f"/{kind}")]
        got = parse(payload)
        if got is None or not STREAM_ID.fullmatch(stream):
            _LOGGER.warning("mqtt: %s on %s not understood: %r", kind, topic, payload[:200])
            continue
        out.append((stream, got))
