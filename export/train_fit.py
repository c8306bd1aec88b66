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
I64 = npt.NDArray[np.int64]
FOLDS = 4
"""Stretches of a single file held out in turn."""
FILE_FOLDS = 10
"""Folds over whole files: each file its own up to this many files (held out one at a time)."""
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
    explainer = nets.explainer(core, scale, bias)
    proto = onnx_io.convert(explainer, x_train.shape[1]) if export else None
    return proto, vec_scores, history


def folds(data: dataset.Dataset, profile: Profile) -> I64:
    """The fold of every vector: with several files, each file its own fold (beyond FILE_FOLDS
    files, file i in fold i mod FILE_FOLDS: each fold's recordings lie among the others, in
    time and in operating conditions); with one, FOLDS contiguous stretches, fewer when the
    file is short (each holds two windows at least; one fold: too short to split)."""
    files = data.counts.size
    if files > 1:
        return np.asarray(data.file_index % min(FILE_FOLDS, files), np.int64)
    n = data.vectors.shape[0]
    k = max(1, min(FOLDS, n // (2 * profile.vectors + 2 * gap_vectors(profile))))
    return np.asarray((np.arange(n) * k) // max(n, 1), np.int64)


def out_of_fold(
    cfg: TrainConfig, arch: str, profile: Profile, data: dataset.Dataset, fold: I64
) -> F32:
    """Vector scores (N,), each from a model fitted without its fold (`fold`: one number per
    vector, -1 for vectors always fitted on, scored NaN) nor any vector sharing a sample with
    it (the gap around a stretch of one file)."""
    n = data.vectors.shape[0]
    gap = gap_vectors(profile)
    out = np.full(n, np.nan, np.float32)
    pos = data.index
    for k in np.unique(fold[fold >= 0]).tolist():
        mine = fold == k
        files = np.unique(data.file_index[mine])
        lo, hi = int(pos[mine].min()), int(pos[mine].max()) + 1
        near = np.isin(data.file_index, files) & (pos >= lo - gap) & (pos < hi + gap)
        part = data.vectors[mine]
        x_fit = augment(profile, data.vectors[~mine & ~near])
        scale, bias, _ = scaler(profile, x_fit)
        if arch in linear.KINDS:
            out[mine] = linear.fit(arch, x_fit, scale, bias)[2](part)
        else:
            args = (part, x_fit, part, scale, bias)
            out[mine] = fit_keras(cfg, arch, profile.stack, *args, export=False)[1]
    return out
