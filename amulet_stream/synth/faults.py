"""Which sound each newer fault kind and benign event makes, and when: speed events, envelopes."""

from __future__ import annotations

import zlib

import numpy as np

from amulet_stream.synth.sources import FilteredNoise, Impacts, Source, Sum, Tones, Wavetable
from amulet_stream.synth.spec import F64, Fault, Motor, Rng, Run, Scene

RAMP = 0.02
"""Onset and end ramp of added sound, s: no click at the edges of an interval."""
SPEED_EVENTS = ("stop", "speed_change")


def _rng(seed: int, kind: str, purpose: int) -> Rng:
    """A random stream of its own per recording seed, kind and purpose."""
    return np.random.default_rng([seed, 2 << 20, zlib.crc32(kind.encode()), purpose])


def plateau(t: F64, start: float, end: float, t_in: float, t_out: float) -> tuple[F64, F64]:
    """A 0..1 plateau with raised-cosine ramps over [start, end) and its integral from start, s."""
    u1 = np.clip((t - start) / t_in, 0.0, 1.0)
    u2 = np.clip((t - (end - t_out)) / t_out, 0.0, 1.0)
    d = (np.cos(np.pi * u2) - np.cos(np.pi * u1)) / 2.0
    area1 = t_in * (u1 / 2 - np.sin(np.pi * u1) / (2 * np.pi)) + np.maximum(0.0, t - start - t_in)
    area2 = t_out * (u2 / 2 - np.sin(np.pi * u2) / (2 * np.pi)) + np.maximum(0.0, t - end)
    return d, area1 - area2


class SpeedEvent:
    """'stop' (run-down towards a standstill, restart) or 'speed_change' (a few % and back).

    Where it costs at most a quarter of the depth, the depth is rounded so the shaft loses (or
    gains) whole turns and the sound after the event is bit for bit the healthy one; otherwise
    the shaft keeps the phase it lost, as a real one would."""

    def __init__(self, fault: Fault, motor: Motor, seed: int) -> None:
        length = fault.end - fault.start
        fr = motor.rpm / 60.0
        self.start, self.end, self.stop = fault.start, fault.end, fault.kind == "stop"
        if self.stop:  # coast down (slower), a dwell, a quicker restart
            self.t_in, self.t_out = min(0.4 * length, 3.0), min(0.3 * length, 2.0)
            depth = fault.severity
        else:
            self.t_in = self.t_out = min(0.3 * length, 1.5)
            sign = 1.0 if _rng(seed, fault.kind, 0).uniform() < 0.5 else -1.0
            depth = -sign * 0.03 * fault.severity  # the shaft lags when the motor slows down
        area = length - (self.t_in + self.t_out) / 2
        exact = depth * fr * area
        turns = round(exact)
        if self.stop and turns > fr * area:  # would turn backwards: stop fully instead
            turns = 0
        self.after = depth * area
        """Shaft time lost for good, s: 0 when the turns lost are whole."""
        if turns != 0 and abs(turns - exact) <= 0.25 * abs(exact):
            depth, self.after = turns / (fr * area), 0.0
        self.depth = depth
        """Relative speed lost at the event's deepest point (negative: faster)."""

    def run(self, t: F64) -> Run | None:
        """The motor's state at recording times `t` (s); None where it runs as if healthy."""
        inside = (t >= self.start) & (t < self.end)
        if not inside.any() and (self.after == 0.0 or t[-1] < self.start):
            return None
        d, area = plateau(t, self.start, self.end, self.t_in, self.t_out)
        speed = 1.0 - self.depth * d
        mech, elec, noise = speed**2, np.ones_like(t), speed
        if self.stop:  # supply cut then inrush at restart; air and bearing noise fall too
            u_up = np.clip((t - (self.end - self.t_out)) / self.t_out, 0.0, 1.0)
            elec = speed**2 + 0.8 * self.depth * np.sin(np.pi * u_up)
            noise = 0.1 + 0.9 * speed**2
        one = np.ones_like(t)
        return Run(
            lag=np.where(inside, self.depth * area, np.where(t < self.start, 0.0, self.after)),
            mech=np.where(inside, mech, one),
            elec=np.where(inside, elec, one),
            noise=np.where(inside, noise, one),
        )


def added(fault: Fault, scene: Scene, seed: int) -> Source | None:
    """The sound a fault or benign kind adds, before its envelope; None for the other kinds.

    Its level is relative to `scene.ref`, the rms of the broadband noise floor per 50 Hz (the
    generated motor's own, or measured on a real recording), so 'severity' means the same thing
    in generated and in real sound."""
    kind, sev, fr, rate, t0 = fault.kind, fault.severity, scene.shaft_hz, scene.rate, scene.t_start
    rng = _rng(seed, kind, 1)
    if kind in ("bearing", "bearing_inner"):
        ratio, gain = (3.58, 54.0) if kind == "bearing" else (5.42, 75.0)
        impacts = Impacts(rate, t0, ratio * fr, gain * sev * scene.ref(2000.0, 5000.0), rng)
        if kind == "bearing_inner":
            impacts.shaft_hz, impacts.zone_phase = fr, rng.uniform(0, 2 * np.pi)
        return impacts
    if kind == "looseness":  # a rattle: orders 0.5x..20x, nearly in phase, slowly tapering
        m = np.arange(1, 41)
        amps = 7.5 * sev * scene.ref(20.0, 500.0) * rng.uniform(0.6, 1.0, m.size)
        amps *= np.where(m % 2 == 1, 0.6, 1.0) * (2.0 / (m + 2.0)) ** 0.3
        phases = m * rng.uniform(0, 2 * np.pi) + rng.normal(0.0, 0.5, m.size)
        theta = np.arange(8192) * (2 * np.pi / 8192)
        table = (amps[:, None] * np.cos(m[:, None] * theta + phases[:, None])).sum(axis=0)
        return Wavetable(rate, t0, 2.0 / fr, table)
    if kind == "whine":  # a narrow tone between 1.5 and 4.5 kHz, wandering by 0.4 %
        f0 = rng.uniform(1500.0, min(4500.0, 0.4 * rate))
        amp = 11.3 * sev * scene.ref(f0 / 1.2, f0 * 1.2)
        return Tones(rate, t0, np.array([f0]), np.array([amp]), rng.uniform(0, 2 * np.pi, 1), 0.004)
    if kind == "rubbing":  # broadband bursts, one contact per turn of varying strength
        rub = FilteredNoise(rate, t0, (800.0, 6000.0), 5.0 * sev * scene.ref(800.0, 6000.0), rng)
        phase = rng.uniform(0, 2 * np.pi)

        def contact(t: F64) -> F64:
            strength = 0.75 + 0.25 * np.sin(2 * np.pi * 0.37 * t) * np.sin(2 * np.pi * 1.3 * t)
            touch = np.maximum(0.0, np.cos(2 * np.pi * fr * t + phase)) ** 2
            out: F64 = (0.3 + 0.7 * touch) * strength
            return out

        rub.envelope = contact
        return rub
    if kind == "electrical":  # 2x-supply hum raised, sidebands at +-2x supply
        two_f = 2.0 * scene.supply_hz
        side = np.array([k * fr + s * two_f for k in (1, 2, 3) for s in (-1, 1)])
        slot_side = np.array([scene.slots * fr - 2 * two_f, scene.slots * fr + 2 * two_f])
        freqs = np.concatenate([[two_f], np.abs(side), slot_side])
        amps = np.full(freqs.size, 4.8 * sev * scene.ref(20.0, 1200.0))
        raise_by = 1.5 * sev  # in phase with the hum; else the same rise in power on average
        amps[0] = scene.hum * (
            raise_by if scene.hum_phase is not None else np.sqrt((1 + raise_by) ** 2 - 1)
        )
        phases = rng.uniform(0, 2 * np.pi, freqs.size)
        phases[0] = scene.hum_phase if scene.hum_phase is not None else phases[0]
        return Tones(rate, t0, freqs, amps, phases)
    if kind == "background":  # low rumble passing by, and a distant machine
        rumble = FilteredNoise(rate, t0, (20.0, 300.0), 8.0 * sev * scene.ref(20.0, 300.0), rng)
        f_m = rng.uniform(16.0, 45.0)
        k = np.arange(1, 7)
        freqs = np.append(k * f_m, 9 * f_m)
        amps = 2.5 * sev * scene.ref(20.0, 500.0) * np.append(1.0 / k, 0.5)
        return Sum(rumble, Tones(rate, t0, freqs, amps, rng.uniform(0, 2 * np.pi, freqs.size)))
    return None


def envelope(fault: Fault, t: F64) -> F64:
    """The level over time of the sound a kind adds, `t` in s: raised-cosine ramps inside the
    interval and 0 outside it, so a recording is untouched before and after a fault."""
    if fault.kind == "background":  # passes by: a smooth bell over the interval
        u = np.clip((t - fault.start) / (fault.end - fault.start), 0.0, 1.0)
        return np.sin(np.pi * u) ** 2
    ramp = min(RAMP, (fault.end - fault.start) / 4)
    d, _ = plateau(t, fault.start, fault.end, ramp, ramp)
    return np.where((t >= fault.start) & (t < fault.end), d, 0.0)


def level_gain(fault: Fault, t: F64, seed: int) -> F64:
    """'level_change': overall gain factor at recording times `t` (s), +-6 dB x severity."""
    sign = 1.0 if _rng(seed, fault.kind, 0).uniform() < 0.5 else -1.0
    ramp = min(0.3, (fault.end - fault.start) / 4)
    d, _ = plateau(t, fault.start, fault.end, ramp, ramp)
    inside = (t >= fault.start) & (t < fault.end)
    return np.where(inside, 10.0 ** (sign * 6.0 * fault.severity * d / 20.0), 1.0)


class Effect:
    """A newer kind inside generate(): speed events change the running motor (run), the others
    add sound or change the level (apply). One per recording; call in block order."""

    def __init__(self, fault: Fault, motor: Motor, scene: Scene, seed: int) -> None:
        self.fault, self.seed = fault, seed
        self._speed = SpeedEvent(fault, motor, seed) if fault.kind in SPEED_EVENTS else None
        self._added = added(fault, scene, seed)

    def run(self, t: F64) -> Run | None:
        """Changes to the running motor at recording times `t` (s), or None."""
        return None if self._speed is None else self._speed.run(t)

    def apply(self, block: F64, first: int, t: F64) -> F64:
        """`block` (samples first.. at recording times `t`, s) with the kind's sound or gain."""
        if t[0] >= self.fault.end or t[-1] < self.fault.start:
            return block
        if self.fault.kind == "level_change":
            out: F64 = block * level_gain(self.fault, t, self.seed)
            return out
        if self._added is None:
            return block
        return block + envelope(self.fault, t) * self._added(first, t.size)
