"""ROC curves and their area (clip or window scores; a higher score is anomalous)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def roc(neg: F64, pos: F64) -> tuple[F64, F64]:
    """ROC curve (false-positive rates, true-positive rates); a higher score is anomalous."""
    thr = np.unique(np.concatenate([neg, pos]))[::-1]
    ns, ps = np.sort(neg), np.sort(pos)
    fpr = (neg.size - np.searchsorted(ns, thr, side="left")) / max(neg.size, 1)
    tpr = (pos.size - np.searchsorted(ps, thr, side="left")) / max(pos.size, 1)
    return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], tpr, [1.0]])


def auc(neg: F64, pos: F64, max_fpr: float = 1.0) -> float:
    """Area under the ROC curve up to max_fpr, divided by max_fpr (DCASE's pAUC below 1)."""
    if neg.size == 0 or pos.size == 0:
        return float("nan")
    fpr, tpr = roc(neg, pos)
    grid = np.linspace(0.0, max_fpr, 2001)
    return float(np.trapezoid(np.interp(grid, fpr, tpr), grid) / max_fpr)
