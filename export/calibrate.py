"""Thresholds that survive the next recording: models fitted without some recordings (folds of
whole files, or stretches of one file) score them; each held-out recording gives the lowest
threshold at which the monitor's detector would not have alerted on it, and the threshold
covers the spread of those between recordings. The level tolerance is learned the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from amulet_stream.scoring.commission import alert_level as served_alert_level
from amulet_stream.scoring.detector import DetectorSettings
from amulet_stream.scoring.features import Profile
from amulet_stream.scoring.loudness import summary
from amulet_stream.scoring.windows import WindowMeans

from . import dataset

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
MARGIN = 1.1
"""With fewer than 3 held-out recordings no spread can be fitted: the highest times this."""


@dataclass(frozen=True)
class Held:
    """One held-out recording: its name and its windows' scores at a hop of one vector."""

    name: str
    scores: F64


def recordings(data: dataset.Dataset, fold: I64, per_window: int, values: F32) -> list[Held]:
    """Held-out recordings from out-of-fold vector values: each file, or each stretch (fold)
    of a single file; windows at a hop of one vector made only of the recording's vectors."""
    names = [str(f["name"]) for f in data.files]
    key = data.file_index if data.counts.size > 1 else fold
    out = []
    for k in np.unique(key).tolist():
        pick = values[key == k]
        if pick.size < per_window:
            continue
        means = WindowMeans(per_window, 1).push(pick)[0]
        name = names[k] if data.counts.size > 1 else f"{names[0]} stretch {k + 1}"
        out.append(Held(name, means))
    return out


def alert_level(windows: F64, hop: int, hop_seconds: float, settings: DetectorSettings) -> float:
    """The lowest threshold at which the detector would not alert on these window scores (a
    hop of one vector), served every `hop` vectors from any starting vector."""
    return max(
        served_alert_level(windows[phase::hop], settings, hop_seconds) for phase in range(hop)
    )


def threshold(levels: list[float], quantile: float) -> tuple[float, dict[str, Any]]:
    """The threshold from the held-out recordings' alert levels: the `quantile` prediction
    bound of the next recording's alert level (log-normal spread between recordings, Student
    t for their small number), never below the highest; with fewer than 3, the highest x
    MARGIN."""
    highest = max(levels)
    how: dict[str, Any] = {"method": "recordings", "recordings": len(levels)}
    how["alert_levels"] = [round(x, 6) for x in levels]
    logs = np.log(np.asarray(levels, np.float64))
    if len(levels) < 3 or np.ptp(logs) <= 0:
        how["rule"] = f"highest x {MARGIN:g}"
        return highest * MARGIN, how
    n, spread = logs.size, float(logs.std(ddof=1))
    bound = float(np.exp(logs.mean() + stats.t.ppf(quantile, n - 1) * spread * np.sqrt(1 + 1 / n)))
    how.update(rule="prediction bound", quantile=quantile, log_spread=round(spread, 4))
    return max(bound, highest), how


def describe(value: float, how: dict[str, Any]) -> str:
    """The threshold's calibration in words, for the log and `info`."""
    levels = how["alert_levels"]
    n = len(levels)
    what = "recording" if n == 1 else "recordings"
    text = (
        f"none of {n} held-out {what} would have alerted; the highest reached "
        f"{max(levels) / value:.2f} of it"
    )
    if how["rule"] == "prediction bound":
        return text + (
            f" (the {how['quantile']:g} bound for the next recording, from their spread of "
            f"{100 * how['log_spread']:.0f} %)"
        )
    return text + f" (too few recordings to fit their spread: the highest x {MARGIN:g})"


def level_margin(
    data: dataset.Dataset,
    fold: I64,
    levels: list[F32],
    profile: Profile,
    settings: DetectorSettings,
) -> float:
    """How far (dB) beyond the level range of the other folds' audio a held-out recording's
    windows went, as far as the detector would have alerted: the learned part of the level
    tolerance (0 when every recording stayed inside, or with a single fold)."""
    per_vector = np.concatenate(levels)  # windows at a hop of one vector, per file in order
    starts = np.concatenate(
        [np.arange(max(0, c - profile.vectors + 1)) for c in data.counts.tolist()]
    )
    files = np.repeat(
        np.arange(data.counts.size), [max(0, c - profile.vectors + 1) for c in data.counts]
    )
    first = np.concatenate([[0], np.cumsum(data.counts)[:-1]])
    window_fold = fold[first[files] + starts]
    worst = 0.0
    hop_seconds = profile.hop_vectors * profile.step / profile.rate
    for k in np.unique(window_fold).tolist():
        others = per_vector[window_fold != k]
        if others.size == 0:
            continue
        band = summary(others.astype(np.float64))
        middle = (band["low_db"] + band["high_db"]) / 2
        half = (band["high_db"] - band["low_db"]) / 2
        outside = np.abs(per_vector[window_fold == k].astype(np.float64) - middle) - half
        worst = max(worst, alert_level(outside, profile.hop_vectors, hop_seconds, settings))
    return round(worst, 2)
