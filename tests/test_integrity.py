"""Input integrity on real audio: generated motor sound, AMULET's good.wav, and the faults a
microphone input really shows (zeros, a pulled cable, an idle input, clipping, DC, dropouts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from amulet_stream.audio.sources import FileSource
from amulet_stream.audio.wav import read_info
from amulet_stream.scoring.dropouts import ZeroRuns
from amulet_stream.scoring.integrity import REASONS, Change, IntegrityCheck, IntegritySettings
from amulet_stream.scoring.levels import (
    _measure_wide,
    block_levels,
    block_size,
    level_range,
    level_summary,
    measure,
)
from amulet_stream.synth.motor import generate

F32 = npt.NDArray[np.float32]
RATE = 16000
SEC = RATE  # samples per second
NEED = SEC  # problem_seconds = 1.0: a problem is raised at the end of the 4th bad block


def _range_of(x: F32, rate: int) -> tuple[float, float]:
    """(p1, p99) as training stores them, from healthy audio."""
    doc = level_summary(block_levels([x], rate))
    return doc["p1"], doc["p99"]


@pytest.fixture(scope="module")
def motor() -> F32:
    """20 s of generated healthy motor sound at 16 kHz (about -22 dBFS)."""
    return generate(20.0, RATE, seed=3)


@pytest.fixture(scope="module")
def trained() -> tuple[float, float]:
    """The level range of the default model's training audio (synth 300 s, seed 1): p1..p99."""
    return _range_of(generate(300.0, RATE, seed=1), RATE)


@pytest.fixture(scope="module")
def good(seed_dir: Path) -> tuple[F32, int]:
    """AMULET's real recording good.wav, mono as the monitor sees it (96 kHz, down-mixed)."""
    info = read_info(seed_dir / "good.wav")
    return np.concatenate([b.samples for b in FileSource(info).blocks()]), info.rate


def _run(
    x: F32, rng: tuple[float, float] | None, rate: int = RATE, **kw: float
) -> list[tuple[int, Change]]:
    return IntegrityCheck(rate, rng, IntegritySettings(**kw)).push(x)


def _reasons(changes: list[tuple[int, Change]]) -> list[str | None]:
    return [c.reason for _, c in changes]


def test_settings_are_checked_with_the_field_named() -> None:
    bad = {
        "silence_dbfs": 3.0,
        "clip_fraction": 0.0,
        "dc_offset": 1.5,
        "dropout_ms": -1.0,
        "level_margin_db": float("nan"),
        "problem_seconds": 0.0,
        "clear_seconds": -2.0,
    }
    for name, value in bad.items():
        with pytest.raises(ValueError, match=rf"^{name} must "):
            IntegritySettings(**{name: value})
    assert REASONS[:3] == ("non_finite", "rate", "silence") and len(REASONS) == 8


def test_nan_and_inf_samples_are_an_input_problem_and_clear_again() -> None:
    rate = 16000
    audio = generate(8.0, rate, seed=3)
    audio[2 * rate : 4 * rate : 7] = np.nan  # scattered NaN for 2 s
    audio[5 * rate] = np.inf  # one infinite sample later
    check = IntegrityCheck(rate, None)
    changes = check.push(audio)
    assert _reasons(changes) == ["non_finite", None]
    assert "NaN or infinite samples" in changes[0][1].detail
    assert 2 * rate < changes[0][0] <= 3.5 * rate  # raised while it lasts
    assert check.troubled(5 * rate - 10, 5 * rate + 10)  # the single inf: judged troubled


def test_a_wrong_rate_set_by_the_feed_is_an_input_problem_until_cleared() -> None:
    rate = 16000
    check = IntegrityCheck(rate, None)
    assert check.push(generate(2.0, rate, seed=4)) == []
    check.wrong_rate = "stdin delivers 8000 samples/s, 0.50x the configured 16000 Hz"
    (change,) = check.push(generate(2.0, rate, seed=5))
    assert change[1].reason == "rate" and change[1].detail.startswith("stdin delivers 8000")
    check.wrong_rate = None
    assert _reasons(check.push(generate(3.0, rate, seed=6))) == [None]


def test_training_level_of_generated_motor(trained: tuple[float, float]) -> None:
    lo, hi = trained
    assert -25.0 < lo <= hi < -19.0, trained


@pytest.mark.parametrize("gain_db", [-10.0, -6.0, 0.0, 6.0, 10.0])
def test_healthy_generated_raises_nothing(
    motor: F32, trained: tuple[float, float], gain_db: float
) -> None:
    x = (motor * 10 ** (gain_db / 20)).astype(np.float32)
    check = IntegrityCheck(RATE, trained)
    assert check.push(x) == []
    assert check.problem is None and not check.troubled(0, x.size)


@pytest.mark.parametrize("gain_db", [-10.0, 0.0, 10.0])
def test_healthy_real_recording_raises_nothing(good: tuple[F32, int], gain_db: float) -> None:
    x, rate = good
    own = _range_of(x, rate)  # a model trained on this motor
    assert -46.0 < own[0] <= own[1] < -40.0, own
    y = (x * 10 ** (gain_db / 20)).astype(np.float32)
    assert _run(y, own, rate) == []
    assert _run(y, None, rate) == []


def test_digital_zeros(motor: F32) -> None:
    changes = _run(np.zeros(5 * SEC, np.float32), (-22.5, -21.3))
    assert changes == [(NEED, changes[0][1])]
    assert changes[0][1] == Change("input_problem", "silence", changes[0][1].detail)
    assert "digital zeros" in changes[0][1].detail and "1.0 s" in changes[0][1].detail


def test_pulled_cable_then_plugged_back(motor: F32, trained: tuple[float, float]) -> None:
    """Motor, the cable pulled at 5.1 s (mid-block: that block is motor then zeros), zeros for
    5 s, the motor again: silence (never a dropout, never clean), then ok 2 s after it is back."""
    x = motor[: 15 * SEC].copy()
    x[int(5.1 * SEC) : int(10.1 * SEC)] = 0.0
    check = IntegrityCheck(RATE, trained)
    changes = check.push(x)
    assert _reasons(changes) == ["silence", None]
    (raised, problem), (cleared, ok) = changes
    assert raised == 6 * SEC  # blocks 20 (motor + zeros) .. 23 (zeros): 1 s of bad blocks
    assert problem.state == "input_problem" and ok.state == "ok"
    # back at 10.1 s: block 40 holds the end of the gap; 41..48 are clean -> ok at 12.25 s
    assert cleared == int(12.25 * SEC)
    assert check.troubled(int(5.2 * SEC), int(6.2 * SEC))
    assert check.troubled(int(11.0 * SEC), int(12.0 * SEC))  # clean but the problem stood
    assert not check.troubled(0, 5 * SEC) and not check.troubled(13 * SEC, 14 * SEC)


def test_idle_input_noise_floor(motor: F32, trained: tuple[float, float]) -> None:
    """An unplugged microphone input: no zeros but the converter's noise at -95 dBFS."""
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(5 * SEC) * 10 ** (-95 / 20)).astype(np.float32)
    for lr in (trained, None):
        changes = _run(noise, lr)
        assert _reasons(changes) == ["silence"]
        assert "RMS -95.0 dBFS" in changes[0][1].detail


def test_clipping(motor: F32, trained: tuple[float, float]) -> None:
    x = np.clip(motor * 20.0, -1.0, 1.0).astype(np.float32)
    changes = _run(x, trained)
    assert _reasons(changes) == ["clipping"]
    assert "% of samples at full scale" in changes[0][1].detail
    # full scale without clipping does not count: the same motor scaled to a peak of 0.99
    assert _run((motor * (0.99 / np.abs(motor).max())).astype(np.float32), trained) == []


@pytest.mark.parametrize("offset", [0.1, -0.05])
def test_dc_offset(motor: F32, trained: tuple[float, float], offset: float) -> None:
    changes = _run((motor + offset).astype(np.float32), trained)
    assert _reasons(changes) == ["dc_offset"]
    shown = float(changes[0][1].detail.split()[2])  # "DC offset +0.101 of full scale ..."
    assert abs(shown - offset) < 0.005, changes


def test_dropouts(motor: F32, trained: tuple[float, float]) -> None:
    """10 gaps of 30 ms of exact zeros per second (a USB stream losing packets)."""
    x = motor.copy()
    for start in range(0, x.size, SEC // 10):
        x[start : start + int(0.03 * SEC)] = 0.0
    changes = _run(x, trained)
    assert _reasons(changes) == ["dropout"]
    assert changes[0][1].detail.startswith("10 gap(s) of exact zeros of 20 ms or more in 1.0 s")
    # gaps shorter than dropout_ms are not dropouts
    y = motor.copy()
    for start in range(0, y.size, SEC // 10):
        y[start : start + int(0.015 * SEC)] = 0.0
    assert _run(y, trained) == []


def test_level_far_outside_the_trained_range(motor: F32, trained: tuple[float, float]) -> None:
    low = (motor * 10 ** (-40 / 20)).astype(np.float32)  # about -62 dBFS: above silence
    changes = _run(low, trained)
    assert _reasons(changes) == ["level_low"]
    assert "below the model's training range" in changes[0][1].detail
    assert _run(low, None) == []  # no range in the model: no level checks
    assert _reasons(_run(motor, (-70.0, -60.0))) == ["level_high"]
    assert _run(motor, (-70.0, -60.0), level_margin_db=40.0) == []


def test_priority_and_switching_reasons(motor: F32, trained: tuple[float, float]) -> None:
    both = np.clip(motor * 20.0 + 0.3, -1.0, 1.0).astype(np.float32)  # clipped and DC
    assert _reasons(_run(both, trained)) == ["clipping"]
    # zeros, then straight into clipping: the reason changes after 1 s of clipping alone
    x = np.concatenate([np.zeros(3 * SEC, np.float32), both[: 3 * SEC]])
    changes = _run(x, trained)
    assert [(i, c.reason) for i, c in changes] == [(SEC, "silence"), (4 * SEC, "clipping")]


def test_short_problems_do_not_raise(motor: F32, trained: tuple[float, float]) -> None:
    """0.75 s of zeros every 2 s: never 1 s in a row."""
    x = motor[: 10 * SEC].copy()
    for start in range(SEC, x.size, 2 * SEC):
        x[start : start + int(0.75 * SEC)] = 0.0
    assert _run(x, trained) == []


def test_nan_and_inf_are_a_problem_but_left_out_of_levels(
    motor: F32, trained: tuple[float, float]
) -> None:
    x = motor[: 5 * SEC].copy()
    x[::7] = np.nan
    x[3::11] = np.inf
    assert _reasons(_run(x, trained)) == ["non_finite"]  # not the motor's sound: never 'good'
    assert _reasons(_run(np.full(5 * SEC, np.nan, np.float32), trained)) == ["non_finite"]
    levels = block_levels([x], RATE)
    assert levels.size == 20 and np.all(np.abs(levels - levels.mean()) < 1.0)


def test_block_size_independence(motor: F32, trained: tuple[float, float]) -> None:
    """Zeros, clipping, dropouts and DC between stretches of motor, at 22050 Hz (a block of
    5512 samples): whole array, 1000-sample pushes and random pushes give the same changes."""
    rate = 22050
    m = generate(4.0, rate, seed=8)
    gaps = m.copy()
    gaps[(np.arange(m.size) % (rate // 10)) < int(0.03 * rate)] = 0.0
    parts = [m, np.zeros(rate * 3, np.float32), m, np.clip(m * 20, -1, 1), m, gaps, m, m + 0.2]
    x = np.concatenate([p.astype(np.float32) for p in parts] + [m, m])
    whole = IntegrityCheck(rate, trained)
    expected = whole.push(x)
    assert _reasons(expected) == [
        "silence",
        None,
        "clipping",
        None,
        "dropout",
        None,
        "dc_offset",
        None,
    ]
    rng = np.random.default_rng(1)
    for sizes in (np.full(x.size // 1000 + 1, 1000), rng.integers(0, 9000, x.size // 2000)):
        check = IntegrityCheck(rate, trained)
        got: list[tuple[int, Change]] = []
        at = 0
        for size in sizes.tolist():
            got += check.push(x[at : at + size])
            at += size
        got += check.push(x[at:])
        assert got == expected
        spans = [(a, a + rate) for a in range(0, x.size - rate, rate // 3)]
        assert [check.troubled(*s) for s in spans] == [whole.troubled(*s) for s in spans]


def test_one_short_burst_or_dropout_marks_its_windows(
    motor: F32, trained: tuple[float, float]
) -> None:
    """A single clipped 1 ms burst and a single 20 ms dropout (too short to raise a problem)
    mark the windows that hold them, however the audio arrives; the windows beside stay clean."""
    x = motor[: 8 * SEC].copy()
    burst, gap = int(2.3 * SEC), int(5.6 * SEC)
    x[burst : burst + SEC // 1000] = 1.0
    x[gap : gap + SEC // 50] = 0.0
    rng = np.random.default_rng(3)
    for sizes in ([x.size], [1000] * (x.size // 1000), rng.integers(1, 7000, 40).tolist()):
        check, at = IntegrityCheck(RATE, trained), 0
        changes: list[tuple[int, Change]] = []
        for size in sizes:
            changes += check.push(x[at : at + size])
            at += size
        changes += check.push(x[at:])
        assert changes == []
        assert check.troubled(2 * SEC, 3 * SEC) and check.troubled(5 * SEC, 6 * SEC)
        assert not check.troubled(0, SEC) and not check.troubled(3 * SEC + SEC // 2, 5 * SEC)
        assert not check.troubled(7 * SEC, 8 * SEC)


def test_level_range_from_metadata() -> None:
    assert level_range({"threshold": 0.3}) is None
    doc = {"p1": -22.5, "p50": -22.1, "p99": -21.3, "min": -22.6, "max": -21.1}
    assert level_range({"input_level_dbfs": doc}) == (-22.5, -21.3)
    for broken in ({"p1": -20.0, "p99": -30.0}, {"p1": "x", "p99": -3.0}, [1, 2]):
        with pytest.raises(ValueError, match=r"^input_level_dbfs in the model metadata"):
            level_range({"input_level_dbfs": broken})


class _FullScan(ZeroRuns):
    """The dropout finder without its grid shortcut for runs of zeros: every sample scanned."""

    def no_long_run(self, flat: F32) -> bool:
        return False


class _Counted(ZeroRuns):
    """The dropout finder as it is, counting the pushes its grid shortcut decided."""

    shortcuts = 0

    def no_long_run(self, flat: F32) -> bool:
        taken = super().no_long_run(flat)
        self.shortcuts += taken
        return taken


@pytest.mark.parametrize("dropout_ms", [0.0625, 0.125, 1.0, 20.0])
def test_the_zero_run_shortcut_finds_what_a_full_scan_finds(dropout_ms: float) -> None:
    """Runs of zeros one shorter than, as long as and longer than a dropout, anywhere (across
    push edges too), among dense isolated zeros: the grid shortcut gives the same gaps, counts
    and carried run as scanning every sample, push by push."""
    rng = np.random.default_rng(int(dropout_ms * 16))
    d = max(1, round(dropout_ms * RATE / 1000))
    x = rng.standard_normal(30 * SEC).astype(np.float32)
    x[rng.random(x.size) < 0.05] = 0.0  # quantisation zeros
    for start in rng.integers(0, x.size - 3 * d, 120).tolist():
        x[start : start + d + int(rng.integers(-2, 3)) * max(1, d // 4)] = 0.0
    block = block_size(RATE)  # the input checks' block
    fast, full = _Counted(d), _FullScan(d)
    at, found = 0, 0
    while at < x.size:
        piece = x[at : at + int(rng.integers(1, 3 * block))]
        at += piece.size
        got, want = fast.gaps(piece, 1), full.gaps(piece, 1)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert fast.carried == full.carried
        found += int(want[1].sum())
    assert found > 20  # there were dropouts to find
    assert fast.shortcuts > 0 or d < 16  # and pushes the shortcut decided


def test_float32_levels_agree_with_float64() -> None:
    """Block levels in float32 sums (one pass each, clipping counted only where the peak
    reaches full scale) against float64 over every sample: the same validity and clipped
    fractions, levels within 1e-4 dB, means within 1e-6, on quiet, loud, clipped, DC,
    digital-zero and huge-valued blocks."""
    rng = np.random.default_rng(11)
    noise = rng.standard_normal((8, 4000))
    rows = [noise[0] * 1e-5, noise[1] * 0.05, np.clip(noise[2] * 2, -1, 1), noise[3] * 0.1 + 0.3]
    rows += [np.zeros(4000), np.clip(noise[4] * 0.3, -1, 1), noise[5] * 1e3]
    huge = (noise[6] * 1e18).astype(np.float32)  # its float32 squares would overflow
    for blocks in (np.stack(rows).astype(np.float32), np.stack([rows[1], huge])):
        fast, wide = measure(blocks), _measure_wide(blocks)
        assert np.isfinite(fast.rms_dbfs).all()
        assert np.array_equal(fast.valid, wide.valid)
        assert np.array_equal(fast.nonfinite, wide.nonfinite)
        assert np.array_equal(fast.clipped, wide.clipped)
        np.testing.assert_allclose(fast.rms_dbfs, wide.rms_dbfs, rtol=0, atol=1e-4)
        np.testing.assert_allclose(fast.mean, wide.mean, rtol=1e-5, atol=1e-6)
    assert fast.rms_dbfs[1] > 300
    clipped = measure(np.stack(rows).astype(np.float32)).clipped
    assert clipped[2] > 0.1 and clipped[5] > 0 and clipped[0] == 0
