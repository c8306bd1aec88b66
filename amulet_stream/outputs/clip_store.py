"""The evidence clips' folder: the settings of [clips], each clip written to a temporary file
and renamed with its JSON sidecar when complete, and retention by count and size."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from amulet_stream.audio.wav import WavError
from amulet_stream.audio.wav_write import FloatWavWriter
from amulet_stream.files import make_private_dirs, private_fd

_LOGGER = logging.getLogger(__name__)
Record = dict[str, Any]

MAX_SECONDS = 300.0
"""Upper bound of before_seconds and after_seconds."""
CLIP_NAME = re.compile(r"(?P<stem>[A-Za-z0-9_-]+-(?P<utc>\d{8}T\d{6}Z)-[0-9a-f]{8})\.(?:wav|json)")
"""Files retention may delete: `<stream>-<UTC yyyymmddThhmmssZ>-<short event id>.wav|.json`."""
_MB = 1_000_000


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


class ClipFile:
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

    def fail(self, clip: ClipFile | None, err: Exception) -> None:
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

    def begin(self, stem: str, rate: int) -> ClipFile | None:
        """Open `.<stem>.wav.tmp` with a float32 wav header; None (counted) when impossible."""
        try:
            make_private_dirs(self.folder)
            return ClipFile(stem, self.folder / f".{stem}.wav.tmp", rate)
        except OSError as err:
            self.fail(None, err)
            return None

    def commit(self, clip: ClipFile, sidecar: Record) -> bool:
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
