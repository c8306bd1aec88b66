"""Wav file as a stream: blocks of mono float32 samples at the model's rate."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from .resample import StreamResampler
from .wav import WavInfo, iter_blocks, select_channel

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


def iter_mono(
    info: WavInfo, rate: int, channel: int | None = None, block_frames: int = 65536
) -> Iterator[F32]:
    """Yield float32 mono blocks of `info`'s audio resampled to `rate` Hz (down-mix if None)."""
    if channel is not None and channel >= info.channels:
        raise ValueError(
            f"{info.path}: channel {channel} does not exist ({info.channels} channels)"
        )
    resampler = StreamResampler(info.rate, rate)
    if not resampler.passthrough:
        _LOGGER.info("%s: resampling %d Hz -> %d Hz", info.path, info.rate, rate)
    for block in iter_blocks(info, block_frames):
        out = resampler.process(select_channel(block, channel))
        if out.size:
            yield out
    tail = resampler.flush()
    if tail.size:
        yield tail
