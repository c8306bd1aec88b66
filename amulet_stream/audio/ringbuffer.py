"""Preallocated float32 ring buffer between the sound-card callback and the processing loop."""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


class RingBuffer:
    """Fixed-capacity float32 FIFO of frames (mono, or `channels` wide); never grows.

    Thread-safety: one writer (the audio callback) and one reader. write() never blocks and
    never allocates: when the reader falls behind, the incoming samples that do not fit are
    dropped and counted in `overflowed`. read() waits up to a timeout for data."""

    def __init__(self, capacity: int, channels: int = 1) -> None:
        """`capacity` in frames; with channels > 1 frames are rows of (frames, channels)."""
        if capacity < 1 or channels < 1:
            raise ValueError("capacity and channels must be positive")
        self.capacity = capacity
        shape = (capacity,) if channels == 1 else (capacity, channels)
        self._data = np.zeros(shape, dtype=np.float32)
        self._written = 0  # total samples written (monotonic)
        self._read = 0  # total samples read
        self.overflowed = 0
        """Samples dropped because the buffer was full."""
        self._ready = threading.Event()

    @property
    def available(self) -> int:
        """Samples written and not yet read."""
        return self._written - self._read

    def write(self, samples: F32) -> int:
        """Copy samples in (audio thread); return how many were accepted."""
        free = self.capacity - (self._written - self._read)
        n = min(int(samples.shape[0]), free)
        if n < samples.shape[0]:
            self.overflowed += samples.shape[0] - n
        if n > 0:
            pos = self._written % self.capacity
            first = min(n, self.capacity - pos)
            self._data[pos : pos + first] = samples[:first]
            if n > first:
                self._data[: n - first] = samples[first:n]
            self._written += n
        self._ready.set()
        return n

    def read(self, max_samples: int, timeout: float | None = None) -> F32:
        """Take up to max_samples frames (a new array), waiting up to `timeout` s when empty."""
        if self.available == 0:
            self._ready.clear()
            if self.available == 0:
                self._ready.wait(timeout)
        n = min(max_samples, self.available)
        pos = self._read % self.capacity
        first = min(n, self.capacity - pos)
        out = np.empty((n, *self._data.shape[1:]), dtype=np.float32)
        out[:first] = self._data[pos : pos + first]
        out[first:] = self._data[: n - first]
        self._read += n
        return out

    def wake(self) -> None:
        """Wake a waiting reader (on shutdown)."""
        self._ready.set()
