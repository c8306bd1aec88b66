"""Feature profiles: AMULET parity on the real recording, streaming equals whole-signal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amulet_stream.features import (
    AMULET_V1,
    LOGMEL_V1,
    PROFILES,
    ProfileError,
    cut_windows,
    profile_from_dict,
)
from amulet_stream.sources import iter_mono
from amulet_stream.wav import read_info
from amulet_stream.windows import Windower


def _stream(samples: np.ndarray, profile, block: int, hop: int | None = None):
    w = Windower(profile, hop)
    wins, starts = [], []
    for i in range(0, samples.size, block):
        a, b = w.push(samples[i : i + block])
        wins.append(a)
        starts.append(b)
    a, b = w.finish()
    wins.append(a)
    starts.append(b)
    return np.concatenate(wins), np.concatenate(starts)


def test_amulet_v1_reproduces_reference_features(seed_dir: Path) -> None:
    ref = json.loads((seed_dir / "reference_good.json").read_text())
    info = read_info(seed_dir / "good.wav")
    samples = np.concatenate(list(iter_mono(info, AMULET_V1.rate)))
    assert samples.size == ref["samples"]
    windows, starts = _stream(samples, AMULET_V1, 5000)
    feats = AMULET_V1.compute(windows)[:, 0]
    expected = np.array([r["features"] for r in ref["rows"]])
    assert feats.shape == expected.shape == (59, 3)
    rel = np.abs(feats - expected) / np.abs(expected)
    assert rel.max() < 0.01, rel.max(axis=0)
    # rows are AMULET's: frame column (k+1)*4, centred on sample (k+1)*2048
    np.testing.assert_array_equal(starts + 1024, (np.arange(59) + 1) * 2048)


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
@pytest.mark.parametrize("n", [2205 * 7 + 300, 16000 * 3 + 123, 52000])
def test_windower_blockwise_equals_whole_signal(profile, n: int) -> None:
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    whole, whole_starts = cut_windows(x, profile)
    for block in (333, 4096, n):
        streamed, starts = _stream(x, profile, block)
        np.testing.assert_array_equal(starts, whole_starts)
        np.testing.assert_array_equal(streamed, whole)


def test_amulet_tail_rows_follow_amulet_count() -> None:
    # AMULET keeps rows whose frame column c satisfies c <= len // 512
    for n in (22050, 30000, 44100 + 700):
        _, starts = cut_windows(np.ones(n, np.float32), AMULET_V1)
        columns = (starts + 1024) // 512
        assert columns.max() <= n // 512 < columns.max() + 4


def test_logmel_shapes_and_values() -> None:
    t = np.arange(16000 * 2) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    windows, _ = cut_windows(tone, LOGMEL_V1)
    feats = LOGMEL_V1.compute(windows)
    assert feats.shape == (2, LOGMEL_V1.vectors, LOGMEL_V1.dim) == (2, 26, 320)
    frame = feats[0, 0, :64]
    # a 1 kHz tone: the loudest mel band is the one around 1 kHz, far above the floor
    assert 18 <= int(frame.argmax()) <= 26
    assert frame.max() - np.median(frame) > 40


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ProfileError, match="unknown feature profile 'mfcc-v9'"):
        profile_from_dict({"name": "mfcc-v9"})
    with pytest.raises(ProfileError, match="unknown parameters"):
        profile_from_dict({**AMULET_V1.to_dict(), "colour": "blue"})
