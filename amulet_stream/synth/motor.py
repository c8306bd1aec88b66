"""The motor's sound, healthy or with a fault: generate() and generate_blocks(), float32 mono."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.signal import butter, lfilter, lfilter_zi

from amulet_stream.synth.faults import Effect
from amulet_stream.synth.polyphase import PolyphaseResampler
from amulet_stream.synth.spec import F32, F64, NOMINAL_LOAD, Fault, Motor, Run, Scene

Gain = F64 | float
MASTER_RATE = 48000
"""Rate the sound is made at, Hz, before it is resampled to the rate asked for."""


def _load_gains(load: float) -> tuple[float, float]:
    """Level factors of the 2x-supply hum and of the slot tones at `load` (1.0 at nominal)."""
    return 1.0 + 0.3 * (load - NOMINAL_LOAD), 1.0 + 0.8 * (load - NOMINAL_LOAD)


def _wave(w: float, t: F64, phase: float, shaft_w: float, run: Run | None, gain: Gain) -> F64:
    """gain x sin(w t + phase) of a component whose shaft-locked part turns at `shaft_w` rad/s.

    During a speed event the shaft lags by run.lag seconds, which bends its frequency.
    Computed in place: the generator's speed is mostly this function."""
    arg = w * t
    arg += phase
    if run is not None and shaft_w:
        arg -= shaft_w * run.lag
    np.sin(arg, out=arg)
    arg *= gain
    return arg


def _tones(
    t: F64, motor: Motor, phases: F64, fault: Fault | None, in_fault: F64, run: Run | None = None
) -> F64:
    """Rotation harmonics, supply hum, slot and fan tones at times `t` (s), float64."""
    fr = motor.rpm / 60.0
    mech: Gain = 1.0 if run is None else run.mech
    elec: Gain = 1.0 if run is None else run.elec
    hum_gain, slot_gain = _load_gains(motor.load)
    out = np.zeros_like(t)
    for k in range(1, 9):
        amp: Gain = motor.rotation / k
        if fault is not None and fault.kind == "imbalance" and k <= 2:
            amp = np.full_like(t, amp)
            amp *= 1.0 + 6.0 * fault.severity * in_fault / k
        w = 2 * np.pi * k * fr
        out += _wave(w, t, phases[k], w, run, amp if run is None else amp * mech)
    two_f = 2.0 * motor.supply_hz
    hum = motor.hum * hum_gain * elec
    out += _wave(2 * np.pi * two_f, t, phases[9], 0.0, run, hum)
    out += _wave(2 * np.pi * motor.supply_hz, t, phases[10], 0.0, run, 0.4 * hum)
    out += _wave(2 * np.pi * 3 * two_f, t, phases[11], 0.0, run, 0.3 * hum)
    slot = motor.slots * fr
    for j, f in enumerate((slot - two_f, slot, slot + two_f)):
        amp_s = 0.02 * (0.5 if j != 1 else 1.0) * slot_gain * elec
        out += _wave(2 * np.pi * f, t, phases[12 + j], 2 * np.pi * slot, run, amp_s)
    w_fan = 2 * np.pi * motor.fan_blades * fr
    out += _wave(w_fan, t, phases[15], w_fan, run, 0.015 * mech)
    # slight amplitude modulation at the rotation rate
    am = _wave(2 * np.pi * fr, t, phases[16], 2 * np.pi * fr, run, 0.05)
    am += 1.0
    out *= am
    return out


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

    The sound is made at 48 kHz in one-second blocks and resampled, so its spectrum does not
    depend on `rate` and memory stays bounded however long the recording. The healthy sound and
    the 'bearing' and 'imbalance' faults are frozen (same arguments, same bits); the other kinds
    are made in faults.py."""
    resampler = PolyphaseResampler(MASTER_RATE, rate)
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
    # the newer kinds: their own random streams, so the frozen sound is left untouched
    effect = None
    if fault is not None and fault.kind not in ("bearing", "imbalance"):
        effect = Effect(fault, motor, _scene(motor, rate, t0, phases), seed)
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
        run = None if effect is None else effect.run(t_rec)
        broadband = motor.noise_rms * 5.0 * noise
        if run is not None:
            broadband = broadband * run.noise
        block = _tones(t, motor, phases, fault, in_fault, run) + broadband
        if fault is not None and fault.kind == "bearing" and in_fault.any():
            block += _bearing(t, rate, motor, fault, rng) * in_fault
        if effect is not None:
            block = effect.apply(block, start, t_rec)
        yield block.astype(np.float32)


def _scene(motor: Motor, rate: int, t0: float, phases: F64) -> Scene:
    """What the newer kinds' sound is made relative to in generated sound."""
    floor = motor.noise_rms * 5.0 * np.sqrt(50.0 / (MASTER_RATE / 2))  # white noise, then band
    return Scene(
        rate=rate,
        t_start=t0,
        shaft_hz=motor.rpm / 60.0,
        supply_hz=motor.supply_hz,
        slots=motor.slots,
        ref=lambda lo, hi: float(floor),
        hum=motor.hum * _load_gains(motor.load)[0],
        hum_phase=float(phases[9]),
    )


def generate(
    seconds: float,
    rate: int = 16000,
    seed: int = 0,
    motor: Motor | None = None,
    fault: Fault | None = None,
) -> F32:
    """The whole signal of generate_blocks as one float32 array."""
    return np.concatenate(list(generate_blocks(seconds, rate, seed, motor, fault)))
