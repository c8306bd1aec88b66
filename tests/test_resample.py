"""The streaming resampler equals scipy's whole-signal resample_poly, whatever the blocks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly

from amulet_stream.audio.resample import StreamResampler


@pytest.mark.parametrize(
    ("rate_in", "rate_out"), [(96000, 22050), (44100, 16000), (16000, 22050), (48000, 16000)]
)
def test_blockwise_equals_whole_signal(rate_in: int, rate_out: int) -> None:
    rng = np.random.default_rng(rate_in + rate_out)
    x = rng.standard_normal(30000).astype(np.float32)
    expected = resample_poly(x.astype(np.float64), rate_out, rate_in)
    rs = StreamResampler(rate_in, rate_out)
    out, i = [], 0
    while i < x.size:
        n = int(rng.integers(1, 4000))
        out.append(rs.process(x[i : i + n]))
        i += n
    out.append(rs.flush())
    y = np.concatenate(out)
    assert y.size == expected.size
    np.testing.assert_allclose(y, expected, atol=2e-6)


def test_equal_rates_pass_through() -> None:
    rs = StreamResampler(16000, 16000)
    x = np.arange(10, dtype=np.float32)
    assert rs.passthrough
    np.testing.assert_array_equal(rs.process(x), x)
    assert rs.flush().size == 0
