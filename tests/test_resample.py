"""The runtime resampler (soxr HQ) gives the same bits however the audio is cut into blocks:
those of one soxr.resample of the whole signal, as librosa (and so AMULET) resamples; it keeps
a tone and removes what lies above the new Nyquist frequency. The generator's own polyphase
resampler equals scipy's resample_poly."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from scipy.signal import resample_poly

from amulet_stream.audio.resample import StreamResampler
from amulet_stream.synth.motor import generate
from amulet_stream.synth.polyphase import PolyphaseResampler

RATES = [(96000, 16000), (48000, 16000), (44100, 16000), (22050, 16000), (96000, 22050)]
RATES += [(16000, 22050), (8000, 16000)]


def blockwise(
    rs: StreamResampler | PolyphaseResampler, x: np.ndarray, sizes: list[int]
) -> np.ndarray:
    out, at = [], 0
    for size in sizes:
        out.append(rs.process(x[at : at + size]))
        at += size
    out.append(rs.process(x[at:]))
    out.append(rs.flush())
    return np.concatenate(out)


@pytest.mark.parametrize(("rate_in", "rate_out"), RATES)
def test_any_blocks_give_the_bits_of_the_whole_signal(rate_in: int, rate_out: int) -> None:
    rng = np.random.default_rng(rate_in + rate_out)
    motor = generate(0.5, rate_in, seed=2)
    x = np.concatenate([motor, rng.standard_normal(rate_in // 4).astype(np.float32) * 0.1])
    whole = soxr.resample(x, rate_in, rate_out, quality="HQ")
    assert whole.dtype == np.float32 and abs(whole.size - x.size * rate_out / rate_in) <= 1
    for sizes in (
        [1] * 3000,
        [7] * 500,
        [1000] * (x.size // 1000),
        [24000] * (x.size // 24000),
        rng.integers(0, 9000, x.size // 4000).tolist(),
    ):
        rs = StreamResampler(rate_in, rate_out)
        got = blockwise(rs, x, sizes)
        assert np.array_equal(got, whole), sizes[:3]
        assert rs.flush().size == 0  # the end, once


def test_a_tone_is_kept_and_what_lies_above_nyquist_removed() -> None:
    t = np.arange(48000 * 2) / 48000
    for hz, gain in ((1000.0, 1.0), (11000.0, 0.0)):  # 11 kHz: above 16 kHz's Nyquist
        x = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        y = blockwise(StreamResampler(48000, 16000), x, [12000] * 7)
        expected = gain * 0.5 * np.sin(2 * np.pi * hz * np.arange(y.size) / 16000)
        middle = slice(1000, y.size - 1000)  # away from the edges
        assert np.abs(y[middle] - expected[middle]).max() < 1e-4, hz


def test_equal_rates_pass_through() -> None:
    rs = StreamResampler(16000, 16000)
    x = np.arange(10, dtype=np.float32)
    assert rs.passthrough
    np.testing.assert_array_equal(rs.process(x), x)
    assert rs.flush().size == 0


@pytest.mark.parametrize(
    ("rate_in", "rate_out"), [(96000, 22050), (44100, 16000), (16000, 22050), (48000, 16000)]
)
def test_the_generator_s_resampler_equals_resample_poly(rate_in: int, rate_out: int) -> None:
    rng = np.random.default_rng(rate_in + rate_out)
    x = rng.standard_normal(30000).astype(np.float32)
    expected = resample_poly(x.astype(np.float64), rate_out, rate_in)
    sizes = rng.integers(1, 4000, 20).tolist()
    y = blockwise(PolyphaseResampler(rate_in, rate_out), x, sizes)
    assert y.size == expected.size
    np.testing.assert_allclose(y, expected, atol=2e-6)
