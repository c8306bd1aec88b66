"""`amulet-export evaluate`: hits, false alarms and delays of candidate models on a fault corpus.

Every candidate is trained on the corpus's healthy recordings only. Every test recording, and
hours of generated normal audio, is scored through the runtime's own streaming path
(StreamPipeline, as `replay` does) at a hop of one vector; a serving hop of H vectors sees
every H-th of those windows. The detector rule (alert_windows below, tested equal to the
runtime's Detector) then turns window scores into alerts for each detector setting.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from amulet_stream.audio.sources import Block, FileSource
from amulet_stream.audio.wav import read_info
from amulet_stream.scoring.detector import DetectorSettings, effective_threshold, windows_for
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.pipeline import StreamPipeline, replay

from .evaluate_site import background_pairs, commissioned_alerts

if TYPE_CHECKING:
    from .corpus import Corpus

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
NORMAL_RATE = 16000
CHUNK_SECONDS = 600.0
"""Normal audio is generated in pieces of this length, each with its own conditions."""

LEVEL_ROUNDING = (-0.005, 0.005)
"""A record's level_db is rounded to 0.01 dB: the interval its exact value lies in."""

Trainer = Callable[[list[Path], Path], Path]


@dataclass(frozen=True)
class Candidate:
    """A model family: its name, how it is trained, and one line about it."""

    name: str
    profile: str
    architecture: str
    note: str


CANDIDATES = (
    Candidate("amulet-lstm", "amulet-v1", "lstm", "AMULET's model: LSTM 16-4-4-16, 3 features"),
    Candidate("dense-ae", "logmel-v1", "dense", "dense autoencoder (DCASE 2020 baseline style)"),
    Candidate("pca", "logmel-v1", "pca", "linear autoencoder: PCA, 16 components, closed form"),
    Candidate("mahalanobis", "logmel-v1", "mahalanobis", "Mahalanobis distance (DCASE 2022+)"),
    Candidate("lstm-frames", "logmel-v1", "lstm-frames", "LSTM autoencoder over log-mel frames"),
)


@dataclass
class Scored:
    """Window scores of one stream at a hop of one vector, times in seconds."""

    starts: F64
    ends: F64
    scores: F64
    hop_seconds: float
    level: F64 | None = None
    """Each window's level term (NaN without one): a score equal to it was the level's."""

    def at_hop(self, hop: int) -> Scored:
        """The windows a pipeline with a hop of `hop` vectors scores."""
        level = None if self.level is None else self.level[::hop]
        return Scored(
            self.starts[::hop], self.ends[::hop], self.scores[::hop], self.hop_seconds * hop, level
        )

    def by_level(self, windows: I64) -> npt.NDArray[np.bool_]:
        """Whether each of these windows scored by its level (not its spectrum)."""
        if self.level is None:
            return np.zeros(windows.size, bool)
        return np.asarray(self.level[windows] >= self.scores[windows], bool)


@dataclass
class Result:
    """What one candidate produced."""

    name: str
    note: str
    threshold: float
    train_seconds: float
    model_bytes: int
    scored: dict[str, Scored] = field(default_factory=dict)
    normal: Scored | None = None
    cpu_per_audio_second: float = 0.0
    commissioned: dict[str, int] = field(default_factory=dict)
    """Alerts on each background recording after learning on the other one of its strength."""


def train_candidate(cand: Candidate, epochs: int) -> Trainer:
    """A trainer for a candidate: healthy wav files, output folder -> model.onnx."""

    def run(wavs: list[Path], out: Path) -> Path:
        from .train import train
        from .train_config import TrainConfig

        cfg = TrainConfig(wavs, out, cand.profile, epochs=epochs, architecture=cand.architecture)
        return train(cfg)

    return run


class _Collector:
    """Feeds one pipeline and keeps its window scores."""

    def __init__(self, model: Model, rate: int) -> None:
        self.pipe = StreamPipeline(model, rate, hop=1)
        self.rows: list[tuple[float, float, float, float]] = []
        self.cpu = 0.0

    def feed(self, samples: F32) -> None:
        c0 = time.process_time()
        self.keep(self.pipe.feed(Block(samples, None)))
        self.cpu += time.process_time() - c0

    def finish(self) -> Scored:
        self.keep(self.pipe.finish())
        arr = np.array(self.rows, np.float64).reshape(-1, 4)
        p = self.pipe.profile
        return Scored(arr[:, 0], arr[:, 1], arr[:, 2], p.step / p.rate, arr[:, 3])

    def keep(self, recs: list[dict[str, Any]]) -> None:
        band, evidence = self.pipe.evidence.band, self.pipe.evidence
        floor = self.pipe.detector.settings.level_floor_db
        for r in recs:
            if r["event"] != "score":
                continue
            term = float("nan")
            if band is not None and "level_db" in r:  # rounded to 0.01 dB: the largest term
                level = r["level_db"] + band.median_db  # it allows (the exact one is the score)
                thr = self.pipe.site.threshold
                term = max(evidence.term(level + d, thr, floor) or 0.0 for d in LEVEL_ROUNDING)
            self.rows.append((r["start"], r["end"], r["score"], term))


def score_file(model: Model, path: Path) -> Scored:
    """Window scores of a wav file replayed as fast as possible, at a hop of one vector."""
    source = FileSource(read_info(path))
    col = _Collector(model, source.rate)
    col.keep(replay(col.pipe, source))
    return col.finish()


def normal_chunks(hours: float, seed: int) -> Iterator[F32]:
    """Generated healthy audio at NORMAL_RATE, CHUNK_SECONDS at a time, made on all cores."""
    from .corpus import normal_audio

    n = int(np.ceil(hours * 3600 / CHUNK_SECONDS))
    secs = [min(CHUNK_SECONDS, hours * 3600 - i * CHUNK_SECONDS) for i in range(n)]
    with ProcessPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        yield from pool.map(normal_audio, secs, [NORMAL_RATE] * n, range(seed, seed + n))


def alert_windows(
    flags: npt.NDArray[np.bool_],
    calm: npt.NDArray[np.bool_],
    need: int,
    within: int,
    clear: int,
    strong: npt.NDArray[np.bool_] | None = None,
    need_strong: int = 1,
) -> I64:
    """Indexes of the windows at which the detector raises an alert: `need` flagged windows
    (or `need_strong` strong ones) among the last `within`, counting only since the last
    return to normal; back to normal after `clear` calm windows in a row. Same rule as
    amulet_stream.scoring.detector.Detector."""
    cs = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    cs2 = np.concatenate([[0], np.cumsum(flags if strong is None else strong, dtype=np.int64)])
    big = need if strong is None else need_strong
    idx = np.arange(flags.size)
    breaks = np.where(calm, 0, idx + 1)
    run = idx + 1 - np.maximum.accumulate(breaks)  # calm windows in a row, ending here
    out: list[int] = []
    since = 0  # first window counted after the last return to normal
    while True:

        def enough(i: I64, lo: int = since) -> npt.NDArray[np.bool_]:
            first = np.maximum(lo, i - within + 1)
            hit: npt.NDArray[np.bool_] = (cs[i + 1] - cs[first] >= need) | (
                cs2[i + 1] - cs2[first] >= big
            )
            return hit

        a = _first(enough, since, flags.size)
        if a < 0:
            break
        out.append(a)
        c = _first(lambda i: run[i] >= clear, a + 1, flags.size)
        if c < 0:
            break
        since = c + 1
    return np.asarray(out, np.int64)


def _first(cond: Callable[[I64], npt.NDArray[np.bool_]], start: int, stop: int) -> int:
    """The first index in [start, stop) where cond holds, searched in chunks; -1 if none."""
    step = 4096
    while start < stop:
        i = np.arange(start, min(stop, start + step))
        hit = np.flatnonzero(cond(i))
        if hit.size:
            return int(i[hit[0]])
        start += step
        step *= 2
    return -1


def detect(s: Scored, threshold: float, settings: DetectorSettings) -> I64:
    """Alert windows of a scored stream under detector settings (model threshold `threshold`)."""
    thr = effective_threshold(threshold, settings.sensitivity)
    need = windows_for(settings.alert_seconds, s.hop_seconds)
    within = max(need, windows_for(settings.within_seconds, s.hop_seconds))
    clear = windows_for(settings.clear_seconds, s.hop_seconds)
    return alert_windows(
        s.scores > thr,
        s.scores <= thr * settings.clear_ratio,
        need,
        within,
        clear,
        s.scores > thr * settings.burst_ratio,
        windows_for(settings.burst_seconds, s.hop_seconds),
    )


def run(
    corp: Corpus,
    out: Path,
    normal_hours: float,
    trainers: Sequence[tuple[str, Trainer, str]],
    seed: int = 9000,
) -> list[Result]:
    """Train every candidate, score the test recordings and the normal audio."""
    # one line per file
    logging.getLogger("amulet_stream.scoring.pipeline").setLevel(logging.WARNING)
    results: list[Result] = []
    models: list[Model] = []
    for name, trainer, note in trainers:
        _LOGGER.info("candidate %s: training on %d healthy file(s)", name, len(corp.train))
        t0 = time.monotonic()
        path = trainer(corp.train, out / "models" / name)
        model = Model(path)
        res = Result(name, note, model.threshold, time.monotonic() - t0, path.stat().st_size)
        for rec in corp.test:
            res.scored[rec.name] = score_file(model, rec.path)
        for rec, site in background_pairs(corp):
            res.commissioned[rec.name] = commissioned_alerts(model, site.path, rec.path)
        _LOGGER.info("candidate %s: trained in %.1f s, test set scored", name, res.train_seconds)
        results.append(res)
        models.append(model)
    if normal_hours > 0:
        _LOGGER.info("generating and scoring %.2f h of normal audio", normal_hours)
        cols = [_Collector(m, NORMAL_RATE) for m in models]
        done = 0.0
        for chunk in normal_chunks(normal_hours, seed):
            for col in cols:
                for i in range(0, chunk.size, 65536):
                    col.feed(chunk[i : i + 65536])
            done += chunk.size / NORMAL_RATE
            _LOGGER.info("normal audio: %.2f of %.2f h scored", done / 3600, normal_hours)
        for res, col in zip(results, cols, strict=True):
            res.normal = col.finish()
            res.cpu_per_audio_second = col.cpu / max(done, 1e-9)
    return results
