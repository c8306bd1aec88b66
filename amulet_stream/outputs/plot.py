"""--plot: score over time with the threshold and anomalous spans shaded (matplotlib extra)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


class PlotError(RuntimeError):
    """The plot cannot be made; the message says why."""


class PlotUnavailableError(PlotError):
    """matplotlib is not installed (or does not import)."""


SUFFIXES = (".png", ".svg", ".pdf")


def check_target(path: Path) -> None:
    """Refuse (PlotError) a file name matplotlib cannot write: another suffix, a folder, a
    missing folder, a folder that refuses a new file, an existing file that cannot be
    overwritten."""
    if path.suffix.lower() not in SUFFIXES:
        raise PlotError(f"--plot {path}: give a file name ending in .png, .svg or .pdf")
    try:
        if path.is_dir():
            raise PlotError(f"--plot {path} is a folder: give a file name")
        if not path.parent.is_dir():
            raise PlotError(f"--plot {path}: folder {path.parent} does not exist")
        if path.exists():
            if not path.is_file() or not os.access(path, os.W_OK):
                raise PlotError(f"--plot {path}: exists and cannot be overwritten")
            return
    except OSError as err:  # e.g. a name too long
        raise PlotError(f"--plot {path}: {err.strerror or err}") from err
    try:
        fd, probe = tempfile.mkstemp(prefix=".amulet-plot-", dir=path.parent)
    except OSError as err:
        raise PlotError(
            f"--plot {path}: cannot create a file in {path.parent}: {err.strerror or err}"
        ) from err
    os.close(fd)
    os.unlink(probe)


def check_available() -> None:
    """Import matplotlib with the file-only backend; PlotUnavailableError if it fails."""
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError as err:
        raise PlotUnavailableError(
            f"--plot needs matplotlib ({err}): pip install 'amulet-stream[plot]'"
        ) from err


def plot_scores(per_file: dict[str, list[dict[str, Any]]], threshold: float, path: Path) -> None:
    """One panel per file: score lines, threshold, shaded anomalous windows."""
    check_available()
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise PlotUnavailableError(
            f"--plot needs matplotlib ({err}): pip install 'amulet-stream[plot]'"
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
    try:
        fig.savefig(path, dpi=110)
    except OSError as err:
        raise PlotError(f"--plot {path}: cannot write: {err.strerror or err}") from err
    finally:
        plt.close(fig)
