"""The evaluation's fault corpus: recordings with ground truth, generated or from a real one.

An offline tool (the runtime never imports it); all sound comes from amulet_stream.synth, the one
generator. Same arguments, same files: every recording's operating condition, fault onset and
seed follow from its place in the corpus."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from amulet_stream.audio.wav_write import write_wav, write_wav_blocks
from amulet_stream.synth.motor import generate_blocks
from amulet_stream.synth.recordings import inject
from amulet_stream.synth.spec import BENIGN, FAULTS, NOT_INJECTABLE, Fault, Motor

from .corpus_audio import loop, read_mono

F32 = npt.NDArray[np.float32]
SIZES = ("small", "full")
SEVERITIES = {"mild": 0.2, "moderate": 0.5, "strong": 0.8}
TRAIN_RPM = (1390.0, 1490.0)
"""Speeds the training set covers; test recordings (and their speed changes) stay inside."""
TRAIN_LOADS = (0.4, 0.7, 1.0)
TEST_RPM = (1410.0, 1470.0)
SPEED_CHANGE_RPM = (1425.0, 1455.0)
"""Base speeds of 'speed_change' recordings: a change of up to 3 % stays within TRAIN_RPM."""
TEST_LOAD = (0.45, 0.95)
REAL_TRAIN_SHARE = 0.6
REAL_SHAFT_HZ = 40.0
"""good.wav's strongest line family sits at multiples of 40.0 Hz: taken as its rotation."""


@dataclass(frozen=True)
class Recording:
    """One test recording and its ground truth."""

    name: str
    """'kind/severity/seedN', e.g. 'bearing_inner/0.5/seed301'; 'healthy/seedN' for healthy."""
    kind: str
    """'healthy', a fault kind (synth.FAULTS) or a benign kind (synth.BENIGN)."""
    severity: float
    """0..1; 0 for healthy."""
    path: Path
    seconds: float
    fault: tuple[float, float] | None
    """Interval of the fault, or of the benign event, in s from the start; None for healthy."""
    is_fault: bool
    """True only for fault kinds: benign events and healthy sound should raise no alarm."""


@dataclass(frozen=True)
class Corpus:
    """Healthy training recordings (several operating conditions) and labelled test recordings."""

    train: list[Path]
    test: list[Recording]


@dataclass(frozen=True)
class _Plan:
    """A generated recording to write."""

    name: str
    seconds: float
    seed: int
    motor: Motor
    fault: Fault | None


def label_windows(
    rec: Recording, starts: npt.ArrayLike, ends: npt.ArrayLike, min_overlap: float = 0.5
) -> npt.NDArray[np.bool_]:
    """Ground truth per window (start/end in s from the recording's start, shape (N,)): True
    when at least `min_overlap` (a fraction 0..1 of the window) lies inside the fault; always
    False for healthy and benign recordings."""
    lo_w, hi_w = np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)
    if lo_w.shape != hi_w.shape or lo_w.ndim != 1:
        raise ValueError(f"starts {lo_w.shape} and ends {hi_w.shape} must be equal 1-d shapes")
    if np.any(hi_w <= lo_w):
        raise ValueError("every window must end after it starts")
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap {min_overlap} must be a fraction in (0, 1]")
    if not rec.is_fault or rec.fault is None:
        return np.zeros(lo_w.shape, dtype=bool)
    lo, hi = rec.fault
    overlap = np.clip(np.minimum(hi_w, hi) - np.maximum(lo_w, lo), 0.0, None)
    labels: npt.NDArray[np.bool_] = overlap >= min_overlap * (hi_w - lo_w) - 1e-9
    return labels


def _condition(seed: int, rpm: tuple[float, float] = TEST_RPM) -> Motor:
    """A test operating condition drawn from `seed`: speed and load inside the trained range."""
    rng = np.random.default_rng([seed, 77])
    return Motor(
        rpm=round(float(rng.uniform(*rpm)), 1), load=round(float(rng.uniform(*TEST_LOAD)), 2)
    )


def _train_plans(size: str) -> list[_Plan]:
    """Healthy training recordings spanning TRAIN_RPM x TRAIN_LOADS."""
    if size == "small":  # 6 x 15 s: every speed step, loads taking turns
        rpms = np.linspace(*TRAIN_RPM, 6)
        conditions = [(r, TRAIN_LOADS[i % 3]) for i, r in enumerate(rpms)]
        seconds = 15.0
    else:  # 7 speeds x 3 loads x 20 s
        conditions = [(r, load) for r in np.linspace(*TRAIN_RPM, 7) for load in TRAIN_LOADS]
        seconds = 20.0
    return [
        _Plan(f"train/seed{i + 1}", seconds, i + 1, Motor(rpm=float(r), load=load), None)
        for i, (r, load) in enumerate(conditions)
    ]


def _test_plans(size: str) -> list[_Plan]:
    """Healthy, faulty and benign test recordings (module docstring of synthetic_corpus)."""
    plans: list[_Plan] = []
    small = size == "small"
    for i in range(2 if small else 6):
        seed = 101 + i
        plans.append(
            _Plan(f"healthy/seed{seed}", 20.0 if small else 60.0, seed, _condition(seed), None)
        )
    seed = 300
    for kind in FAULTS:
        for severity in (0.5,) if small else tuple(SEVERITIES.values()):
            for rep in range(1 if small else 2):
                seed += 1
                if small:
                    seconds, start, end = 20.0, 7.0, 13.0
                    if kind == "stop":
                        start, end = 9.0, 11.0
                else:  # onset 10..14 s, the fault stays; a stop is an event of 0.5 s or 2 s
                    seconds = 30.0
                    start = round(float(np.random.default_rng([seed, 78]).uniform(10.0, 14.0)), 2)
                    end = round(start + (0.5, 2.0)[rep], 2) if kind == "stop" else seconds
                fault = Fault(kind, start, end, severity)
                plans.append(
                    _Plan(f"{kind}/{severity:g}/seed{seed}", seconds, seed, _condition(seed), fault)
                )
    seed = 400
    for kind in BENIGN:
        for severity in (0.5,) if small else (0.5, 1.0):
            for _ in range(1 if small else 2):
                seed += 1
                if small:
                    seconds, start = 20.0, 7.0
                else:
                    seconds = 30.0
                    start = round(float(np.random.default_rng([seed, 78]).uniform(10.0, 14.0)), 2)
                fault = Fault(kind, start, round(start + (6.0 if small else 8.0), 2), severity)
                motor = _condition(seed, SPEED_CHANGE_RPM if kind == "speed_change" else TEST_RPM)
                plans.append(_Plan(f"{kind}/{severity:g}/seed{seed}", seconds, seed, motor, fault))
    return plans


def _file(folder: Path, name: str) -> Path:
    """Where a recording named 'a/b/c' goes: folder/a_b_c.wav."""
    return folder / (name.replace("/", "_") + ".wav")


def _write(plan: _Plan, folder: Path, rate: int) -> Recording:
    """Generate and write one recording, streamed."""
    path = _file(folder, plan.name)
    frames = write_wav_blocks(
        path, generate_blocks(plan.seconds, rate, plan.seed, plan.motor, plan.fault), rate
    )
    fault = plan.fault
    return Recording(
        name=plan.name,
        kind=fault.kind if fault else "healthy",
        severity=fault.severity if fault else 0.0,
        path=path,
        seconds=frames / rate,
        fault=(fault.start, fault.end) if fault else None,
        is_fault=fault.is_fault if fault else False,
    )


def _manifest(folder: Path, corpus: Corpus, conditions: dict[str, dict[str, float]]) -> None:
    """folder/corpus.json: the corpus as written, for people and other tools."""
    doc = {
        "train": [str(p) for p in corpus.train],
        "test": [
            {
                "name": r.name,
                "kind": r.kind,
                "severity": r.severity,
                "path": str(r.path),
                "seconds": r.seconds,
                "fault": r.fault,
                "is_fault": r.is_fault,
                **conditions.get(r.name, {}),
            }
            for r in corpus.test
        ],
    }
    (folder / "corpus.json").write_text(json.dumps(doc, indent=1) + "\n")


def synthetic_corpus(folder: Path, size: str = "small", rate: int = 16000) -> Corpus:
    """Write a generated corpus into `folder` (train/, test/, corpus.json) at `rate` Hz, 16-bit.

    small (CI): train 6 x 15 s healthy over 1390..1490 rpm and loads 0.4..1; test 2 healthy,
    each fault kind once at 0.5 (6 s in the middle of 20 s; a stop of 2 s), each benign kind
    once at 0.5: 13 x 20 s. full: train 21 x 20 s (7 speeds x 3 loads); test 6 x 60 s healthy,
    each fault kind at 0.2, 0.5, 0.8 twice (30 s; onset at 10..14 s, to the end; a stop lasts
    0.5 s or 2 s), each benign kind at 0.5 and 1 twice (8 s events): 66 recordings."""
    if size not in SIZES:
        raise ValueError(f"unknown corpus size {size!r} (known: {', '.join(SIZES)})")
    train_dir, test_dir = folder / "train", folder / "test"
    train_dir.mkdir(parents=True, exist_ok=True)
    test_dir.mkdir(parents=True, exist_ok=True)
    train = [_write(p, train_dir, rate).path for p in _train_plans(size)]
    plans = _test_plans(size)
    corpus = Corpus(train, [_write(p, test_dir, rate) for p in plans])
    conditions = {p.name: {"rpm": p.motor.rpm, "load": p.motor.load, "seed": p.seed} for p in plans}
    _manifest(folder, corpus, conditions)
    return corpus


def normal_audio(seconds: float, rate: int = 16000, seed: int = 1000) -> F32:
    """`seconds` of healthy sound (float32 mono at `rate`) at the test operating condition of
    `seed`, in memory: chunks for false alarms per 24 h (about 100 s of audio per CPU second
    at 16 kHz; one call per chunk, any number in parallel)."""
    if seconds <= 0:
        raise ValueError(f"seconds {seconds} must be positive")
    return np.concatenate(list(generate_blocks(seconds, rate, seed, _condition(seed))))


def write_normal_audio(
    folder: Path, seconds: float, rate: int = 16000, seed: int = 1000, file_seconds: float = 3600.0
) -> list[Recording]:
    """Write `seconds` of healthy sound as files of at most `file_seconds`, each at the test
    operating condition of its own seed (seed, seed + 1, ...); streamed, bounded memory."""
    if seconds <= 0 or file_seconds <= 0:
        raise ValueError(f"seconds {seconds} and file_seconds {file_seconds} must be positive")
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Recording] = []
    left, index = seconds, 0
    while left > 0:
        n = min(left, file_seconds)
        plan = _Plan(f"normal/seed{seed + index}", n, seed + index, _condition(seed + index), None)
        out.append(_write(plan, folder, rate))
        left -= n
        index += 1
    return out


def real_corpus(good_wav: Path, folder: Path, seconds: float = 12.0) -> Corpus:
    """Train on the first 60 % of a real healthy recording, test on the rest with faults in it.

    The rest (2.2 s of good.wav's 5.5 s) is looped to `seconds` (loop()): a healthy test
    recording, and copies with a fault injected (synth.inject) at 5 s: a stop of 0.5 s, a
    1.5 s burst of outer- and inner-race bearing impacts, whine, rubbing, looseness, electrical
    hum, each at 0.2 and 0.5; benign: a level change (3 s) and background noise (4 s), at 0.5.
    Files keep the recording's rate, down-mixed to mono, 16-bit; nothing of it goes elsewhere."""
    x, rate = read_mono(good_wav)
    split = round(REAL_TRAIN_SHARE * x.size)
    train_dir, test_dir = folder / "train", folder / "test"
    train_dir.mkdir(parents=True, exist_ok=True)
    test_dir.mkdir(parents=True, exist_ok=True)
    train_path = train_dir / "real_train.wav"
    write_wav(train_path, x[:split], rate)
    rest = loop(x[split:], round(seconds * rate), rate)
    cases: list[tuple[str, float, float, float]] = [("healthy", 0.0, 0.0, 0.0)]
    for kind in FAULTS:
        if kind not in NOT_INJECTABLE:
            for severity in (0.2, 0.5):
                cases.append((kind, severity, 5.0, 5.5 if kind == "stop" else 6.5))
    cases += [("level_change", 0.5, 5.0, 8.0), ("background", 0.5, 4.0, 8.0)]
    test: list[Recording] = []
    for seed, (kind, severity, start, end) in enumerate(cases, start=501):
        fault = Fault(kind, start, end, severity) if kind != "healthy" else None
        samples = rest if fault is None else inject(rest, rate, fault, seed, REAL_SHAFT_HZ)
        name = f"healthy/seed{seed}" if fault is None else f"{kind}/{severity:g}/seed{seed}"
        path = _file(test_dir, name)
        write_wav(path, samples, rate)
        test.append(
            Recording(
                name,
                kind,
                severity,
                path,
                samples.size / rate,
                (start, end) if fault else None,
                fault.is_fault if fault else False,
            )
        )
    corpus = Corpus([train_path], test)
    _manifest(folder, corpus, {})
    return corpus
