"""Frames and vectors: a mono stream cut on a fixed grid, each frame's features computed once."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from amulet_stream.scoring.features import MFCC_IMAGE, Profile, noise, rows_of

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
CHUNK = 32
"""Frames per feature computation at most, on a grid fixed by the frame's index: each
computation covers the frames of one grid chunk, padded to an even count of rows where that
gives a frame the bits it gets at its place in a full chunk (even_rows_exact), else to the
whole chunk; so no result depends on how the audio was split into blocks."""
_EXACT: dict[str, bool] = {}


def even_rows_exact(profile: Profile) -> bool:
    """Whether the features of any run of frames, padded to an even count of rows, are the
    bits the same frames get at their places in a CHUNK-row chunk, on this machine (a BLAS
    product may take an odd last row through another kernel: OpenBLAS does). Tried once per
    profile (on noise-like frames of varied level: 9 ms for logmel-v1, 21 ms for amulet-v1,
    most of it building the window and filters every first frame needs);
    False for mfcc-image-v1 (its own cache)."""
    if profile.name == MFCC_IMAGE:
        return False
    if profile.name not in _EXACT:
        level = 10 ** np.linspace(-4.0, 0.0, CHUNK)[np.arange(CHUNK) * 7 % CHUNK]
        rows = (noise(CHUNK, profile.n_fft) * level[:, None]).astype(np.float32)
        full = profile.frame_features(rows)
        exact = True
        for m in range(1, CHUNK + 1):  # every count of rows, each at some place in the chunk
            s = 7 * m % (CHUNK - m + 1)
            part = profile.frame_features(rows[s : s + m], m + m % 2)
            exact &= np.array_equal(part, full[s : s + m])
        _EXACT[profile.name] = exact
    return _EXACT[profile.name]


class VectorStream:
    """Float32 mono blocks at the profile's rate -> feature vectors (M, D) float32, in order.

    Frame j covers samples [offset + j*step, offset + j*step + n_fft) of the stream; vector i
    stacks frames i..i+stack-1. A vector with a NaN or infinite sample is all NaN. Keeps only
    the samples and frame features the next vector needs. Not thread-safe."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.samples = 0
        """Samples pushed so far."""
        self.vectors = 0
        """Vectors emitted so far (the index of the next one)."""
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # stream index of _buf[0]
        self._frames = 0  # frames computed so far
        self._tail = np.zeros((0, profile.frame_dim))  # features of the last stack-1 frames

    def _frame_start(self, j: int) -> int:
        return self.profile.offset + j * self.profile.step

    def push(self, block: F32) -> F32:
        """Add samples; return the vectors (M, D) they completed."""
        self.samples += block.size
        self._buf = np.concatenate([self._buf, block.astype(np.float32, copy=False)])
        done = self._buf_start + self._buf.size - self.profile.n_fft - self.profile.offset
        return self._advance(done // self.profile.step + 1 if done >= 0 else 0)

    def finish(self) -> F32:
        """End of stream: for pad_tail profiles, the zero-padded frames whose centre is inside
        the stream (AMULET's row count); else nothing."""
        p = self.profile
        if not p.pad_tail:
            return np.zeros((0, p.dim), np.float32)
        centre_ok = self.samples - p.n_fft // 2 - p.offset
        stop = centre_ok // p.step + 1 if centre_ok >= 0 else 0
        self._buf = np.concatenate([self._buf, np.zeros(p.n_fft + p.step, np.float32)])
        return self._advance(stop)

    def _advance(self, stop: int) -> F32:
        """Compute frames up to (not including) `stop`; return the vectors they complete."""
        p = self.profile
        if stop <= self._frames:
            return np.zeros((0, p.dim), np.float32)
        feats = np.concatenate([self._tail, self._features(self._frames, stop)])
        self._frames = stop
        vectors = p.stack_frames(feats)
        self._tail = feats[max(0, feats.shape[0] - (p.stack - 1)) :] if p.stack > 1 else feats[:0]
        self.vectors += vectors.shape[0]
        drop = min(self._frame_start(stop) - self._buf_start, self._buf.size)
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return vectors

    def _features(self, first: int, stop: int) -> F64:
        """Features (stop - first, K) of frames first..stop-1, in grid-aligned chunks."""
        p = self.profile
        lo = self._frame_start(first) - self._buf_start
        samples = self._buf[lo : lo + (stop - first - 1) * p.step + p.n_fft]
        frames = rows_of(samples, p.n_fft, p.step)
        bad = np.zeros(stop - first, bool)
        if not np.isfinite(samples).all():  # rare: a NaN or inf sample; its frames are NaN
            bad = ~np.isfinite(frames).all(axis=1)
            frames = np.where(bad[:, None], np.float32(0.0), frames)
        out = np.empty((stop - first, p.frame_dim))
        exact = even_rows_exact(p)
        j = first
        while j < stop:
            base = j - j % CHUNK
            hi = min(stop, base + CHUNK)
            k = hi - j
            rows = k + k % 2 if exact else CHUNK
            out[j - first : hi - first] = p.frame_features(
                frames[j - first : hi - first], rows, 0 if exact else j - base
            )
            j = hi
        out[bad] = np.nan
        return out
