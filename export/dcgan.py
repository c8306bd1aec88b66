"""AMULET's DCGAN comparison model: per-second MFCC images, generator, discriminator, ONNX scorers.

Rebuilt from AMULET's create_database.py / train_dcgan.py / evaluate_dcgan.py (the recipe in
data/amulet-seed/DCGAN.md). Each whole second is one feature vector of the `mfcc-image-v1`
profile: its 20 x 44 MFCC matrix. The networks see it as matplotlib's imsave wrote it: min-max
normalised per image, 256 viridis colours, RGB bytes scaled to [-1, 1] (20 x 44 x 3). Two
scoring rules become two self-describing ONNX models, `features (N, 880) -> score (N,)`:

- `amulet` (dcgan-amulet-rule): AMULET's own rule, the largest absolute grey-pixel difference
  between the input's image and one generated sample (fixed at export: AMULET drew a random
  sample each time, which no two runs reproduce); threshold the largest such difference over
  the healthy training seconds.
- `discriminator` (dcgan-discriminator): 1 - D(image); threshold a gamma fit to held-out seconds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

from amulet_stream.scoring.features import MFCC_IMAGE_V1, Profile

from . import dataset, onnx_io, outdir, threshold
from .dcgan_images import GREY, amulet_scores, images, sample_grey
from .dcgan_nets import (
    BATCH,
    BETA1,
    BN_EPSILON,
    INIT_STDDEV,
    LEAK,
    LR_D,
    LR_G,
    NOISE,
    Gan,
    calibrate,
    discriminator_scores,
    fit,
)
from .dcgan_onnx import amulet_graph, discriminator_graph
from .errors import InputError
from .train_data import HOLD_OUT, split

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

RULES = {"amulet": "dcgan-amulet-rule", "discriminator": "dcgan-discriminator"}
"""Scoring rule -> evaluation row name."""
DEFAULT_EPOCHS = 60
"""Measured on 2 CPU cores: 2 min for 336 training seconds (5 batches, about 1.9 s per epoch),
20 s for 72 (1 batch, about 0.33 s per epoch). AMULET trained 750 epochs."""


def _generated_sample(gan: Gan) -> F32:
    """One generated image (20, 44, 3) in [-1, 1] from z drawn with the training seed."""
    z = np.random.default_rng(gan.seed).uniform(-1, 1, (1, NOISE)).astype(np.float32)
    sample: F32 = np.asarray(gan.generator(z, training=False), np.float32)[0]
    return sample


def export(
    gan: Gan, data: dataset.Dataset, train_idx: I64, held_idx: I64, rule: str, out_dir: Path
) -> Path:
    """Score every second with `rule`, choose the threshold, write OUT/model.onnx; return it."""
    x = data.vectors
    if rule == "amulet":
        grey = sample_grey(_generated_sample(gan))
        scores, proto, method = amulet_scores(x, grey), amulet_graph(grey), "max"
        score_doc = (
            "largest absolute difference between the grey image of the second's MFCC matrix "
            "and that of one generated sample fixed at export (AMULET's rule; AMULET drew a "
            "random sample each time)"
        )
        note = "AMULET took one training image against one sample; here every healthy second"
    elif rule == "discriminator":
        calibrate(gan.discriminator, images(x[train_idx]))
        scores = discriminator_scores(gan.discriminator, x)
        proto, method = discriminator_graph(gan.discriminator), "gamma"
        score_doc = "1 - D(image): the discriminator's doubt that the second is healthy audio"
        note = "batch norm statistics of the real training images"
    else:
        raise ValueError(f"unknown DCGAN scoring rule {rule!r} (known: {', '.join(RULES)})")
    thr, how = threshold.choose(method, scores[held_idx], scores[train_idx], 0.99)
    _LOGGER.info("%s: threshold %.6g: %s", RULES[rule], thr, threshold.describe(how))
    diff = onnx_io.check_parity(proto, scores, x)
    _LOGGER.info("%s: ONNX parity on %d vectors: %.2e", RULES[rule], x.shape[0], diff)
    training = {
        "files": data.files,
        "seconds": round(data.seconds, 3),
        "images": int(train_idx.size),
        "held_out_images": int(held_idx.size),
        "held_out": f"the last {round(100 * HOLD_OUT)} % of each file",
        "epochs": gan.epochs,
        "batch_size": gan.batch,
        "seed": gan.seed,
        "d_loss": gan.d_loss[-1] if gan.d_loss else None,
        "g_loss": gan.g_loss[-1] if gan.g_loss else None,
        "seconds_taken": round(gan.seconds, 2),
    }
    doc = {
        "profile": MFCC_IMAGE_V1.to_dict(),
        "architecture": RULES[rule],
        "threshold": thr,
        "threshold_method": method,
        "threshold_details": {**how, "note": note},
        "score": score_doc,
        "image": "per-second MFCC min-max normalised to 256 viridis colours (matplotlib imsave)",
        "dcgan": {
            "noise": NOISE,
            "lr_d": LR_D,
            "lr_g": LR_G,
            "beta1": BETA1,
            "bn_epsilon": BN_EPSILON,
            "init_stddev": INIT_STDDEV,
            "leaky_relu": LEAK,
            "grey_weights": GREY.tolist(),
        },
        "train_scores": {
            "training": threshold.distribution(scores[train_idx]),
            "held_out": threshold.distribution(scores[held_idx]),
        },
        "fingerprint": data.fingerprint,
        "training": training,
        "versions": onnx_io.versions(),
        "parity": onnx_io.parity_doc(x, scores, diff),
    }
    onnx_io.attach(proto, doc)
    path = out_dir / "model.onnx"
    outdir.save_atomic(proto, path)
    summary = {k: doc[k] for k in ("architecture", "threshold", "threshold_method", "training")}
    summary |= {"train_scores": doc["train_scores"], "parity_max_abs_diff": diff}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path


def train_dcgan_rules(
    train_wavs: list[Path],
    out_dirs: dict[str, Path],
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 10,
) -> dict[str, Path]:
    """Train one DCGAN on healthy wavs and export one model per rule ({rule: OUT}) ->
    {rule: OUT/model.onnx}. Raises InputError on unusable audio or output folders."""
    unknown = sorted(set(out_dirs) - set(RULES))
    if unknown:
        raise ValueError(f"unknown DCGAN scoring rule(s) {unknown} (known: {', '.join(RULES)})")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    for out in out_dirs.values():
        if out.exists() and not out.is_dir():
            raise InputError(f"{out}: exists and is not a folder")
    profile: Profile = MFCC_IMAGE_V1
    data = dataset.load(train_wavs, profile)
    train_idx, held_idx = split(data, profile)
    if train_idx.size < 2:
        raise InputError(
            f"{train_wavs[0]}: too little audio for the DCGAN: {train_idx.size} whole second(s) "
            f"left to train on after holding out the last {round(100 * HOLD_OUT)} % of each file"
        )
    _LOGGER.info(
        "DCGAN: %d one-second images train, %d are held out; %d epochs of %d batches",
        train_idx.size,
        held_idx.size,
        epochs,
        train_idx.size // min(BATCH, train_idx.size),
    )
    gan = fit(images(data.vectors[train_idx]), epochs, seed)
    paths = {}
    for rule, out in out_dirs.items():
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"{out}: cannot write output: {err.strerror or err}") from err
        paths[rule] = export(gan, data, train_idx, held_idx, rule, out)
    return paths


def train_dcgan(
    train_wavs: list[Path],
    out_dir: Path,
    *,
    rule: str = "amulet",
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 10,
) -> Path:
    """Healthy wav files -> OUT/model.onnx scoring each second with `rule` ('amulet':
    AMULET's grey-difference rule, 'discriminator': 1 - D)."""
    return train_dcgan_rules(train_wavs, {rule: out_dir}, epochs=epochs, seed=seed)[rule]
