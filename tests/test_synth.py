"""The motor-sound generator (frozen sound, fault kinds, inject) and the evaluation's corpus."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from amulet_stream.audio.wav import iter_blocks, read_info, select_channel
from amulet_stream.audio.wav_write import write_wav, write_wav_blocks
from amulet_stream.synth.motor import generate, generate_blocks
from amulet_stream.synth.recordings import inject
from amulet_stream.synth.spec import BENIGN, FAULTS, KINDS, NOT_INJECTABLE, Fault, Motor
from export.corpus import (
    TRAIN_RPM,
    Recording,
    label_windows,
    loop,
    normal_audio,
    real_corpus,
    synthetic_corpus,
    write_normal_audio,
)

F32 = npt.NDArray[np.float32]
RATE = 16000
INJECTABLE = [k for k in KINDS if k not in NOT_INJECTABLE]

# sha256 of generate(...).tobytes() recorded from the generator before the newer kinds existed
# (commit cb9933e): the shipped model, the demo and many tests rest on these exact samples
FROZEN = {
    "11a9d2865e2d13becdf69753cdebe75df0ef8d1b29d56f1e62e87258d755181f": (30.0, 16000, 0, None),
    "7f4a132a52c468683862828397dbf849f26a203dca946fc6ed1ac737b6ac5ddb": (
        30.0, 16000, 0, ("bearing", 10.0, 20.0, 0.5)
    ),
    "41160e2cb17e84067c3929377794fe8479fcc8127d09bbc6c2c5296c20060705": (
        30.0, 16000, 0, ("imbalance", 10.0, 20.0, 0.5)
    ),
    "136c2420cc4184fcf074ea52851b2f4ac787643793de49fef81689eb8f16b3a5": (30.0, 16000, 2024, None),
    "be7b974d3e3d979fa5ce6042fba3c9b441d9d5211416a7f8393a03169126e216": (
        30.0, 16000, 2024, ("bearing", 10.0, 20.0, 0.5)
    ),
    "2bb74dcc2f65ff52c287c6b93df3378cd026aae68d6f1db4e8964f3af3900f95": (
        30.0, 16000, 2024, ("imbalance", 10.0, 20.0, 0.5)
    ),
    "b553c6548ad4905bbb438ee2d80ea88a05e654e5ae6d5574f260cd5cb89e23e2": (  # the demo
        30.0, 48000, 2024, ("bearing", 10.0, 20.0, 0.6)
    ),
    "bea4a33073e82a8b27f66b41b4f769c37e55941a05f217ee4c72246fdd4a2966": (4.0, 22050, 9, None),
    "a150f1699ad139852071df1dd48848153ee968ae32de2bf441f794f535857ce2": (
        7.3, 16000, 3, ("bearing", 0.25, 6.9, 1.0)
    ),
}  # fmt: skip


@pytest.mark.parametrize("digest", FROZEN)
def test_frozen_sound_is_bit_identical(digest: str) -> None:
    seconds, rate, seed, fault = FROZEN[digest]
    x = generate(seconds, rate, seed=seed, fault=Fault(*fault) if fault else None)
    assert hashlib.sha256(x.tobytes()).hexdigest() == digest


def test_nominal_motor_is_the_default() -> None:
    default = generate(3.0, RATE, seed=4)
    assert np.array_equal(default, generate(3.0, RATE, seed=4, motor=Motor(rpm=1470.0, load=0.75)))
    assert not np.array_equal(default, generate(3.0, RATE, seed=4, motor=Motor(load=0.4)))


@pytest.mark.parametrize("kind", KINDS)
def test_same_arguments_same_samples_in_bounded_blocks(kind: str) -> None:
    fault = Fault(kind, 1.2, 2.9, 0.5)
    motor = Motor(rpm=1430.0, load=0.6)
    blocks = list(generate_blocks(4.0, RATE, seed=11, motor=motor, fault=fault))
    assert max(b.size for b in blocks) <= RATE + 64  # one second at a time (+ resampler edge)
    x = np.concatenate(blocks)
    assert x.dtype == np.float32 and x.size == 4 * RATE
    assert x.tobytes() == generate(4.0, RATE, seed=11, motor=motor, fault=fault).tobytes()


def _bands(x: F32) -> npt.NDArray[np.float64]:
    """Levels (dB) of 40 bands of 200 Hz: the spectrum, whatever the tones' phases."""
    power = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    f = np.fft.rfftfreq(x.size, 1 / RATE)
    return np.array(
        [10 * np.log10(power[(f >= lo) & (f < lo + 200)].sum()) for lo in range(0, 8000, 200)]
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("start", "end"), [(2.3, 4.1), (1.75, 2.25)])
def test_a_kind_changes_only_its_interval(kind: str, start: float, end: float) -> None:
    motor = Motor(rpm=1452.0, load=0.55)
    healthy = generate(6.0, RATE, seed=21, motor=motor)
    x = generate(6.0, RATE, seed=21, motor=motor, fault=Fault(kind, start, end, 0.5))
    t = np.arange(x.size) / RATE
    edge = 0.002  # the 48 kHz -> 16 kHz resampling filter reaches about 1 ms
    before, after = t < start - edge, t >= end + edge
    assert np.array_equal(x[before], healthy[before])
    if not np.array_equal(x[after], healthy[after]):  # a speed event left the shaft turned
        assert kind in ("stop", "speed_change")
        assert np.allclose(_bands(x[after]), _bands(healthy[after]), atol=0.5), kind
    inside = (t >= start) & (t < end)
    change = np.sqrt(np.mean((x[inside] - healthy[inside]) ** 2))
    assert change > 0.02 * np.sqrt(np.mean(healthy[inside] ** 2)), kind


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("imbalance", "bearing")])
def test_more_severity_more_change(kind: str) -> None:
    healthy = generate(5.0, RATE, seed=8)
    change = [
        float(np.sum((generate(5.0, RATE, seed=8, fault=Fault(kind, 1.0, 4.0, s)) - healthy) ** 2))
        for s in (0.2, 0.5)
    ]
    assert 0 < change[0] < change[1]


def test_stop_runs_down_and_restarts() -> None:
    healthy = generate(8.0, RATE, seed=2)
    x = generate(8.0, RATE, seed=2, fault=Fault("stop", 2.0, 5.0, 1.0))

    def rms(a: F32, t0: float, t1: float) -> float:
        return float(np.sqrt(np.mean(a[round(t0 * RATE) : round(t1 * RATE)] ** 2)))

    assert rms(x, 3.3, 3.6) < 0.2 * rms(healthy, 3.3, 3.6)  # near silence at the bottom
    assert rms(x, 6.0, 8.0) == pytest.approx(rms(healthy, 6.0, 8.0), rel=0.02)  # running again

    def slot_peak(a: F32, t0: float) -> float:  # the slot tone, 36 x rotation (882 Hz)
        seg = a[round(t0 * RATE) : round(t0 * RATE) + RATE // 4] * np.hanning(RATE // 4)
        f = np.fft.rfftfreq(seg.size, 1 / RATE)
        band = (f > 300) & (f < 1000)
        return float(f[band][np.argmax(np.abs(np.fft.rfft(seg))[band])])

    assert slot_peak(healthy, 2.6) == pytest.approx(882, abs=8)
    assert slot_peak(x, 2.6) < 800  # frequency falls during the run-down
    short = generate(8.0, RATE, seed=2, fault=Fault("stop", 3.0, 3.5, 0.5))
    assert rms(short, 3.2, 3.3) < 0.7 * rms(healthy, 3.2, 3.3)  # a half-second stop dips too


def test_kinds_and_validation() -> None:
    assert set(FAULTS).isdisjoint(BENIGN) and set(KINDS) == set(FAULTS) | set(BENIGN)
    assert all(Fault(k, 0, 1).is_fault for k in FAULTS)
    assert not any(Fault(k, 0, 1).is_fault for k in BENIGN)
    for bad in (
        ("rattle", 0, 1, 0.5),
        ("stop", 2, 1, 0.5),
        ("stop", 0, 1, 1.5),
        ("whine", -1, 1, 0.5),
    ):
        with pytest.raises(ValueError):
            Fault(*bad)
    with pytest.raises(ValueError, match="load"):
        Motor(load=1.5)


@pytest.mark.parametrize("kind", INJECTABLE)
def test_inject_changes_only_the_interval_relative_to_the_recording(kind: str) -> None:
    rec = generate(4.0, 44100, seed=5, motor=Motor(rpm=1420.0))  # stands in for a recording
    fault = Fault(kind, 1.5, 3.0, 0.5)
    y = inject(rec, 44100, fault, seed=9)
    t = np.arange(rec.size) / 44100
    outside = (t < 1.5) | (t >= 3.0)
    assert y.dtype == np.float32 and y.shape == rec.shape
    assert np.array_equal(y[outside], rec[outside]) and not np.array_equal(y, rec)
    # levels follow the recording's own: 20 dB quieter recording, 20 dB quieter fault
    quiet = inject(rec * np.float32(0.1), 44100, fault, seed=9)
    np.testing.assert_allclose(quiet, 0.1 * y, atol=2e-5 * np.abs(y).max())


def test_inject_refuses_what_it_cannot_do() -> None:
    rec = generate(2.0, RATE, seed=5)
    for kind in NOT_INJECTABLE:
        with pytest.raises(ValueError, match="cannot be injected"):
            inject(rec, RATE, Fault(kind, 0.5, 1.0))
    with pytest.raises(ValueError, match="outside"):
        inject(rec, RATE, Fault("whine", 3.0, 4.0))
    with pytest.raises(ValueError, match="mono"):
        inject(np.stack([rec, rec], axis=1), RATE, Fault("whine", 0.5, 1.0))


def test_inject_stop_fades_to_a_residual_level() -> None:
    rec = generate(3.0, RATE, seed=6)
    y = inject(rec, RATE, Fault("stop", 1.0, 1.5, 0.5), seed=1)
    mid = slice(round(1.2 * RATE), round(1.3 * RATE))
    assert np.sqrt(np.mean(y[mid] ** 2)) == pytest.approx(0.1 * np.sqrt(np.mean(rec[mid] ** 2)))


def test_label_windows() -> None:
    path = Path("x.wav")
    rec = Recording("whine/0.5/seed1", "whine", 0.5, path, 20.0, (7.0, 13.0), True)
    starts = np.arange(0.0, 19.0, 0.5)
    labels = label_windows(rec, starts, starts + 1.0, min_overlap=0.5)
    expected = (starts + 1.0 - 7.0 >= 0.5) & (13.0 - starts >= 0.5)
    assert np.array_equal(labels, expected)
    assert labels.sum() == 13 and labels[np.searchsorted(starts, 6.5)]  # 6.5..7.5: half in
    assert not labels[np.searchsorted(starts, 6.0)]
    full = label_windows(rec, starts, starts + 1.0, min_overlap=1.0)
    assert full.sum() == 11  # windows 7..8 up to 12..13
    stop = Recording("stop/0.5/seed2", "stop", 0.5, path, 20.0, (9.0, 9.5), True)
    assert label_windows(stop, [8.75, 9.0, 9.4], [9.75, 10.0, 10.4], 0.5).tolist() == [
        True,
        True,
        False,
    ]
    for benign in (
        Recording("background/0.5/seed3", "background", 0.5, path, 20.0, (7.0, 13.0), False),
        Recording("healthy/seed4", "healthy", 0.0, path, 20.0, None, False),
    ):
        assert not label_windows(benign, starts, starts + 1.0, 0.5).any()
    with pytest.raises(ValueError):
        label_windows(rec, starts, starts, 0.5)
    with pytest.raises(ValueError):
        label_windows(rec, starts, starts + 1.0, 0.0)


def test_streamed_wav_equals_write_wav(tmp_path: Path) -> None:
    x = generate(2.5, RATE, seed=3) * np.float32(4.0)  # clips, like write_wav
    write_wav(tmp_path / "a.wav", x, RATE)
    assert write_wav_blocks(tmp_path / "b.wav", generate_blocks(2.5, RATE, 3), RATE) == x.size
    write_wav_blocks(
        tmp_path / "c.wav", (b * np.float32(4.0) for b in np.array_split(x / 4, 3)), RATE
    )
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "c.wav").read_bytes()


def _read(path: Path) -> tuple[F32, int]:
    info = read_info(path)
    return np.concatenate([select_channel(b, None) for b in iter_blocks(info)]), info.rate


def test_small_synthetic_corpus(tmp_path: Path) -> None:
    corpus = synthetic_corpus(tmp_path, "small")
    assert len(corpus.train) == 6 and len(corpus.test) == 13
    train_seconds = sum(read_info(p).duration for p in corpus.train)
    assert 60 <= train_seconds <= 120
    assert {r.kind for r in corpus.test} == {"healthy", *KINDS}
    manifest = json.loads((tmp_path / "corpus.json").read_text())
    conditions = {r["name"]: r for r in manifest["test"]}
    rpms = [conditions[r.name]["rpm"] for r in corpus.test]
    assert len(set(rpms)) == len(rpms) and TRAIN_RPM[0] <= min(rpms) <= max(rpms) <= TRAIN_RPM[1]
    for rec in corpus.test:
        info = read_info(rec.path)
        assert (info.rate, info.channels, info.bits) == (RATE, 1, 16)
        assert info.duration == rec.seconds == 20.0
        assert rec.is_fault == (rec.kind in FAULTS)
        if rec.kind == "healthy":
            assert rec.fault is None and rec.severity == 0.0
        else:
            assert rec.fault is not None and 0 < rec.fault[0] < rec.fault[1] < rec.seconds
            assert rec.severity == 0.5
    # a file is exactly the generator's sound for its recorded condition and fault
    rec = next(r for r in corpus.test if r.kind == "bearing_inner")
    assert rec.fault is not None
    c = conditions[rec.name]
    fault = Fault(rec.kind, *rec.fault, rec.severity)
    x = generate(20.0, RATE, c["seed"], Motor(rpm=c["rpm"], load=c["load"]), fault)
    assert np.abs(_read(rec.path)[0] - x).max() <= 1 / 32767
    with pytest.raises(ValueError, match="size"):
        synthetic_corpus(tmp_path, "huge")


def test_normal_audio(tmp_path: Path) -> None:
    chunk = normal_audio(3.0, RATE, seed=7)
    assert chunk.dtype == np.float32 and chunk.size == 3 * RATE
    assert np.array_equal(chunk, normal_audio(3.0, RATE, seed=7))
    assert not np.array_equal(chunk, normal_audio(3.0, RATE, seed=8))
    recs = write_normal_audio(tmp_path, 5.0, RATE, seed=7, file_seconds=2.0)
    assert [r.seconds for r in recs] == [2.0, 2.0, 1.0]
    assert all(r.kind == "healthy" and not r.is_fault and r.path.is_file() for r in recs)
    head = 2 * RATE - 64  # the last ms of a file ends its resampler
    assert np.abs(_read(recs[0].path)[0][:head] - chunk[:head]).max() <= 1 / 32767


def test_loop_joins_are_seamless() -> None:
    part = generate(2.0, RATE, seed=12)
    out = loop(part, 7 * RATE, RATE)
    assert out.size == 7 * RATE and np.array_equal(out[: part.size - 800], part[:-800])
    frame = RATE // 50  # 20 ms frames: level steady across the joins, as in the part itself
    level = np.sqrt(np.mean(out[: out.size // frame * frame].reshape(-1, frame) ** 2, axis=1))
    ref = np.sqrt(np.mean(part[: part.size // frame * frame].reshape(-1, frame) ** 2, axis=1))
    assert ref.min() * 0.9 <= level.min() and level.max() <= ref.max() * 1.1


def test_real_corpus(seed_dir: Path, tmp_path: Path) -> None:
    good = seed_dir / "good.wav"
    corpus = real_corpus(good, tmp_path)
    x, rate = _read(good)
    train, train_rate = _read(corpus.train[0])
    assert train_rate == rate and train.size == round(0.6 * x.size)
    healthy = next(r for r in corpus.test if r.kind == "healthy")
    base, _ = _read(healthy.path)
    assert healthy.seconds == 12.0 and base.size == 12 * rate
    kinds = {r.kind for r in corpus.test}
    assert {"stop", "bearing", "whine"} <= kinds and kinds.isdisjoint(NOT_INJECTABLE)
    t = np.arange(base.size) / rate
    for rec in corpus.test:
        if rec.fault is None:
            continue
        y, _ = _read(rec.path)
        inside = (t >= rec.fault[0]) & (t < rec.fault[1])
        assert np.array_equal(y[~inside], base[~inside]), rec.name
        assert not np.array_equal(y[inside], base[inside]), rec.name
    stop = next(r for r in corpus.test if r.kind == "stop" and r.severity == 0.5)
    assert stop.fault == (5.0, 5.5)
    y, _ = _read(stop.path)
    mid = (t >= 5.2) & (t < 5.3)
    assert np.sqrt(np.mean(y[mid] ** 2)) < 0.2 * np.sqrt(np.mean(base[mid] ** 2))
