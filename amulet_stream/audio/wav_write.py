"""WAV files written: 16-bit PCM at once or streamed, float32 streamed with its header patched
at the end (recordings and evidence clips)."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from amulet_stream.audio.wav import FLOAT, PCM, WavError


def write_wav(path: Path, samples: npt.NDArray[np.floating], rate: int) -> None:
    """Write mono or (frames, channels) samples in [-1, 1] as 16-bit PCM."""
    data = np.asarray(samples, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    ints = np.clip(np.round(data * 32767.0), -32768, 32767).astype("<i2")
    channels = data.shape[1]
    payload = ints.tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE"
    header += b"fmt " + struct.pack(
        "<IHHIIHH", 16, PCM, channels, rate, rate * channels * 2, channels * 2, 16
    )
    header += b"data" + struct.pack("<I", len(payload))
    path.write_bytes(header + payload)


def write_wav_blocks(path: Path, blocks: Iterable[npt.NDArray[np.floating]], rate: int) -> int:
    """Write mono blocks in [-1, 1] as one 16-bit PCM wav, streamed: the same bytes as
    write_wav of their concatenation, in bounded memory. Return the frames written."""
    frames = 0
    with path.open("wb") as fh:
        fh.seek(44)
        for block in blocks:
            data = np.asarray(block, dtype=np.float64)
            if data.ndim != 1:
                raise ValueError(f"write_wav_blocks takes mono blocks, got shape {data.shape}")
            if (frames + data.size) * 2 > 0xFFFFFFFF - 36:
                raise WavError(f"{path}: wav data limit of 4 GiB reached")
            fh.write(np.clip(np.round(data * 32767.0), -32768, 32767).astype("<i2").tobytes())
            frames += data.size
        header = b"RIFF" + struct.pack("<I", 36 + 2 * frames) + b"WAVE"
        header += b"fmt " + struct.pack("<IHHIIHH", 16, PCM, 1, rate, rate * 2, 2, 16)
        header += b"data" + struct.pack("<I", 2 * frames)
        fh.seek(0)
        fh.write(header)
    return frames


_FLOAT_HEADER_BYTES = 58
"""RIFF/WAVE + 18-byte fmt chunk + fact chunk + data chunk header."""
MAX_DATA_BYTES = 0xFFFFFFFF - (_FLOAT_HEADER_BYTES - 8)
"""Largest data chunk a RIFF wav can announce (about 4 GiB)."""


class FloatWavWriter:
    """Streams float32 samples into an IEEE-float (format 3) wav on a seekable binary file.

    write() appends blocks; finish() writes the final sizes into the header. The sizes come
    from the file position, so a write cut short (Ctrl-C) still leaves a consistent file."""

    def __init__(self, fh: BinaryIO, rate: int, channels: int = 1) -> None:
        if rate < 1 or channels < 1:
            raise ValueError(f"rate {rate} Hz and channels {channels} must be positive")
        self._fh = fh
        self.rate = rate
        self.channels = channels
        self._frame_bytes = 4 * channels
        self._start = fh.tell()
        fh.write(self._header(0))
        self._data_start = fh.tell()
        self._bytes = 0

    def _header(self, data_bytes: int) -> bytes:
        """The 58-byte header for `data_bytes` bytes of samples."""
        fb = self._frame_bytes
        fmt = struct.pack("<HHIIHHH", FLOAT, self.channels, self.rate, self.rate * fb, fb, 32, 0)
        return (
            b"RIFF"
            + struct.pack("<I", _FLOAT_HEADER_BYTES - 8 + data_bytes)
            + b"WAVE"
            + b"fmt "
            + struct.pack("<I", len(fmt))
            + fmt
            + b"fact"
            + struct.pack("<II", 4, data_bytes // fb)
            + b"data"
            + struct.pack("<I", data_bytes)
        )

    @property
    def frames(self) -> int:
        """Sample frames written so far."""
        return self._bytes // self._frame_bytes

    def write(self, samples: npt.NDArray[np.float32]) -> None:
        """Append float32 (frames,) mono or (frames, channels) samples, bit for bit."""
        data = np.ascontiguousarray(samples, dtype="<f4")
        if data.ndim == 1:
            data = data[:, None]
        if data.ndim != 2 or data.shape[1] != self.channels:
            raise ValueError(f"expected (frames, {self.channels}) samples, got {data.shape}")
        if self._bytes + data.nbytes > MAX_DATA_BYTES:
            raise WavError(f"wav data limit of {MAX_DATA_BYTES} bytes reached")
        self._fh.write(data.tobytes())
        self._bytes += data.nbytes

    def finish(self) -> int:
        """Drop a partial last frame, write the final header and flush; return the frames."""
        end = self._fh.seek(0, 2)
        data_bytes = end - self._data_start
        data_bytes -= data_bytes % self._frame_bytes
        self._fh.truncate(self._data_start + data_bytes)
        self._fh.seek(self._start)
        self._fh.write(self._header(data_bytes))
        self._fh.seek(self._data_start + data_bytes)
        self._fh.flush()
        self._bytes = data_bytes
        return self.frames
