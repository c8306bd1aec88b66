"""record: training audio captured through the monitor's own live source, as a float32 wav.

The source is the one `run` uses (DeviceSource or StdinSource: same device resolution,
channel selection or down-mix, rate and ring buffer), and the wav holds exactly the float32
mono samples of its blocks, so a model is trained on what the monitor will hear."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from amulet_stream.audio.settings import SourceConfig
from amulet_stream.audio.sources import DeviceSource
from amulet_stream.audio.wav_write import MAX_DATA_BYTES, FloatWavWriter
from amulet_stream.cli.options import EXIT_OK, UsageError, check_buffer, flagged
from amulet_stream.cli.record_settings import (
    RecordError,
    RecordSettings,
    check_output,
    check_settings,
    open_source,
)
from amulet_stream.cli.record_summary import Levels, Source, report, summary
from amulet_stream.outputs.jsonl import JsonLines, Progress

_LOGGER = logging.getLogger(__name__)


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
    result = summary(s.output, s.seconds, source, label, got, levels, stopped)
    report(result, levels)
    return result


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


def record_command(args: argparse.Namespace) -> int:
    """The record command: settings from the flags, the recording, its summary line."""
    if args.seconds is None:
        raise UsageError("record needs --seconds N: how many seconds to record")
    if args.output is None:
        raise UsageError("record needs -o FILE.wav: where to write the recording")
    settings = RecordSettings(
        args.output,
        args.seconds,
        args.source,
        args.device,
        args.rate,
        args.channels,
        args.channel,
        args.buffer,
        args.force,
    )
    try:
        check_settings(settings)
    except RecordError as err:
        raise UsageError(str(err)) from err
    # the bounds of the config keys rate, channels, channel (e.g. no 1 GHz ring buffer)
    flags = {k: getattr(args, k) for k in ("rate", "channels", "channel")}
    flagged(SourceConfig(), {k: v for k, v in flags.items() if v is not None})
    check_buffer(args.buffer)
    try:
        summary = record(settings)
    except RecordError as err:
        raise UsageError(str(err)) from err
    JsonLines(scores=False).emit(summary)
    return EXIT_OK
