"""`amulet-export verify`: is this file a complete, working amulet model?"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amulet_stream.scoring.model import Model
from amulet_stream.scoring.model_meta import ModelError


def verify(path: Path) -> tuple[bool, str]:
    """Check metadata, a probe run and the stored parity sample; return (ok, one-line verdict)."""
    try:
        model = Model(path)
    except ModelError as err:
        return False, f"FAIL {err}"
    meta = model.meta
    parity = meta.raw["parity"]
    try:
        inputs = np.asarray(parity["inputs"], dtype=np.float32)
        expected = np.asarray(parity["scores"], dtype=np.float32)
        tol = float(parity["tolerance"])
    except (KeyError, TypeError, ValueError) as err:
        return False, f"FAIL {path}: parity sample is malformed: {err}"
    if inputs.ndim != 2 or inputs.shape[0] == 0 or inputs.shape[0] != expected.size:
        return False, f"FAIL {path}: parity sample is empty or inconsistent"
    probe = np.random.default_rng(0).standard_normal((4, meta.profile.dim)).astype(np.float32)
    probe_scores = model.score_vectors(probe)
    if probe_scores.shape != (4,) or not np.isfinite(probe_scores).all():
        return False, f"FAIL {path}: graph gives no finite score for a probe input"
    diff = float(np.abs(model.score_vectors(inputs) - expected).max())
    if not diff <= tol:
        return False, f"FAIL {path}: parity sample differs by {diff:.2e} (tolerance {tol:.0e})"
    return True, (
        f"OK {path}: profile {meta.profile.name}, threshold {meta.threshold:.6g} "
        f"({meta.threshold_method}), parity {diff:.1e} on {expected.size} stored vectors "
        f"(export recorded {float(parity.get('max_abs_diff', float('nan'))):.1e})"
    )
