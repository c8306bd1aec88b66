"""WAV files: reading in blocks (PCM 8/16/24/32-bit and IEEE float, any rate and channel count),
writing 16-bit PCM at once or float32 streamed."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

_LOGGER = logging.getLogger(__name__)

_PCM = 1
_FLOAT = 3
_EXTENSIBLE = 0xFFFE
RATES = (1000, 768000)
"""Sample rates (Hz) a wav may have: anything outside is a corrupt or hostile header."""
MAX_CHANNELS = 256
MAX_FMT_BYTES = 1024
"""A fmt chunk is 16 to 40 bytes; a larger size field is not trusted (nor allocated)."""
STREAMED = (0, 0xFFFFFFFF)
"""Data sizes that programs writing a wav to a pipe leave in the header: read to the end."""


class WavError(ValueError):
    """A wav file that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class WavInfo:
    """Header of a wav file."""

    path: Path
    rate: int
    """Samples per second per channel."""
    channels: int
    bits: int
    is_float: bool
    frames: int
    """Number of sample frames in the data chunk (all channels)."""
    data_offset: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.rate


def read_info(path: Path) -> WavInfo:
    """Parse and validate the header of `path`; raise WavError naming the problem."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            return _parse(path, fh, size)
    except FileNotFoundError as err:
        raise WavError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise WavError(f"{path}: is a directory, not a wav file") from err
    except PermissionError as err:
        raise WavError(f"{path}: permission denied") from err


FOREIGN = (
    (b"fLaC", "FLAC"),
    (b"OggS", "Ogg"),
    (b"ID3", "MP3"),
    (b"\xff\xfb", "MP3"),
    (b"FORM", "AIFF"),
)
"""Magic numbers of audio files people rename to .wav: named in the error, with a hint."""


def _parse(path: Path, fh: BinaryIO, size: int) -> WavInfo:
    if size == 0:
        raise WavError(f"{path}: empty file")
    head = fh.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        other = next((name for magic, name in FOREIGN if head.startswith(magic)), None)
        if other is not None:
            raise WavError(
                f"{path}: a {other} file, not a wav: convert it first "
                f"(e.g. sox {path.name} {path.stem}-converted.wav)"
            )
        raise WavError(f"{path}: not a wav file (no RIFF/WAVE header)")
    fmt: tuple[int, int, int, int] | None = None
    while True:
        chunk = fh.read(8)
        if len(chunk) < 8:
            raise WavError(f"{path}: truncated or corrupt: no data chunk")
        cid, clen = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"fmt ":
            if not 16 <= clen <= min(MAX_FMT_BYTES, size - fh.tell()):
                raise WavError(f"{path}: corrupt fmt chunk (size {clen})")
            body = fh.read(clen)
            if len(body) < 16:
                raise WavError(f"{path}: corrupt fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, channels, rate, bits)
            fh.seek(clen & 1, 1)
        elif cid == b"data":
            if fmt is None:
                raise WavError(f"{path}: corrupt: data chunk before fmt chunk")
            offset = fh.tell()
            break
        else:
            fh.seek(clen + (clen & 1), 1)
    tag, channels, rate, bits = fmt
    if tag not in (_PCM, _FLOAT):
        raise WavError(f"{path}: unsupported encoding (format tag {tag:#x}); use PCM or float")
    if (tag == _PCM and bits not in (8, 16, 24, 32)) or (tag == _FLOAT and bits not in (32, 64)):
        raise WavError(f"{path}: unsupported sample size {bits} bits")
    if not 1 <= channels <= MAX_CHANNELS:
        raise WavError(f"{path}: corrupt header ({channels} channels)")
    if not RATES[0] <= rate <= RATES[1]:
        raise WavError(
            f"{path}: sample rate {rate} Hz is outside {RATES[0]} to {RATES[1]} Hz "
            "(a corrupt header?)"
        )
    frame_bytes = channels * bits // 8
    available = size - offset
    if clen in STREAMED:  # written to a pipe: the size was never filled in
        _LOGGER.info(
            "%s: data size %#x in the header (a streamed wav): reading to the end", path, clen
        )
        clen = available
    elif clen > available:
        _LOGGER.warning(
            "%s: truncated: the header announces %d data bytes, the file holds %d; "
            "reading what is there",
            path,
            clen,
            available,
        )
        clen = available
    frames = clen // frame_bytes
    if frames == 0:
        raise WavError(f"{path}: empty file (no samples)")
    return WavInfo(path, rate, channels, bits, tag == _FLOAT, frames, offset)


def _decode(raw: bytes, info: WavInfo) -> npt.NDArray[np.float32]:
    """Bytes to float32 (frames, channels) in [-1, 1] for PCM."""
    if info.is_float:
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: +-inf (integrity's)
            data = np.frombuffer(raw, dtype="<f4" if info.bits == 32 else "<f8").astype(np.float32)
    elif info.bits == 8:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif info.bits == 16:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif info.bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8
        data = ints.astype(np.float32) / 8388608.0
    else:
        data = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0).astype(
            np.float32
        )
    return data.reshape(-1, info.channels)


def iter_blocks(info: WavInfo, block_frames: int = 65536) -> Iterator[npt.NDArray[np.float32]]:
    """Yield float32 (frames, channels) blocks of at most `block_frames` frames."""
    frame_bytes = info.channels * info.bits // 8
    left = info.frames
    with info.path.open("rb") as fh:
        fh.seek(info.data_offset)
        while left > 0:
            n = min(block_frames, left)
            raw = fh.read(n * frame_bytes)
            if len(raw) < n * frame_bytes:
                raise WavError(f"{info.path}: truncated while reading")
            left -= n
            yield _decode(raw, info)


def select_channel(block: npt.NDArray[np.float32], channel: int | None) -> npt.NDArray[np.float32]:
    """Pick one channel (0-based) or, with None, down-mix to mono by the mean."""
    if channel is None:
        if block.shape[1] == 1:
            return block[:, 0]
        with np.errstate(invalid="ignore", over="ignore"):  # +inf with -inf: NaN, judged later
            mixed: npt.NDArray[np.float32] = block.mean(axis=1, dtype=np.float32)
        return mixed
    if not 0 <= channel < block.shape[1]:
        raise ValueError(f"channel {channel} does not exist ({block.shape[1]} channels)")
    return np.ascontiguousarray(block[:, channel])


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
        "<IHHIIHH", 16, _PCM, channels, rate, rate * channels * 2, channels * 2, 16
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
        header += b"fmt " + struct.pack("<IHHIIHH", 16, _PCM, 1, rate, rate * 2, 2, 16)
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
        fmt = struct.pack("<HHIIHHH", _FLOAT, self.channels, self.rate, self.rate * fb, fb, 32, 0)
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
