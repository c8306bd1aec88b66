"""Training stores the input level range of its audio in the model; the monitor reads it back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from amulet_export.cli import main as export_main
from amulet_stream.audio.sources import FileSource
from amulet_stream.audio.wav import iter_blocks, read_info
from amulet_stream.audio.wav_write import write_wav
from amulet_stream.cli.main import main as stream_main
from amulet_stream.scoring.integrity import IntegrityCheck
from amulet_stream.scoring.levels import level_range
from amulet_stream.scoring.model import Model, default_model_path
from amulet_stream.synth.motor import generate

F32 = npt.NDArray[np.float32]
RATE = 48000


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 s of 48 kHz stereo: the motor at full level for 6 s, then 12 dB quieter; channel 1
    is channel 0 at half the amplitude (-6 dB)."""
    motor = generate(12.0, RATE, seed=6)
    motor[6 * RATE :] *= 10 ** (-12 / 20)
    path = tmp_path_factory.mktemp("levels") / "two_levels.wav"
    write_wav(path, np.stack([motor, 0.5 * motor], axis=1), RATE)
    return path


@pytest.fixture(scope="module")
def model(stereo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny closed-form (PCA) model trained in seconds on channel 1 of the stereo file."""
    out = tmp_path_factory.mktemp("train") / "out"
    args = ["train", "--input-file", str(stereo), "--out", str(out)]  # as evaluate says it
    args += ["--architecture", "pca", "--channel", "1", "--silent"]
    assert export_main(args) == 0
    return out / "model.onnx"


def _expected(stereo: Path) -> dict[str, float]:
    """The same distribution computed here from the wav's channel 1 in 0.25 s blocks."""
    x = np.concatenate([b[:, 1] for b in iter_blocks(read_info(stereo))]).astype(np.float64)
    n = RATE // 4
    blocks = x[: x.size // n * n].reshape(-1, n)
    db = 20 * np.log10(np.sqrt((blocks**2).mean(axis=1)))
    p1, p50, p99 = np.percentile(db, [1, 50, 99])
    return {"p1": p1, "p50": p50, "p99": p99, "min": db.min(), "max": db.max()}


def test_model_stores_the_level_of_the_channel_it_learned(model: Path, stereo: Path) -> None:
    doc = Model(model).meta.raw["input_level_dbfs"]
    assert set(doc) == {"p1", "p50", "p99", "min", "max"}
    for key, value in _expected(stereo).items():
        assert doc[key] == pytest.approx(value, abs=0.051), key
        assert doc[key] == round(doc[key], 1)
    # the motor is at -22 dBFS: channel 1 (-6 dB) holds -28 (loud half) and -40 (quiet half)
    assert doc["min"] <= doc["p1"] < doc["p50"] < doc["p99"] <= doc["max"]
    assert -41.5 < doc["p1"] < -38.5 and -29.5 < doc["p99"] < -26.5
    assert level_range(Model(model).meta.raw) == (doc["p1"], doc["p99"])


def test_info_shows_the_level(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert stream_main(["info", str(model)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["input_level_dbfs"] == Model(model).meta.raw["input_level_dbfs"]


def test_monitor_holds_input_to_the_trained_range(model: Path, stereo: Path) -> None:
    """The training audio itself passes the input checks; the same 40 dB quieter does not."""
    info = read_info(stereo)
    x = np.concatenate([b.samples for b in FileSource(info, 1).blocks()])
    rng = level_range(Model(model).meta.raw)
    assert IntegrityCheck(info.rate, rng).push(x) == []
    quiet = IntegrityCheck(info.rate, rng).push((x * 0.01).astype(np.float32))
    assert [c.reason for _, c in quiet] == ["level_low"]


def test_default_model_carries_its_level() -> None:
    """models/default.onnx was trained on generated sound at about -22 dBFS."""
    lo_hi = level_range(Model(default_model_path()).meta.raw)
    assert lo_hi is not None and -25.0 < lo_hi[0] <= lo_hi[1] < -19.0, lo_hi
