"""Evidence clips: the audio around each anomaly's start as a float32 wav plus a JSON sidecar.

A sink fed with every source block: a fixed ring keeps the last seconds of audio; an anomaly
record starts a clip (the ring's pre-trigger part), the following audio completes it; the
store (clip_store.py) writes and retains the files."""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from amulet_stream import __version__
from amulet_stream.audio.wav import WavError
from amulet_stream.outputs.clip_store import ClipFile, ClipStore
from amulet_stream.scoring.records import utc_iso

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
Record = dict[str, Any]

FORMAT = 1
"""Version of the sidecar's layout."""
LAG_SECONDS = 2.0
"""Ring length beyond before_seconds: how far the audio pushed may run ahead of the trigger
window's end (one source block plus the pipeline's look-ahead); also how long a finished clip
waits for the score records of its last windows."""
MAX_SKIPPED = 16
"""Anomaly records noted in a pending clip's sidecar at most."""
STREAM_ID = re.compile(r"[A-Za-z0-9_-]+")


class _History:
    """The last `capacity` samples of a stream in a preallocated float32 circular array."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data = np.zeros(capacity, dtype=np.float32)
        self.end = 0
        """Samples pushed since the stream started (index after the newest one)."""

    @property
    def start(self) -> int:
        """Index of the oldest sample still held."""
        return max(0, self.end - self.capacity)

    def push(self, samples: F32) -> None:
        """Append samples, overwriting the oldest; a block longer than the ring keeps its tail."""
        n = samples.shape[0]
        tail = samples[n - self.capacity :] if n > self.capacity else samples
        pos = (self.end + n - tail.shape[0]) % self.capacity
        first = min(tail.shape[0], self.capacity - pos)
        self._data[pos : pos + first] = tail[:first]
        self._data[: tail.shape[0] - first] = tail[first:]
        self.end += n

    def views(self, begin: int, stop: int) -> Iterator[F32]:
        """Samples begin..stop (stream indices, clipped to what is held) as at most 2 views."""
        begin, stop = max(begin, self.start), min(stop, self.end)
        while begin < stop:
            pos = begin % self.capacity
            n = min(stop - begin, self.capacity - pos)
            yield self._data[pos : pos + n]
            begin += n


@dataclass
class _Pending:
    """A clip started by a trigger and waiting for its after-part."""

    clip: ClipFile
    record: Record
    event_id: str
    first: int
    """Stream index of the clip's first sample."""
    stop: int
    """Stream index after the clip's last sample."""
    next: int
    """Stream index of the next sample to write."""
    start_utc: str | None
    skipped: list[Record] = field(default_factory=list)


class ClipRecorder:
    """One stream's pre-trigger ring and pending clip.

    Not thread-safe: one recorder per stream, fed from that stream's processing thread.
    Samples are counted from the stream's start: create it together with the stream's
    pipeline, so record times ('start', 'end' in seconds) and pushed samples share an origin."""

    def __init__(self, store: ClipStore, stream: str, rate: int, model_sha256: str) -> None:
        if not STREAM_ID.fullmatch(stream):
            raise ValueError(f"stream id {stream!r} may hold only letters, digits, '_' and '-'")
        if rate < 1:
            raise ValueError(f"rate must be positive, got {rate}")
        self.store = store
        self.stream = stream
        self.rate = rate
        self.model_sha256 = model_sha256
        s = store.settings
        self._ring = _History(math.ceil((s.before_seconds + LAG_SECONDS) * rate))
        span = s.before_seconds + s.after_seconds + 2 * LAG_SECONDS
        self._scores: deque[Record] = deque(maxlen=int(64 * span) + 64)
        self._score_end = -math.inf
        self._anchor: tuple[int, float] | None = None
        self._pending: _Pending | None = None

    def _utc(self, index: int) -> str | None:
        """UTC time of stream sample `index` from the latest capture time, None without one."""
        if self._anchor is None:
            return None
        return utc_iso(self._anchor[1] + (index - self._anchor[0]) / self.rate)

    def push(self, samples: F32, capture_time: float | None) -> None:
        """Every source block: float32 mono at the source rate, in order (capture time of the
        first sample, UNIX s, or None for replay)."""
        data = np.asarray(samples, dtype=np.float32)
        if data.ndim != 1:
            raise ValueError(f"clips take mono blocks, got shape {data.shape}")
        start = self._ring.end
        if capture_time is not None:
            self._anchor = (start, capture_time)
        self._ring.push(data)
        p = self._pending
        if p is None:
            return
        begin, stop = max(p.next, start), min(p.stop, start + data.shape[0])
        if begin < stop:
            try:
                p.clip.writer.write(data[begin - start : stop - start])
            except (OSError, WavError) as err:
                self._pending = None
                self.store.fail(p.clip, err)
                return
            p.next = stop
        self._maybe_finish()

    def scores(self, records: list[Record]) -> None:
        """Score records (others are ignored), to put in the sidecar of a clip that holds them."""
        for rec in records:
            if rec.get("event") == "score" and isinstance(rec.get("end"), int | float):
                self._scores.append(rec)
                self._score_end = max(self._score_end, float(rec["end"]))
        keep = self._ring.start if self._pending is None else self._pending.first
        while self._scores and self._scores[0]["end"] < keep / self.rate:
            self._scores.popleft()
        self._maybe_finish()

    def trigger(self, record: Record) -> str | None:
        """An 'anomaly' record: start its clip and return the wav's path, or None when no clip
        can be started (folder not writable, disk full) or one is pending (noted in its
        sidecar). The clip is written once after_seconds more audio was pushed."""
        p = self._pending
        if p is not None:
            if len(p.skipped) < MAX_SKIPPED:
                p.skipped.append(dict(record))
            _LOGGER.info("%s: anomaly during a pending clip: noted in its sidecar", self.stream)
            return None
        s = self.store.settings
        end = record.get("end")
        if isinstance(end, int | float) and math.isfinite(end):
            trig = round(end * self.rate)
        else:
            trig = self._ring.end
        want = max(0, trig - round(s.before_seconds * self.rate))
        first = max(want, self._ring.start)
        stop = trig + round(s.after_seconds * self.rate)
        if first >= stop:
            _LOGGER.warning(
                "%s: no clip: the trigger at %.3f s is older than the audio held (from %.3f s)",
                self.stream,
                trig / self.rate,
                first / self.rate,
            )
            return None
        if first > want:
            _LOGGER.info(
                "%s: clip starts %.2f s late: the ring holds only the last %.2f s",
                self.stream,
                (first - want) / self.rate,
                self._ring.capacity / self.rate,
            )
        event_id = str(record.get("event_id") or uuid.uuid4())
        stem = self.store.stem(self.stream, self._when(record, trig), event_id)
        clip = self.store.begin(stem, self.rate)
        if clip is None:
            return None
        try:
            for view in self._ring.views(first, stop):
                clip.writer.write(view)
        except (OSError, WavError) as err:
            self.store.fail(clip, err)
            return None
        nxt = max(first, min(self._ring.end, stop))
        self._pending = _Pending(clip, dict(record), event_id, first, stop, nxt, self._utc(first))
        self._maybe_finish()
        return str(self.store.folder / f"{stem}.wav")

    def _when(self, record: Record, trig: int) -> datetime:
        """The trigger's UTC time: the record's 'time', else from capture times, else now."""
        for text in (record.get("time"), self._utc(trig)):
            if isinstance(text, str):
                with suppress(ValueError):
                    when = datetime.fromisoformat(text)
                    return when if when.tzinfo else when.replace(tzinfo=UTC)
        return datetime.now(UTC)

    def _maybe_finish(self) -> None:
        """Write the pending clip once its audio is complete and the scores of its last
        windows arrived (or LAG_SECONDS more audio passed without them)."""
        p = self._pending
        if p is None or p.next < p.stop:
            return
        if self._score_end > p.stop / self.rate or self._ring.end >= p.stop + (
            LAG_SECONDS * self.rate
        ):
            self._finish()

    def close(self) -> None:
        """Write a pending clip with what it has (shutdown, source lost)."""
        if self._pending is not None:
            self._finish()

    def _finish(self) -> None:
        p = self._pending
        assert p is not None
        self._pending = None
        t0, t1 = p.first / self.rate, p.next / self.rate
        eps = 5e-5  # record times are rounded to 4 decimals
        inside = [r for r in self._scores if r["start"] >= t0 - eps and r["end"] <= t1 + eps]
        sidecar: Record = {
            "format": FORMAT,
            "version": __version__,
            "stream": self.stream,
            "event_id": p.event_id,
            "wav": f"{p.clip.stem}.wav",
            "model_sha256": self.model_sha256,
            "threshold": p.record.get("threshold"),
            "rate": self.rate,
            "start": round(t0, 6),
            "end": round(t1, 6),
            "start_utc": p.start_utc,
            "end_utc": self._utc(p.next),
            "start_sample": p.first,
            "samples": p.next - p.first,
            "complete": p.next >= p.stop,
            "trigger": p.record,
            "scores": inside,
            "skipped_triggers": p.skipped,
        }
        self.store.commit(p.clip, sidecar)
