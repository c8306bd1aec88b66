"""Window scores: the mean of the vector scores a window covers, at a hop of whole vectors."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from amulet_stream.scoring.features import rows_of

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class WindowMeans:
    """Vector scores, in stream order -> scores of windows of `size` vectors every `hop` vectors.

    Window w covers vectors [w*hop, w*hop + size); its score is their float64 mean (NaN if any
    is NaN). Keeps only the scores the next window needs. Not thread-safe."""

    def __init__(self, size: int, hop: int) -> None:
        if size < 1 or hop < 1:
            raise ValueError(f"window size and hop must be at least 1 vector ({size}, {hop})")
        self.size = size
        self.hop = hop
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # vector index of _buf[0]
        self._next = 0  # index of the next window

    def push(self, scores: F32) -> tuple[npt.NDArray[np.float64], I64]:
        """Add vector scores; return the scores (n,) and indexes (n,) of the windows completed."""
        self._buf = np.concatenate([self._buf, scores.astype(np.float32, copy=False)])
        end = self._buf_start + self._buf.size
        last = (end - self.size) // self.hop if end >= self.size else -1
        if last < self._next:
            return np.zeros(0), np.zeros(0, np.int64)
        index = np.arange(self._next, last + 1, dtype=np.int64)
        firsts = index * self.hop - self._buf_start
        spans = rows_of(self._buf, self.size, 1)[firsts]
        means = spans.astype(np.float64).mean(axis=1)
        self._next = last + 1
        drop = min(self._next * self.hop - self._buf_start, self._buf.size)
        self._buf = self._buf[drop:]
        self._buf_start += drop
        return means, index
