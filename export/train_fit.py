"""Fitting a model: Keras autoencoders with early stopping and an epoch log; out-of-fold scores."""

from __future__ import annotations

import logging
import time
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from amulet_stream.scoring.features import Profile

from . import dataset, linear, nets, onnx_io
from .train_config import TrainConfig
from .train_data import augment, gap_vectors, scaler

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
FOLDS = 4
PATIENCE = 5
"""Epochs without a better held-out loss before training stops (the best epoch is kept)."""


class _EpochLog(keras.callbacks.Callback):  # type: ignore[misc]
    """One log line per epoch: the progress a person watches."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self._t0 = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._t0 = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        _LOGGER.info(
            "epoch %d/%d  loss %.5f  held-out loss %.5f  (%.1f s)",
            epoch + 1,
            self.epochs,
            logs.get("loss", float("nan")),
            logs.get("val_loss", float("nan")),
            time.monotonic() - self._t0,
        )


def _report_epochs(history: dict[str, list[float]], epochs: int) -> None:
    """Say which epoch was kept and why."""
    best = int(np.argmin(history["val_loss"]))
    ran = len(history["val_loss"])
    if ran < epochs:
        _LOGGER.info(
            "stopped after epoch %d: the held-out loss last improved at epoch %d; "
            "keeping epoch %d (held-out loss %.5f)",
            ran,
            best + 1,
            best + 1,
            history["val_loss"][best],
        )
    else:
        _LOGGER.info(
            "keeping epoch %d of %d, the best held-out loss (%.5f)",
            best + 1,
            ran,
            history["val_loss"][best],
        )
    if best == 0 and ran > 1:
        _LOGGER.warning(
            "the held-out loss never improved after the first epoch: the model does not "
            "generalise from this audio; more (and more varied) healthy audio will help"
        )


def fit_keras(
    cfg: TrainConfig,
    arch: str,
    stack: int,
    vectors: F32,
    x_train: F32,
    x_held: F32,
    scale: F32,
    bias: F32,
    export: bool = True,
) -> tuple[Any, F32, dict[str, list[float]]]:
    """Train a Keras autoencoder; return its ONNX scorer (None unless `export`), the Keras
    scores of `vectors` and the loss history. Stops early when the held-out loss stops
    improving (the best epoch is kept)."""
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    core = nets.core_for(arch, x_train.shape[1], stack)
    core.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mae")
    xs_train, xs_held = x_train * scale + bias, x_held * scale + bias
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=PATIENCE, restore_best_weights=True
    )
    fit = core.fit(
        xs_train,
        xs_train,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        validation_data=(xs_held, xs_held),
        shuffle=True,
        verbose=0,
        callbacks=[_EpochLog(cfg.epochs), stop] if export else [stop],
    )
    history = {k: [float(x) for x in vals] for k, vals in fit.history.items()}
    if export:
        _report_epochs(history, cfg.epochs)
    model = nets.scorer(core, scale, bias)
    vec_scores = np.asarray(model.predict(vectors, batch_size=4096, verbose=0), np.float32)
    proto = onnx_io.convert(model, x_train.shape[1]) if export else None
    return proto, vec_scores, history


def out_of_fold(cfg: TrainConfig, arch: str, profile: Profile, data: dataset.Dataset) -> F32:
    """Vector scores (N,), each from a model fitted without it or any vector sharing a sample
    with its part: FOLDS contiguous parts in turn, for audio too short to hold out enough."""
    n = data.vectors.shape[0]
    gap = gap_vectors(profile)
    out = np.empty(n, np.float32)
    idx = np.arange(n)
    edges = np.linspace(0, n, FOLDS + 1).astype(int)
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        part = data.vectors[lo:hi]
        x_fit = augment(profile, data.vectors[(idx < lo - gap) | (idx >= hi + gap)])
        scale, bias, _ = scaler(profile, x_fit)
        if arch in linear.KINDS:
            out[lo:hi] = linear.fit(arch, x_fit, scale, bias)[2](part)
        else:
            args = (part, x_fit, part, scale, bias)
            out[lo:hi] = fit_keras(cfg, arch, profile.stack, *args, export=False)[1]
    return out
