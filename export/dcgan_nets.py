"""DCGAN generator and discriminator, and their adversarial training on images (N, 20, 44, 3)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from .dcgan_images import HEIGHT, WIDTH, images

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

NOISE = 100
BATCH = 64
LR_D, LR_G, BETA1 = 2e-5, 2e-4, 0.5
BN_EPSILON = 0.005
INIT_STDDEV = 0.02
LEAK = 0.2
"""tf.nn.leaky_relu's default slope, which AMULET used (Keras' default is 0.3)."""


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
