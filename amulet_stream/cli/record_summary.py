"""What record captured: running levels of the samples, the 'recorded' JSON line, and the
warnings a person needs (silence, clipping, lost audio)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from amulet_stream.audio.sources import F32, DeviceSource, StdinSource

_LOGGER = logging.getLogger(__name__)
Source = DeviceSource | StdinSource

SILENCE_PEAK_DBFS = -60.0
"""A recording whose peak stays below this level (dBFS) is reported as silent."""
SILENCE_RMS_DBFS = -70.0
"""A recording whose RMS level is below this (dBFS) is reported as silent."""
CLIP_LEVEL = 32767 / 32768
"""Samples at or beyond this magnitude (full scale, within one 16-bit step) count as clipped."""


def dbfs(level: float) -> float | None:
    """Amplitude (full scale 1.0) in dBFS rounded to 0.01 dB; None for digital silence."""
    return round(20.0 * math.log10(level), 2) + 0.0 if level > 0 else None  # + 0.0: no -0.0


class Levels:
    """Running peak, RMS and clip count of float32 mono samples (full scale 1.0)."""

    def __init__(self) -> None:
        self.frames = 0
        self.peak = 0.0
        self.clipped = 0
        self.nonfinite = 0
        self._sum_squares = 0.0

    def add(self, samples: F32) -> None:
        """Account for one block of float32 (frames,) samples."""
        finite = np.isfinite(samples)
        if not finite.all():
            self.nonfinite += int(samples.size - np.count_nonzero(finite))
            samples = samples[finite]
        self.frames += samples.size
        if samples.size:
            mag = np.abs(samples)
            self.peak = max(self.peak, float(mag.max()))
            self.clipped += int(np.count_nonzero(mag >= CLIP_LEVEL))
            wide = samples.astype(np.float64)
            self._sum_squares += float(np.dot(wide, wide))

    @property
    def rms(self) -> float:
        """Root mean square of the finite samples (full scale 1.0)."""
        return math.sqrt(self._sum_squares / self.frames) if self.frames else 0.0


def summary(
    path: Path,
    requested: float,
    source: Source,
    label: str,
    frames: int,
    levels: Levels,
    stopped: str | None,
) -> dict[str, Any]:
    """The 'recorded' JSON record (levels in dBFS, null for digital silence)."""
    flags, dropped = (
        (source.input_overflows, source.ring.overflowed)
        if isinstance(source, DeviceSource)
        else (0, 0)
    )
    return {
        "event": "recorded",
        "path": str(path.absolute()),
        "seconds": frames / source.rate,
        "requested_seconds": requested,
        "complete": stopped is None,
        "stopped": stopped,
        "source": label,
        "rate": source.rate,
        "channels": source.channels,
        "channel": source.channel,
        "peak_dbfs": dbfs(levels.peak),
        "rms_dbfs": dbfs(levels.rms),
        "clipped_samples": levels.clipped,
        "overflows": flags,
        "dropped_samples": dropped,
    }


def report(summary: dict[str, Any], levels: Levels) -> None:
    """Log how the recording ended and warn about silence, clipping, lost audio."""
    path, seconds = summary["path"], summary["seconds"]
    if summary["stopped"] == "end of input":
        _LOGGER.warning(
            "%s ended after %.2f s of the %g s asked for: kept them in %s",
            summary["source"],
            seconds,
            summary["requested_seconds"],
            path,
        )
    elif summary["stopped"]:
        _LOGGER.info(
            "stopped by %s after %.2f s of %g s: kept what was recorded in %s",
            summary["stopped"],
            seconds,
            summary["requested_seconds"],
            path,
        )
    else:
        _LOGGER.info("recorded %.2f s into %s", seconds, path)
    peak, rms = summary["peak_dbfs"], summary["rms_dbfs"]
    if peak is None or peak < SILENCE_PEAK_DBFS or rms < SILENCE_RMS_DBFS:
        level = "digital silence" if peak is None else f"peak {peak} dBFS, RMS {rms} dBFS"
        _LOGGER.warning(
            "the recording is silent (%s): check that the microphone is connected and "
            "unmuted, the --device and --channel, and the capture gain (alsamixer), "
            "then record again",
            level,
        )
    if levels.clipped:
        _LOGGER.warning(
            "%d samples (%.3g %%) at full scale: the input clips, and a model would learn "
            "the distortion as normal; lower the capture gain (alsamixer) or move the "
            "microphone away, then record again",
            levels.clipped,
            100.0 * levels.clipped / max(levels.frames, 1),
        )
    if summary["overflows"] or summary["dropped_samples"]:
        _LOGGER.warning(
            "audio was lost: %d input overflows (PortAudio) and %d samples dropped by the full "
            "ring buffer, so the recording has gaps; close busy programs or raise --buffer, "
            "then record again",
            summary["overflows"],
            summary["dropped_samples"],
        )
    if levels.nonfinite:
        _LOGGER.warning(
            "%d samples were NaN or infinite (written as received): the device delivers "
            "corrupt audio",
            levels.nonfinite,
        )
