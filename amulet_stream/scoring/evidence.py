"""A stream's evidence beside its spectral scores: each window's level against the level range
(the model's, or the one learned on site), and what an alert says changed: the level, the
cause and the bands. It keeps the latest vectors, at most a window's and a batch's."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from amulet_stream.scoring.bands import changed_bands
from amulet_stream.scoring.loudness import (
    DB_FEATURES,
    LevelBand,
    level_band,
    power_db,
    vector_power,
)
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.records import Record
from amulet_stream.scoring.windows import WindowMeans

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


class Evidence:
    """Levels of the windows a WindowMeans(vectors, hop) completes, and an alert's details.
    Not thread-safe: one per stream pipeline."""

    def __init__(self, model: Model, hop: int) -> None:
        self.model = model
        self.profile = p = model.profile
        self.hop = hop
        self.band: LevelBand | None = level_band(model.meta.raw) if p.name in DB_FEATURES else None
        """The level range windows are judged against; None: the level is not part of the score."""
        self.ref = "model"
        """Where the band comes from: 'model' (its training audio) or 'commissioned' (the site)."""
        self._explains = model.explains and p.name in DB_FEATURES
        self._powers = WindowMeans(p.vectors, hop)
        self._kept = np.zeros((0, p.dim), np.float32)
        self._kept_end = 0  # stream index after the last kept vector

    def push(self, vectors: F32, end: int) -> F64 | None:
        """New vectors (n, D), `end` the stream index after the last: the levels (dB) of the
        windows they complete (aligned with the scores' WindowMeans), None without a band."""
        if self.band is None and not self._explains:
            return None
        self._kept = np.concatenate([self._kept, vectors])[
            -(vectors.shape[0] + self.profile.vectors) :
        ]
        self._kept_end = end
        if self.band is None:
            return None
        return power_db(self._powers.push(vector_power(vectors, self.profile.frame_dim))[0])

    def term(self, level_db: float, threshold: float, floor_db: float) -> float | None:
        """The level's score (see LevelBand.term); None without a band."""
        return None if self.band is None else self.band.term(level_db, threshold, floor_db)

    def level_db(self, level: float) -> Record:
        """A record's 'level_db' field: the level minus the reference (nothing without one)."""
        return {} if self.band is None else {"level_db": round(level - self.band.median_db, 2)}

    def changed(self, window: int, cause: str) -> Record:
        """What an anomaly in window `window` says changed: the level of its newest hop of
        audio against the reference, the cause and the bands deviating most from what the
        model expected (level_db and level_ref None, cause 'spectrum' without a band)."""
        p = self.profile
        first = window * self.hop - (self._kept_end - self._kept.shape[0])
        mine = self._kept[max(0, first) : first + p.vectors]
        bands = changed_bands(self.model.residuals(mine), p) if self._explains and mine.size else []
        if self.band is None:
            return {"level_db": None, "level_ref": None, "cause": "spectrum", "bands": bands}
        newest = np.asarray([vector_power(mine[-self.hop :], p.frame_dim).mean()], np.float64)
        level = round(float(power_db(newest)[0]) - self.band.median_db, 2)
        return {"level_db": level, "level_ref": self.ref, "cause": cause, "bands": bands}
