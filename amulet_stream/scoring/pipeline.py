"""One stream, stage by stage: blocks -> resample -> vectors -> model -> windows -> detector."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import numpy as np
import numpy.typing as npt

from amulet_stream.audio.readahead import read_ahead
from amulet_stream.audio.resample import StreamResampler
from amulet_stream.audio.sources import Block, FileSource
from amulet_stream.scoring.commission import Learned, Site
from amulet_stream.scoring.detector import Detector, DetectorSettings
from amulet_stream.scoring.evidence import Evidence
from amulet_stream.scoring.frames import VectorStream, even_rows_exact
from amulet_stream.scoring.integrity import Change, IntegrityCheck
from amulet_stream.scoring.levels import measure
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.records import Record, StreamStats, utc_iso
from amulet_stream.scoring.windows import WindowMeans

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


class StreamPipeline:
    """Scores one stream; feed() returns the records (scores and state changes) it produced.

    feed() = score(take(block)); the daemon calls take() for every stream, scores the vectors
    of all streams sharing a model in one onnxruntime call, then hands each its scores.
    Not thread-safe: one pipeline per stream, fed from one thread."""

    def __init__(
        self,
        model: Model,
        source_rate: int,
        stream: str = "default",
        file: str | None = None,
        settings: DetectorSettings | None = None,
        hop: int | None = None,
        integrity: IntegrityCheck | None = None,
        learned: Learned | None = None,
    ) -> None:
        """`hop`: vectors between window starts (default: the profile's serving hop);
        `integrity`: the input checks at the source rate (None: none); `learned`: what the
        stream learned on site earlier (else it learns for settings.learn_seconds, if any)."""
        self.model = model
        self.profile = p = model.profile
        self.stream = stream
        self.file = file
        self.hop = hop or p.hop_vectors
        self.detector = Detector(model.threshold, self.hop * p.step / p.rate, settings)
        self.integrity = integrity
        self.resampler = StreamResampler(source_rate, p.rate)
        if not self.resampler.passthrough:
            _LOGGER.info(
                "%s: resampling %d Hz -> %d Hz for the model", file or stream, source_rate, p.rate
            )
        self.vectors = VectorStream(p)
        even_rows_exact(p)  # the one-off probes now, not in the first block's time
        _ = model.padded
        self.windows = WindowMeans(p.vectors, self.hop)
        self.evidence = Evidence(model, self.hop)
        self.site = Site(model, self.detector, self.evidence, learned)
        """Commissioning: what the stream learned on site, or is learning."""
        self.stats = StreamStats()
        self.state: str | None = None
        """The stream's state as last announced: None until the first state record."""
        self._source_rate = source_rate
        self._t0: float | None = None  # capture time of the stream's first sample
        self._changes: list[tuple[int, Change]] = []  # input changes (source sample) not yet
        # announced: each goes out before the first window that ends after it, so the events
        # come in time order whatever the blocks' length

    def unit_times(self, index: int) -> tuple[float, float]:
        """(start, end) in seconds from the stream start of window `index`.

        For amulet-v1 these are AMULET's row times: row k spans k*2048/sr .. (k+1)*2048/sr."""
        p = self.profile
        first = index * self.hop * p.step
        if p.name == "amulet-v1":
            return first / p.rate, (first + p.step) / p.rate
        start = p.offset + first
        return start / p.rate, (start + p.span) / p.rate

    def feed(self, block: Block, resampled: F32 | None = None) -> list[Record]:
        """Process one source block; return the records it completed."""
        return self.score(self.take(block, resampled))

    def take(self, block: Block, resampled: F32 | None = None) -> F32:
        """Levels, input checks, resampling and features of one block: its new vectors (n, D).
        `resampled`: the block's samples already through `self.resampler` (read_ahead)."""
        if self._t0 is None:
            self._t0 = block.capture_time
        samples = block.samples
        self.stats.audio_seconds += samples.shape[0] / self._source_rate
        if self.integrity is not None:
            self._changes += self.integrity.push(samples)
            self.stats.level_dbfs, self.stats.clipped = (
                self.integrity.level_dbfs,
                self.integrity.clipped,
            )
        elif samples.size:
            level = measure(samples.reshape(1, -1))
            self.stats.level_dbfs = float(level.rms_dbfs[0])
            self.stats.clipped += round(float(level.clipped[0] * level.count[0]))
        if resampled is None:
            resampled = self.resampler.process(samples)
        return self.vectors.push(resampled)

    def score(self, vectors: F32, scores: F32 | None = None) -> list[Record]:
        """Window scores and state changes from new vectors (n, D) and, when the caller has
        already scored them, their scores (n,); else the model scores them here."""
        if vectors.shape[0] == 0:
            return []
        t_batch = time.perf_counter()
        if scores is None:
            clean, first = self.model_input(vectors)
            scores = self.model.score_vectors(clean, first)
        scores = np.where(np.isfinite(vectors).all(axis=1), scores, np.float32(np.nan))
        levels = self.evidence.push(vectors, self.vectors.vectors)
        return self._windows(scores.astype(np.float32), levels, t_batch)

    def model_input(self, vectors: F32) -> tuple[F32, int]:
        """The vectors as the model takes them (NaN/inf rows zeroed) and the stream index of the
        first one (scores depend on it: see Model.score_vectors)."""
        first = self.vectors.vectors - vectors.shape[0]
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            vectors = vectors.copy()
            vectors[bad] = 0.0
        return vectors, first

    def finish(self) -> list[Record]:
        """End of stream: flush the resampler and the last (padded) frames."""
        records = self.score(self.vectors.push(self.resampler.flush()))
        records += self.score(self.vectors.finish())
        records += self._changes_before(None)
        if self.stats.windows + self.stats.skipped_windows == 0:
            self.stats.too_short = True
            _LOGGER.warning("%s: %s", self.file or self.stream, self.too_short_message())
        return records

    def problem(self) -> str | None:
        """Why nothing could be scored (too short, or every window NaN/inf); None if something
        was (or the stream has not finished)."""
        if self.stats.too_short:
            return self.too_short_message()
        if self.stats.windows == 0 and self.stats.skipped_windows:
            return (
                f"nothing could be scored: all {self.stats.skipped_windows} window(s) hold "
                "NaN or infinite samples"
            )
        return None

    def too_short_message(self) -> str:
        """Why nothing was scored: the audio's length against one window's."""
        p = self.profile
        need = (p.offset + (p.span if not p.pad_tail else p.n_fft // 2)) / p.rate
        return (
            f"too short to analyse: {self.stats.audio_seconds:.2f} s of audio, "
            f"the model needs at least {need:.2f} s"
        )

    def _state(self, event: str, base: Record, when: float | None, **extra: Any) -> Record:
        """A state-change record (with its event_id and UTC time)."""
        self.state = event
        return {
            "event": event,
            **base,
            "time": utc_iso(when),
            "event_id": str(uuid.uuid4()),
            **extra,
        }

    def _changes_before(self, end: float | None) -> list[Record]:
        """The input changes that took effect before `end` s of the stream (None: all), in
        order: their records (input_problem; back to ok has none)."""
        records: list[Record] = []
        while self._changes and (end is None or self._changes[0][0] < end * self._source_rate):
            index, change = self._changes.pop(0)
            records += self._input_change(index, change)
        return records

    def _input_change(self, index: int, change: Change) -> list[Record]:
        """An input-integrity change at source sample `index`: input_problem or back to ok."""
        self.detector.reset()
        if change.state == "ok":
            _LOGGER.info("%s: input ok again: %s", self.file or self.stream, change.detail)
            return []  # the detector announces the next state once it has seen enough audio
        t = index / self._source_rate
        when = None if self._t0 is None else self._t0 + t
        assert self.integrity is not None
        base = {
            "stream": self.stream,
            "file": self.file,
            "start": round(max(0.0, t - self.integrity.settings.problem_seconds), 4),
            "end": round(t, 4),
            "score": None,
            "threshold": self.detector.threshold,
        }
        _LOGGER.warning("%s: input problem: %s", self.file or self.stream, change.detail)
        self.stats.input_problems += 1
        return [
            self._state("input_problem", base, when, reason=change.reason, detail=change.detail)
        ]

    def _windows(self, scores: F32, levels: F64 | None, t_batch: float) -> list[Record]:
        means, index = self.windows.push(scores)
        self.stats.inference.append(time.perf_counter() - t_batch)
        finite = np.isfinite(means)
        if not finite.all():
            before = self.stats.skipped_windows
            self.stats.skipped_windows += int((~finite).sum())
            # a standing 'non_finite' input problem says it already
            loud = self.integrity is None or self.integrity.problem != "non_finite"
            if loud and (len(str(self.stats.skipped_windows)) > len(str(before)) or not before):
                _LOGGER.warning(  # at the 1st, 10th, 100th... such window: not one per window
                    "%s: %d window(s) with NaN/inf samples skipped so far",
                    self.file or self.stream,
                    self.stats.skipped_windows,
                )
        p = self.profile
        if self._t0 is not None and index.size:
            ends = self._t0 + (p.offset + index * self.hop * p.step + p.span) / p.rate
            self.stats.lags.extend(float(x) for x in time.time() - ends[finite])
        records: list[Record] = []
        thr = self.detector.threshold
        for n, (i, spectral, ok) in enumerate(
            zip(index.tolist(), means.tolist(), finite.tolist(), strict=True)
        ):
            t_start, t_end = self.unit_times(i)
            records += self._changes_before(t_end)
            if not ok:
                continue
            level = float(levels[n]) if levels is not None else float("nan")
            floor = self.detector.settings.level_floor_db
            term = self.evidence.term(level, self.site.threshold, floor)
            extra = self.evidence.level_db(level)
            score = spectral if term is None else max(spectral, term)
            # a window over audio that is not the motor's (input problem) is reported, never
            # anomalous: the detector does not see it
            held = self.integrity is not None and self.integrity.troubled(
                round(t_start * self._source_rate), round(t_end * self._source_rate)
            )
            flag = not held and not self.site.learning and self.detector.is_anomalous(score)
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
            records.append({"event": "score", **base, "anomaly": flag, **extra})
            if held:
                continue
            if self.site.learning:
                when = None if self._t0 is None else self._t0 + t_end
                if self.site.hear(spectral, level, (t_start, t_end)) and self.state != "learning":
                    seconds = self.site.learning.seconds
                    records.append(self._state("learning", base, when, learn_seconds=seconds))
                if self.site.just_learned is not None and self.state == "learning":
                    self.state = None  # the detector announces the next state afresh
                continue
            change = self.detector.update(spectral, term)
            if change is not None:
                end_sample = p.offset + i * self.hop * p.step + p.span
                when = None if self._t0 is None else self._t0 + end_sample / p.rate
                self.stats.anomaly_events += int(change == "anomaly")
                why = extra
                if change == "anomaly":
                    why = self.evidence.changed(i, self.detector.cause())
                records.append(self._state(change, base, when, **why, **self.site.doc()))
        return records


def replay(pipe: StreamPipeline, source: FileSource) -> list[Record]:
    """Every record of a file fed through a pipeline as fast as it reads, end included."""
    records = [r for b, out in read_ahead(source, pipe.resampler) for r in pipe.feed(b, out)]
    return records + pipe.finish()
