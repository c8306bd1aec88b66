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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import matplotlib
import numpy as np
import numpy.typing as npt
import onnx
import tensorflow as tf
import tf2onnx
from onnx import TensorProto, helper, numpy_helper

from amulet_stream.scoring.features import MFCC_IMAGE_V1, Profile
from amulet_stream.scoring.model import INPUT_NAME, OUTPUT_NAME

from . import dataset, onnx_io, threshold
from .errors import InputError
from .train import HOLD_OUT, _split

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

RULES = {"amulet": "dcgan-amulet-rule", "discriminator": "dcgan-discriminator"}
"""Scoring rule -> evaluation row name."""
HEIGHT, WIDTH = MFCC_IMAGE_V1.n_mfcc, MFCC_IMAGE_V1.image_columns
NOISE = 100
BATCH = 64
LR_D, LR_G, BETA1 = 2e-5, 2e-4, 0.5
BN_EPSILON = 0.005
INIT_STDDEV = 0.02
LEAK = 0.2
"""tf.nn.leaky_relu's default slope, which AMULET used (Keras' default is 0.3)."""
GREY = np.array([0.2125, 0.7154, 0.0721])
"""skimage.color.rgb2gray's weights (ITU-R BT.709), AMULET's grey conversion."""
DEFAULT_EPOCHS = 60
"""Measured on 2 CPU cores: 2 min for 336 training seconds (5 batches, about 1.9 s per epoch),
20 s for 72 (1 batch, about 0.33 s per epoch). AMULET trained 750 epochs."""
OPSET = onnx_io.OPSET


def viridis_bytes() -> U8:
    """matplotlib's default colour map as imsave writes it: (256, 3) uint8 RGB."""
    cmap = matplotlib.colormaps["viridis"]
    return np.asarray(cmap(np.arange(cmap.N), bytes=True)[:, :3], np.uint8)


def colour_index(features: F32) -> I64:
    """Colour of each MFCC value, (N, 880) float32 -> (N, 880) int64 in 0..255: per-image
    min-max and 256 levels in float32, exactly as matplotlib's Normalize and Colormap."""
    x = features.astype(np.float32)
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    span = hi - lo
    unit = (x - lo) / np.where(span == 0, np.float32(1), span)
    index: I64 = np.minimum(np.floor(unit * np.float32(256)), 255).astype(np.int64)
    return index


def images(features: F32) -> F32:
    """The network's input: (N, 880) -> (N, 20, 44, 3) float32 RGB in [-1, 1]."""
    rgb = viridis_bytes()[colour_index(features)]
    return np.asarray(rgb.reshape(-1, HEIGHT, WIDTH, 3) / 127.5 - 1.0, np.float32)


def grey_table() -> F32:
    """Grey level of each viridis colour, (256,) float32 in [0, 1], as rgb2gray of the bytes."""
    return np.asarray(viridis_bytes() / 255.0 @ GREY, np.float32)


def sample_grey(sample: F32) -> F32:
    """Grey image (880,) of a generated sample (20, 44, 3) in [-1, 1], saved as AMULET did:
    uint8 of (x + 1) * 127.5, then rgb2gray."""
    saved = ((sample.astype(np.float64) + 1.0) * 127.5).astype(np.uint8)
    return np.asarray(saved.reshape(-1, 3) / 255.0 @ GREY, np.float32)


def amulet_scores(features: F32, grey_sample: F32) -> F32:
    """AMULET's rule: largest |grey pixel - grey sample pixel| of each image, (N, 880) -> (N,)."""
    grey = grey_table()[colour_index(features)]
    return np.asarray(np.abs(grey - grey_sample).max(axis=1), np.float32)


def _init() -> keras.initializers.Initializer:
    return keras.initializers.TruncatedNormal(stddev=INIT_STDDEV)


def generator() -> keras.Model:
    """z (N, 100) uniform in [-1, 1] -> image (N, 20, 44, 3) in [-1, 1]."""
    z = keras.Input((NOISE,))
    x = keras.layers.Dense(5 * 11 * 256)(z)
    x = keras.layers.LeakyReLU(LEAK)(keras.layers.Reshape((5, 11, 256))(x))
    for filters in (128, 64):
        x = keras.layers.Conv2DTranspose(filters, 5, 2, "same", kernel_initializer=_init())(x)
        x = keras.layers.BatchNormalization(epsilon=BN_EPSILON)(x)
        x = keras.layers.LeakyReLU(LEAK)(x)
    x = keras.layers.Conv2DTranspose(3, 5, 1, "same", kernel_initializer=_init())(x)
    return keras.Model(z, keras.layers.Activation("tanh")(x), name="dcgan_generator")


def discriminator() -> keras.Model:
    """Image (N, 20, 44, 3) -> logit (N, 1); D(x) = sigmoid(logit), 1 for real."""
    img = keras.Input((HEIGHT, WIDTH, 3))
    x = img
    for filters in (64, 128):
        x = keras.layers.Conv2D(filters, 5, 2, "same", kernel_initializer=_init())(x)
        x = keras.layers.BatchNormalization(epsilon=BN_EPSILON)(x)
        x = keras.layers.LeakyReLU(LEAK)(x)
    logit = keras.layers.Dense(1)(keras.layers.Flatten()(x))
    return keras.Model(img, logit, name="dcgan_discriminator")


@dataclass
class Gan:
    """A trained generator and discriminator, with what training did."""

    generator: keras.Model
    discriminator: keras.Model
    epochs: int
    seed: int
    batch: int
    d_loss: list[float] = field(default_factory=list)
    """Mean discriminator loss per epoch."""
    g_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _step_fn(gan: Gan) -> Callable[..., tuple[Any, Any]]:
    """One discriminator then one generator Adam step on a batch, as a tf.function."""
    gen, disc = gan.generator, gan.discriminator
    d_opt = keras.optimizers.Adam(LR_D, beta_1=BETA1, epsilon=1e-8)
    g_opt = keras.optimizers.Adam(LR_G, beta_1=BETA1, epsilon=1e-8)
    d_opt.build(disc.trainable_variables)
    g_opt.build(gen.trainable_variables)
    bce = tf.nn.sigmoid_cross_entropy_with_logits

    def step(real: Any, z: Any, label: Any) -> tuple[Any, Any]:
        # G is unchanged by the D step, so one forward pass of G serves both steps
        with tf.GradientTape() as g_tape:
            fake = gen(z, training=True)
            with tf.GradientTape() as d_tape:
                real_logit = disc(real, training=True)
                fake_logit = disc(tf.stop_gradient(fake), training=True)
                real_labels = tf.fill(tf.shape(real_logit), label)
                d_loss = 0.5 * (
                    tf.reduce_mean(bce(labels=real_labels, logits=real_logit))
                    + tf.reduce_mean(bce(labels=tf.zeros_like(fake_logit), logits=fake_logit))
                )
            grads = d_tape.gradient(d_loss, disc.trainable_variables)
            d_opt.apply_gradients(zip(grads, disc.trainable_variables, strict=True))
            logit = disc(fake, training=True)
            g_loss = tf.reduce_mean(bce(labels=tf.ones_like(logit), logits=logit))
        grads = g_tape.gradient(g_loss, gen.trainable_variables)
        g_opt.apply_gradients(zip(grads, gen.trainable_variables, strict=True))
        return d_loss, g_loss

    compiled: Callable[..., tuple[Any, Any]] = tf.function(step)
    return compiled


def fit(real: F32, epochs: int, seed: int = 10) -> Gan:
    """Train on real images (N, 20, 44, 3) in [-1, 1] for `epochs` passes of N // 64 batches.

    Each batch: random horizontal flips, Gaussian noise of a random stddev in [0, 0.1] on
    the real images, real labels smoothed to one U(0.9, 1) value, then one D and one G step."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(seed)
    gan = Gan(generator(), discriminator(), epochs, seed, min(BATCH, real.shape[0]))
    step = _step_fn(gan)
    batches = real.shape[0] // gan.batch
    t0 = time.monotonic()
    for epoch in range(epochs):
        order = rng.permutation(real.shape[0])
        losses = []
        for b in range(batches):
            x = real[order[b * gan.batch : (b + 1) * gan.batch]].copy()
            flip = rng.random(gan.batch) < 0.5
            x[flip] = x[flip, :, ::-1]
            x += rng.standard_normal(x.shape).astype(np.float32) * np.float32(rng.uniform(0, 0.1))
            z = rng.uniform(-1, 1, (gan.batch, NOISE)).astype(np.float32)
            label = np.float32(rng.uniform(0.9, 1.0))
            losses.append([float(v) for v in step(x, z, label)])
        gan.d_loss.append(float(np.mean([v[0] for v in losses])))
        gan.g_loss.append(float(np.mean([v[1] for v in losses])))
        level = logging.INFO if (epoch + 1) % max(1, epochs // 10) == 0 else logging.DEBUG
        _LOGGER.log(
            level,
            "epoch %d/%d  D loss %.4f  G loss %.4f  (%.1f s so far)",
            epoch + 1,
            epochs,
            gan.d_loss[-1],
            gan.g_loss[-1],
            time.monotonic() - t0,
        )
    gan.seconds = time.monotonic() - t0
    return gan


def calibrate(disc: keras.Model, real: F32) -> None:
    """Set each batch norm's inference statistics to those of the real images (N, 20, 44, 3).

    AMULET's discriminator always normalised with the statistics of the batch it was given
    (batch norm in training mode, batches of real images); these make D(x) of one image
    independent of the others scored with it."""
    for layer in disc.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            inputs = keras.Model(disc.input, layer.input)(real, training=False)
            x = np.asarray(inputs, np.float64).reshape(-1, layer.moving_mean.shape[0])
            layer.moving_mean.assign(x.mean(axis=0).astype(np.float32))
            layer.moving_variance.assign(x.var(axis=0).astype(np.float32))


def discriminator_scores(disc: keras.Model, features: F32) -> F32:
    """1 - D(image) of each vector, (N, 880) -> (N,) float32 (Keras, inference mode)."""
    logit = disc.predict(images(features), batch_size=256, verbose=0)
    return np.asarray(1.0 - keras.ops.sigmoid(logit), np.float32).reshape(-1)


def _colour_nodes(table: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Nodes features (N, 880) -> Gather(table, colour index) as colour_index() computes it."""
    nodes = [
        helper.make_node("ReduceMin", [INPUT_NAME], ["c/lo"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", [INPUT_NAME], ["c/hi"], axes=[1], keepdims=1),
        helper.make_node("Sub", [INPUT_NAME, "c/lo"], ["c/shifted"]),
        helper.make_node("Sub", ["c/hi", "c/lo"], ["c/span"]),
        helper.make_node("Equal", ["c/span", "c/zero"], ["c/flat"]),
        helper.make_node("Where", ["c/flat", "c/one", "c/span"], ["c/span_safe"]),
        helper.make_node("Div", ["c/shifted", "c/span_safe"], ["c/unit"]),
        helper.make_node("Mul", ["c/unit", "c/levels"], ["c/scaled"]),
        helper.make_node("Floor", ["c/scaled"], ["c/floor"]),
        helper.make_node("Min", ["c/floor", "c/top"], ["c/level"]),
        helper.make_node("Cast", ["c/level"], ["c/index"], to=TensorProto.INT64),
        helper.make_node("Gather", [table, "c/index"], ["c/colour"], axis=0),
    ]
    consts = {"c/zero": 0.0, "c/one": 1.0, "c/levels": 256.0, "c/top": 255.0}
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    return nodes, inits, "c/colour"


def _features_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", HEIGHT * WIDTH])


def amulet_graph(grey_sample: F32) -> onnx.ModelProto:
    """features (N, 880) -> score (N,): largest |grey(image) - grey_sample| per image."""
    nodes, inits, colour = _colour_nodes("grey_table")
    nodes += [
        helper.make_node("Sub", [colour, "grey_sample"], ["diff"]),
        helper.make_node("Abs", ["diff"], ["abs_diff"]),
        helper.make_node("ReduceMax", ["abs_diff"], [OUTPUT_NAME], axes=[1], keepdims=0),
    ]
    inits += [
        numpy_helper.from_array(grey_table(), "grey_table"),
        numpy_helper.from_array(grey_sample.astype(np.float32), "grey_sample"),
    ]
    graph = helper.make_graph(
        nodes,
        "dcgan_amulet_rule",
        [_features_input()],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def discriminator_graph(disc: keras.Model) -> onnx.ModelProto:
    """features (N, 880) -> score (N,): 1 - D(image), the image built in the graph."""
    fn = tf.function(
        lambda image: {OUTPUT_NAME: 1.0 - tf.reshape(tf.sigmoid(disc(image, training=False)), [-1])}
    )
    spec = (tf.TensorSpec((None, HEIGHT, WIDTH, 3), tf.float32, name="image"),)
    body, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=OPSET)
    nodes, inits, colour = _colour_nodes("rgb_table")
    nodes.append(helper.make_node("Reshape", [colour, "image_shape"], ["image"]))
    inits += [
        numpy_helper.from_array((viridis_bytes() / 127.5 - 1.0).astype(np.float32), "rgb_table"),
        numpy_helper.from_array(np.array([-1, HEIGHT, WIDTH, 3], np.int64), "image_shape"),
    ]
    graph = helper.make_graph(
        nodes + list(body.graph.node),
        "dcgan_discriminator",
        [_features_input()],
        list(body.graph.output),
        inits + list(body.graph.initializer),
        value_info=list(body.graph.value_info),
    )
    proto = helper.make_model(graph, opset_imports=list(body.opset_import))
    proto.ir_version = body.ir_version
    onnx.checker.check_model(proto)
    return proto


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
    onnx_io.save_atomic(proto, path)
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
    train_idx, held_idx = _split(data, profile)
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
