"""record: training audio captured through the monitor's own live source, as a float32 wav.

The source is the one `run` uses (DeviceSource or StdinSource: same device resolution,
channel selection or down-mix, rate and ring buffer), and the wav holds exactly the float32
mono samples of its blocks, so a model is trained on what the monitor will hear."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

import numpy as np

from amulet_stream.audio.devices import resolve
from amulet_stream.audio.sources import F32, DeviceSource, StdinSource
from amulet_stream.audio.wav import MAX_DATA_BYTES, FloatWavWriter
from amulet_stream.outputs.jsonl import Progress

_LOGGER = logging.getLogger(__name__)

SILENCE_PEAK_DBFS = -60.0
"""A recording whose peak stays below this level (dBFS) is reported as silent."""
SILENCE_RMS_DBFS = -70.0
"""A recording whose RMS level is below this (dBFS) is reported as silent."""
CLIP_LEVEL = 32767 / 32768
"""Samples at or beyond this magnitude (full scale, within one 16-bit step) count as clipped."""
MIN_BUFFER_SECONDS = 0.5
"""Smallest ring buffer (s): two of the 0.25 s blocks the processing loop takes."""

Source = DeviceSource | StdinSource


class RecordError(Exception):
    """A recording that cannot start or that failed; nothing was left behind."""


@dataclass(frozen=True)
class RecordSettings:
    """What to record and where, as given on the command line."""

    output: Path
    seconds: float
    """Length to record, seconds of audio."""
    source: str = "device"
    """'device' (PortAudio) or 'stdin' (raw S16_LE PCM)."""
    device: str | None = None
    """Device name, part of it, or index; None: the default input."""
    rate: int | None = None
    """Capture rate (Hz); None: the device's default rate (required for stdin)."""
    channels: int | None = None
    """Channels to open; None: 1, or enough to reach `channel`."""
    channel: int | None = None
    """0-based channel to keep; None: down-mix of all opened channels."""
    buffer: float = 10.0
    """Ring buffer between sound card and writer, seconds."""
    force: bool = False
    """Overwrite an existing output file."""


def check_settings(s: RecordSettings) -> None:
    """Refuse impossible numbers before anything is opened (RecordError)."""
    if not (math.isfinite(s.seconds) and s.seconds > 0):
        raise RecordError(f"--seconds must be a positive number of seconds, not {s.seconds:g}")
    if s.source not in ("device", "stdin"):
        raise RecordError(f"--source must be 'device' or 'stdin', not {s.source!r}")
    if s.rate is not None and s.rate <= 0:
        raise RecordError(f"--rate must be a positive number of Hz, not {s.rate}")
    if s.channels is not None and s.channels <= 0:
        raise RecordError(f"--channels must be at least 1, not {s.channels}")
    if s.channel is not None and s.channel < 0:
        raise RecordError(f"--channel is 0-based and cannot be negative ({s.channel})")
    if s.channel is not None and s.channels is not None and s.channel >= s.channels:
        raise RecordError(
            f"--channel {s.channel} does not exist: --channels {s.channels} opens "
            f"channels 0..{s.channels - 1}"
        )
    if not (math.isfinite(s.buffer) and s.buffer >= MIN_BUFFER_SECONDS):
        raise RecordError(f"--buffer must be at least {MIN_BUFFER_SECONDS} s, not {s.buffer:g}")
    if s.device is not None and not s.device.strip():
        raise RecordError("--device is empty: give a name, part of one, or an index (see devices)")
    if s.source == "stdin" and s.device is not None:
        raise RecordError("--device and --source stdin exclude each other")


def check_output(path: Path, force: bool) -> None:
    """Refuse an output path that cannot take the recording (RecordError)."""
    try:
        _check_output(path, force)
    except OSError as err:  # e.g. a folder on the way that may not be searched
        raise RecordError(f"-o {path}: {err.strerror}") from err


def _check_output(path: Path, force: bool) -> None:
    """check_output without the OSError translation."""
    parent = path.parent
    if path.is_dir():
        raise RecordError(f"-o {path} is a folder: give a file name, e.g. {path / 'healthy.wav'}")
    if not parent.exists():
        raise RecordError(f"-o {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise RecordError(f"-o {path}: {parent} is not a folder")
    if path.exists() or path.is_symlink():
        if not force:
            raise RecordError(f"{path} already exists: give --force to overwrite it, or another -o")
        if not path.is_file():
            raise RecordError(f"-o {path} exists and is not a regular file: refusing to replace it")


def open_source(s: RecordSettings) -> tuple[Source, str]:
    """The monitor's source for these settings, and its label ('device 3: USB mic', 'stdin')."""
    if s.source == "stdin":
        if s.rate is None:
            raise RecordError("--source stdin needs --rate (raw PCM has no header)")
        channels = s.channels or 1
        if s.channel is not None and s.channel >= channels:
            raise RecordError(
                f"--channel {s.channel} does not exist: stdin carries {channels} channel(s) "
                "(set --channels)"
            )
        if sys.stdin.isatty():
            raise RecordError(
                "--source stdin reads raw PCM from a pipe, but stdin is a terminal: "
                "arecord -f S16_LE -r RATE -c 1 | amulet-stream record --source stdin ..."
            )
        return StdinSource(s.rate, channels, s.channel), "stdin"
    dev = resolve(s.device)
    channels = s.channels or (s.channel + 1 if s.channel is not None else 1)
    if channels > dev.channels:
        what = f"channel {s.channel}" if s.channels is None else f"{channels} channels"
        raise RecordError(
            f"device {dev.name!r} has {dev.channels} input channel(s) "
            f"(0..{dev.channels - 1}), {what} requested"
        )
    source = DeviceSource(
        dev.index,
        s.rate or dev.default_rate,
        channels,
        s.channel,
        buffer_seconds=s.buffer,
        duration=s.seconds,
    )
    return source, f"device {dev.index}: {dev.name}"


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


class _Stop:
    """SIGINT/SIGTERM handler: ends the capture early, keeping what was recorded."""

    def __init__(self) -> None:
        self.source: Source | None = None
        """Set while capturing; before that a signal aborts with KeyboardInterrupt."""
        self.reason: str | None = None
        self.finishing = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.finishing:
            return  # the file is being finished: let it
        self.reason = signal.Signals(signum).name
        if isinstance(self.source, DeviceSource):
            self.source.stop()
        else:
            raise KeyboardInterrupt  # not capturing yet, or a read from stdin that may block


@contextlib.contextmanager
def _signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to `handler` (main thread only), restoring them afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _open_temp(path: Path) -> tuple[Path, BinaryIO]:
    """A new hidden file beside `path` (same file system, so a rename completes it)."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.part"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise RecordError(f"-o {path}: cannot write in {path.parent}: {err.strerror}") from err
    return tmp, os.fdopen(fd, "wb")


def _source_errors(source: Source) -> tuple[type[BaseException], ...]:
    """Exceptions capture and writing can raise that mean 'this recording failed'."""
    if isinstance(source, DeviceSource):
        import sounddevice as sd

        return (OSError, sd.PortAudioError)
    return (OSError,)


def record(s: RecordSettings) -> dict[str, Any]:
    """Record into s.output (float32 mono wav at the capture rate); return the summary."""
    stop = _Stop()
    with _signals(stop):
        try:
            return _record(s, stop)
        except KeyboardInterrupt as err:  # before the capture: nothing to keep
            why = stop.reason or "SIGINT"
            raise RecordError(f"stopped by {why} before recording began: nothing written") from err


def _record(s: RecordSettings, stop: _Stop) -> dict[str, Any]:
    """record() with SIGINT and SIGTERM routed to `stop`."""
    check_settings(s)
    check_output(s.output, s.force)
    source, label = open_source(s)
    rate = source.rate
    frames = int(s.seconds * rate)  # DeviceSource's own limit
    if frames < 1:
        raise RecordError(f"--seconds {s.seconds:g} is less than one sample at {rate} Hz")
    if frames * 4 > MAX_DATA_BYTES:
        most = MAX_DATA_BYTES // 4 / rate
        raise RecordError(
            f"--seconds {s.seconds:g} at {rate} Hz is more than one wav file holds "
            f"(4 GiB, {most:.0f} s): record several shorter files"
        )
    levels = Levels()
    tmp, fh = _open_temp(s.output)
    try:
        _announce(s, source, label, frames * 4)
        with fh:
            writer = FloatWavWriter(fh, rate)
            progress = Progress(s.seconds, s.output.name)
            stop.source = source
            try:
                _capture(source, writer, levels, frames, progress)
            except KeyboardInterrupt:
                stop.reason = stop.reason or "SIGINT"
            except _source_errors(source) as err:
                raise RecordError(
                    f"recording from {label} at {rate} Hz failed, nothing written: {err}"
                ) from err
            finally:
                stop.finishing = True  # from here on, signals wait for the file
                progress.close()
            got = writer.finish()
        if got == 0:
            why = f"stopped by {stop.reason}" if stop.reason else f"{label} ended"
            raise RecordError(f"{why} before any audio arrived: nothing written")
        os.replace(tmp, s.output)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RecordError(f"writing {s.output} failed, nothing written: {err}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    stopped = stop.reason or (None if got >= frames else "end of input")
    summary = _summary(s, source, label, got, levels, stopped)
    _report(summary, levels)
    return summary


def _announce(s: RecordSettings, source: Source, label: str, size: int) -> None:
    """Log what is recorded from where; warn when `size` bytes will not fit on the disk."""
    free = shutil.disk_usage(s.output.parent).free
    if size > free:
        _LOGGER.warning(
            "%s has %.1f MB free, the recording needs %.1f MB: it will fail when the disk is full",
            s.output.parent,
            free / 1e6,
            size / 1e6,
        )
    if s.channel is not None:
        what = f"channel {s.channel} of {source.channels}"
    else:
        what = f"down-mix of {source.channels} channels" if source.channels > 1 else "mono"
    _LOGGER.info(
        "recording %g s from %s at %d Hz, %s, into %s (float32)",
        s.seconds,
        label,
        source.rate,
        what,
        s.output,
    )


def _capture(
    source: Source, writer: FloatWavWriter, levels: Levels, frames: int, progress: Progress
) -> None:
    """Write the source's blocks until `frames` samples, the end of input or a stop."""
    done = 0
    blocks = source.blocks()
    try:
        for block in blocks:
            take = block.samples[: frames - done]
            writer.write(take)
            levels.add(take)
            done += take.size
            progress.update(done / source.rate)
            if done >= frames:
                break
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()  # a generator: closes the PortAudio stream now, not at garbage collection


def _summary(
    s: RecordSettings, source: Source, label: str, frames: int, levels: Levels, stopped: str | None
) -> dict[str, Any]:
    """The 'recorded' JSON record (levels in dBFS, null for digital silence)."""
    flags, dropped = (
        (source.input_overflows, source.ring.overflowed)
        if isinstance(source, DeviceSource)
        else (0, 0)
    )
    return {
        "event": "recorded",
        "path": str(s.output.absolute()),
        "seconds": frames / source.rate,
        "requested_seconds": s.seconds,
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


def _report(summary: dict[str, Any], levels: Levels) -> None:
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
