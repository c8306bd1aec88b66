"""Evaluation figures per candidate: hits, delay, false alarms per setting; window score sets."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from amulet_stream.scoring.detector import DetectorSettings

from .corpus import Corpus, Recording, label_windows
from .evaluate import Result, detect

F64 = npt.NDArray[np.float64]
MIN_OVERLAP = 0.25
"""A window counts as faulty when at least this share of it lies inside the fault."""
LATE = 2.0
"""An alert up to this many seconds after a fault ends still counts as its hit."""
HOPS = (1, 4, 8, 16)
ALERT = (0.25, 0.5, 0.75, 1.0, 1.5)
WITHIN = (1.0, 2.0, 3.0, 5.0)
BURSTS = ((float("inf"), 0.5), (1.2, 0.25), (1.2, 0.5), (1.3, 0.25), (1.3, 0.5), (1.5, 0.5))
"""(burst_ratio, burst_seconds); an infinite ratio: no burst rule."""
CLEAR = 3.0
FA_GOAL = 1.0
"""False alarms per 24 h of normal audio allowed when choosing detector settings."""


@dataclass(frozen=True)
class Setting:
    """A detector setting with the serving hop in vectors."""

    hop: int
    alert_seconds: float
    within_seconds: float
    burst_ratio: float
    burst_seconds: float

    def detector(self) -> DetectorSettings:
        """The runtime's settings for this point."""
        return DetectorSettings(
            alert_seconds=self.alert_seconds,
            within_seconds=self.within_seconds,
            burst_ratio=self.burst_ratio,
            burst_seconds=self.burst_seconds,
            clear_seconds=CLEAR,
        )


@dataclass
class Outcome:
    """Hits, delays and false alarms of one candidate under one setting."""

    hits: int
    faults: int
    delays: list[float]
    missed: list[str]
    false_alarms_24h: float
    benign_alarms: int
    early_alarms: int
    """Alerts in fault recordings before the fault started."""
    level_reported: list[str] = field(default_factory=list)
    """Level-change recordings whose every alert was caused by the level: reported as a level
    change (not counted as non-fault alarms); the others stayed quiet or alarmed otherwise."""

    @property
    def median_delay(self) -> float:
        """Median seconds from fault onset to the alert, over the hits."""
        return float(np.median(self.delays)) if self.delays else float("nan")


def _hop_ok(res: Result, hop: int) -> bool:
    """amulet-v1 windows are AMULET's rows: only a hop of one row keeps them."""
    any_scored = next(iter(res.scored.values()), None)
    return hop == 1 or any_scored is None or any_scored.hop_seconds < 0.05


def outcome(res: Result, corp: Corpus, st: Setting, hours: float) -> Outcome:
    """Detector results of one candidate on the whole corpus under one setting."""
    det = st.detector()
    hits, delays, missed, benign, early = 0, [], [], 0, 0
    level: list[str] = []
    faults = [r for r in corp.test if r.is_fault]
    for rec in corp.test:
        s = res.scored[rec.name].at_hop(st.hop)
        alerts = detect(s, res.threshold, det)
        if not rec.is_fault or rec.fault is None:
            if rec.kind == "level_change" and alerts.size and s.by_level(alerts).all():
                level.append(rec.name)  # a level change reported as one: not a false alarm
                continue
            benign += alerts.size
            continue
        on, off = rec.fault
        times = s.ends[alerts]
        inside = alerts[(times >= on) & (s.starts[alerts] <= off + LATE)]
        early += int((times < on).sum())
        if inside.size:
            hits += 1
            delays.append(float(s.ends[inside[0]] - on))
        else:
            missed.append(rec.name)
    fa = float("nan")
    if res.normal is not None and hours > 0:
        fa = detect(res.normal.at_hop(st.hop), res.threshold, det).size * 24.0 / hours
    return Outcome(hits, len(faults), delays, missed, fa, benign, early, level)


def choose(res: Result, corp: Corpus, hours: float) -> tuple[Setting, Outcome]:
    """The setting with at most FA_GOAL false alarms per 24 h, then the fewest alarms on the
    non-fault recordings, then the most hits; ties: shorter median delay, then fewer early
    alarms, then a larger hop (cheaper output)."""
    best: tuple[tuple[float, ...], Setting, Outcome] | None = None
    for st, o in sweep(res, corp, hours):
        fa = float(np.nan_to_num(o.false_alarms_24h))
        key = (
            float(fa <= FA_GOAL),
            -o.benign_alarms,
            o.hits,
            -np.nan_to_num(o.median_delay, nan=1e9),
            -o.early_alarms,
            st.hop,
        )
        if best is None or key > best[0]:
            best = (key, st, o)
    assert best is not None
    return best[1], best[2]


def sweep(res: Result, corp: Corpus, hours: float) -> list[tuple[Setting, Outcome]]:
    """Outcomes of every setting of the grid that the candidate's windows allow."""
    grid = [
        Setting(hop, alert, within, ratio, burst)
        for hop, alert, within, (ratio, burst) in itertools.product(HOPS, ALERT, WITHIN, BURSTS)
        if alert <= within and _hop_ok(res, hop)
    ]
    return [(st, outcome(res, corp, st, hours)) for st in grid]


def groups(corp: Corpus) -> dict[str, list[Recording]]:
    """Fault recordings by 'kind severity'."""
    out: dict[str, list[Recording]] = {}
    for rec in corp.test:
        if rec.is_fault:
            out.setdefault(f"{rec.kind} {rec.severity:g}", []).append(rec)
    return dict(sorted(out.items()))


def window_sets(res: Result, corp: Corpus, hop: int) -> tuple[F64, dict[str, F64]]:
    """Normal window scores / threshold (healthy and benign test windows, windows before a
    fault, normal audio) and faulty window scores / threshold per group."""
    neg = []
    pos: dict[str, list[F64]] = {}
    for rec in corp.test:
        s = res.scored[rec.name].at_hop(hop)
        lab = np.asarray(label_windows(rec, s.starts, s.ends, MIN_OVERLAP), bool)
        if rec.is_fault:
            pos.setdefault(f"{rec.kind} {rec.severity:g}", []).append(s.scores[lab])
            if rec.fault is not None:
                neg.append(s.scores[s.ends <= rec.fault[0]])
        else:
            neg.append(s.scores)
    if res.normal is not None:
        neg.append(res.normal.at_hop(max(hop, 8)).scores)
    return np.concatenate(neg) / res.threshold, {
        k: np.concatenate(v) / res.threshold for k, v in pos.items()
    }
