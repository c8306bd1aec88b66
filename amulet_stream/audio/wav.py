"""WAV files read in blocks: PCM 8/16/24/32-bit and IEEE float, any rate and channel count,
with bounds on whatever the header says (wav_write.py writes them)."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

_LOGGER = logging.getLogger(__name__)

PCM = 1
FLOAT = 3
EXTENSIBLE = 0xFFFE
"""Format tags of the fmt chunk: integer PCM, IEEE float, WAVE_FORMAT_EXTENSIBLE."""
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
            if tag == EXTENSIBLE and len(body) >= 26:
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
    if tag not in (PCM, FLOAT):
        raise WavError(f"{path}: unsupported encoding (format tag {tag:#x}); use PCM or float")
    if (tag == PCM and bits not in (8, 16, 24, 32)) or (tag == FLOAT and bits not in (32, 64)):
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
    return WavInfo(path, rate, channels, bits, tag == FLOAT, frames, offset)


def _decode(raw: bytes, info: WavInfo) -> npt.NDArray[np.float32]:
    """Bytes to float32 (frames, channels) in [-1, 1] for PCM."""
    if info.is_float:
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: +-inf (integrity's)
            data = np.frombuffer(raw, dtype="<f4" if info.bits == 32 else "<f8").astype(np.float32)
    elif info.bits == 8:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif info.bits == 16:
        # one pass: a power-of-two scale is exact, so the bits of astype, then / 32768
        data = np.multiply(np.frombuffer(raw, dtype="<i2"), np.float32(2.0**-15), dtype=np.float32)
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
    left = info.frames
    with info.path.open("rb") as fh:
        fh.seek(info.data_offset)
        while left > 0:
            n = min(block_frames, left)
            left -= n
            yield _read(fh, n, info)  # nothing of it held here while the block is processed


def _read(fh: BinaryIO, frames: int, info: WavInfo) -> npt.NDArray[np.float32]:
    """The next `frames` frames of an open wav's data, decoded."""
    want = frames * info.channels * info.bits // 8
    raw = fh.read(want)
    if len(raw) < want:
        raise WavError(f"{info.path}: truncated while reading")
    return _decode(raw, info)


def select_channel(block: npt.NDArray[np.float32], channel: int | None) -> npt.NDArray[np.float32]:
    """Pick one channel (0-based) or, with None, down-mix to mono by the mean."""
    if channel is None:
        n = block.shape[1]
        if n == 1:
            return block[:, 0]
        with np.errstate(invalid="ignore", over="ignore"):  # +inf with -inf: NaN, judged later
            if n >= 8:  # numpy's mean sums pairwise from 8 on: the same sums as it
                mixed: npt.NDArray[np.float32] = block.mean(axis=1, dtype=np.float32)
                return mixed
            # the mean's own sums, in order, without its strided reduction (18x faster)
            mixed = block[:, 0] + block[:, 1]
            for c in range(2, n):
                mixed += block[:, c]
            mixed /= np.float32(n)
        return mixed
    if not 0 <= channel < block.shape[1]:
        raise ValueError(f"channel {channel} does not exist ({block.shape[1]} channels)")
    return np.ascontiguousarray(block[:, channel])
