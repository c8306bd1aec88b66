"""What changed, in frequency: the log-mel bands whose level deviates most from what the model
expected over an alert's window, as Hz ranges with signed dB (largest contribution first)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from amulet_stream.scoring.features import Profile
from amulet_stream.scoring.filters import mel_edges_hz
from amulet_stream.scoring.loudness import DB_FEATURES

F32 = npt.NDArray[np.float32]
BANDS = 3
"""Bands an alert names at most."""


def changed_bands(residuals: F32, profile: Profile, count: int = BANDS) -> list[dict[str, float]]:
    """The `count` mel bands with the largest mean |deviation| over residual vectors (M, D) in
    dB: [{"low_hz", "high_hz", "db"}] with the band's signed mean deviation; [] for profiles
    whose features are not log-mel dB."""
    if profile.name not in DB_FEATURES or residuals.size == 0:
        return []
    k = profile.frame_dim
    per_band = residuals.astype(np.float64).reshape(-1, profile.stack, k).mean(axis=(0, 1))
    if not np.isfinite(per_band).all():
        return []
    edges = mel_edges_hz(profile.rate, profile.n_mels)
    order = np.argsort(-np.abs(per_band), kind="stable")[:count]
    return [
        {
            "low_hz": round(float(edges[m]), 1),
            "high_hz": round(float(edges[m + 2]), 1),
            "db": round(float(per_band[m]), 2),
        }
        for m in order.tolist()
    ]
