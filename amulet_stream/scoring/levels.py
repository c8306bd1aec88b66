"""Input levels in 0.25 s blocks: RMS (dBFS), mean and clipped fraction of each block, the
level distribution a model stores, and the range a model was trained on."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

BLOCK_SECONDS = 0.25
FULL_SCALE = 0.999
"""|x| at or above this counts as clipped (16-bit +32767 is 0.99997)."""
RMS_FLOOR = 1e-6
"""RMS floor: digital zeros read -120 dBFS, as the level metric does."""
CHUNK = 64
"""Blocks judged per vectorised step: bounds the scratch memory of a long push."""


def block_size(rate: int) -> int:
    """Samples in one analysis block (0.25 s) at `rate` Hz."""
    return max(1, round(rate * BLOCK_SECONDS))


def dbfs(rms: F64) -> F64:
    """RMS (linear, full scale 1) -> dBFS, floored at -120."""
    return np.asarray(20.0 * np.log10(np.maximum(rms, RMS_FLOOR)), np.float64)


@dataclass(frozen=True)
class Stats:
    """Per-block measurements of nb whole blocks: arrays (nb,)."""

    valid: npt.NDArray[np.bool_]
    """The block holds at least one finite sample (its level means something)."""
    nonfinite: npt.NDArray[np.bool_]
    """The block holds NaN or infinite samples (a broken source or file)."""
    rms_dbfs: F64
    mean: F64
    clipped: F64
    """Fraction of finite samples at |x| >= FULL_SCALE."""
    count: F64
    """Finite samples."""


def measure(blocks: F32) -> Stats:
    """Level, mean and clipped fraction of each row of (nb, n) samples, NaN/inf left out."""
    blocks = np.asarray(blocks, np.float32)
    top, bottom = blocks.max(axis=1), blocks.min(axis=1)  # NaN and inf show in them
    if not max(top.max(initial=0.0), -bottom.min(initial=0.0)) < 1e15:
        return _measure_wide(blocks)  # NaN, inf, or squares that would overflow float32
    # float32 sums (pairwise: relative error ~1e-6, 1e-5 dB) in one pass each; clipped
    # samples counted only in blocks whose peak reaches full scale
    n = blocks.shape[1]
    count = np.full(blocks.shape[0], float(n))
    rms = np.sqrt(np.square(blocks).sum(axis=1).astype(np.float64) / n)
    clipped = np.zeros(blocks.shape[0])
    loud = np.flatnonzero((top >= FULL_SCALE) | (bottom <= -FULL_SCALE))
    clipped[loud] = (np.abs(blocks[loud]) >= FULL_SCALE).sum(axis=1) / n
    mean = blocks.sum(axis=1).astype(np.float64) / n
    return Stats(count > 0, count < n, dbfs(rms), mean, clipped, count)


def _measure_wide(blocks: F32) -> Stats:
    """measure() in float64, of the finite samples only."""
    finite = np.isfinite(blocks)
    count = finite.sum(axis=1).astype(np.float64)
    v = np.where(finite, blocks, 0.0).astype(np.float64)
    n = np.maximum(count, 1.0)
    rms = np.sqrt((v * v).sum(axis=1) / n)
    clipped = (np.abs(v) >= FULL_SCALE).sum(axis=1) / n
    return Stats(count > 0, count < blocks.shape[1], dbfs(rms), v.sum(axis=1) / n, clipped, count)


class Blocker:
    """Samples of any length -> whole blocks (nb, n), in order; keeps the partial tail."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._tail = np.zeros(0, np.float32)

    def push(self, samples: F32) -> F32:
        """Add mono samples; return the blocks (nb, n) they completed."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"integrity checks take mono samples, got shape {x.shape}")
        data = np.concatenate([self._tail, x]) if self._tail.size else x
        nb = data.size // self.n
        self._tail = data[nb * self.n :].copy()
        return data[: nb * self.n].reshape(nb, self.n)


def block_levels(blocks: Iterable[F32], rate: int) -> F64:
    """RMS in dBFS (floor -120) of every whole 0.25 s block of a mono stream given in pieces of
    any length at `rate` Hz, NaN/inf left out (blocks without a finite sample skipped)."""
    blocker = Blocker(block_size(rate))
    out: list[F64] = []
    for piece in blocks:
        whole = blocker.push(piece)
        for i in range(0, whole.shape[0], CHUNK):
            stats = measure(whole[i : i + CHUNK])
            out.append(stats.rms_dbfs[stats.valid])
    return np.concatenate(out) if out else np.zeros(0, np.float64)


def level_summary(levels: F64) -> dict[str, float]:
    """Distribution of block levels (dBFS) as stored in a model: p1, p50, p99, min, max (0.1 dB)."""
    if levels.size == 0:
        raise ValueError("no whole 0.25 s block of audio to measure the input level on")
    p1, p50, p99 = np.percentile(levels, [1.0, 50.0, 99.0])
    values = {"p1": p1, "p50": p50, "p99": p99, "min": levels.min(), "max": levels.max()}
    return {k: round(float(v), 1) for k, v in values.items()}


def level_range(meta_raw: dict[str, Any]) -> tuple[float, float] | None:
    """(p1, p99) dBFS of the model's training audio from its metadata; None for models
    without it (older models, AMULET imports). Raises ValueError when it is malformed."""
    doc = meta_raw.get("input_level_dbfs")
    if doc is None:
        return None
    lo = doc.get("p1") if isinstance(doc, dict) else None
    hi = doc.get("p99") if isinstance(doc, dict) else None
    if (
        isinstance(lo, (int, float))
        and isinstance(hi, (int, float))
        and math.isfinite(lo)
        and math.isfinite(hi)
        and lo <= hi
    ):
        return float(lo), float(hi)
    raise ValueError(f"input_level_dbfs in the model metadata needs numbers p1 <= p99, got {doc!r}")
