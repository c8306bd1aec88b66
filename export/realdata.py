"""`amulet-export evaluate --dataset DIR`: candidates judged on labelled real recordings.

Folds over the normal recordings, never windows of one recording on both sides of a split:
each fold trains on the other normal recordings (or the first N of them: --train-files) and
replays its own normal recordings and every anomalous one through the runtime's streaming
path with the default detector. A recording's score is the mean of its window scores (as
DCASE scores a clip); a plain loudness baseline (the recording's RMS level) stands beside.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from amulet_stream.audio.sources import FileSource
from amulet_stream.audio.wav import WavError, iter_blocks, read_info, select_channel
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.pipeline import StreamPipeline, replay

from .errors import InputError

_LOGGER = logging.getLogger(__name__)
F64 = npt.NDArray[np.float64]
Trainer = Callable[[list[Path], Path], Path]
NORMAL_DIRS = ("normal",)
ANOMALY_DIRS = ("anomaly", "abnormal", "fault")
FEEDBACK = "feedback"
"""A daemon's state directory: what its operators labelled, feedback/<stream>/normal|fault."""


@dataclass(frozen=True)
class LabelledSet:
    """A dataset's recordings by label, each list sorted by path."""

    root: Path
    normal: list[Path]
    anomaly: list[Path]


@dataclass
class Tested:
    """One recording replayed through one fold's model."""

    path: Path
    label: str
    fold: int
    score: float
    """Mean of the window scores."""
    threshold: float
    alerted: bool
    delay: float | None
    """Seconds from the recording's start to the end of the first alerting window."""
    cause: str | None
    windows: F64 = field(repr=False, default_factory=lambda: np.zeros(0))
    spectral: float = float("nan")
    """Mean of the spectral window scores alone (the level term switched off)."""


@dataclass
class Outcome:
    """One candidate on the dataset: every tested recording of every fold."""

    name: str
    note: str
    tested: list[Tested] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)


def find(root: Path) -> LabelledSet:
    """The labelled recordings under `root`: normal/ and anomaly/ (or abnormal/, fault/)
    folders at any depth (train/ and test/ included), or DCASE names containing 'normal' or
    'anomaly'; in a daemon's state directory, only the clips its operators labelled."""
    if not root.is_dir():
        raise InputError(f"--dataset {root}: no such folder")
    normal: list[Path] = []
    anomaly: list[Path] = []
    scan = root / FEEDBACK if (root / FEEDBACK).is_dir() else root
    for path in sorted(scan.rglob("*")):
        if path.suffix.lower() != ".wav" or not path.is_file():
            continue
        parts = {p.lower() for p in path.relative_to(scan).parts[:-1]}
        name = path.name.lower()
        if parts & set(ANOMALY_DIRS) or "anomaly" in name or "abnormal" in name:
            anomaly.append(path)
        elif parts & set(NORMAL_DIRS) or "normal" in name:
            normal.append(path)
    if len(normal) < 2 or not anomaly:
        raise InputError(
            f"--dataset {root}: {len(normal)} normal and {len(anomaly)} anomalous recording(s) "
            "found; needs at least 2 normal and 1 anomalous (normal/ and anomaly/ folders, "
            "names containing 'normal' / 'anomaly', or a state directory's alerts labelled "
            "normal and fault)"
        )
    return LabelledSet(root, normal, anomaly)


def folds(normal: list[Path], k: int) -> list[list[Path]]:
    """k contiguous groups of the normal recordings (name order), the test part of each fold."""
    k = max(2, min(k, len(normal)))
    edges = np.linspace(0, len(normal), k + 1).round().astype(int)
    return [normal[a:b] for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)]


def loudness(path: Path) -> float:
    """A recording's RMS level in dBFS (mono down-mix): the plain loudness baseline."""
    info = read_info(path)
    total, count = 0.0, 0
    for block in iter_blocks(info):
        x = select_channel(block, None).astype(np.float64)
        total += float(np.dot(x, x))
        count += x.size
    return 10.0 * float(np.log10(max(total / max(count, 1), 1e-20)))


def replay_one(model: Model, path: Path, label: str, fold: int) -> Tested:
    """Replay one recording through the model with the default detector."""
    info = read_info(path)
    pipe = StreamPipeline(model, info.rate, "evaluate", str(path))
    records = replay(pipe, FileSource(info))
    scores = np.array([r["score"] for r in records if r["event"] == "score"], np.float64)
    alerts = [r for r in records if r["event"] == "anomaly"]
    first = alerts[0] if alerts else None
    alone = StreamPipeline(model, info.rate, "evaluate", str(path))
    alone.evidence.band = None  # the same windows without the level term
    spectral = [r["score"] for r in replay(alone, FileSource(info)) if r["event"] == "score"]
    return Tested(
        path,
        label,
        fold,
        float(scores.mean()) if scores.size else float("nan"),
        pipe.detector.threshold,
        first is not None,
        float(first["end"]) if first else None,
        str(first.get("cause")) if first else None,
        scores,
        float(np.mean(spectral)) if spectral else float("nan"),
    )


def run(
    data: LabelledSet,
    candidates: list[tuple[str, Trainer, str]],
    k: int,
    train_files: int | None,
) -> list[Outcome]:
    """Every candidate through every fold; the trained models are thrown away."""
    groups = folds(data.normal, k)
    outcomes = []
    for name, trainer, note in candidates:
        out = Outcome(name, note)
        for i, test in enumerate(groups):
            train = [p for p in data.normal if p not in test]
            if train_files is not None:
                train = train[:train_files]
            _LOGGER.info(
                "%s, fold %d of %d: training on %d normal recording(s), testing %d normal and "
                "%d anomalous",
                name,
                i + 1,
                len(groups),
                len(train),
                len(test),
                len(data.anomaly),
            )
            with tempfile.TemporaryDirectory(prefix="amulet-real-") as tmp:
                t0 = time.monotonic()
                try:
                    model = Model(trainer(train, Path(tmp) / "model"))
                except WavError as err:
                    raise InputError(str(err)) from err
                out.train_seconds.append(time.monotonic() - t0)
                for path in test:
                    out.tested.append(replay_one(model, path, "normal", i))
                for path in data.anomaly:
                    out.tested.append(replay_one(model, path, "anomaly", i))
        outcomes.append(out)
    return outcomes
