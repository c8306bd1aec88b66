"""import-seed: AMULET's trained model scores good.wav exactly like AMULET did."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from amulet_export.cli import main
from amulet_stream.audio.sources import FileSource
from amulet_stream.audio.wav import read_info
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.pipeline import StreamPipeline

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def seed_model(seed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seed") / "seed.onnx"
    proc = subprocess.run(
        [BIN / "amulet-export", "import-seed", str(seed_dir / "example_model"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def _replay_rows(model: Model, wav: Path) -> tuple[np.ndarray, np.ndarray]:
    """Scores and start samples (at 22050 Hz) of every AMULET row, through the pipeline."""
    info = read_info(wav)
    pipe = StreamPipeline(model, info.rate)
    records = [r for b in FileSource(info).blocks() for r in pipe.feed(b)] + pipe.finish()
    rows = [r for r in records if r["event"] == "score"]
    starts = np.array([round(r["start"] * model.profile.rate) for r in rows]) + 1024
    return np.array([r["score"] for r in rows]), starts


def test_seed_model_reproduces_amulet_scores(seed_model: Path, seed_dir: Path) -> None:
    ref = json.loads((seed_dir / "reference_good.json").read_text())
    model = Model(seed_model)
    assert model.profile.name == "amulet-v1"
    assert model.threshold == pytest.approx(ref["threshold"])
    scores, starts = _replay_rows(model, seed_dir / "good.wav")
    expected = np.array([r["mae"] for r in ref["rows"]])
    assert scores.shape == (59,)
    # the same resampler as AMULET's librosa (soxr HQ) at the source: 2.2e-7 here (float32
    # sums), was 0.0051 with the earlier polyphase filter
    assert np.abs(scores - expected).max() < 1e-5
    names = [
        f"{round(k * 2048 / 22050, 1)}-{round((k + 1) * 2048 / 22050, 1)}"
        for k in range(starts.size)
    ]
    assert names == [r["name"] for r in ref["rows"]]
    verdict = "defect" if (scores > model.threshold).any() else "good"
    assert verdict == ref["verdict"] == "good"
    flags = scores > model.threshold
    assert flags.tolist() == [r["anomaly"] for r in ref["rows"]]


def test_verify_accepts_seed_model(seed_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(seed_model)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("OK ") and "amulet-v1" in line and "0.4226" in line


def test_files_named_one_by_one(seed_dir: Path, tmp_path: Path) -> None:
    d = seed_dir / "example_model"
    out = tmp_path / "one_by_one.onnx"
    code = main(
        [
            "import-seed",
            "-o",
            str(out),
            "--h5",
            str(d / "sound_anomaly_detection.h5"),
            "--scaler",
            str(d / "scaler"),
            "--threshold",
            str(d / "anomaly_threshold"),
        ]
    )
    assert code == 0 and Model(out).threshold == pytest.approx(0.4226)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_foreign_pickles_and_h5_are_refused(
    seed_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = seed_dir / "example_model"
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_scaler"
    evil.write_bytes(pickle.dumps(_Evil(marker)))
    out = tmp_path / "x.onnx"
    args = ["import-seed", str(d), "-o", str(out)]
    assert main([*args, "--scaler", str(evil)]) == 2
    err = capsys.readouterr().err
    assert str(evil) in err and "refuses to load" in err
    assert not marker.exists() and not out.exists()

    not_float = tmp_path / "thr"
    not_float.write_bytes(pickle.dumps("0.5"))
    assert main([*args, "--threshold", str(not_float)]) == 2
    assert "expected a positive number" in capsys.readouterr().err

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as fh:
        cfg = {
            "class_name": "Model",
            "config": {
                "layers": [{"name": "dense", "class_name": "Dense", "config": {"units": 8}}]
            },
        }
        fh.attrs["model_config"] = json.dumps(cfg)
    assert main([*args, "--h5", str(foreign)]) == 2
    assert "not AMULET's LSTM autoencoder" in capsys.readouterr().err

    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n" + bytes(200))
    assert main([*args, "--h5", str(corrupt)]) == 2
    assert "not a readable Keras .h5 model" in capsys.readouterr().err
    assert not out.exists()
