"""Training data: wav files streamed from disk into feature vectors of a profile."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt

from amulet_stream.audio.sources import iter_mono
from amulet_stream.audio.wav import WavError, WavInfo, read_info
from amulet_stream.scoring.features import Profile
from amulet_stream.scoring.frames import VectorStream

from .errors import InputError

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
MIN_WINDOWS = 3
"""Training is refused below this many windows of audio."""
RECOMMENDED_SECONDS = 60.0
"""Below this much audio, training warns that the model will know too little."""
SILENCE = 1e-6


@dataclass
class Dataset:
    """Feature vectors of all input files, each vector of each file once, in order."""

    vectors: F32
    """Shape (N, D): every vector on each file's grid."""
    index: I64
    """Index of each vector in its file (vector i starts at offset + i*step)."""
    file_index: I64
    counts: I64
    """Vectors of each file."""
    files: list[dict[str, object]] = field(default_factory=list)
    fingerprint: str = ""
    seconds: float = 0.0

    def head(self, files: int) -> Dataset:
        """The first `files` files alone."""
        n = int(self.counts[:files].sum())
        return Dataset(
            self.vectors[:n],
            self.index[:n],
            self.file_index[:n],
            self.counts[:files],
            self.files[:files],
            self.fingerprint,
            sum(cast(float, f["seconds"]) for f in self.files[:files]),
        )


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


def file_vectors(
    info: WavInfo, profile: Profile, channel: int | None, digest: object = None
) -> Iterator[F32]:
    """Vectors (M, D) of one file as they are computed; raises InputError on NaN/inf or
    silence."""
    stream = VectorStream(profile)
    peak = 0.0
    try:
        for block in iter_mono(info, profile.rate, channel):
            if not np.isfinite(block).all():
                raise InputError(f"{info.path}: contains NaN or infinite samples")
            peak = max(peak, float(np.abs(block).max()))
            if digest is not None:
                digest.update(block.tobytes())  # type: ignore[attr-defined]
            vectors = stream.push(block)
            if vectors.size:
                yield vectors
    except WavError as err:
        raise InputError(str(err)) from err
    except ValueError as err:
        raise InputError(f"{info.path}: {err}") from err
    if peak < SILENCE:
        raise InputError(f"{info.path}: audio is silent (peak {peak:.1e})")
    vectors = stream.finish()
    if vectors.size:
        yield vectors


def windows_of(profile: Profile, seconds: float) -> int:
    """Whole windows of the profile in `seconds` of audio, at one window per window length."""
    return int(seconds * profile.rate // (profile.offset + profile.span))


def load(paths: list[Path], profile: Profile, channel: int | None = None) -> Dataset:
    """Read, check and featurise every file; raise InputError before anything is written."""
    infos = []
    for path in paths:
        try:
            infos.append(read_info(path))
        except WavError as err:
            raise InputError(str(err)) from err
    seconds = sum(i.duration for i in infos)
    need = MIN_WINDOWS * (profile.offset + profile.span) / profile.rate
    if seconds < need:
        where = paths[0] if len(paths) == 1 else paths[0].parent
        raise InputError(
            f"{where}: audio too short: {seconds:.2f} s; profile {profile.name} needs at least "
            f"{need:.1f} s to train ({MIN_WINDOWS} windows) and {RECOMMENDED_SECONDS:.0f} s "
            "or more of healthy audio for a model to trust"
        )
    digest = hashlib.sha256(profile.name.encode())
    parts: list[F32] = []
    index: list[I64] = []
    counts: list[int] = []
    files: list[dict[str, object]] = []
    for info in infos:
        _LOGGER.info(
            "reading %s (%.1f s, %d Hz, %d ch)", info.path, info.duration, info.rate, info.channels
        )
        n = 0
        for vectors in file_vectors(info, profile, channel, digest):
            parts.append(vectors)
            n += vectors.shape[0]
        index.append(np.arange(n, dtype=np.int64))
        counts.append(n)
        files.append(
            {
                "name": info.path.name,
                "seconds": round(info.duration, 3),
                "rate": info.rate,
                "channels": info.channels,
            }
        )
    return Dataset(
        vectors=np.concatenate(parts),
        index=np.concatenate(index),
        file_index=np.repeat(np.arange(len(infos), dtype=np.int64), counts),
        counts=np.asarray(counts, np.int64),
        files=files,
        fingerprint="sha256:" + digest.hexdigest(),
        seconds=seconds,
    )
