"""Audio sources: wav replay, raw PCM on stdin, sound card. Each yields mono blocks."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from amulet_stream.audio.resample import StreamResampler
from amulet_stream.audio.ringbuffer import RingBuffer
from amulet_stream.audio.wav import WavInfo, iter_blocks, select_channel

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
LIVE_BLOCK_SECONDS = 0.25
"""Live input is processed in blocks of this length: the per-block cost, not the per-sample
cost, dominates a live stream's CPU use, and a window lasts 1 s anyway."""
FILE_BLOCK_FRAMES = 131072
"""Frames per block of a file read as fast as it goes: of 64, 128 and 256 Ki, the fastest
replay of 600 s of 96 kHz stereo (medians of 5: 1.49, 1.22, 1.28 s; peak RSS 74.8, 77.1,
80.7 MB)."""


@dataclass(frozen=True)
class Block:
    """Float32 samples at the source's rate, mono (n,) or, from a source opened with
    `keep_channels`, (n, channels); and the capture time of the first one."""

    samples: F32
    capture_time: float | None
    """UNIX time (s) of the first sample for live input; None for replay."""


class FileSource:
    """A wav file as a stream: as fast as possible, or paced at `speed` x real time."""

    def __init__(
        self,
        info: WavInfo,
        channel: int | None = None,
        speed: float | None = None,
        keep_channels: bool = False,
        block_seconds: float | None = None,
    ):
        """`block_seconds`: block length (default 0.1 s when paced, FILE_BLOCK_FRAMES otherwise)."""
        if channel is not None and channel >= info.channels:
            raise ValueError(f"{info.path}: channel {channel} does not exist ({info.channels})")
        self.info = info
        self.rate = info.rate
        self.name = str(info.path)
        self.channel = channel
        self.speed = speed
        self.keep_channels = keep_channels
        self.block_seconds = block_seconds
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask blocks() to end (from another thread)."""
        self._stop.set()

    def blocks(self) -> Iterator[Block]:
        """Blocks of `block_seconds`; by default 0.1 s when paced, FILE_BLOCK_FRAMES otherwise."""
        if self.block_seconds is not None:
            frames = max(1, round(self.rate * self.block_seconds))
        else:
            frames = max(1, self.rate // 10) if self.speed else FILE_BLOCK_FRAMES
        t0 = time.monotonic()
        done = 0
        for raw in iter_blocks(self.info, frames):
            if self.speed:
                due = t0 + (done + raw.shape[0]) / self.rate / self.speed
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
            done += raw.shape[0]
            samples = raw if self.keep_channels else select_channel(raw, self.channel)
            del raw  # not held while the block is processed
            yield Block(samples, None)


def iter_mono(info: WavInfo, rate: int, channel: int | None = None) -> Iterator[F32]:
    """A wav file's audio as float32 mono blocks resampled to `rate` Hz, as fast as it reads."""
    resampler = StreamResampler(info.rate, rate)
    if not resampler.passthrough:
        _LOGGER.info("%s: resampling %d Hz -> %d Hz", info.path, info.rate, rate)
    for block in FileSource(info, channel).blocks():
        out = resampler.process(block.samples)
        if out.size:
            yield out
    tail = resampler.flush()
    if tail.size:
        yield tail


class StdinSource:
    """Raw interleaved signed 16-bit little-endian PCM from a byte stream (arecord -f S16_LE)."""

    def __init__(
        self,
        rate: int,
        channels: int = 1,
        channel: int | None = None,
        stream: BinaryIO | None = None,
        keep_channels: bool = False,
    ) -> None:
        self.rate = rate
        self.channels = channels
        self.channel = channel
        self.keep_channels = keep_channels
        self.name = "stdin"
        self._stream = stream or sys.stdin.buffer
        self._fd = sys.stdin.fileno() if stream is None else None

    def blocks(self) -> Iterator[Block]:
        """Blocks of LIVE_BLOCK_SECONDS as they arrive; ends at end of input."""
        frame = 2 * self.channels
        want = max(1, int(self.rate * LIVE_BLOCK_SECONDS)) * frame
        t_start: float | None = None
        done = 0
        rest = b""  # bytes of an incomplete frame, kept for the next read
        while data := self._read(want - len(rest)):
            data = rest + data
            cut = len(data) - len(data) % frame
            data, rest = data[:cut], data[cut:]
            if not data:
                continue
            ints = np.frombuffer(data, dtype="<i2").reshape(-1, self.channels)
            if t_start is None:
                t_start = time.time() - ints.shape[0] / self.rate
            block = ints.astype(np.float32) / 32768.0
            if not self.keep_channels:
                block = select_channel(block, self.channel)
            yield Block(block, t_start + done / self.rate)
            done += ints.shape[0]

    def _read(self, n: int) -> bytes:
        """Up to n bytes (fewer only at the end of input); b"" at the end.

        The process's own stdin is read with os.read on its descriptor, not through Python's
        buffered reader: a thread blocked in the buffered reader aborts the interpreter at
        exit (SIGTERM while waiting for audio)."""
        if self._fd is None:
            return self._stream.read(n)
        chunks: list[bytes] = []
        got = 0
        while got < n:
            chunk = os.read(self._fd, n - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)


class DeviceSource:
    """A sound-card input through PortAudio. The callback only copies into a ring buffer."""

    def __init__(
        self,
        device: int,
        rate: int,
        channels: int,
        channel: int | None = None,
        blocksize: int = 0,
        buffer_seconds: float = 10.0,
        duration: float | None = None,
        keep_channels: bool = False,
    ) -> None:
        self.device = device
        self.rate = rate
        self.channels = channels
        self.channel = channel
        self.blocksize = blocksize
        self.duration = duration
        self.keep_channels = keep_channels and channels > 1
        self.name = f"device:{device}"
        self.ring = RingBuffer(int(rate * buffer_seconds), channels if self.keep_channels else 1)
        self.input_overflows = 0
        """PortAudio input-overflow flags seen (samples lost before they reached us)."""
        self._stop = threading.Event()

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        if status.input_overflow:
            self.input_overflows += 1
        if self.keep_channels:
            self.ring.write(indata)
        elif self.channel is None and self.channels > 1:
            self.ring.write(indata.mean(axis=1))
        else:
            self.ring.write(indata[:, self.channel or 0])

    def stop(self) -> None:
        """Ask blocks() to end (from another thread or a signal handler)."""
        self._stop.set()
        self.ring.wake()

    def blocks(self) -> Iterator[Block]:
        """Blocks from the ring buffer until stop() or the duration is reached."""
        import sounddevice as sd

        limit = int(self.duration * self.rate) if self.duration else None
        burst = _BurstLog(self.name)
        with sd.InputStream(
            device=self.device,
            channels=self.channels,
            samplerate=self.rate,
            dtype="float32",
            blocksize=self.blocksize,
            callback=self._callback,
        ):
            t_start = time.time()
            done = 0
            while not self._stop.is_set() and (limit is None or done < limit):
                step = max(1, int(self.rate * LIVE_BLOCK_SECONDS))
                want = step if limit is None else min(step, limit - done)
                block = self.ring.read(want, timeout=0.5)
                burst.check(self.input_overflows, self.ring.overflowed)
                if block.size:
                    yield Block(block, t_start + done / self.rate)
                    done += block.shape[0]


class _BurstLog:
    """Logs overflows once when a burst starts and once when it has been quiet for 2 s."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._seen = (0, 0)
        self._start = (0, 0)
        self._last = 0.0
        self._active = False

    def check(self, flags: int, dropped: int) -> None:
        now = time.monotonic()
        if (flags, dropped) != self._seen:
            if not self._active:
                _LOGGER.warning(
                    "%s: input overflow: audio is being lost (device overflow "
                    "flags or a full ring buffer)",
                    self.name,
                )
                self._active, self._start = True, self._seen
            self._seen, self._last = (flags, dropped), now
        elif self._active and now - self._last > 2.0:
            _LOGGER.warning(
                "%s: overflow burst over: %d overflow flags, %d samples dropped",
                self.name,
                flags - self._start[0],
                dropped - self._start[1],
            )
            self._active = False
