"""Commissioning: a stream scores its first seconds of audio without alerting, then sets its own
threshold and level range from what it heard on site (a background the training audio lacked,
a microphone placed differently), never below the model's own threshold."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from amulet_stream.scoring.detector import Detector, DetectorSettings, windows_for
from amulet_stream.scoring.evidence import Evidence
from amulet_stream.scoring.loudness import LevelBand
from amulet_stream.scoring.model import Model

_LOGGER = logging.getLogger(__name__)
F64 = npt.NDArray[np.float64]
MARGIN = 1.1
"""The learned threshold: the site's alert level times this (the spread of a next stretch)."""
SUSPECT_RATIO = 3.0
"""A learned threshold more than this many times the model's: it may have learned a fault."""
SUSPECT_DB = 10.0
"""A learned level this many dB from the model's trained median: the same warning."""
MAX_SECONDS = 86400.0


class LearnedError(ValueError):
    """Learned values that cannot be used (malformed, or of another model)."""


@dataclass(frozen=True)
class Learned:
    """What a stream learned on site, for one model (by its sha256)."""

    model_sha256: str
    threshold: float
    """The stream's threshold before sensitivity: never below the model's."""
    level: LevelBand | None
    """The level range heard on site; None for models without a level signal."""
    seconds: float
    """Seconds of audio it was learned from."""
    suspect: str | None = None
    """Why what was heard is far from the training audio (it may have been a fault), or None."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the state file, the MQTT state, /api)."""
        level = None if self.level is None else asdict(self.level)
        return {
            "model_sha256": self.model_sha256,
            "threshold": self.threshold,
            "level": level,
            "seconds": self.seconds,
            "suspect": self.suspect,
        }


def _number(value: object, what: str, low: float, high: float) -> float:
    """A finite JSON number within [low, high]; LearnedError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LearnedError(f"learned {what} is not a number: {value!r}"[:200])
    if not (math.isfinite(value) and low <= value <= high):
        raise LearnedError(f"learned {what} {value!r} is outside {low:g}..{high:g}")
    return float(value)


def learned_from(doc: object, model_sha256: str) -> Learned:
    """Learned values from their JSON form; LearnedError when malformed or of another model."""
    if not isinstance(doc, dict) or doc.get("model_sha256") != model_sha256:
        raise LearnedError("learned values of another model (or not learned values at all)")
    threshold = _number(doc.get("threshold"), "threshold", 1e-12, 1e12)
    seconds = _number(doc.get("seconds"), "seconds", 1e-3, MAX_SECONDS)
    level, band = doc.get("level"), None
    if level is not None:
        if not isinstance(level, dict):
            raise LearnedError("learned level is not an object")
        keys = ("low_db", "high_db", "median_db", "margin_db")
        low, high, median, margin = (_number(level.get(k), k, -400, 400) for k in keys)
        if not low <= median <= high:
            raise LearnedError("learned level needs low_db <= median_db <= high_db")
        band = LevelBand(low, high, median, max(0.0, margin))
    suspect = doc.get("suspect")
    return Learned(
        model_sha256, threshold, band, seconds, suspect if isinstance(suspect, str) else None
    )


def alert_level(windows: F64, settings: DetectorSettings, hop_seconds: float) -> float:
    """The lowest threshold at which the detector would not have alerted on these window
    scores (served windows, in order)."""
    need = windows_for(settings.alert_seconds, hop_seconds)
    burst = windows_for(settings.burst_seconds, hop_seconds)
    span = max(need, windows_for(settings.within_seconds, hop_seconds))
    if windows.size == 0:
        return 0.0
    width = min(span, windows.size)
    ranked = np.sort(sliding_window_view(windows, width), axis=1)
    worst = 0.0
    if need <= width:
        worst = max(worst, float(ranked[:, width - need].max()))
    if burst <= width:
        worst = max(worst, float(ranked[:, width - burst].max()) / settings.burst_ratio)
    return worst


class Commissioning:
    """Collects a stream's window scores (spectral) and levels while it learns; decides."""

    def __init__(self, seconds: float, model_threshold: float, model_sha256: str) -> None:
        self.seconds = seconds
        self._threshold = model_threshold
        self._sha = model_sha256
        self._scores: list[float] = []
        self._levels: list[float] = []

    def add(self, spectral: float, level_db: float | None) -> None:
        """One served window heard while learning."""
        self._scores.append(spectral)
        if level_db is not None and math.isfinite(level_db):
            self._levels.append(level_db)

    def decide(
        self, settings: DetectorSettings, hop_seconds: float, model_level: LevelBand | None
    ) -> Learned:
        """The learned values from what was heard."""
        site = alert_level(np.asarray(self._scores, np.float64), settings, hop_seconds)
        threshold = max(self._threshold, site * MARGIN)
        band = model_level
        if model_level is not None and self._levels:
            low, median, high = np.percentile(np.asarray(self._levels), [0.5, 50.0, 99.5])
            # never narrower than the training audio's range: a short stretch of the site
            # has not shown every fluctuation the machine makes
            middle, half = (low + high) / 2, max((high - low) / 2, model_level.half_db)
            low, median, high = (round(float(v), 2) for v in (middle - half, median, middle + half))
            band = LevelBand(low, high, median, model_level.margin_db)
        suspect = None
        if threshold > SUSPECT_RATIO * self._threshold:
            suspect = (
                f"the site's audio scored {threshold / self._threshold:.1f}x the model's "
                "threshold: far from the training audio"
            )
        elif band is not None and model_level is not None:
            off = band.median_db - model_level.median_db
            if abs(off) > SUSPECT_DB:
                suspect = f"the site's level is {off:+.1f} dB from the training audio's"
        return Learned(self._sha, threshold, band, self.seconds, suspect)


def describe(learned: Learned, model_threshold: float, model_level: LevelBand | None) -> str:
    """The commissioning's decision in words, for the log."""
    text = (
        f"learned the site from {learned.seconds:g} s of audio: threshold {learned.threshold:.4g}"
        f" (the model's {model_threshold:.4g}"
        + (", kept: the site scored below it)" if learned.threshold == model_threshold else ")")
    )
    if learned.level is not None and model_level is not None:
        b = learned.level
        text += (
            f"; level {b.median_db:.1f} dB ({b.median_db - model_level.median_db:+.1f} dB from "
            f"the training audio), range {b.low_db:.1f}..{b.high_db:.1f} dB"
        )
    return text


def folded(model: Model, band: LevelBand | None) -> Learned | None:
    """The learned values `amulet-export adapt` folded into the model file (as its threshold
    and level range), so a stream takes it without learning again; None if there are none."""
    adapted = model.meta.raw.get("adapted")
    seconds = adapted.get("learned_seconds") if isinstance(adapted, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        return None
    return Learned(model.sha256, model.threshold, band, float(seconds))


class Site:
    """A stream's commissioning: the threshold and level range it uses (the model's, or what
    it learned on site), and, while it learns, the windows heard. Not thread-safe."""

    def __init__(
        self, model: Model, detector: Detector, evidence: Evidence, learned: Learned | None
    ) -> None:
        self.model = model
        self.detector = detector
        self.evidence = evidence
        self.model_band = evidence.band
        self.threshold = model.threshold
        """The threshold before sensitivity: the model's, or the one learned on site."""
        self.learned: Learned | None = None
        self.learning: Commissioning | None = None
        """Set while the stream learns (no alerts)."""
        self.just_learned: Learned | None = None
        """Learned values of a commissioning that just ended, until the caller takes them."""
        self._from = 0.0
        learned = learned or folded(model, evidence.band)
        if learned is not None:
            self.apply(learned)
        elif detector.settings.learn_seconds > 0:
            self.relearn(detector.settings.learn_seconds, 0.0)

    def relearn(self, seconds: float, now: float) -> None:
        """Learn from the `seconds` of audio after stream time `now` (s): no alerts till then."""
        self.learning = Commissioning(seconds, self.model.threshold, self.model.sha256)
        self.learned = None
        self.threshold = self.model.threshold
        self.detector.set_threshold(self.model.threshold)
        self.detector.reset()
        self.evidence.band, self.evidence.ref = self.model_band, "model"
        self._from = now

    def apply(self, learned: Learned) -> None:
        """Use learned values: their threshold and (if any) level range."""
        self.learned = learned
        self.threshold = learned.threshold
        self.detector.set_threshold(learned.threshold)
        if learned.level is not None and self.model_band is not None:
            self.evidence.band, self.evidence.ref = learned.level, "commissioned"

    def doc(self) -> dict[str, Any]:
        """A state record's 'learned' field (nothing without learned values)."""
        return {} if self.learned is None else {"learned": self.learned.to_dict()}

    def decision(self) -> Learned:
        """What the windows heard so far while learning would set."""
        assert self.learning is not None
        p = self.model.profile
        hop_seconds = self.evidence.hop * p.step / p.rate
        return self.learning.decide(self.detector.settings, hop_seconds, self.model_band)

    def hear(self, spectral: float, level: float, span: tuple[float, float]) -> bool:
        """One window (start, end s) heard while learning; False before the learning starts.
        When learn_seconds are heard the learned values take effect (just_learned holds them)
        and the detector starts afresh."""
        assert self.learning is not None
        if span[0] < self._from:
            return False
        self.learning.add(spectral, level if self.model_band is not None else None)
        if span[1] - self._from < self.learning.seconds:
            return True
        learned = self.decision()
        self.learning = None
        self.apply(learned)
        self.just_learned = learned
        self.detector.reset()
        _LOGGER.info("%s", describe(learned, self.model.threshold, self.model_band))
        if learned.suspect:
            _LOGGER.warning(
                "what was learned is far from the training audio (%s): it may have been a "
                "fault; learn again when the machine is known to be healthy",
                learned.suspect,
            )
        return True
