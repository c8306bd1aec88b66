"""Streaming resampler: libsoxr (python-soxr, quality HQ, the resampler librosa and so AMULET
use), whose output does not depend on how the input is cut into blocks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

F32 = npt.NDArray[np.float32]
QUALITY = "HQ"
"""soxr's 'HQ' (librosa's res_type 'soxr_hq', its default): 20-bit precision, passband to
91 % of the lower Nyquist frequency."""


class StreamResampler:
    """Converts float32 mono blocks from `rate_in` to `rate_out` Hz, keeping state between
    blocks; not thread-safe: one producer."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        if rate_in < 1 or rate_out < 1:
            raise ValueError(f"rates {rate_in} Hz and {rate_out} Hz must be positive")
        self.rate_in, self.rate_out = rate_in, rate_out
        self._stream = None
        if not self.passthrough:
            self._stream = soxr.ResampleStream(
                rate_in, rate_out, 1, dtype="float32", quality=QUALITY
            )

    @property
    def passthrough(self) -> bool:
        """True when the rates are equal and blocks pass unchanged."""
        return self.rate_in == self.rate_out

    def process(self, block: F32) -> F32:
        """Feed mono float32 samples at rate_in; return the output samples now complete."""
        if self._stream is None:
            if not self.passthrough:
                raise ValueError("the resampler was flushed: the stream has ended")
            return block
        out: F32 = self._stream.resample_chunk(np.ascontiguousarray(block, np.float32))
        return out

    def flush(self) -> F32:
        """End of stream: the remaining outputs, about n_in * rate_out / rate_in in total;
        nothing more after that (a second flush gives no samples)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return np.zeros(0, dtype=np.float32)
        out: F32 = stream.resample_chunk(np.zeros(0, np.float32), last=True)
        return out
