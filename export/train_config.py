"""What `amulet-export train` is asked to do: TrainConfig, built from the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CLOSED_FORM = ("pca", "mahalanobis")
"""The closed-form models (export/linear.py)."""
ARCHITECTURES = ("dense", "lstm", "lstm-frames", *CLOSED_FORM)
"""What `train --architecture` takes: Keras autoencoders, or closed-form."""
DEFAULT_ARCHITECTURE = {"amulet-v1": "lstm", "logmel-v1": "dense"}
"""The profiles `train` trains (mfcc-image-v1 is the DCGAN's), and each one's default model."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything `train` needs; built from the command line."""

    inputs: list[Path]
    output_dir: Path
    profile: str
    epochs: int = 20
    batch_size: int = 32
    predict_file: Path | None = None
    channel: int | None = None
    threshold_method: str | None = None
    """None: the profile's default (amulet-v1: max, as AMULET; others: recordings)."""
    quantile: float = 0.99
    seed: int = 10
    architecture: str | None = None
    """None: the profile's default (DEFAULT_ARCHITECTURE)."""
    extra: int = 0
    """The last `extra` inputs are only trained on, never held out nor calibrated on (the
    recordings `adapt` folds in: each alone would look unlike the rest)."""
