"""record's settings: what to record and where, checked before anything is opened, and the
monitor's own live source for them."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from amulet_stream.audio.devices import resolve
from amulet_stream.audio.sources import DeviceSource, StdinSource
from amulet_stream.cli.record_summary import Source

MIN_BUFFER_SECONDS = 0.5
"""Smallest ring buffer (s): two of the 0.25 s blocks the processing loop takes."""


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
