"""Faults put into real recordings: inject() adds a kind's sound at the recording's own levels."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.signal import welch

from amulet_stream.synth.faults import added, envelope, level_gain, plateau
from amulet_stream.synth.spec import F32, F64, NOT_INJECTABLE, Fault, Scene


def _floor(freqs: F64, psd: F64, rate: int) -> Callable[[float, float], float]:
    """A recording's broadband floor: rms per 50 Hz within a band (lo, hi Hz), from the median
    of its power spectral density there (tones do not count)."""

    def ref(lo: float, hi: float) -> float:
        band = (freqs >= lo) & (freqs <= min(hi, 0.45 * rate))
        return float(np.sqrt(np.median(psd[band]) * 50.0)) if band.any() else 0.0

    return ref


def inject(
    samples: F32,
    rate: int,
    fault: Fault,
    seed: int = 0,
    shaft_hz: float = 24.5,
    supply_hz: float = 50.0,
) -> F32:
    """A copy of float32 mono `samples` at `rate` Hz with `fault` in it; outside the fault's
    interval the samples are returned unchanged.

    Levels are relative to the recording's own (its noise floor, its hum); `shaft_hz` and
    `supply_hz` are the rotation and supply frequencies assumed for the recorded motor.
    'stop' fades the recording to a residual level (-40 dB x severity) and back."""
    if fault.kind in NOT_INJECTABLE:
        raise ValueError(f"{fault.kind!r} cannot be injected into a recording (needs its rotation)")
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"inject needs mono samples, got shape {x.shape}")
    t = np.arange(x.size) / rate
    inside = (t >= fault.start) & (t < fault.end)
    if not inside.any():
        raise ValueError(
            f"fault {fault.start}..{fault.end} s is outside the {t[-1]:.2f} s recording"
        )
    if fault.kind == "stop":
        length = fault.end - fault.start
        d, _ = plateau(t, fault.start, fault.end, min(0.3 * length, 1.0), min(0.3 * length, 0.5))
        y = x * 10.0 ** (-40.0 * fault.severity * d / 20.0)
    elif fault.kind == "level_change":
        y = x * level_gain(fault, t, seed)
    else:
        freqs, psd = welch(x, rate, nperseg=min(x.size, rate // 4))
        near_hum = np.abs(freqs - 2 * supply_hz) <= 8.0
        hum = float(np.sqrt(2 * psd[near_hum].sum() * (freqs[1] - freqs[0])))
        scene = Scene(rate, 0.0, shaft_hz, supply_hz, 36, _floor(freqs, psd, rate), hum, None)
        source = added(fault, scene, seed)
        if source is None:
            raise ValueError(f"{fault.kind!r} adds no sound")
        y = x + envelope(fault, t) * source(0, x.size)
    out: F32 = np.where(inside, y, x).astype(np.float32)
    return out
