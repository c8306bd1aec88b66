"""The levels of the training audio a model stores: the block levels the input checks hold live
audio to, and the window levels (with the held-out recordings' margin) of the level signal."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from amulet_stream.audio.sources import FileSource
from amulet_stream.audio.wav import WavError, read_info
from amulet_stream.scoring import loudness
from amulet_stream.scoring.detector import DetectorSettings
from amulet_stream.scoring.features import Profile
from amulet_stream.scoring.levels import block_levels, level_summary
from amulet_stream.scoring.loudness import DB_FEATURES

from . import calibrate, dataset
from .errors import InputError
from .train_config import TrainConfig
from .train_data import window_levels

_LOGGER = logging.getLogger(__name__)
I64 = npt.NDArray[np.int64]


def input_levels(cfg: TrainConfig) -> dict[str, float]:
    """Distribution of the 0.25 s block RMS (dBFS) of the training audio as the monitor's input
    checks see it: each file's mono samples (channel or down-mix) at its own rate, no gain
    augmentation; p1..p99 is the level range the monitor holds live input to."""
    levels = []
    for path in cfg.inputs:
        try:
            source = FileSource(read_info(path), cfg.channel)
        except (WavError, ValueError) as err:
            raise InputError(str(err)) from err
        levels.append(block_levels((b.samples for b in source.blocks()), source.rate))
    doc = level_summary(np.concatenate(levels))
    _LOGGER.info(
        "input level of the training audio (0.25 s blocks): median %.1f dBFS, p1..p99 "
        "%.1f..%.1f dBFS, min %.1f, max %.1f",
        doc["p50"],
        doc["p1"],
        doc["p99"],
        doc["min"],
        doc["max"],
    )
    return doc


def level(data: dataset.Dataset, profile: Profile, fold: I64) -> dict[str, Any]:
    """The trained level range ('level' in the metadata) for profiles with log-mel dB features:
    the windows' levels of every training file, and each file's median (the spread between
    recordings)."""
    if profile.name not in DB_FEATURES:
        return {}
    levels = window_levels(data, profile)
    doc = loudness.summary(np.concatenate(levels))
    medians = [float(np.median(x)) for x in levels if x.size]
    doc["recordings"] = len(medians)
    doc["recording_spread_db"] = round(max(medians) - min(medians), 2)
    doc["margin_db"] = calibrate.level_margin(data, fold, levels, profile, DetectorSettings())
    _LOGGER.info(
        "level of the training audio (log-mel power of 1 s windows): median %.1f dB, p0.5..p99.5 "
        "%.1f..%.1f dB; the medians of %d recording(s) span %.1f dB; held-out audio went "
        "%.1f dB beyond the rest's range",
        doc["median_db"],
        doc["low_db"],
        doc["high_db"],
        doc["recordings"],
        doc["recording_spread_db"],
        doc["margin_db"],
    )
    return {"level": doc}
