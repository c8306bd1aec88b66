"""Deterministic generator of electric-motor sound, healthy or with a fault, for demos and tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, lfilter, lfilter_zi

from .resample import StreamResampler

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

FAULTS = ("bearing", "imbalance")
MASTER_RATE = 48000


@dataclass(frozen=True)
class Motor:
    """A motor's acoustic signature; frequencies in Hz, levels in full-scale amplitude."""

    rpm: float = 1470.0
    supply_hz: float = 50.0
    slots: int = 36
    fan_blades: int = 8
    noise_rms: float = 0.02
    hum: float = 0.06
    rotation: float = 0.04
    phase_seed: int = 7
    """Fixes the phases of the motor's tones relative to each other."""


@dataclass(frozen=True)
class Fault:
    """A fault present from `start` to `end` seconds; severity 0..1."""

    kind: str
    start: float
    end: float
    severity: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ValueError(f"unknown fault {self.kind!r} (known: {', '.join(FAULTS)})")


def _tones(t: F64, motor: Motor, phases: F64, fault: Fault | None, in_fault: F64) -> F64:
    fr = motor.rpm / 60.0
    out = np.zeros_like(t)
    for k in range(1, 9):
        amp = np.full_like(t, motor.rotation / k)
        if fault is not None and fault.kind == "imbalance" and k <= 2:
            amp *= 1.0 + 6.0 * fault.severity * in_fault / k
        out += amp * np.sin(2 * np.pi * k * fr * t + phases[k])
    two_f = 2.0 * motor.supply_hz
    out += motor.hum * np.sin(2 * np.pi * two_f * t + phases[9])
    out += 0.4 * motor.hum * np.sin(2 * np.pi * motor.supply_hz * t + phases[10])
    out += 0.3 * motor.hum * np.sin(2 * np.pi * 3 * two_f * t + phases[11])
    slot = motor.slots * fr
    for j, f in enumerate((slot - two_f, slot, slot + two_f)):
        out += 0.02 * (0.5 if j != 1 else 1.0) * np.sin(2 * np.pi * f * t + phases[12 + j])
    out += 0.015 * np.sin(2 * np.pi * motor.fan_blades * fr * t + phases[15])
    # slight amplitude modulation at the rotation rate
    modulated: F64 = out * (1.0 + 0.05 * np.sin(2 * np.pi * fr * t + phases[16]))
    return modulated


def _bearing(t: F64, rate: int, motor: Motor, fault: Fault, rng: np.random.Generator) -> F64:
    """Impulses at the outer-race defect rate (3.58 x rotation), ringing at 3.2 kHz."""
    bpfo = 3.58 * motor.rpm / 60.0
    period = rate / bpfo
    first = int(np.ceil(t[0] * bpfo))
    last = int(np.floor(t[-1] * bpfo))
    out = np.zeros_like(t)
    ring_len = int(0.006 * rate)
    tau = np.arange(ring_len) / rate
    ring = np.exp(-tau / 0.0012) * np.sin(2 * np.pi * 3200.0 * tau)
    for n in range(first, last + 1):
        pos = round(n * period + rng.normal(0, 0.01 * period)) - round(t[0] * rate)
        if 0 <= pos < t.size:
            seg = out[pos : pos + ring_len]
            seg += 0.25 * fault.severity * rng.uniform(0.7, 1.0) * ring[: seg.size]
    return out


def generate_blocks(
    seconds: float,
    rate: int = 16000,
    seed: int = 0,
    motor: Motor | None = None,
    fault: Fault | None = None,
) -> Iterator[F32]:
    """Yield float32 mono blocks of motor sound at `rate`; same arguments, same samples.

    The sound is made at 48 kHz and resampled, so its spectrum does not depend on `rate`."""
    resampler = StreamResampler(MASTER_RATE, rate)
    for block in _master_blocks(seconds, seed, motor or Motor(), fault):
        out = resampler.process(block)
        if out.size:
            yield out
    tail = resampler.flush()
    if tail.size:
        yield tail


def _master_blocks(seconds: float, seed: int, motor: Motor, fault: Fault | None) -> Iterator[F32]:
    """One-second blocks at MASTER_RATE."""
    rate = MASTER_RATE
    # phases belong to the motor (its harmonics are locked to the shaft); a recording of it
    # starts at a random moment: the seed picks that moment and the noise
    phases = np.random.default_rng(motor.phase_seed).uniform(0, 2 * np.pi, 17)
    t0 = float(np.random.default_rng([seed, 1 << 20]).uniform(0.0, 3600.0))
    b, a = butter(2, [40.0 / (rate / 2), min(0.95, 6000.0 / (rate / 2))], btype="band")
    zi = lfilter_zi(b, a) * 0.0
    total = round(seconds * rate)
    for index, start in enumerate(range(0, total, rate)):
        n = min(rate, total - start)
        rng = np.random.default_rng([seed, index])
        t_rec = (start + np.arange(n)) / rate
        t = t0 + t_rec
        in_fault = np.zeros(n)
        if fault is not None:
            in_fault = ((t_rec >= fault.start) & (t_rec < fault.end)).astype(np.float64)
        noise, zi = lfilter(b, a, rng.standard_normal(n), zi=zi)
        block = _tones(t, motor, phases, fault, in_fault) + motor.noise_rms * 5.0 * noise
        if fault is not None and fault.kind == "bearing" and in_fault.any():
            block += _bearing(t, rate, motor, fault, rng) * in_fault
        yield block.astype(np.float32)


def generate(
    seconds: float,
    rate: int = 16000,
    seed: int = 0,
    motor: Motor | None = None,
    fault: Fault | None = None,
) -> F32:
    """The whole signal of generate_blocks as one float32 array."""
    return np.concatenate(list(generate_blocks(seconds, rate, seed, motor, fault)))
