"""Plain data of the generator: the Motor, a Fault and its kinds, a speed event's Run, a Scene."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Rng = np.random.Generator

FAULTS = (
    "bearing",
    "imbalance",
    "stop",
    "bearing_inner",
    "looseness",
    "whine",
    "rubbing",
    "electrical",
)
"""Faults, a detector should alarm: outer-race bearing impacts (3.58 x rotation, ringing at
3.2 kHz); imbalance (1x, 2x raised); stop (run-down, restart); inner-race impacts (5.42 x
rotation, load-zone modulated once per turn); looseness (orders 0.5x..20x); whine (a tone at
1.5..4.5 kHz); rubbing (broadband bursts once per turn); electrical (2x-supply hum raised,
sidebands at +-2x supply)."""
BENIGN = ("speed_change", "level_change", "background")
"""No fault, a detector should stay quiet: speed up or down by 3 % x severity and back; gain
+-6 dB x severity (a moved microphone); a low rumble passing by and a distant machine."""
KINDS = FAULTS + BENIGN
NOT_INJECTABLE = ("imbalance", "speed_change")
"""Kinds that would need the recording's own rotation tones, which a real recording hides."""
NOMINAL_LOAD = 0.75
"""The load at which the motor sounds exactly like the frozen healthy sound."""


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
    load: float = NOMINAL_LOAD
    """Fraction of rated load, 0..1: more load, louder slot tones and a little more hum."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.load <= 1.0:
            raise ValueError(f"load {self.load} must be within 0..1 (fraction of rated load)")
        if self.rpm <= 0 or self.supply_hz <= 0:
            raise ValueError(f"rpm {self.rpm} and supply_hz {self.supply_hz} must be positive")


@dataclass(frozen=True)
class Fault:
    """A fault (or, for a kind in BENIGN, a harmless event) from `start` to `end` seconds.

    `severity` 0..1: about 0.2 is mild (subtle), 0.5 moderate, 1 severe."""

    kind: str
    start: float
    end: float
    severity: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault {self.kind!r} (known: {', '.join(KINDS)})")
        if not 0.0 <= self.severity <= 1.0:
            raise ValueError(f"severity {self.severity} must be within 0..1")
        if not 0.0 <= self.start < self.end:
            raise ValueError(f"fault interval {self.start}..{self.end} s is empty or negative")

    @property
    def is_fault(self) -> bool:
        """False for the benign kinds."""
        return self.kind in FAULTS


@dataclass(frozen=True)
class Run:
    """How a speed event changes the running motor over one block (arrays of its length)."""

    lag: F64
    """Shaft time lost against the nominal speed, s (0 outside the event)."""
    mech: F64
    """Level factor of the mechanical tones (rotation harmonics, fan)."""
    elec: F64
    """Level factor of the supply-driven tones (hum, slot tones)."""
    noise: F64
    """Level factor of the broadband noise."""


@dataclass(frozen=True)
class Scene:
    """What a fault's sound is made relative to: the motor's clock, speeds and levels."""

    rate: int
    t_start: float
    """Time of sample 0 on the motor's clock, s (shaft and supply phases run on it)."""
    shaft_hz: float
    supply_hz: float
    slots: int
    ref: Callable[[float, float], float]
    """rms of the broadband floor per 50 Hz within a band (lo, hi Hz)."""
    hum: float
    """Amplitude of the 2x-supply hum."""
    hum_phase: float | None
    """Its phase at t = 0 on the motor's clock, rad; None if unknown (a recording)."""
