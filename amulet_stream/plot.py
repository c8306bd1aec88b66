"""--plot: score over time with the threshold and anomalous spans shaded (matplotlib extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def plot_scores(per_file: dict[str, list[dict[str, Any]]], threshold: float, path: Path) -> None:
    """One panel per file: score lines, threshold, shaded anomalous windows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise PlotUnavailableError(
            "--plot needs matplotlib: pip install 'amulet-stream[plot]'"
        ) from err
    n = max(1, len(per_file))
    fig, axes = plt.subplots(n, 1, figsize=(10, 3.2 * n), squeeze=False)
    for ax, (name, rows) in zip(axes[:, 0], per_file.items(), strict=False):
        mids = [(r["start"] + r["end"]) / 2 for r in rows]
        ax.plot(mids, [r["score"] for r in rows], marker=".", linewidth=1, label="score")
        ax.axhline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.4g}")
        for r in rows:
            if r["anomaly"]:
                ax.axvspan(r["start"], r["end"], color="red", alpha=0.2, linewidth=0)
        ax.set_title(Path(name).name)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("score (MAE)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
