"""`amulet-export train`: healthy recordings -> one self-describing model.onnx (+ log, plots)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from amulet_stream.audio.sources import FileSource
from amulet_stream.audio.wav import WavError, read_info
from amulet_stream.scoring.detector import DetectorSettings
from amulet_stream.scoring.features import PROFILES, Profile
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.pipeline import StreamPipeline, replay
from amulet_stream.scoring.records import verdict as pipeline_verdict

from . import calibrate, dataset, linear, onnx_io, outdir, plots, threshold, train_levels
from .errors import InputError
from .train_config import DEFAULT_ARCHITECTURE, TrainConfig
from .train_data import GAIN_DB, HOLD_OUT, augment, scaler, split, window_scores
from .train_fit import FOLDS, fit_keras, folds, out_of_fold

_LOGGER = logging.getLogger(__name__)

SCORE_TEXT = {
    **dict.fromkeys(
        ("dense", "lstm", "lstm-frames", "pca"),
        "mean absolute error of the scaled vector's reconstruction, averaged over a window",
    ),
    "mahalanobis": "mean squared whitened distance of the scaled vector from the training "
    "mean, averaged over a window",
}


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
    own = data.head(len(cfg.inputs) - cfg.extra)  # held out and calibrated on
    train_idx, held_idx = split(own, profile)
    train_idx = np.concatenate([train_idx, np.arange(own.vectors.shape[0], n)])
    _LOGGER.info(
        "%d vectors train the model; the last %d %% of each file%s (%d vectors) is held out "
        "to watch for overfitting and to set the threshold",
        train_idx.size,
        round(100 * HOLD_OUT),
        f" but the {cfg.extra} folded in" if cfg.extra else "",
        held_idx.size,
    )
    x_train, x_held = augment(profile, data.vectors[train_idx]), data.vectors[held_idx]
    if profile.name == "logmel-v1":
        _LOGGER.info(
            "training vectors also at overall gains of %s dB: the spectral score ignores the "
            "level, which the level range judges on its own",
            "/".join(f"{g:+g}" for g in GAIN_DB),
        )
    scale, bias, scaler_doc = scaler(profile, x_train)
    arch = cfg.architecture or DEFAULT_ARCHITECTURE[profile.name]
    if arch in linear.KINDS:
        proto, arch_doc, reference = linear.fit(arch, x_train, scale, bias)
        _LOGGER.info("fitted %s in closed form: %s", arch, arch_doc)
        vec_scores = reference(data.vectors)
        history: dict[str, list[float]] | None = None
        training_doc: dict[str, Any] = {}
    else:
        proto, vec_scores, history = fit_keras(
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
    held_windows = window_scores(vec_scores, data, held_idx, profile.vectors)
    train_windows = window_scores(vec_scores, data, train_idx, profile.vectors)
    fold = np.concatenate([folds(own, profile), np.full(n - own.vectors.shape[0], -1)])
    method = cfg.threshold_method or ("max" if profile.name == "amulet-v1" else "recordings")
    if method == "recordings" and np.unique(fold[fold >= 0]).size < 2:
        _LOGGER.warning(
            "%.1f s of audio in one file is too short to hold out stretches of it: the threshold "
            "comes from held-out windows (gamma) instead",
            data.seconds,
        )
        method = "gamma"
    if method == "recordings":
        oof = out_of_fold(cfg, arch, profile, data, fold)
        mine = slice(0, own.vectors.shape[0])
        held = calibrate.recordings(own, fold[mine], profile.vectors, oof[mine])
        hop_seconds = profile.hop_vectors * profile.step / profile.rate
        levels = [
            calibrate.alert_level(h.scores, profile.hop_vectors, hop_seconds, DetectorSettings())
            for h in held
        ]
        thr, how = calibrate.threshold(levels, cfg.quantile)
        how["over"] = "files" if data.counts.size > 1 else "stretches of one file"
        held_windows = np.concatenate([h.scores for h in held]).astype(np.float32)
        _LOGGER.info("threshold %.6g: %s", thr, calibrate.describe(thr, how))
    else:
        over = "held-out windows"
        if method == "gamma" and held_windows.size < threshold.MIN_FIT:
            _LOGGER.info(
                "only %d window(s) held out: the threshold comes from out-of-fold scores "
                "instead (%d models, each fitted without one part of the audio, score that part)",
                held_windows.size,
                FOLDS,
            )
            parts = np.asarray((np.arange(n) * FOLDS) // n, np.int64)  # contiguous, any length
            oof = out_of_fold(cfg, arch, profile, data, parts)
            held_windows = window_scores(oof, data, np.arange(n), profile.vectors)
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
        "input_level_dbfs": train_levels.input_levels(cfg),
        **train_levels.level(data, profile, fold),
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
    outdir.save_atomic(proto, model_path)
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
