"""Keras autoencoders and the scoring wrapper that becomes the ONNX graph."""

from __future__ import annotations

import keras
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


def amulet_lstm(dim: int, activation: str = "relu", recurrent: str = "sigmoid") -> keras.Model:
    """AMULET's LSTM autoencoder 16-4-4-16 with timesteps 1: (N, D) -> (N, D) reconstruction."""
    inp = keras.Input((dim,))
    x = keras.layers.Reshape((1, dim))(inp)
    for units, seq in ((16, True), (4, False)):
        x = keras.layers.LSTM(
            units, activation=activation, recurrent_activation=recurrent, return_sequences=seq
        )(x)
    x = keras.layers.RepeatVector(1)(x)
    for units in (4, 16):
        x = keras.layers.LSTM(
            units, activation=activation, recurrent_activation=recurrent, return_sequences=True
        )(x)
    x = keras.layers.TimeDistributed(keras.layers.Dense(dim))(x)
    return keras.Model(inp, keras.layers.Reshape((dim,))(x), name="amulet_lstm")


def dense_ae(dim: int, widths: tuple[int, ...] = (128, 64, 16, 64, 128)) -> keras.Model:
    """Dense autoencoder over stacked log-mel frames (DCASE task 2 baseline, smaller)."""
    inp = keras.Input((dim,))
    x = inp
    for width in widths:
        x = keras.layers.Dense(width, activation="relu")(x)
    return keras.Model(inp, keras.layers.Dense(dim)(x), name="dense_ae")


def lstm_frames(dim: int, stack: int, units: int = 64) -> keras.Model:
    """LSTM autoencoder over a vector's `stack` frames: (N, D) -> (N, D) reconstruction."""
    per = dim // stack
    inp = keras.Input((dim,))
    x = keras.layers.Reshape((stack, per))(inp)
    x = keras.layers.LSTM(units)(x)
    x = keras.layers.RepeatVector(stack)(x)
    x = keras.layers.LSTM(units, return_sequences=True)(x)
    x = keras.layers.TimeDistributed(keras.layers.Dense(per))(x)
    return keras.Model(inp, keras.layers.Reshape((dim,))(x), name="lstm_frames")


def core_for(architecture: str, dim: int, stack: int) -> keras.Model:
    """The Keras autoencoder of an architecture name."""
    if architecture == "lstm":
        return amulet_lstm(dim)
    if architecture == "lstm-frames":
        return lstm_frames(dim, stack)
    return dense_ae(dim)


class Affine(keras.layers.Layer):  # type: ignore[misc]
    """x * scale + bias with frozen per-feature constants: the scaler inside the graph."""

    def __init__(self, scale: F32, bias: F32, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._init = (scale.astype(np.float32), bias.astype(np.float32))

    def build(self, input_shape: object) -> None:
        scale, bias = self._init
        self.scale = self.add_weight(
            shape=scale.shape,
            trainable=False,
            name="scale",
            initializer=keras.initializers.Constant(scale),
        )
        self.bias = self.add_weight(
            shape=bias.shape,
            trainable=False,
            name="bias",
            initializer=keras.initializers.Constant(bias),
        )

    def call(self, x: object) -> object:
        return x * self.scale + self.bias


def scorer(core: keras.Model, scale: F32, bias: F32) -> keras.Model:
    """Raw features (N, D) -> score (N,): MAE between scaled input and its reconstruction."""
    inp = keras.Input((scale.size,), name="features")
    scaled = Affine(scale, bias, name="scaler")(inp)
    recon = core(scaled)
    score = keras.ops.mean(keras.ops.abs(recon - scaled), axis=1)
    return keras.Model(inp, score, name="amulet_scorer")


def explainer(core: keras.Model, scale: F32, bias: F32) -> keras.Model:
    """The scorer with a second output: raw features (N, D) -> [score (N,), residual (N, D)],
    each feature's deviation from its reconstruction in the feature's own units (dB)."""
    inp = keras.Input((scale.size,), name="features")
    scaled = Affine(scale, bias, name="scaler")(inp)
    recon = core(scaled)
    score = keras.ops.mean(keras.ops.abs(recon - scaled), axis=1)
    residual = (scaled - recon) * (1.0 / scale).astype(np.float32)
    return keras.Model(inp, [score, residual], name="amulet_explainer")
