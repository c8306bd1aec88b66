"""One stream, stage by stage: blocks -> resample -> windows -> features -> model -> detector."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from .detector import Detector, DetectorSettings
from .model import Model
from .resample import StreamResampler
from .sources import Block
from .windows import Windower

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
Record = dict[str, Any]


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
    anomaly_events: int = 0
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


class StreamPipeline:
    """Scores one stream; feed() returns the records (scores and state changes) it produced.

    Not thread-safe: one pipeline per stream, fed from one thread."""

    def __init__(
        self,
        model: Model,
        source_rate: int,
        stream: str = "default",
        file: str | None = None,
        settings: DetectorSettings | None = None,
        hop: int | None = None,
    ) -> None:
        self.model = model
        self.profile = model.profile
        self.stream = stream
        self.file = file
        self.detector = Detector(model.threshold, settings)
        self.resampler = StreamResampler(source_rate, self.profile.rate)
        if not self.resampler.passthrough:
            _LOGGER.info(
                "%s: resampling %d Hz -> %d Hz for the model",
                file or stream,
                source_rate,
                self.profile.rate,
            )
        self.windower = Windower(self.profile, hop)
        self.stats = StreamStats()
        self._source_rate = source_rate
        self._t0: float | None = None  # capture time of the stream's first sample

    def unit_times(self, start: int) -> tuple[float, float]:
        """(start, end) in seconds from the stream start of a window starting at sample `start`.

        For amulet-v1 these are AMULET's row times: row k spans k*2048/sr .. (k+1)*2048/sr."""
        p = self.profile
        t0 = (start - p.offset) / p.rate if p.name == "amulet-v1" else start / p.rate
        length = p.hop if p.name == "amulet-v1" else p.window
        return t0, t0 + length / p.rate

    def feed(self, block: Block) -> list[Record]:
        """Process one source block; return the records it completed."""
        if self._t0 is None:
            self._t0 = block.capture_time
        samples = block.samples
        self.stats.audio_seconds += samples.shape[0] / self._source_rate
        if samples.size:
            finite = samples[np.isfinite(samples)]
            rms = float(np.sqrt(np.mean(finite.astype(np.float64) ** 2))) if finite.size else 0.0
            self.stats.level_dbfs = 20.0 * np.log10(max(rms, 1e-6))
            self.stats.clipped += int(np.count_nonzero(np.abs(finite) >= 0.999))
        windows, starts = self.windower.push(self.resampler.process(block.samples))
        return self._score(windows, starts)

    def finish(self) -> list[Record]:
        """End of stream: flush the resampler and the last (padded) windows."""
        windows, starts = self.windower.push(self.resampler.flush())
        records = self._score(windows, starts)
        windows, starts = self.windower.finish()
        return records + self._score(windows, starts)

    def _score(self, windows: F32, starts: npt.NDArray[np.int64]) -> list[Record]:
        if starts.size == 0:
            return []
        finite = np.isfinite(windows).all(axis=1)
        if not finite.all():
            bad = int((~finite).sum())
            self.stats.skipped_windows += bad
            _LOGGER.warning(
                "%s: %d window(s) with NaN/inf samples skipped", self.file or self.stream, bad
            )
            windows, starts = windows[finite], starts[finite]
            if starts.size == 0:
                return []
        t_batch = time.perf_counter()
        scores = self.model.score_windows(self.profile.compute(windows))
        self.stats.inference.append(time.perf_counter() - t_batch)
        if self._t0 is not None:
            now = time.time()
            ends = self._t0 + (starts + self.profile.window) / self.profile.rate
            self.stats.lags.extend(float(x) for x in now - ends)
        records: list[Record] = []
        thr = self.detector.threshold
        for start, score in zip(starts.tolist(), scores.tolist(), strict=True):
            t_start, t_end = self.unit_times(start)
            flag = self.detector.is_anomalous(score)
            self.stats.windows += 1
            self.stats.anomalous_windows += int(flag)
            self.stats.max_score = max(self.stats.max_score, score)
            base = {
                "stream": self.stream,
                "file": self.file,
                "start": round(t_start, 4),
                "end": round(t_end, 4),
                "score": score,
                "threshold": thr,
            }
            records.append({"event": "score", **base, "anomaly": flag})
            change = self.detector.update(score)
            if change is not None:
                end_sample = start + self.profile.window
                when = None if self._t0 is None else self._t0 + end_sample / self.profile.rate
                self.stats.anomaly_events += int(change == "anomaly")
                records.append({"event": change, **base, "time": utc_iso(when)})
        return records

    def summary(self, processing_seconds: float) -> Record:
        """The end-of-replay line for this file."""
        s = self.stats
        return {
            "event": "summary",
            "stream": self.stream,
            "file": self.file,
            "windows": s.windows,
            "anomalies": s.anomalous_windows,
            "anomaly_events": s.anomaly_events,
            "skipped_windows": s.skipped_windows,
            "verdict": "defect" if s.anomaly_events else "good",
            "max_score": s.max_score,
            "threshold": self.detector.threshold,
            "audio_seconds": round(s.audio_seconds, 3),
            "processing_seconds": round(processing_seconds, 3),
        }
