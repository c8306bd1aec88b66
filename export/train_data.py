"""Training vectors: scaling, gain copies, the held-out split and window scores (no TensorFlow)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from amulet_stream.scoring.features import Profile
from amulet_stream.scoring.loudness import power_db, vector_power
from amulet_stream.scoring.windows import WindowMeans

from . import dataset

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
HOLD_OUT = 0.2
GAIN_DB = (-6.0, -3.0, 3.0, 6.0)


def scaler(profile: Profile, x: F32) -> tuple[F32, F32, dict[str, Any]]:
    """(scale, bias) with scaled = x * scale + bias: MinMax for amulet-v1, else standard."""
    if profile.name == "amulet-v1":
        lo, hi = x.min(axis=0), x.max(axis=0)
        scale = 1.0 / np.where(hi - lo > 0, hi - lo, 1.0)
        bias = -lo * scale
        kind = "minmax"
    else:
        mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 0.1)
        scale, bias, kind = 1.0 / std, -mean / std, "standard"
    doc = {"kind": kind, "scale": scale.tolist(), "bias": bias.tolist()}
    return scale.astype(np.float32), bias.astype(np.float32), doc


def augment(profile: Profile, x: F32) -> F32:
    """Training vectors (N, D) plus copies at GAIN_DB overall gains, for log-mel (dB) features:
    a microphone's gain is arbitrary, so a few dB of level must not look like a fault."""
    if profile.name != "logmel-v1":
        return x
    return np.concatenate([x, *(x + np.float32(g) for g in GAIN_DB)])


def split(data: dataset.Dataset, profile: Profile) -> tuple[I64, I64]:
    """Indexes of training and held-out vectors: the last 20 % of each file (at least one
    window) is held out, and no training vector shares a sample with it."""
    keep = (data.counts * (1.0 - HOLD_OUT)).astype(np.int64)
    cut = np.minimum(keep, data.counts - profile.vectors)
    hold_first = np.maximum(cut, 0)[data.file_index]
    gap = gap_vectors(profile)
    held = np.flatnonzero(data.index >= hold_first)
    train = np.flatnonzero(data.index + gap < hold_first)
    return train, held


def gap_vectors(profile: Profile) -> int:
    """Vectors on each side of a vector that share samples with it."""
    return profile.stack - 1 + -(-profile.n_fft // profile.step) - 1


def window_scores(vec_scores: F32, data: dataset.Dataset, pick: I64, per_window: int) -> F32:
    """Scores of every window (at a hop of one vector) made only of the vectors in `pick`."""
    mask = np.zeros(vec_scores.size, bool)
    mask[pick] = True
    out: list[F32] = []
    start = 0
    for count in data.counts.tolist():
        s, m = vec_scores[start : start + count], mask[start : start + count]
        start += count
        if count < per_window:
            continue
        means = WindowMeans(per_window, 1).push(s)[0]  # as the monitor scores windows
        inside = sliding_window_view(m, per_window).all(axis=1)
        out.append(means[inside].astype(np.float32))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def window_levels(data: dataset.Dataset, profile: Profile) -> list[F32]:
    """Each file's window levels (dB of log-mel power, windows at a hop of one vector), as the
    monitor measures them (scoring/loudness.py)."""
    power = vector_power(data.vectors, profile.frame_dim)
    out: list[F32] = []
    start = 0
    for count in data.counts.tolist():
        means = WindowMeans(profile.vectors, 1).push(power[start : start + count])[0]
        out.append(power_db(means).astype(np.float32))
        start += count
    return out
