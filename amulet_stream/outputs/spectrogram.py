"""A clip's spectrogram as a PNG (numpy and zlib only), the alert's moment marked, and the clip
as 16-bit PCM wav bytes that every browser plays."""

from __future__ import annotations

import io
import struct
import wave
import zlib

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
N_FFT, HOP = 512, 256
HEIGHT = 256
"""Image rows: the frequency axis, 0 Hz at the bottom."""
MAX_COLUMNS = 1200
DYNAMIC_DB = 80.0
_STOPS = np.array(  # viridis at 0, 0.25, 0.5, 0.75, 1
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64
)


def _png(rgb: npt.NDArray[np.uint8]) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def spectrogram_png(samples: F32, rate: int, mark_seconds: float | None = None) -> bytes:
    """Log-power STFT of mono `samples` (N,) at `rate` Hz, 80 dB of range in viridis, time
    left to right (at most 1200 columns); a white line at `mark_seconds` from the start."""
    x = np.asarray(samples, np.float64)
    if x.size < N_FFT:
        x = np.pad(x, (0, N_FFT - x.size))
    frames = 1 + (x.size - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(x[idx] * np.hanning(N_FFT), axis=1)) ** 2
    db = 10 * np.log10(power + 1e-12)
    db = np.clip((db - (db.max() - DYNAMIC_DB)) / DYNAMIC_DB, 0.0, 1.0)
    step = max(1, -(-frames // MAX_COLUMNS))
    db = db[: frames - frames % step or frames].reshape(-1, step, db.shape[1]).max(axis=1)
    rows = np.linspace(0, db.shape[1] - 1, HEIGHT).round().astype(int)
    img = db[:, rows].T[::-1]  # (HEIGHT, columns), high frequencies on top
    pos = img * (len(_STOPS) - 1)
    lo = np.minimum(pos.astype(int), len(_STOPS) - 2)
    frac = (pos - lo)[..., None]
    rgb = (_STOPS[lo] * (1 - frac) + _STOPS[lo + 1] * frac).astype(np.uint8)
    if mark_seconds is not None:
        col = int(mark_seconds * rate / (HOP * step))
        if 0 <= col < rgb.shape[1]:
            rgb[:, col] = 255
    return _png(np.ascontiguousarray(rgb))


def pcm16_wav(samples: F32, rate: int) -> bytes:
    """Mono `samples` (N,) in -1..1 as a 16-bit PCM wav file."""
    pcm = (np.clip(np.asarray(samples, np.float64), -1.0, 1.0) * 32767).round().astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return out.getvalue()
