"""Feature profiles: the one feature code used by training (export) and serving (runtime).

A profile turns windows of mono float32 audio at its rate, shape (N, window), into feature
vectors of shape (N, V, D): V vectors of D features per window. The model scores each vector
(mean absolute reconstruction error); a window's score is the mean over its V vectors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


class ProfileError(ValueError):
    """A feature profile name or parameter set that this version does not know."""


def _hz_to_mel(hz: F64) -> F64:
    """Slaney mel scale (librosa's default, htk=False)."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    logstep = np.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / logstep, mel)


def _mel_to_hz(mel: F64) -> F64:
    """Inverse of _hz_to_mel."""
    logstep = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(logstep * (mel - 15.0)), mel * (200.0 / 3))


def mel_filterbank(rate: int, n_fft: int, n_mels: int) -> F64:
    """Slaney-normalised triangular filters, shape (n_mels, n_fft//2 + 1), as librosa's default."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    edges = _hz_to_mel(np.array([0.0, rate / 2]))
    mel_f = _mel_to_hz(np.linspace(edges[0], edges[1], n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    return np.asarray(weights * enorm[:, None], dtype=np.float64)


def hann(n: int) -> F64:
    """Periodic Hann window of n samples (scipy's get_window('hann', n), librosa's STFT window)."""
    return np.asarray(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n), dtype=np.float64)


def dct3_matrix(n: int, keep: int) -> F64:
    """First `keep` rows of the orthonormal DCT-III of length n (scipy dct type 3, 'ortho')."""
    k = np.arange(n)[None, :]
    j = np.arange(keep)[:, None]
    m = np.cos(np.pi * (j + 0.5) * k / n) * np.sqrt(2.0 / n)
    m[:, 0] = np.sqrt(1.0 / n)
    return np.asarray(m, dtype=np.float64)


@dataclass(frozen=True)
class Profile:
    """Feature profile parameters; everything needed to recompute features is stored here."""

    name: str
    rate: int
    """Sample rate of the audio the profile reads, Hz."""
    window: int
    """Samples per window (the scored unit)."""
    hop: int
    """Samples between window starts when serving."""
    offset: int
    """Sample index of the first window's start."""
    n_fft: int
    frame_hop: int
    """Samples between STFT frames inside a window."""
    n_mels: int
    n_mfcc: int = 0
    stack: int = 1
    """Consecutive log-mel frames stacked into one vector (logmel profiles)."""
    pad_tail: bool = False
    """Emit a zero-padded last window whose centre is inside the stream (AMULET's row count)."""

    @cached_property
    def _hann(self) -> F64:
        return hann(self.n_fft)

    @cached_property
    def _mel(self) -> F64:
        return mel_filterbank(self.rate, self.n_fft, self.n_mels)

    @property
    def n_frames(self) -> int:
        """STFT frames per window."""
        return 1 + (self.window - self.n_fft) // self.frame_hop

    @property
    def vectors(self) -> int:
        """Feature vectors per window (V)."""
        return 1 if self.name == "amulet-v1" else self.n_frames - self.stack + 1

    @property
    def dim(self) -> int:
        """Features per vector (D)."""
        return 3 if self.name == "amulet-v1" else self.n_mels * self.stack

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return asdict(self)

    @cached_property
    def _dct(self) -> F64:
        return dct3_matrix(self.n_mels, self.n_mfcc)

    @cached_property
    def _mel_t(self) -> F64:
        return np.ascontiguousarray(self._mel.T)

    def _power(self, window: F32) -> F64:
        """|STFT|^2 of one window's frames, shape (frames, n_fft//2+1)."""
        frames = sliding_window_view(window, self.n_fft)[:: self.frame_hop]
        spec = np.fft.rfft(frames.astype(np.float64) * self._hann, axis=-1)
        return np.asarray(spec.real**2 + spec.imag**2, dtype=np.float64)

    def compute(self, windows: F32) -> F32:
        """Feature vectors for float32 windows (N, window) at `rate`: shape (N, V, D).

        Window by window, so a window's features never depend on what it was batched with."""
        if windows.ndim != 2 or windows.shape[1] != self.window:
            raise ValueError(f"windows must have shape (N, {self.window}), got {windows.shape}")
        one = self._amulet_row if self.name == "amulet-v1" else self._logmel_vectors
        out = np.empty((windows.shape[0], self.vectors, self.dim), dtype=np.float32)
        for i in range(windows.shape[0]):
            out[i] = one(windows[i])
        return out

    def _amulet_row(self, window: F32) -> F64:
        """AMULET's 3 features of one frame: mean |STFT|, mean mel power, mean |MFCC|."""
        spec = np.fft.rfft(window.astype(np.float64) * self._hann)
        power = spec.real**2 + spec.imag**2
        mel = power @ self._mel_t
        db = 10.0 * np.log10(np.maximum(mel, 1e-10))
        db = np.maximum(db, db.max() - 80.0)
        mfcc = self._dct @ db
        return np.array(
            [
                np.sqrt(power).sum() / power.size,
                mel.sum() / mel.size,
                np.abs(mfcc).sum() / mfcc.size,
            ]
        )

    def _logmel_vectors(self, window: F32) -> F64:
        """Stacked log-mel frames of one window, shape (V, D)."""
        logmel = 10.0 * np.log10(np.maximum(self._power(window) @ self._mel_t, 1e-10))
        stacked = sliding_window_view(logmel, self.stack, axis=0)  # (V, n_mels, stack)
        return np.swapaxes(stacked, 1, 2).reshape(self.vectors, self.dim)


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
    hop=16000,
    offset=0,
    n_fft=1024,
    frame_hop=512,
    n_mels=64,
    stack=5,
)
PROFILES = {p.name: p for p in (AMULET_V1, LOGMEL_V1)}
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
    if profile.window < profile.n_fft or profile.rate <= 0 or profile.hop <= 0:
        raise ProfileError(f"feature profile {name!r} has inconsistent parameters: {data}")
    return profile


def window_starts(
    profile: Profile, n_samples: int, hop: int | None = None
) -> npt.NDArray[np.int64]:
    """Start indexes of the windows a stream of n_samples yields (padded tail included)."""
    step = hop or profile.hop
    last = n_samples - profile.window
    if profile.pad_tail:
        last = n_samples - profile.window // 2
    if last < profile.offset:
        return np.zeros(0, dtype=np.int64)
    return np.arange(profile.offset, last + 1, step, dtype=np.int64)


def cut_windows(
    samples: F32, profile: Profile, hop: int | None = None
) -> tuple[F32, npt.NDArray[np.int64]]:
    """Windows (N, window) of a whole mono signal and their start indexes."""
    starts = window_starts(profile, samples.size, hop)
    if starts.size == 0:
        return np.zeros((0, profile.window), np.float32), starts
    need = int(starts[-1]) + profile.window
    if need > samples.size:
        samples = np.concatenate([samples, np.zeros(need - samples.size, np.float32)])
    view = sliding_window_view(samples, profile.window)
    return np.ascontiguousarray(view[starts]), starts
