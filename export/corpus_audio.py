"""A real recording's audio for the corpus: read down-mixed to mono, looped seamlessly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from amulet_stream.audio.wav import iter_blocks, read_info, select_channel

F32 = npt.NDArray[np.float32]


def read_mono(path: Path) -> tuple[F32, int]:
    """A wav file down-mixed to float32 mono, and its rate."""
    info = read_info(path)
    return np.concatenate([select_channel(b, None) for b in iter_blocks(info)]), info.rate


def loop(part: F32, frames: int, rate: int, fade: float = 0.05) -> F32:
    """`part` repeated to `frames` samples with seamless joins: each repeat resumes where the
    signal best matches the end (within its first 0.1 s) and crosses over in `fade` s with a
    power-preserving crossfade (gains for the measured correlation)."""
    c = round(fade * rate)
    search = round(0.1 * rate)
    if part.size < 2 * c + search + 1:
        raise ValueError(f"{part.size} samples are too few to loop with a {fade} s crossfade")
    x = part.astype(np.float64)
    tail = x[-c:]
    windows = np.lib.stride_tricks.sliding_window_view(x[: c + search], c)  # start a - c
    corr = windows @ tail / (np.linalg.norm(windows, axis=1) * np.linalg.norm(tail) + 1e-30)
    a = c + int(np.argmax(corr))
    r = float(corr[a - c])
    u = (np.arange(c) + 0.5) / c
    norm = np.sqrt((1 - u) ** 2 + u**2 + 2 * r * u * (1 - u))
    joint = ((1 - u) * tail + u * x[a - c : a]) / norm
    period = np.concatenate([joint, x[a:-c]])  # one repeat after the first pass
    reps = int(np.ceil(max(0, frames - (x.size - c)) / period.size))
    out = np.concatenate([x[:-c], *([period] * reps)])[:frames]
    return out.astype(np.float32)
