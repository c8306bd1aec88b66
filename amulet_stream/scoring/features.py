"""Feature profiles: the one feature code used by training (export) and serving (runtime).

A profile cuts a mono float32 stream at its rate into frames of n_fft samples on a fixed grid
(frame j starts at offset + j * step, anchored at the stream's first sample) and turns each
frame into K features once. `stack` consecutive frames make one vector of D = stack x K
features, which the model scores once (mean absolute reconstruction error). A window is V
consecutive vectors; its score is the mean of theirs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from amulet_stream.scoring.filters import dct2_matrix, dct3_matrix, hann, mel_filterbank

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def rows_of(x: npt.NDArray[Any], width: int, step: int) -> npt.NDArray[Any]:
    """Read-only view (F, width) of a contiguous 1-D array: row j is x[j*step : j*step + width],
    F the rows that fit. sliding_window_view(x, width)[::step] at a few % of its call cost."""
    rows = max(0, (x.size - width) // step + 1)
    view: npt.NDArray[Any] = np.ndarray(
        (rows, width),
        x.dtype,
        buffer=np.ascontiguousarray(x),
        strides=(step * x.itemsize, x.itemsize),
    )
    view.flags.writeable = False
    return view


def noise(rows: int, cols: int) -> F64:
    """Deterministic noise-like values (rows, cols), uniform in [-0.5, 0.5): for the one-off
    probes, without numpy.random (its import costs 8 ms of every start)."""
    x = np.sin(np.arange(rows * cols) * 12.9898) * 43758.5453
    return np.asarray(x - np.floor(x) - 0.5).reshape(rows, cols)


MFCC_IMAGE = "mfcc-image-v1"
_ONE_FRAME_PER_WINDOW = frozenset({"amulet-v1", MFCC_IMAGE})


class ProfileError(ValueError):
    """A feature profile name or parameter set that this version does not know."""


@dataclass(frozen=True)
class Profile:
    """Feature profile parameters; everything needed to recompute features is stored here."""

    name: str
    rate: int
    """Sample rate of the audio the profile reads, Hz."""
    window: int
    """Samples per window (the scored unit)."""
    hop: int
    """Samples between window starts when serving (rounded to whole vectors: `hop_vectors`)."""
    offset: int
    """Sample index of the first frame's start."""
    n_fft: int
    frame_hop: int
    """Samples between STFT frames inside a window."""
    n_mels: int
    n_mfcc: int = 0
    stack: int = 1
    """Consecutive log-mel frames stacked into one vector (logmel profiles)."""
    pad_tail: bool = False
    """Emit a zero-padded last window whose centre is inside the stream (AMULET's row count)."""
    stft_size: int = 0
    """FFT size of the STFT inside each frame (mfcc-image profiles); 0: one FFT per frame."""

    @cached_property
    def _hann(self) -> F64:
        return hann(self.stft_size or self.n_fft)

    @property
    def step(self) -> int:
        """Samples between consecutive frames (and vectors) on the stream's grid."""
        return self.window if self.name in _ONE_FRAME_PER_WINDOW else self.frame_hop

    @property
    def hop_vectors(self) -> int:
        """Vectors between window starts when serving (at least 1)."""
        return max(1, round(self.hop / self.step))

    def vectors_for_hop(self, seconds: float | None) -> int | None:
        """Vectors between window starts for a hop in seconds (None: the profile's own)."""
        return None if seconds is None else max(1, round(seconds * self.rate / self.step))

    @property
    def n_frames(self) -> int:
        """Frames per window."""
        if self.name in _ONE_FRAME_PER_WINDOW:
            return 1
        return 1 + (self.window - self.n_fft) // self.frame_hop

    @property
    def vectors(self) -> int:
        """Feature vectors per window (V)."""
        return self.n_frames - self.stack + 1

    @property
    def frame_dim(self) -> int:
        """Features per frame (K)."""
        if self.name == MFCC_IMAGE:
            return self.n_mfcc * self.image_columns
        return 3 if self.name == "amulet-v1" else self.n_mels

    @property
    def image_columns(self) -> int:
        """STFT columns per frame of an mfcc-image profile (centred frames: 1 + n_fft // hop)."""
        return 1 + self.n_fft // self.frame_hop

    @property
    def dim(self) -> int:
        """Features per vector (D = stack x K)."""
        return self.frame_dim * self.stack

    @property
    def span(self) -> int:
        """Samples a window covers: from its first frame's start to its last frame's end."""
        return (self.n_frames - 1) * self.step + self.n_fft

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return asdict(self)

    @cached_property
    def _dct_t(self) -> F64:
        """MFCC transform (n_mels, n_mfcc): librosa's DCT-II; DCT-III for amulet-v1, as AMULET."""
        dct = dct3_matrix if self.name == "amulet-v1" else dct2_matrix
        return np.ascontiguousarray(dct(self.n_mels, self.n_mfcc).T)

    @cached_property
    def _mel_t(self) -> F64:
        fft = self.stft_size or self.n_fft
        return np.ascontiguousarray(mel_filterbank(self.rate, fft, self.n_mels).T)

    def frame_features(self, frames: F32, rows: int = 0, at: int = 0) -> F64:
        """Features of float32 frames (F, n_fft) at `rate`: (F, K), row by row independent.

        logmel: K log-mel bands in dB. amulet-v1: AMULET's mean |STFT|, mean mel power and
        mean |MFCC| of the frame (MFCC from dB floored 80 dB below the frame's peak).
        mfcc-image-v1: the frame's MFCC matrix (n_mfcc, image_columns), flattened row-major.
        With `rows` > F the mel product runs on `rows` rows, the frames at rows at..at+F-1 and
        zeros elsewhere: the bits the frames get at those places in such a batch."""
        if frames.ndim != 2 or frames.shape[1] != self.n_fft:
            raise ValueError(f"frames must have shape (F, {self.n_fft}), got {frames.shape}")
        if self.name == MFCC_IMAGE:
            return self._mfcc_image(frames)
        # the FFT of each row alone gives the same bits as in any batch (pocketfft)
        spec = np.fft.rfft(np.multiply(frames, self._hann), axis=-1)
        power = spec.real**2 + spec.imag**2
        batch, mine = power, slice(None)
        if rows > power.shape[0]:
            batch, mine = np.zeros((rows, power.shape[1])), slice(at, at + power.shape[0])
            batch[mine] = power
        mel = batch @ self._mel_t
        db = 10.0 * np.log10(np.maximum(mel, 1e-10))
        if self.name != "amulet-v1":
            return np.asarray(db[mine], dtype=np.float64)
        db = np.maximum(db, db.max(axis=1, keepdims=True) - 80.0)
        mfcc = (db @ self._dct_t)[mine]
        mel = mel[mine]
        return np.stack(
            [
                np.sqrt(power).sum(axis=1) / power.shape[1],
                mel.sum(axis=1) / mel.shape[1],
                np.abs(mfcc).sum(axis=1) / mfcc.shape[1],
            ],
            axis=1,
        )

    def _mfcc_image(self, frames: F32) -> F64:
        """librosa 0.7's mfcc() of each frame alone (AMULET's DCGAN input): (F, n_fft) ->
        (F, n_mfcc x columns). Frame by frame, all-zero frames (the padding rows of a chunk)
        from a cache: the costly part runs once per real second, with the same shapes always."""
        out = np.empty((frames.shape[0], self.frame_dim))
        live = frames.any(axis=1)
        out[~live] = self._silent_image
        for i in np.flatnonzero(live):
            out[i] = self._mfcc_matrix(frames[i])
        return out

    @cached_property
    def _silent_image(self) -> F64:
        return self._mfcc_matrix(np.zeros(self.n_fft, np.float32))

    def _mfcc_matrix(self, frame: F32) -> F64:
        """One frame's MFCC matrix, flattened (n_mfcc x columns,): centred STFT frames with
        reflect padding (librosa < 0.9's default), power mel spectrogram, dB with ref 1 and
        an 80 dB floor below the frame's peak, orthonormal DCT-II."""
        half = self.stft_size // 2
        padded = np.pad(frame.astype(np.float64), half, mode="reflect")
        cols = sliding_window_view(padded, self.stft_size)[:: self.frame_hop]
        spec = np.fft.rfft(cols * self._hann, axis=-1)  # (columns, stft_size // 2 + 1)
        db = 10.0 * np.log10(np.maximum((spec.real**2 + spec.imag**2) @ self._mel_t, 1e-10))
        mfcc = np.maximum(db, db.max() - 80.0) @ self._dct_t  # (columns, n_mfcc)
        return np.ascontiguousarray(mfcc.T, np.float64).reshape(-1)

    def stack_frames(self, feats: F64) -> F32:
        """Vectors from consecutive frame features (F, K): (F - stack + 1, stack x K) float32;
        vector i is frames i..i+stack-1, oldest first."""
        if feats.shape[0] < self.stack:
            return np.zeros((0, self.dim), np.float32)
        flat = np.ascontiguousarray(feats).reshape(-1)
        return rows_of(flat, self.dim, self.frame_dim).astype(np.float32)


AMULET_V1 = Profile(
    name="amulet-v1",
    rate=22050,
    window=2048,
    hop=2048,
    offset=1024,
    n_fft=2048,
    frame_hop=512,
    n_mels=128,
    n_mfcc=20,
    pad_tail=True,
)
LOGMEL_V1 = Profile(
    name="logmel-v1",
    rate=16000,
    window=16000,
    hop=4096,
    offset=0,
    n_fft=1024,
    frame_hop=512,
    n_mels=64,
    stack=5,
)
MFCC_IMAGE_V1 = Profile(
    name=MFCC_IMAGE,
    rate=22050,
    window=22050,
    hop=22050,
    offset=0,
    n_fft=22050,
    frame_hop=512,
    n_mels=128,
    n_mfcc=20,
    stft_size=2048,
)
"""AMULET's DCGAN input: each whole second's 20 x 44 MFCC matrix (a frame of 880 features)."""
PROFILES = {p.name: p for p in (AMULET_V1, LOGMEL_V1, MFCC_IMAGE_V1)}
DEFAULT_PROFILE = LOGMEL_V1.name


def profile_from_dict(data: dict[str, Any]) -> Profile:
    """Rebuild a profile from stored parameters; raise ProfileError if it is unknown."""
    name = data.get("name")
    if name not in PROFILES:
        raise ProfileError(f"unknown feature profile {name!r} (known: {', '.join(PROFILES)})")
    try:
        profile = Profile(**data)
    except TypeError as err:
        raise ProfileError(f"feature profile {name!r} has unknown parameters: {err}") from err
    if (
        profile.window < profile.n_fft
        or min(profile.rate, profile.hop, profile.frame_hop, profile.stack) <= 0
        or profile.vectors < 1
    ):
        raise ProfileError(f"feature profile {name!r} has inconsistent parameters: {data}")
    return profile
