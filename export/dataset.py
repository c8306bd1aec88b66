"""Training data: wav files streamed from disk into feature vectors of a profile."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from amulet_stream.features import Profile, window_starts
from amulet_stream.sources import iter_mono
from amulet_stream.wav import WavError, WavInfo, read_info
from amulet_stream.windows import Windower

from .errors import InputError

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
MIN_WINDOWS = 3
SILENCE = 1e-6


@dataclass
class Dataset:
    """Feature vectors of all input files, window by window."""

    features: F32
    """Shape (N, V, D): N windows of V vectors of D features."""
    starts: I64
    """Start sample (at the profile's rate) of each window in its file."""
    file_index: I64
    lengths: I64
    """Samples (at the profile's rate) of each file."""
    files: list[dict[str, object]] = field(default_factory=list)
    fingerprint: str = ""
    seconds: float = 0.0
    hop: int = 0


def list_inputs(input_file: Path | None, input_dir: Path | None) -> list[Path]:
    """The wav files to train on: one file, or every *.wav in a folder (sorted)."""
    if input_file is not None:
        return [input_file]
    assert input_dir is not None
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: no such folder")
    paths = sorted(p for p in input_dir.iterdir() if p.suffix.lower() == ".wav" and p.is_file())
    if not paths:
        raise InputError(f"{input_dir}: folder holds no .wav file")
    return paths


def training_hop(profile: Profile, total_samples: int) -> int:
    """Window hop for training: overlapping windows for short input, about 400 windows or more."""
    hop = (total_samples // 400) // profile.frame_hop * profile.frame_hop
    return int(min(profile.window, max(profile.frame_hop, hop)))


def stream_windows(
    info: WavInfo, profile: Profile, hop: int, channel: int | None, digest: object = None
) -> Iterator[tuple[F32, I64]]:
    """Windows (n, window) and starts of one file; raises InputError on NaN/inf or silence."""
    windower = Windower(profile, hop)
    peak = 0.0
    try:
        for block in iter_mono(info, profile.rate, channel):
            if not np.isfinite(block).all():
                raise InputError(f"{info.path}: contains NaN or infinite samples")
            peak = max(peak, float(np.abs(block).max()))
            if digest is not None:
                digest.update(block.tobytes())  # type: ignore[attr-defined]
            windows, starts = windower.push(block)
            if starts.size:
                yield windows, starts
    except WavError as err:
        raise InputError(str(err)) from err
    except ValueError as err:
        raise InputError(f"{info.path}: {err}") from err
    if peak < SILENCE:
        raise InputError(f"{info.path}: audio is silent (peak {peak:.1e})")
    windows, starts = windower.finish()
    if starts.size:
        yield windows, starts


def load(paths: list[Path], profile: Profile, channel: int | None = None) -> Dataset:
    """Read, check and featurise every file; raise InputError before anything is written."""
    infos = []
    for path in paths:
        try:
            infos.append(read_info(path))
        except WavError as err:
            raise InputError(str(err)) from err
    total_at_rate = sum(int(i.frames * profile.rate / i.rate) for i in infos)
    serving_windows = sum(
        window_starts(profile, int(i.frames * profile.rate / i.rate)).size for i in infos
    )
    seconds = sum(i.duration for i in infos)
    if serving_windows < MIN_WINDOWS:
        where = paths[0] if len(paths) == 1 else paths[0].parent
        raise InputError(
            f"{where}: audio too short: {seconds:.2f} s gives {serving_windows} windows of "
            f"{profile.window / profile.rate:.3f} s, training needs at least {MIN_WINDOWS}"
        )
    hop = training_hop(profile, total_at_rate)
    digest = hashlib.sha256(profile.name.encode())
    feats: list[F32] = []
    starts_all: list[I64] = []
    index: list[I64] = []
    files: list[dict[str, object]] = []
    lengths: list[int] = []
    for k, info in enumerate(infos):
        _LOGGER.info(
            "reading %s (%.1f s, %d Hz, %d ch)", info.path, info.duration, info.rate, info.channels
        )
        for windows, starts in stream_windows(info, profile, hop, channel, digest):
            feats.append(profile.compute(windows))
            starts_all.append(starts)
            index.append(np.full(starts.size, k, np.int64))
        lengths.append(int(info.frames * profile.rate / info.rate))
        files.append(
            {
                "name": info.path.name,
                "seconds": round(info.duration, 3),
                "rate": info.rate,
                "channels": info.channels,
            }
        )
    return Dataset(
        features=np.concatenate(feats),
        starts=np.concatenate(starts_all),
        file_index=np.concatenate(index),
        lengths=np.asarray(lengths, np.int64),
        files=files,
        fingerprint="sha256:" + digest.hexdigest(),
        seconds=seconds,
        hop=hop,
    )
