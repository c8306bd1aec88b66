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

from amulet_stream.features import PROFILES, Profile
from amulet_stream.wav import WavError, read_info

from . import dataset, nets, onnx_io, outdir, plots, threshold
from .errors import InputError

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
HOLD_OUT = 0.2


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


def _split(
    data: dataset.Dataset, window: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Indexes of training and held-out windows: the last 20 % of each file is held out, and
    no training window overlaps it (at least one window is held out)."""
    cut = (data.lengths[data.file_index] * (1.0 - HOLD_OUT)).astype(np.int64)
    held = np.flatnonzero(data.starts >= cut)
    if held.size == 0:
        held = np.array([data.starts.size - 1])
        cut = np.minimum(cut, data.starts[-1])
    train = np.flatnonzero(data.starts + window <= cut)
    return train, held


def _predict(cfg: TrainConfig, profile: Profile, proto: Any, thr: float, stage: Path) -> str:
    """Score --predict-file window by window, plot it, write prediction.csv; return the verdict."""
    assert cfg.predict_file is not None
    try:
        info = read_info(cfg.predict_file)
    except WavError as err:
        raise InputError(str(err)) from err
    times: list[F32] = []
    scores: list[F32] = []
    for windows, starts in dataset.stream_windows(info, profile, profile.hop, cfg.channel):
        feats = profile.compute(windows)
        n, v, d = feats.shape
        scores.append(onnx_io.ort_scores(proto, feats.reshape(n * v, d)).reshape(n, v).mean(1))
        times.append(((starts + profile.window / 2) / profile.rate).astype(np.float32))
    t, s = np.concatenate(times), np.concatenate(scores)
    with (stage / "prediction.csv").open("w") as fh:
        fh.write("start_s,end_s,score,anomaly\n")
        half = profile.window / profile.rate / 2
        for ti, si in zip(t, s, strict=True):
            fh.write(f"{ti - half:.4f},{ti + half:.4f},{si:.6f},{int(si > thr)}\n")
    plots.prediction(
        t, s, thr, f"{cfg.predict_file.name}: score over time", stage / "prediction.png"
    )
    anomalies = int((s > thr).sum())
    verdict = "defect" if anomalies else "good"
    _LOGGER.info(
        "prediction for %s: %d of %d windows above threshold: %s",
        cfg.predict_file,
        anomalies,
        s.size,
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


def _train_into(
    cfg: TrainConfig, profile: Profile, data: dataset.Dataset, stage: Path, t_start: float
) -> Path:
    _LOGGER.info("training profile %s on %d file(s)", profile.name, len(cfg.inputs))
    n, v, d = data.features.shape
    _LOGGER.info(
        "%.1f s of audio -> %d windows x %d vectors x %d features (training hop %d)",
        data.seconds,
        n,
        v,
        d,
        data.hop,
    )
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    train_idx, held_idx = _split(data, profile.window)
    x_train = data.features[train_idx].reshape(-1, d)
    x_held = data.features[held_idx].reshape(-1, d)
    scale, bias, scaler_doc = _scaler(profile, x_train)
    core = nets.core_for(profile.name, d)
    core.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mae")
    xs_train, xs_held = x_train * scale + bias, x_held * scale + bias
    fit = core.fit(
        xs_train,
        xs_train,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        validation_data=(xs_held, xs_held),
        shuffle=True,
        verbose=0,
        callbacks=[_EpochLog(cfg.epochs)],
    )
    history = {k: [float(x) for x in vals] for k, vals in fit.history.items()}
    model = nets.scorer(core, scale, bias)
    all_vec = data.features.reshape(-1, d)
    vec_scores = np.asarray(model.predict(all_vec, batch_size=4096, verbose=0), np.float32)
    win_scores = vec_scores.reshape(n, v).mean(axis=1)
    method = cfg.threshold_method or ("max" if profile.name == "amulet-v1" else "gamma")
    thr, how = threshold.choose(method, win_scores[held_idx], win_scores, cfg.quantile)
    _LOGGER.info("threshold %.6g (%s)", thr, how)

    proto = onnx_io.convert(model, d)
    held_vec_scores = vec_scores.reshape(n, v)[held_idx].reshape(-1)
    diff = onnx_io.check_parity(proto, held_vec_scores, x_held)
    _LOGGER.info(
        "ONNX parity on %d held-out vectors: max |onnx - keras| = %.2e", x_held.shape[0], diff
    )
    doc = {
        "profile": profile.to_dict(),
        "architecture": core.name,
        "scaler": scaler_doc,
        "threshold": thr,
        "threshold_method": method,
        "threshold_details": how,
        "score": "mean absolute error of scaled features, averaged over a window's vectors",
        "train_scores": {
            "training": threshold.distribution(win_scores[train_idx]),
            "held_out": threshold.distribution(win_scores[held_idx]),
        },
        "fingerprint": data.fingerprint,
        "training": {
            "files": data.files,
            "seconds": round(data.seconds, 3),
            "windows": n,
            "hop": data.hop,
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "final_loss": history["loss"][-1],
            "final_val_loss": history.get("val_loss", [float("nan")])[-1],
        },
        "versions": onnx_io.versions(),
        "parity": onnx_io.parity_doc(x_held, held_vec_scores, diff),
    }
    onnx_io.attach(proto, doc)
    plots.loss_curves(history, stage / "loss.png")
    plots.score_distribution(
        win_scores[train_idx], win_scores[held_idx], thr, method, stage / "scores.png"
    )
    if cfg.predict_file is not None:
        _predict(cfg, profile, proto, thr, stage)
    summary = {k: doc[k] for k in ("threshold", "threshold_method", "train_scores", "training")}
    summary["parity_max_abs_diff"] = diff
    summary["seconds_taken"] = round(time.monotonic() - t_start, 2)
    (stage / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    model_path = stage / "model.onnx"
    onnx_io.save_atomic(proto, model_path)
    _LOGGER.info(
        "model written: %s (%.1f s in all)",
        cfg.output_dir / "model.onnx",
        time.monotonic() - t_start,
    )
    return model_path
