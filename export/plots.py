"""Plots a person looks at after training: loss curves, score distribution, prediction."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


def loss_curves(history: dict[str, list[float]], path: Path) -> None:
    """Training and validation loss (MAE of scaled features) per epoch."""
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], label="training")
    if "val_loss" in history:
        ax.plot(epochs, history["val_loss"], label="held-out")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (MAE)")
    ax.set_title("Autoencoder loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def score_distribution(
    train: F32, held_out: F32, threshold: float, method: str, path: Path
) -> None:
    """Histogram of normal window scores with the chosen threshold."""
    fig, ax = plt.subplots(figsize=(7, 4))
    low = min(float(train.min()), float(held_out.min()))
    top = max(float(train.max()), float(held_out.max()), threshold)
    pad = 0.1 * (top - low) or 0.1 * top
    bins = [low - pad + (top - low + 2 * pad) * k / 50 for k in range(51)]
    ax.hist(train, bins=bins, alpha=0.6, label=f"training windows ({train.size})")
    ax.hist(held_out, bins=bins, alpha=0.6, label=f"held-out windows ({held_out.size})")
    ax.axvline(
        threshold, color="red", linestyle="--", label=f"threshold {threshold:.4g} ({method})"
    )
    ax.set_xlabel("window score (MAE)")
    ax.set_ylabel("windows")
    ax.set_title("Scores of normal audio")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def prediction(times: F32, scores: F32, threshold: float, title: str, path: Path) -> None:
    """Score over time against the threshold, anomalous windows shaded."""
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(times, scores, marker=".", linewidth=1, label="window score")
    ax.axhline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.4g}")
    step = float(np.median(np.diff(times))) if times.size > 1 else 1.0
    for t in times[scores > threshold]:
        ax.axvspan(t - step / 2, t + step / 2, color="red", alpha=0.15, linewidth=0)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("score (MAE)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
