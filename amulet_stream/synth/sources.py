"""Sound sources the fault kinds are built from: impacts, filtered noise, tones, wavetables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.signal import butter, sosfilt

from amulet_stream.synth.spec import F64, Rng


class Source(Protocol):
    """Added sound, float64, for samples first..first+n-1 of a recording; called in order."""

    def __call__(self, first: int, n: int) -> F64: ...


class Impacts:
    """Bearing impacts: impulses at `impact_hz` (1 % jitter) ringing at a housing resonance,
    optionally load-zone modulated at `shaft_hz`; peak amplitude `peak`; streaming."""

    def __init__(self, rate: int, t_start: float, impact_hz: float, peak: float, rng: Rng) -> None:
        self.rate, self.t_start, self.impact_hz, self.peak = rate, t_start, impact_hz, peak
        self._rng = rng
        self.shaft_hz, self.zone_phase = 0.0, 0.0
        tau = np.arange(int(0.006 * rate)) / rate
        ring_hz = min(3200.0, 0.35 * rate)
        self._ring = np.exp(-tau / 0.0012) * np.sin(2 * np.pi * ring_hz * tau)
        self._tail = np.zeros(0)

    def __call__(self, first: int, n: int) -> F64:
        """Impacts for samples first..first+n-1, with the ringing carried over from before."""
        out = np.zeros(n + self._ring.size)
        out[: self._tail.size] += self._tail
        f, t_a = self.impact_hz, self.t_start + first / self.rate
        index = np.arange(np.ceil(t_a * f), np.ceil((t_a + n / self.rate) * f))
        times = index / f + self._rng.normal(0.0, 0.01 / f, index.size)
        amp = self.peak * self._rng.uniform(0.7, 1.0, index.size)
        if self.shaft_hz:  # the defect passes through the load zone once per turn
            zone = (1 + np.cos(2 * np.pi * self.shaft_hz * times + self.zone_phase)) / 2
            amp *= 0.2 + 0.8 * zone**2
        pos = np.clip(np.round((times - t_a) * self.rate).astype(np.int64), 0, n - 1)
        np.add.at(out, pos[:, None] + np.arange(self._ring.size), amp[:, None] * self._ring)
        self._tail = out[n:].copy()
        return out[:n]


class FilteredNoise:
    """Noise in a band (Butterworth, order 2), rms `level` per 50 Hz of it, times an optional
    `envelope(t)` of the motor's clock; streaming."""

    def __init__(
        self, rate: int, t_start: float, band: tuple[float, float], level: float, rng: Rng
    ) -> None:
        lo, hi = band[0] / (rate / 2), min(0.95, band[1] / (rate / 2))
        self._sos = butter(2, [lo, hi], btype="band", output="sos")
        self._zi = np.zeros((self._sos.shape[0], 2))
        self.rate, self.t_start, self._rng = rate, t_start, rng
        self.sigma = level * np.sqrt(rate / 2 / 50.0)
        self.envelope: Callable[[F64], F64] | None = None

    def __call__(self, first: int, n: int) -> F64:
        """Filtered noise times the envelope for samples first..first+n-1."""
        x, self._zi = sosfilt(self._sos, self.sigma * self._rng.standard_normal(n), zi=self._zi)
        if self.envelope is not None:
            x *= self.envelope(self.t_start + (first + np.arange(n)) / self.rate)
        out: F64 = x
        return out


@dataclass(frozen=True)
class Tones:
    """A sum of sinusoids: frequencies (Hz), amplitudes, phases, optional slow FM; stateless."""

    rate: int
    t_start: float
    freqs: F64
    amps: F64
    phases: F64
    fm: float = 0.0
    """Peak relative frequency deviation of the whole set (slow wander at 0.7 and 0.23 Hz)."""

    def __call__(self, first: int, n: int) -> F64:
        """The tones for samples first..first+n-1."""
        t = self.t_start + (first + np.arange(n)) / self.rate
        out = np.zeros(n)
        wander = self.fm * (np.cos(2 * np.pi * 0.7 * t) / 0.7 + np.cos(2 * np.pi * 0.23 * t) / 0.46)
        for f, a, p in zip(self.freqs, self.amps, self.phases, strict=True):
            out += a * np.sin(2 * np.pi * f * t + p - f * wander)
        return out


class Wavetable:
    """A periodic waveform (one period of `period` s sampled in `table`) played back; stateless."""

    def __init__(self, rate: int, t_start: float, period: float, table: F64) -> None:
        self.rate, self.t_start, self.period = rate, t_start, period
        self._table = np.append(table, table[0])

    def __call__(self, first: int, n: int) -> F64:
        """The waveform for samples first..first+n-1."""
        t = self.t_start + (first + np.arange(n)) / self.rate
        pos = np.mod(t / self.period, 1.0) * (self._table.size - 1)
        out: F64 = np.interp(pos, np.arange(self._table.size), self._table)
        return out


class Sum:
    """The sum of sources: float64, n samples, like each of its parts."""

    def __init__(self, *parts: Source) -> None:
        self.parts = parts

    def __call__(self, first: int, n: int) -> F64:
        """The parts summed for samples first..first+n-1."""
        out = np.zeros(n)
        for part in self.parts:
            out += part(first, n)
        return out
