"""The fixed matrices the features are made with: the periodic Hann window, Slaney mel filters
(librosa's default) and their corner frequencies, the orthonormal DCTs of the MFCCs."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


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


def mel_edges_hz(rate: int, n_mels: int) -> F64:
    """The n_mels + 2 corner frequencies (Hz) of the triangular mel filters: band m rises from
    edge m, peaks at edge m + 1 and falls to edge m + 2."""
    edges = _hz_to_mel(np.array([0.0, rate / 2]))
    return np.asarray(_mel_to_hz(np.linspace(edges[0], edges[1], n_mels + 2)), np.float64)


def mel_filterbank(rate: int, n_fft: int, n_mels: int) -> F64:
    """Slaney-normalised triangular filters, shape (n_mels, n_fft//2 + 1), as librosa's default."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    mel_f = mel_edges_hz(rate, n_mels)
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


def dct2_matrix(n: int, keep: int) -> F64:
    """First `keep` rows of the orthonormal DCT-II of length n (scipy dct type 2, 'ortho'):
    shape (keep, n), the transpose of the full DCT-III."""
    j = np.arange(keep)[:, None]
    k = np.arange(n)[None, :]
    m = np.cos(np.pi * j * (k + 0.5) / n) * np.sqrt(2.0 / n)
    m[0, :] = np.sqrt(1.0 / n)
    return np.asarray(m, dtype=np.float64)
