"""Cutting a mono stream into fixed-length windows with a hop, block by block."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from .features import Profile

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class Windower:
    """Turns float32 mono blocks at the profile's rate into windows (N, window) and their start
    sample indexes; keeps only the samples the next window needs. Not thread-safe."""

    def __init__(self, profile: Profile, hop: int | None = None) -> None:
        self.profile = profile
        self.hop = hop or profile.hop
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # stream index of _buf[0]
        self._next = profile.offset  # start index of the next window
        self.samples_seen = 0

    def _cut(self, last_start: int) -> tuple[F32, I64]:
        """Windows with start in [next, last_start], from the buffer."""
        if last_start < self._next:
            return np.zeros((0, self.profile.window), np.float32), np.zeros(0, np.int64)
        starts = np.arange(self._next, last_start + 1, self.hop, dtype=np.int64)
        view = sliding_window_view(self._buf, self.profile.window)
        windows = np.ascontiguousarray(view[starts - self._buf_start])
        self._next = int(starts[-1]) + self.hop
        drop = min(max(0, self._next - self._buf_start), self._buf.size)
        self._buf = self._buf[drop:]
        self._buf_start += drop
        return windows, starts

    def push(self, block: F32) -> tuple[F32, I64]:
        """Add samples; return the windows now complete and their start indexes."""
        if self._buf_start + self._buf.size < self._next and block.size:
            # skip samples before the next window (offset or hop larger than window)
            skip = min(block.size, self._next - (self._buf_start + self._buf.size))
            block = block[skip:]
            self._buf_start += skip
            self.samples_seen += skip
        self._buf = np.concatenate([self._buf, block.astype(np.float32, copy=False)])
        self.samples_seen += block.size
        end = self._buf_start + self._buf.size
        return self._cut(end - self.profile.window)

    def finish(self) -> tuple[F32, I64]:
        """End of stream: the zero-padded last windows, for profiles with pad_tail."""
        if not self.profile.pad_tail:
            return self._cut(-1)
        last = self._buf_start + self._buf.size - self.profile.window // 2
        self._buf = np.concatenate([self._buf, np.zeros(self.profile.window, np.float32)])
        return self._cut(last)
