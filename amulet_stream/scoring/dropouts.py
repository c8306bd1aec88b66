"""Dropouts: runs of exact zeros of a given length or more in mono audio, across blocks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


class ZeroRuns:
    """Runs of exact zeros `length` samples or longer, a run carried on from call to call."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.carried = 0
        """Exact zeros at the end of the audio seen so far."""

    def gaps(self, flat: F32, nb: int) -> tuple[Bools, I64]:
        """Per block of `flat` (nb equal blocks): does it hold a run of `length` zeros or more,
        and how many runs reach that length in it."""
        none = np.zeros(nb, bool), np.zeros(nb, np.int64)
        if self.no_long_run(flat):
            return none
        zero = flat == 0.0
        if not zero.any():
            self.carried = 0
            return none
        # runs of zeros from their edges: isolated zeros (quantisation) are the usual case
        edges = np.flatnonzero(np.diff(np.concatenate(([False], zero, [False])).view(np.int8)))
        starts, ends = edges[::2], edges[1::2]
        lengths = ends - starts
        if starts[0] == 0:
            lengths[0] += self.carried
        if lengths.max() < self.length:  # no run reaches the length in these blocks
            self.carried = int(lengths[-1]) if ends[-1] == flat.size else 0
            return none
        idx = np.arange(flat.size, dtype=np.int64)
        last_nonzero = np.maximum.accumulate(np.where(zero, -1, idx))
        run = np.where(zero, idx - last_nonzero, 0)
        run[last_nonzero < 0] += self.carried
        self.carried = int(run[-1])
        long = (run >= self.length).reshape(nb, -1)
        reached = (run == self.length).reshape(nb, -1).sum(axis=1)
        return np.asarray(long.any(axis=1), bool), reached.astype(np.int64)

    def no_long_run(self, flat: F32) -> bool:
        """True (and the carried run updated) when no run of zeros reaches `length` in `flat`,
        decided on a grid of every s-th sample, s = half that length: such a run holds two
        neighbours on the grid, or goes on from the last call (the usual case: isolated
        quantisation zeros, read on 1/s of the samples)."""
        s = self.length // 2
        if s < 1 or flat.size < 2 * s or (self.carried and flat[0] == 0.0):
            return False
        grid = flat[::s] == 0.0
        if (grid[1:] & grid[:-1]).any():
            return False
        nonzero = np.flatnonzero(flat[-2 * s :])  # so a run at the end is shorter than 2s
        self.carried = 2 * s - 1 - int(nonzero[-1])
        return True
