"""Sources for the daemon: each opened source runs in its own thread (a Feed) and hands its
blocks to the bounded queues of the streams it feeds (one per channel of a multichannel card)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from amulet_stream.audio.devices import DeviceError, resolve
from amulet_stream.audio.settings import SourceConfig
from amulet_stream.audio.sources import (
    LIVE_BLOCK_SECONDS,
    Block,
    DeviceSource,
    FileSource,
    StdinSource,
)
from amulet_stream.audio.wav import WavError, read_info, select_channel
from amulet_stream.outputs.clips import ClipRecorder
from amulet_stream.scoring.commission import Learned
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.pipeline import F32, StreamPipeline
from amulet_stream.service.config import StreamConfig

_LOGGER = logging.getLogger(__name__)

QUEUE_BLOCKS = 40
"""Blocks (0.1-0.25 s each) a stream's queue holds before its source thread waits."""
RATE_TOLERANCE = 1.15
"""A stdin writer more than this factor off its configured rate is an input problem."""
EOF = "end of stdin (its writer closed it)"
"""Feed.outcome when a stdin source ends: `run` treats it as a lost source (exit 3)."""


class RateMeter:
    """Samples per wall-clock second of a source without a clock of its own (stdin), measured
    over MEASURE_SECONDS of steady delivery: the first second after the source opens (a pipe's
    backlog) and any gap of more than GAP_SECONDS (a pause, reported as a stall) restart it."""

    SETTLE_SECONDS = 1.0
    MEASURE_SECONDS = 5.0
    GAP_SECONDS = 1.0

    def __init__(self) -> None:
        self.measured: float | None = None
        """Samples per second at the last measurement; None: not measured yet."""
        self._opened = time.monotonic()
        self._t0: float | None = None
        self._last = 0.0
        self._samples = 0

    def add(self, samples: int, now: float) -> None:
        """A block of `samples` frames arrived at time.monotonic() `now`."""
        if now - self._opened < self.SETTLE_SECONDS:
            return
        if self._t0 is None or now - self._last > self.GAP_SECONDS:
            self._t0, self._samples = now, 0  # this block's samples came before t0
        else:
            self._samples += samples
        self._last = now
        if now - self._t0 >= self.MEASURE_SECONDS:
            self.measured = self._samples / (now - self._t0)
            self._t0, self._samples = now, 0

    def problem(self, rate: int) -> str | None:
        """Why the delivery is far from `rate` Hz (more than RATE_TOLERANCE off); None: fine
        or not measured yet."""
        measured = self.measured
        if measured is None:
            return None
        ratio = measured / rate
        if 1 / RATE_TOLERANCE <= ratio <= RATE_TOLERANCE:
            return None
        how = "slower" if ratio < 1 else "faster"
        return (
            f"stdin delivers {measured:.0f} samples/s, {ratio:.2f}x the configured {rate} Hz "
            f"({how}): a wrong --rate or a writer that cannot keep up"
        )


@dataclass
class Opened:
    rate: int


@dataclass(eq=False)  # compared by identity: a stream is one object, whatever its fields
class Stream:
    """One monitored stream: its config, model, queue, pipeline and health."""

    cfg: StreamConfig
    model: Model
    queue: queue.Queue[Block | Opened] = field(default_factory=lambda: queue.Queue(QUEUE_BLOCKS))
    pipe: StreamPipeline | None = None
    clip: ClipRecorder | None = None
    rate: int = 0
    """The source's rate (Hz) since it last opened."""
    down: bool = False
    ended: bool = False
    learned: Learned | None = None
    """What the stream learned on site (kept across a reopen of its source)."""

    @property
    def id(self) -> str:
        """The stream id."""
        return self.cfg.id


class Feed:
    """One source in its own thread, feeding one or more streams (one per channel)."""

    def __init__(
        self,
        src: SourceConfig,
        streams: list[Stream],
        wake: threading.Event,
        buffer: float,
        duration: float | None = None,
    ) -> None:
        """`buffer`: device ring buffer, s; `duration`: end after this much audio, s."""
        self.src = src
        self.duration = duration
        self.streams = streams
        self.name = source_name(src)
        self.wake = wake
        self.buffer = buffer
        self.failures = 0
        """Opens in a row that failed or delivered nothing."""
        self.reopen_at: float | None = None
        self.overflows = 0
        self.last_data = time.monotonic()
        self.outcome: str | None = None
        """None while running; "ended" (end of file, --duration), EOF (end of stdin) or the
        reason the source failed."""
        self.rate = RateMeter()
        """How fast a stdin writer delivers, against its configured rate."""
        self._stop = threading.Event()
        self._source: DeviceSource | FileSource | StdinSource | None = None
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        """The thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Open the source and deliver its blocks in a new thread."""
        self._stop = threading.Event()
        self.outcome = None
        self.last_data = time.monotonic()
        self.rate = RateMeter()
        self._thread = threading.Thread(target=self._run, name=f"feed-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; a thread stuck in a driver is left behind (daemon thread)."""
        self._stop.set()
        src = self._source
        if isinstance(src, DeviceSource | FileSource):
            src.stop()

    def _open(self) -> DeviceSource | FileSource | StdinSource:
        s = self.src
        if s.kind == "file":
            assert s.path is not None
            info = read_info(s.path)
            need = max((st.cfg.source.channel or 0) for st in self.streams) + 1
            if need > info.channels:
                raise WavError(f"{s.path} has {info.channels} channel(s), channel {need - 1} asked")
            speed = 1.0 if s.realtime else None
            return FileSource(info, None, speed, True, block_seconds=LIVE_BLOCK_SECONDS)
        channels = s.channels or max((st.cfg.source.channel or 0) for st in self.streams) + 1
        if s.kind == "stdin":
            assert s.rate is not None
            return StdinSource(s.rate, channels, keep_channels=True)
        dev = resolve(s.device)  # by name each time: indexes change after a replug
        if channels > dev.channels:
            raise DeviceError(
                f"device {dev.name!r} has {dev.channels} input channels, {channels} asked"
            )
        _LOGGER.info(
            "%s: opening %d: %s at %d Hz",
            self.name,
            dev.index,
            dev.name,
            s.rate or dev.default_rate,
        )
        return DeviceSource(
            dev.index,
            s.rate or dev.default_rate,
            channels,
            buffer_seconds=self.buffer,
            keep_channels=True,
        )

    def _run(self) -> None:
        t0, done = time.time(), 0
        try:
            while True:  # once, or again and again for a looping file
                self._source = source = self._open()
                if done == 0:
                    self._put_all([Opened(source.rate)] * len(self.streams))
                    t0 = time.time()
                limit = None if self.duration is None else round(self.duration * source.rate)
                for block in source.blocks():
                    if self._stop.is_set():
                        return
                    self.last_data = time.monotonic()
                    if self.src.kind == "stdin":
                        self.rate.add(block.samples.shape[0], self.last_data)
                    when = block.capture_time
                    if when is None and self.src.realtime:  # a wav played as a live stream
                        when = t0 + done / source.rate
                    raw = block.samples if limit is None else block.samples[: limit - done]
                    self._put_all(
                        [Block(_select(raw, st.cfg.source.channel), when) for st in self.streams]
                    )
                    done += raw.shape[0]
                    if isinstance(source, DeviceSource):
                        self.overflows = source.input_overflows + source.ring.overflowed
                    if limit is not None and done >= limit:
                        break
                else:
                    if self.src.kind == "file" and self.src.loop and not self._stop.is_set():
                        continue
                    if self.src.kind == "stdin" and not self._stop.is_set():
                        self.outcome = EOF  # the writer went away: not a planned end
                        return
                break
            self.outcome = "ended"
        except Exception as err:
            self.outcome = (
                f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
            )
        finally:
            self.wake.set()

    def _put_all(self, items: list[Block | Opened]) -> None:
        """items[k] to streams[k], waiting while a queue is full (the source's ring fills)."""
        for st, item in zip(self.streams, items, strict=True):
            while not self._stop.is_set():
                try:
                    st.queue.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue
        self.wake.set()


def _select(samples: F32, channel: int | None) -> F32:
    return samples if samples.ndim == 1 else select_channel(samples, channel)


def source_name(src: SourceConfig) -> str:
    if src.kind == "file":
        return f"file:{src.path}"
    return (
        "stdin"
        if src.kind == "stdin"
        else f"device:{src.device if src.device is not None else 'default'}"
    )


def feed_key(src: SourceConfig) -> tuple[Any, ...]:
    """Streams whose sources have the same key share one opened source."""
    if src.kind == "file":
        return ("file", src.path, src.realtime, src.loop)
    if src.kind == "stdin":
        return ("stdin",)
    return ("device", src.device, src.rate, src.channels)


def windows_scored(streams: dict[str, Stream]) -> int:
    """Windows scored by the streams' running pipelines (the watchdog's sign of work)."""
    return sum(st.pipe.stats.windows for st in streams.values() if st.pipe is not None)


def status_line(streams: dict[str, Stream], listener_down: bool) -> str:
    """systemd's STATUS=: the number of streams in each state, and a listener that is down."""
    states: dict[str, int] = {}
    for st in streams.values():
        state = "down" if st.down else (st.pipe.state if st.pipe is not None else None)
        states[state or "starting"] = states.get(state or "starting", 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    listener = "; metrics listener not open" if listener_down else ""
    return f"{len(streams)} stream(s): {summary}{listener}"
