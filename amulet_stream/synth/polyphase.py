"""The generator's streaming polyphase resampler (its own since the runtime resamples with soxr:
generated audio, the corpus and the default model's training audio stay bit-identical), equal
to scipy.signal.resample_poly over the whole signal."""

from __future__ import annotations

import logging
from fractions import Fraction
from math import gcd

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
CHUNK = 8192
"""Outputs computed per step: bounds the temporary (CHUNK x taps) arrays."""
MAX_DOWN = 32768
"""Largest decimation factor (input rate / gcd) resampled exactly: the filter has 20 x that many
taps. Standard rates need at most 5120 (768 kHz -> 22.05 kHz); an odd rate such as 767 999 Hz
(a 15-million-tap filter: 1.6 GB and 14 s to build) is resampled at the nearest ratio within it."""


def lowpass(taps: int, cutoff: float, beta: float = 5.0) -> npt.NDArray[np.float64]:
    """Kaiser-windowed sinc lowpass, cutoff as a fraction of Nyquist, unit gain at DC
    (scipy.signal.firwin(taps, cutoff, window=('kaiser', beta)))."""
    m = np.arange(taps) - (taps - 1) / 2.0
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(taps, beta)
    return np.asarray(h / h.sum(), dtype=np.float64)


class PolyphaseResampler:
    """Converts float32 mono blocks from `rate_in` to `rate_out` Hz, keeping state between blocks.

    Kaiser-windowed (beta 5) FIR like resample_poly; not thread-safe: one producer.
    """

    def __init__(self, rate_in: int, rate_out: int) -> None:
        if rate_in < 1 or rate_out < 1:
            raise ValueError(f"rates {rate_in} Hz and {rate_out} Hz must be positive")
        g = gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        if self.down > MAX_DOWN:  # the filter would take 20 x down taps: approximate the ratio
            ratio = Fraction(rate_out, rate_in).limit_denominator(MAX_DOWN)
            self.up, self.down = ratio.numerator, ratio.denominator
            _LOGGER.warning(
                "resampling %d Hz -> %d Hz as %d:%d (off by %.2g ppm): an unusual sample rate",
                rate_in,
                rate_out,
                self.up,
                self.down,
                abs(float(ratio) * rate_in / rate_out - 1.0) * 1e6,
            )
        self.rate_in, self.rate_out = rate_in, rate_out
        max_rate = max(self.up, self.down)
        self._half = 10 * max_rate
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # global input index of _buf[0]
        self._n_in = 0
        self._n_out = 0
        if self.passthrough:
            return
        h = lowpass(2 * self._half + 1, 1.0 / max_rate) * self.up
        self._taps = -(-(2 * self._half + 1) // self.up)
        hpad = np.zeros(self._taps * self.up)
        hpad[: h.size] = h
        # table[phase, t] = h[phase + t*up]
        # _table_rev[phase, t] = h[phase + (taps - 1 - t) * up]: pairs with inputs in time order
        table = hpad.reshape(self._taps, self.up).T
        self._table_rev = np.ascontiguousarray(table[:, ::-1], dtype=np.float32)

    @property
    def passthrough(self) -> bool:
        """True when the rates are equal and blocks pass unchanged."""
        return self.up == self.down

    def _outputs(self, first: int, last: int) -> F32:
        """Outputs first..last-1: each is the dot product of a contiguous run of `taps` inputs
        (ending at i_max) with the reversed filter phase."""
        js = np.arange(first, last, dtype=np.int64)
        p = js * self.down + self._half
        i_max = p // self.up
        phase = p - i_max * self.up
        lo = i_max - (self._taps - 1) - self._buf_start  # buffer index of each run's start
        pad_left = max(0, -int(lo[0]))
        pad_right = max(0, int(lo[-1]) + self._taps - self._buf.size)
        buf = self._buf
        if pad_left or pad_right:
            buf = np.concatenate(
                [np.zeros(pad_left, np.float32), buf, np.zeros(pad_right, np.float32)]
            )
        view = sliding_window_view(buf, self._taps)
        if self.up == 1:  # plain decimation: one filter phase, runs evenly spaced
            start = int(lo[0]) + pad_left
            runs = view[start : start + (last - first - 1) * self.down + 1 : self.down]
            out: F32 = np.einsum("jt,t->j", runs, self._table_rev[0]).astype(np.float32)
        else:
            out = np.einsum("jt,jt->j", view[lo + pad_left], self._table_rev[phase])
            out = out.astype(np.float32)
        return out

    def _emit(self, last_j: int) -> F32:
        """Outputs with index n_out..last_j-1; inputs past n_in count as zeros."""
        if last_j <= self._n_out:
            return np.zeros(0, dtype=np.float32)
        out = np.empty(last_j - self._n_out, dtype=np.float32)
        for first in range(self._n_out, last_j, CHUNK):
            out[first - self._n_out : first - self._n_out + CHUNK] = self._outputs(
                first, min(last_j, first + CHUNK)
            )
        self._n_out = last_j
        # keep only inputs still needed by the next output
        p_next = last_j * self.down + self._half
        keep_from = p_next // self.up - self._taps + 1
        drop = min(max(0, keep_from - self._buf_start), self._buf.size)
        self._buf = self._buf[drop:]
        self._buf_start += drop
        return out

    def process(self, block: F32) -> F32:
        """Feed mono float32 samples at rate_in; return the output samples now complete."""
        if self.passthrough:
            return block
        self._buf = np.concatenate([self._buf, block.astype(np.float32, copy=False)])
        self._n_in += block.size
        # output j is complete when its newest input index i_max(j) < n_in
        last_j = ((self._n_in - 1) * self.up - self._half) // self.down + 1
        return self._emit(max(last_j, self._n_out))

    def flush(self) -> F32:
        """End of stream: the remaining outputs, ceil(n_in*up/down) in total."""
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        total = -(-self._n_in * self.up // self.down)
        return self._emit(total)
