"""`amulet-export train`: healthy recordings -> one self-describing model.onnx (+ log, plots)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf
from numpy.lib.stride_tricks import sliding_window_view

from amulet_stream.audio.sources import FileSource
from amulet_stream.audio.wav import WavError, read_info
from amulet_stream.scoring.features import PROFILES, Profile
from amulet_stream.scoring.integrity import block_levels, level_summary
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.pipeline import StreamPipeline, replay
from amulet_stream.scoring.pipeline import verdict as pipeline_verdict
from amulet_stream.scoring.windows import WindowMeans

from . import dataset, linear, nets, onnx_io, outdir, plots, threshold
from .errors import InputError

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
HOLD_OUT = 0.2
ARCHITECTURES = ("dense", "lstm", "lstm-frames", *linear.KINDS)
DEFAULT_ARCHITECTURE = {"amulet-v1": "lstm", "logmel-v1": "dense"}
SCORE_TEXT = {
    **dict.fromkeys(
        ("dense", "lstm", "lstm-frames", "pca"),
        "mean absolute error of the scaled vector's reconstruction, averaged over a window",
    ),
    "mahalanobis": "mean squared whitened distance of the scaled vector from the training "
    "mean, averaged over a window",
}
GAIN_DB = (-6.0, -3.0, 3.0, 6.0)
FOLDS = 4
PATIENCE = 5
"""Epochs without a better held-out loss before training stops (the best epoch is kept)."""


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
    """None: the profile's default (amulet-v1: max, as AMULET; others: gamma)."""
    quantile: float = 0.99
    seed: int = 10
    architecture: str | None = None
    """None: the profile's default (DEFAULT_ARCHITECTURE)."""


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


def _scaler(profile: Profile, x: F32) -> tuple[F32, F32, dict[str, Any]]:
    """(scale, bias) with scaled = x * scale + bias: MinMax for amulet-v1, else standard."""
    if profile.name == "amulet-v1":
        lo, hi = x.min(axis=0), x.max(axis=0)
        scale = 1.0 / np.where(hi - lo > 0, hi - lo, 1.0)
        bias = -lo * scale
        kind = "minmax"
    else:
        mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 0.1)
        scale, bias, kind = 1.0 / std, -mean / std, "standard"
    doc = {"kind": kind, "scale": scale.tolist(), "bias": bias.tolist()}
    return scale.astype(np.float32), bias.astype(np.float32), doc


def _augment(profile: Profile, x: F32) -> F32:
    """Training vectors (N, D) plus copies at GAIN_DB overall gains, for log-mel (dB) features:
    a microphone's gain is arbitrary, so a few dB of level must not look like a fault."""
    if profile.name != "logmel-v1":
        return x
    return np.concatenate([x, *(x + np.float32(g) for g in GAIN_DB)])


def _split(data: dataset.Dataset, profile: Profile) -> tuple[I64, I64]:
    """Indexes of training and held-out vectors: the last 20 % of each file (at least one
    window) is held out, and no training vector shares a sample with it."""
    keep = (data.counts * (1.0 - HOLD_OUT)).astype(np.int64)
    cut = np.minimum(keep, data.counts - profile.vectors)
    hold_first = np.maximum(cut, 0)[data.file_index]
    gap = _gap(profile)
    held = np.flatnonzero(data.index >= hold_first)
    train = np.flatnonzero(data.index + gap < hold_first)
    return train, held


def _out_of_fold(cfg: TrainConfig, arch: str, profile: Profile, data: dataset.Dataset) -> F32:
    """Vector scores (N,), each from a model fitted without it or any vector sharing a sample
    with its part: FOLDS contiguous parts in turn, for audio too short to hold out enough."""
    n = data.vectors.shape[0]
    gap = _gap(profile)
    out = np.empty(n, np.float32)
    idx = np.arange(n)
    edges = np.linspace(0, n, FOLDS + 1).astype(int)
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        part = data.vectors[lo:hi]
        x_fit = _augment(profile, data.vectors[(idx < lo - gap) | (idx >= hi + gap)])
        scale, bias, _ = _scaler(profile, x_fit)
        if arch in linear.KINDS:
            out[lo:hi] = linear.fit(arch, x_fit, scale, bias)[2](part)
        else:
            args = (part, x_fit, part, scale, bias)
            out[lo:hi] = _fit_keras(cfg, arch, profile.stack, *args, export=False)[1]
    return out


def _gap(profile: Profile) -> int:
    """Vectors on each side of a vector that share samples with it."""
    return profile.stack - 1 + -(-profile.n_fft // profile.step) - 1


def _window_scores(vec_scores: F32, data: dataset.Dataset, pick: I64, per_window: int) -> F32:
    """Scores of every window (at a hop of one vector) made only of the vectors in `pick`."""
    mask = np.zeros(vec_scores.size, bool)
    mask[pick] = True
    out: list[F32] = []
    start = 0
    for count in data.counts.tolist():
        s, m = vec_scores[start : start + count], mask[start : start + count]
        start += count
        if count < per_window:
            continue
        means = WindowMeans(per_window, 1).push(s)[0]  # as the monitor scores windows
        inside = sliding_window_view(m, per_window).all(axis=1)
        out.append(means[inside].astype(np.float32))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _input_levels(cfg: TrainConfig) -> dict[str, float]:
    """Distribution of the 0.25 s block RMS (dBFS) of the training audio as the monitor's input
    checks see it: each file's mono samples (channel or down-mix) at its own rate, no gain
    augmentation; p1..p99 is the level range the monitor holds live input to."""
    levels = []
    for path in cfg.inputs:
        try:
            source = FileSource(read_info(path), cfg.channel)
        except (WavError, ValueError) as err:
            raise InputError(str(err)) from err
        levels.append(block_levels((b.samples for b in source.blocks()), source.rate))
    doc = level_summary(np.concatenate(levels))
    _LOGGER.info(
        "input level of the training audio (0.25 s blocks): median %.1f dBFS, p1..p99 "
        "%.1f..%.1f dBFS, min %.1f, max %.1f",
        doc["p50"],
        doc["p1"],
        doc["p99"],
        doc["min"],
        doc["max"],
    )
    return doc


def _predict(cfg: TrainConfig, model_path: Path, stage: Path) -> str:
    """Replay --predict-file through the new model, plot it, write prediction.csv; return
    the verdict."""
    assert cfg.predict_file is not None
    try:
        info = read_info(cfg.predict_file)
        source = FileSource(info, cfg.channel)
    except (WavError, ValueError) as err:
        raise InputError(str(err)) from err
    model = Model(model_path)
    pipe = StreamPipeline(model, info.rate, "predict", str(cfg.predict_file))
    records = replay(pipe, source)
    rows = [r for r in records if r["event"] == "score"]
    thr = pipe.detector.threshold
    with (stage / "prediction.csv").open("w") as fh:
        fh.write("start_s,end_s,score,anomaly\n")
        for r in rows:
            fh.write(f"{r['start']:.4f},{r['end']:.4f},{r['score']:.6f},{int(r['anomaly'])}\n")
    t = np.array([(r["start"] + r["end"]) / 2 for r in rows], np.float32)
    s = np.array([r["score"] for r in rows], np.float32)
    plots.prediction(
        t, s, thr, f"{cfg.predict_file.name}: score over time", stage / "prediction.png"
    )
    verdict = pipeline_verdict(pipe.stats)
    _LOGGER.info(
        "prediction for %s: %d of %d windows above the threshold, %d alert(s): %s",
        cfg.predict_file,
        pipe.stats.anomalous_windows,
        pipe.stats.windows,
        pipe.stats.anomaly_events,
        verdict,
    )
    return verdict


def train(cfg: TrainConfig, data: dataset.Dataset | None = None) -> Path:
    """Train, calibrate, export and verify; returns OUT/model.onnx. Nothing is left on failure.

    `data` is the already loaded dataset.load(cfg.inputs, ...), if the caller has it."""
    t_start = time.monotonic()
    profile = PROFILES[cfg.profile]
    outdir.check(cfg.output_dir, cfg.predict_file)
    if data is None:
        data = dataset.load(cfg.inputs, profile, cfg.channel)
    stage = outdir.stage(cfg.output_dir)
    handler = logging.FileHandler(stage / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        model_path = _train_into(cfg, profile, data, stage, t_start)
        handler.close()
        logging.getLogger().removeHandler(handler)
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        for item in sorted(stage.iterdir(), key=lambda p: p.name == "model.onnx"):
            os.replace(item, cfg.output_dir / item.name)
        return cfg.output_dir / model_path.name
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        shutil.rmtree(stage, ignore_errors=True)


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


def _fit_keras(
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


def _train_into(
    cfg: TrainConfig, profile: Profile, data: dataset.Dataset, stage: Path, t_start: float
) -> Path:
    n, d = data.vectors.shape
    _LOGGER.info(
        "profile %s: %.1f s of audio in %d file(s) -> %d vectors of %d features "
        "(%d per %.2f s window)",
        profile.name,
        data.seconds,
        len(cfg.inputs),
        n,
        d,
        profile.vectors,
        profile.span / profile.rate,
    )
    if data.seconds < dataset.RECOMMENDED_SECONDS:
        _LOGGER.warning(
            "only %.1f s of audio: a model trained on less than %.0f s knows little of the "
            "motor's normal sound and will raise false alarms; record more with "
            "`amulet-stream record`",
            data.seconds,
            dataset.RECOMMENDED_SECONDS,
        )
    train_idx, held_idx = _split(data, profile)
    _LOGGER.info(
        "%d vectors train the model; the last %d %% of each file (%d vectors) is held out to "
        "watch for overfitting and to set the threshold",
        train_idx.size,
        round(100 * HOLD_OUT),
        held_idx.size,
    )
    x_train, x_held = _augment(profile, data.vectors[train_idx]), data.vectors[held_idx]
    if profile.name == "logmel-v1":
        _LOGGER.info(
            "training vectors also at overall gains of %s dB: a level change that small is normal",
            "/".join(f"{g:+g}" for g in GAIN_DB),
        )
    scale, bias, scaler_doc = _scaler(profile, x_train)
    arch = cfg.architecture or DEFAULT_ARCHITECTURE[profile.name]
    if arch in linear.KINDS:
        proto, arch_doc, reference = linear.fit(arch, x_train, scale, bias)
        _LOGGER.info("fitted %s in closed form: %s", arch, arch_doc)
        vec_scores = reference(data.vectors)
        history: dict[str, list[float]] | None = None
        training_doc: dict[str, Any] = {}
    else:
        proto, vec_scores, history = _fit_keras(
            cfg, arch, profile.stack, data.vectors, x_train, x_held, scale, bias
        )
        arch_doc = {"kind": arch}
        best = int(np.argmin(history["val_loss"]))
        training_doc = {
            "epochs": cfg.epochs,
            "epochs_run": len(history["val_loss"]),
            "best_epoch": best + 1,
            "batch_size": cfg.batch_size,
            "best_loss": history["loss"][best],
            "best_val_loss": history["val_loss"][best],
        }
    held_windows = _window_scores(vec_scores, data, held_idx, profile.vectors)
    train_windows = _window_scores(vec_scores, data, train_idx, profile.vectors)
    method = cfg.threshold_method or ("max" if profile.name == "amulet-v1" else "gamma")
    over = "held-out windows"
    if method == "gamma" and held_windows.size < threshold.MIN_FIT:
        _LOGGER.info(
            "only %d window(s) held out: the threshold comes from out-of-fold scores instead "
            "(%d models, each fitted without one part of the audio, score that part)",
            held_windows.size,
            FOLDS,
        )
        oof = _out_of_fold(cfg, arch, profile, data)
        held_windows = _window_scores(oof, data, np.arange(n), profile.vectors)
        over = "out-of-fold windows"
    thr, how = threshold.choose(method, held_windows, train_windows, cfg.quantile, over)
    _LOGGER.info("threshold %.6g: %s", thr, threshold.describe(how))

    diff = onnx_io.check_parity(proto, vec_scores[held_idx], x_held)
    _LOGGER.info(
        "ONNX parity on %d held-out vectors: max |onnx - reference| = %.2e",
        x_held.shape[0],
        diff,
    )
    doc = {
        "profile": profile.to_dict(),
        "architecture": arch_doc,
        "scaler": scaler_doc,
        "threshold": thr,
        "threshold_method": method,
        "threshold_details": how,
        "score": SCORE_TEXT[arch],
        "train_scores": {
            "training": threshold.distribution(train_windows),
            "held_out": threshold.distribution(held_windows),
        },
        "fingerprint": data.fingerprint,
        "input_level_dbfs": _input_levels(cfg),
        "training": {
            "files": data.files,
            "seconds": round(data.seconds, 3),
            "vectors": n,
            "seed": cfg.seed,
            **training_doc,
        },
        "versions": onnx_io.versions(),
        "parity": onnx_io.parity_doc(x_held, vec_scores[held_idx], diff),
    }
    onnx_io.attach(proto, doc)
    if history is not None:
        plots.loss_curves(history, stage / "loss.png")
    plots.score_distribution(train_windows, held_windows, thr, method, stage / "scores.png")
    model_path = stage / "model.onnx"
    onnx_io.save_atomic(proto, model_path)
    if cfg.predict_file is not None:
        _predict(cfg, model_path, stage)
    summary = {k: doc[k] for k in ("threshold", "threshold_method", "train_scores", "training")}
    summary["parity_max_abs_diff"] = diff
    summary["seconds_taken"] = round(time.monotonic() - t_start, 2)
    (stage / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _LOGGER.info(
        "model written: %s (%.1f s in all)",
        cfg.output_dir / "model.onnx",
        time.monotonic() - t_start,
    )
    return model_path
