"""Evidence clips: the audio around each anomaly's start as a float32 wav plus a JSON sidecar.

A sink fed with every source block: a fixed ring keeps the last seconds of audio; an anomaly
record starts a clip (the ring's pre-trigger part), the following audio completes it."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from amulet_stream import __version__
from amulet_stream.audio.wav import FloatWavWriter, WavError
from amulet_stream.files import make_private_dirs, private_fd

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
Record = dict[str, Any]

FORMAT = 1
"""Version of the sidecar's layout."""
LAG_SECONDS = 2.0
"""Ring length beyond before_seconds: how far the audio pushed may run ahead of the trigger
window's end (one source block plus the pipeline's look-ahead); also how long a finished clip
waits for the score records of its last windows."""
MAX_SECONDS = 300.0
"""Upper bound of before_seconds and after_seconds."""
MAX_SKIPPED = 16
"""Anomaly records noted in a pending clip's sidecar at most."""
STREAM_ID = re.compile(r"[A-Za-z0-9_-]+")
CLIP_NAME = re.compile(r"(?P<stem>[A-Za-z0-9_-]+-(?P<utc>\d{8}T\d{6}Z)-[0-9a-f]{8})\.(?:wav|json)")
"""Files retention may delete: `<stream>-<UTC yyyymmddThhmmssZ>-<short event id>.wav|.json`."""
_MB = 1_000_000


def utc_iso(ts: float) -> str:
    """UNIX time `ts` as UTC ISO 8601 with milliseconds, like the records' 'time'."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(name: str, value: object, low: float, high: float) -> float:
    """`value` as a float within [low, high], or ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be within {low:g}..{high:g}, got {value:g}")
    return float(value)


@dataclass(frozen=True)
class ClipSettings:
    """Where evidence clips go, how long they are and how many are kept (config [clips])."""

    folder: Path
    """Folder shared by all streams; created when missing."""
    before_seconds: float = 10.0
    """Audio before the trigger (the end of the window that raised the anomaly), s."""
    after_seconds: float = 5.0
    """Audio after the trigger, s."""
    max_count: int = 100
    """Retention: the oldest clips (wav + json) are deleted beyond this many in the folder."""
    max_mb: float = 500.0
    """Retention: and beyond this total size of clips, MB (1 MB = 1,000,000 bytes)."""

    def __post_init__(self) -> None:
        if isinstance(self.folder, str) and self.folder:
            object.__setattr__(self, "folder", Path(self.folder))
        if not isinstance(self.folder, Path):
            raise ValueError(f"folder must be a path, got {self.folder!r}")
        _number("before_seconds", self.before_seconds, 0.0, MAX_SECONDS)
        _number("after_seconds", self.after_seconds, 0.0, MAX_SECONDS)
        if self.before_seconds + self.after_seconds <= 0:
            raise ValueError("before_seconds and after_seconds must not both be 0")
        if isinstance(self.max_count, bool) or not isinstance(self.max_count, int):
            raise ValueError(f"max_count must be a whole number, got {self.max_count!r}")
        if self.max_count < 1:
            raise ValueError(f"max_count must be at least 1, got {self.max_count}")
        _number("max_mb", self.max_mb, 0.0, math.inf)
        if self.max_mb <= 0:
            raise ValueError(f"max_mb must be positive, got {self.max_mb:g}")


class _ClipFile:
    """A clip's wav being written under a temporary name in the clip folder."""

    def __init__(self, stem: str, tmp: Path, rate: int) -> None:
        self.stem = stem
        self.tmp = tmp
        self.fh = os.fdopen(private_fd(tmp), "wb")
        try:
            self.writer = FloatWavWriter(self.fh, rate)
        except OSError:
            self.drop()
            raise

    def drop(self) -> None:
        """Close and delete the temporary file, ignoring errors (the clip is given up)."""
        with suppress(OSError):
            self.fh.close()
        with suppress(OSError):
            self.tmp.unlink()


class ClipStore:
    """The clip folder shared by all streams: naming, atomic writes, retention.

    Thread-safe: recorders of several streams may use one store from their own threads. No
    method raises on I/O errors: a failed clip is logged once per outage and counted."""

    def __init__(self, settings: ClipSettings) -> None:
        self.settings = settings
        self.folder = settings.folder
        self.written = 0
        """Clips written (wav and sidecar in place)."""
        self.failed = 0
        """Clips that could not be started or completed (disk full, folder not writable)."""
        self._outage = False
        self._lock = threading.Lock()
        try:
            make_private_dirs(self.folder)
        except OSError as err:
            self._warn(err)

    def _warn(self, err: Exception) -> None:
        """Log the first failure of an outage as a warning, later ones at debug level."""
        if not self._outage:
            self._outage = True
            _LOGGER.warning("clips: cannot write to %s: %s; monitoring goes on", self.folder, err)
        else:
            _LOGGER.debug("clips: still cannot write to %s: %s", self.folder, err)

    def fail(self, clip: _ClipFile | None, err: Exception) -> None:
        """Count a failed clip, log it once per outage and remove its temporary file."""
        if clip is not None:
            clip.drop()
        with self._lock:
            self.failed += 1
            self._warn(err)

    def stem(self, stream: str, when: datetime, event_id: str) -> str:
        """`<stream>-<UTC yyyymmddThhmmssZ>-<8 hex digits of the event id>`."""
        short = event_id.lower()[:8]
        if not re.fullmatch(r"[0-9a-f]{8}", short):
            short = hashlib.sha256(event_id.encode()).hexdigest()[:8]
        return f"{stream}-{when.astimezone(UTC):%Y%m%dT%H%M%SZ}-{short}"

    def begin(self, stem: str, rate: int) -> _ClipFile | None:
        """Open `.<stem>.wav.tmp` with a float32 wav header; None (counted) when impossible."""
        try:
            make_private_dirs(self.folder)
            return _ClipFile(stem, self.folder / f".{stem}.wav.tmp", rate)
        except OSError as err:
            self.fail(None, err)
            return None

    def commit(self, clip: _ClipFile, sidecar: Record) -> bool:
        """Finish the wav, write the sidecar, move both to their names, apply retention."""
        wav = self.folder / f"{clip.stem}.wav"
        side = self.folder / f"{clip.stem}.json"
        side_tmp = self.folder / f".{clip.stem}.json.tmp"
        moved = False
        try:
            clip.writer.finish()
            os.fsync(clip.fh.fileno())
            clip.fh.close()
            text = json.dumps(sidecar, indent=1, default=str) + "\n"
            with os.fdopen(private_fd(side_tmp), "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(clip.tmp, wav)
            moved = True
            os.replace(side_tmp, side)
        except (OSError, WavError) as err:
            with suppress(OSError):
                side_tmp.unlink()
            if moved:  # keep pairs intact: no wav without its sidecar
                with suppress(OSError):
                    wav.unlink()
            self.fail(clip, err)
            return False
        with self._lock:
            self.written += 1
            if self._outage:
                self._outage = False
                _LOGGER.info("clips: writing to %s again", self.folder)
            self._retain(clip.stem)
        return True

    def _retain(self, keep: str) -> None:
        """Delete the oldest clips beyond max_count and max_mb, never the clip `keep`."""
        groups: dict[str, list[tuple[Path, int]]] = {}
        age: dict[str, tuple[int, str]] = {}  # newest mtime of the pair, then UTC in the name
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    m = CLIP_NAME.fullmatch(entry.name)
                    if m and entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        groups.setdefault(m["stem"], []).append((Path(entry.path), st.st_size))
                        age[m["stem"]] = max(
                            age.get(m["stem"], (0, "")), (st.st_mtime_ns, m["utc"])
                        )
        except OSError as err:
            _LOGGER.warning("clips: retention cannot list %s: %s", self.folder, err)
            return
        order = sorted(groups, key=lambda stem: (age[stem], stem))
        count = len(order)
        total = sum(size for files in groups.values() for _, size in files)
        limit = self.settings.max_mb * _MB
        for stem in order:
            if count <= self.settings.max_count and total <= limit:
                break
            if stem == keep:
                continue
            for path, size in groups[stem]:
                try:
                    path.unlink(missing_ok=True)
                    total -= size
                except OSError as err:
                    _LOGGER.warning("clips: retention cannot delete %s: %s", path, err)
            count -= 1
            _LOGGER.info("clips: deleted %s (retention)", stem)
        if total > limit:
            _LOGGER.warning("clips: %s alone is larger than max_mb", keep)


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

    clip: _ClipFile
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
