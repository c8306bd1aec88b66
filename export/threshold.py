"""Threshold choice from normal scores: AMULET's maximum, or a fitted gamma quantile."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

F32 = npt.NDArray[np.float32]
METHODS = ("max", "gamma")
MIN_FIT = 10


def distribution(scores: F32) -> dict[str, float | int]:
    """Summary of a set of window scores: count, mean, std, quantiles, max."""
    q = np.quantile(scores, [0.5, 0.9, 0.95, 0.99])
    return {
        "count": int(scores.size),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "q50": float(q[0]),
        "q90": float(q[1]),
        "q95": float(q[2]),
        "q99": float(q[3]),
        "max": float(scores.max()),
    }


def choose(
    method: str, held_out: F32, training: F32, quantile: float, over: str = "held-out windows"
) -> tuple[float, dict[str, Any]]:
    """Threshold and how it was chosen, from normal window scores.

    max: AMULET's rule, the largest normal window score (rounded up to 4 places).
    gamma: the `quantile` point of a gamma distribution fitted to held-out window scores
    (`over` says which: held-out or out-of-fold windows; training and held-out windows
    together when fewer than 10 are given).
    """
    if method == "max":
        value = math.ceil(float(np.concatenate([training, held_out]).max()) * 1e4) / 1e4
        return value, {"method": "max", "over": "all windows", "rounded": "up, 4 places"}
    if method != "gamma":
        raise ValueError(f"unknown threshold method {method!r} (known: {', '.join(METHODS)})")
    sample = held_out
    if sample.size < MIN_FIT:
        sample, over = np.concatenate([training, held_out]), "training and held-out windows"
    shape, loc, scale = stats.gamma.fit(sample.astype(np.float64), floc=0.0)
    value = float(stats.gamma.ppf(quantile, shape, loc=loc, scale=scale))
    return value, {
        "method": "gamma",
        "quantile": quantile,
        "over": over,
        "fitted_on": int(sample.size),
        "shape": float(shape),
        "scale": float(scale),
    }


def describe(how: dict[str, Any]) -> str:
    """The threshold choice in words, for the log."""
    if how["method"] == "max":
        return f"the largest score of {how['over']} (AMULET's rule), rounded up to 4 places"
    text = (
        f"the {how['quantile']:g} point of a gamma distribution fitted to "
        f"{how['fitted_on']} {how['over']}"
    )
    if how["over"] == "training and held-out windows":
        text += (
            f" (fewer than {MIN_FIT} windows were held out, so training windows, which "
            "score lower than unseen audio, were used too: expect more false alarms)"
        )
    return text
