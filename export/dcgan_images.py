"""DCGAN input images: MFCC vectors (N, 880) as imsave's viridis colours, RGB and grey."""

from __future__ import annotations

import matplotlib
import numpy as np
import numpy.typing as npt

from amulet_stream.scoring.features import MFCC_IMAGE_V1

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

HEIGHT, WIDTH = MFCC_IMAGE_V1.n_mfcc, MFCC_IMAGE_V1.image_columns
GREY = np.array([0.2125, 0.7154, 0.0721])
"""skimage.color.rgb2gray's weights (ITU-R BT.709), AMULET's grey conversion."""


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
