"""One stream, stage by stage: blocks -> resample -> vectors -> model -> windows -> detector."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from .detector import Detector, DetectorSettings
from .frames import VectorStream
from .model import Model
from .resample import StreamResampler
from .sources import Block, FileSource
from .windows import WindowMeans

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
    too_short: bool = False
    """The stream ended before its first window was complete."""
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


def verdict(stats: StreamStats) -> str:
    """A file's verdict: 'defect' if an alert was raised, 'too_short' if nothing could be
    scored, else 'good'."""
    if stats.anomaly_events:
        return "defect"
    return "too_short" if stats.too_short else "good"


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
        """`hop`: vectors between window starts (default: the profile's serving hop)."""
        self.model = model
        self.profile = p = model.profile
        self.stream = stream
        self.file = file
        self.hop = hop or p.hop_vectors
        self.detector = Detector(model.threshold, self.hop * p.step / p.rate, settings)
        self.resampler = StreamResampler(source_rate, p.rate)
        if not self.resampler.passthrough:
            _LOGGER.info(
                "%s: resampling %d Hz -> %d Hz for the model", file or stream, source_rate, p.rate
            )
        self.vectors = VectorStream(p)
        self.windows = WindowMeans(p.vectors, self.hop)
        self.stats = StreamStats()
        self._source_rate = source_rate
        self._t0: float | None = None  # capture time of the stream's first sample

    def unit_times(self, index: int) -> tuple[float, float]:
        """(start, end) in seconds from the stream start of window `index`.

        For amulet-v1 these are AMULET's row times: row k spans k*2048/sr .. (k+1)*2048/sr."""
        p = self.profile
        first = index * self.hop * p.step
        if p.name == "amulet-v1":
            return first / p.rate, (first + p.step) / p.rate
        start = p.offset + first
        return start / p.rate, (start + p.span) / p.rate

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
        return self._score(self.vectors.push(self.resampler.process(samples)))

    def finish(self) -> list[Record]:
        """End of stream: flush the resampler and the last (padded) frames."""
        records = self._score(self.vectors.push(self.resampler.flush()))
        records += self._score(self.vectors.finish())
        if self.stats.windows + self.stats.skipped_windows == 0:
            self.stats.too_short = True
            _LOGGER.warning("%s: %s", self.file or self.stream, self.too_short_message())
        return records

    def too_short_message(self) -> str:
        """Why nothing was scored: the audio's length against one window's."""
        p = self.profile
        need = (p.offset + (p.span if not p.pad_tail else p.n_fft // 2)) / p.rate
        return (
            f"too short to analyse: {self.stats.audio_seconds:.2f} s of audio, "
            f"the model needs at least {need:.2f} s"
        )

    def _score(self, vectors: F32) -> list[Record]:
        if vectors.shape[0] == 0:
            return []
        t_batch = time.perf_counter()
        first = self.vectors.vectors - vectors.shape[0]
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if bad.size:
            vectors = vectors.copy()
            vectors[bad] = 0.0
        scores = self.model.score_vectors(vectors, first)
        scores[bad] = np.nan
        means, index = self.windows.push(scores)
        self.stats.inference.append(time.perf_counter() - t_batch)
        finite = np.isfinite(means)
        if not finite.all():
            skipped = int((~finite).sum())
            self.stats.skipped_windows += skipped
            _LOGGER.warning(
                "%s: %d window(s) with NaN/inf samples skipped", self.file or self.stream, skipped
            )
        p = self.profile
        if self._t0 is not None and index.size:
            ends = self._t0 + (p.offset + index * self.hop * p.step + p.span) / p.rate
            self.stats.lags.extend(float(x) for x in time.time() - ends[finite])
        records: list[Record] = []
        thr = self.detector.threshold
        for i, score, ok in zip(index.tolist(), means.tolist(), finite.tolist(), strict=True):
            if not ok:
                continue
            t_start, t_end = self.unit_times(i)
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
                end_sample = p.offset + i * self.hop * p.step + p.span
                when = None if self._t0 is None else self._t0 + end_sample / p.rate
                self.stats.anomaly_events += int(change == "anomaly")
                records.append({"event": change, **base, "time": utc_iso(when)})
        return records

    def summary(self, processing_seconds: float) -> Record:
        """The end-of-replay line for this file (with 'problem' when it was too short)."""
        s = self.stats
        extra = {"problem": self.too_short_message()} if s.too_short else {}
        return {
            "event": "summary",
            "stream": self.stream,
            "file": self.file,
            "windows": s.windows,
            "anomalies": s.anomalous_windows,
            "anomaly_events": s.anomaly_events,
            "skipped_windows": s.skipped_windows,
            "verdict": verdict(s),
            "max_score": s.max_score,
            "threshold": self.detector.threshold,
            "audio_seconds": round(s.audio_seconds, 3),
            "processing_seconds": round(processing_seconds, 3),
            **extra,
        }


def replay(pipe: StreamPipeline, source: FileSource) -> list[Record]:
    """Every record of a file fed through a pipeline as fast as it reads, end included."""
    records = [r for block in source.blocks() for r in pipe.feed(block)]
    return records + pipe.finish()
