"""amulet-export train: real TensorFlow training (tiny epochs), real ONNX export and scoring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from amulet_export.cli import main
from amulet_stream.scoring.model import Model

BIN = Path(sys.executable).parent
OUTPUTS = {"model.onnx", "train.log", "loss.png", "scores.png", "summary.json"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run amulet-export as a user does, TF_CPP_MIN_LOG_LEVEL left to the CLI's default."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [str(BIN / "amulet-export"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )


@pytest.fixture(scope="module")
def logmel_run(audio_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The CLI as a user runs it: stereo 48 kHz input, prediction on a faulty file."""
    out = tmp_path_factory.mktemp("train") / "out"
    proc = _cli(
        "train",
        "--input-file",
        str(audio_dir / "healthy_48k_stereo.wav"),
        "--output-dir",
        str(out),
        "--epochs",
        "8",
        "--predict-file",
        str(audio_dir / "faulty.wav"),
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc.stderr


def test_terminal_gets_only_our_log(logmel_run: tuple[Path, str]) -> None:
    """TensorFlow's native start-up log (absl, oneDNN, CUDA notices) stays off the terminal."""
    _, stderr = logmel_run
    lines = stderr.splitlines()
    assert lines and all(line.startswith("amulet-export: ") for line in lines), stderr


def test_train_writes_model_log_and_plots(logmel_run: tuple[Path, str]) -> None:
    out, stderr = logmel_run
    names = {p.name for p in out.iterdir()}
    assert OUTPUTS | {"prediction.png", "prediction.csv"} <= names
    assert not any(n.startswith(".") for n in names)
    for png in ("loss.png", "scores.png", "prediction.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epoch 8/8" in stderr and "resampling 48000 Hz -> 16000 Hz" in stderr
    assert "epoch 8/8" in (out / "train.log").read_text()


def test_model_is_self_describing_and_verified(
    logmel_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = logmel_run
    meta = json.loads(
        {p.key: p.value for p in onnx.load(out / "model.onnx").metadata_props}["amulet"]
    )
    assert meta["format_version"] == 1
    assert meta["profile"]["name"] == "logmel-v1" and meta["profile"]["rate"] == 16000
    how = meta["threshold_details"]  # calibrated on stretches of the one file, held out in turn
    assert meta["threshold_method"] == "recordings" and how["quantile"] == 0.99
    assert how["over"] == "stretches of one file" and len(how["alert_levels"]) >= 2
    assert max(how["alert_levels"]) <= meta["threshold"]
    level = meta["level"]  # the trained level range of the level signal
    assert level["low_db"] <= level["median_db"] <= level["high_db"] and level["margin_db"] >= 0
    assert meta["parity"]["max_abs_diff"] <= 1e-5 and len(meta["parity"]["inputs"]) == 8
    assert meta["fingerprint"].startswith("sha256:")
    assert {"tensorflow", "tf2onnx", "onnxruntime"} <= set(meta["versions"])
    held = meta["train_scores"]["held_out"]
    assert held["count"] > 0 and held["q50"] <= held["q99"] <= held["max"]
    assert len(meta["scaler"]["scale"]) == 320
    assert main(["verify", str(out / "model.onnx")]) == 0
    assert capsys.readouterr().out.startswith("OK ")


def test_fault_scores_above_healthy(logmel_run: tuple[Path, str]) -> None:
    out, _ = logmel_run
    rows = [line.split(",") for line in (out / "prediction.csv").read_text().splitlines()[1:]]
    start = np.array([float(r[0]) for r in rows])
    end = np.array([float(r[1]) for r in rows])
    score = np.array([float(r[2]) for r in rows])
    # windows wholly inside the fault (8-14 s) against windows wholly outside it
    in_fault = (start >= 8.0) & (end <= 14.0)
    healthy = (end <= 8.0) | (start >= 14.0)
    assert in_fault.sum() > 10 and healthy.sum() > 30
    assert score[in_fault].min() > score[healthy].max()
    assert Model(out / "model.onnx").threshold < score[in_fault].min()


def test_train_amulet_v1_on_real_recording(
    seed_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "amulet"
    code = main(
        [
            "train",
            "--input_file",
            str(seed_dir / "good.wav"),
            "--output_dir",
            str(out),
            "--profile",
            "amulet-v1",
            "--epochs",
            "3",
            "--silent",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "epoch" not in captured.err  # --silent: the log goes to the file only
    assert "epoch 3/3" in (out / "train.log").read_text()
    assert main(["verify", str(out / "model.onnx")]) == 0
    model = Model(out / "model.onnx")
    assert model.meta.threshold_method == "max"
    assert model.meta.raw["parity"]["max_abs_diff"] <= 1e-5
    assert model.meta.raw["training"]["files"][0]["rate"] == 96000


def test_folder_input_and_amulet_flag_names(audio_dir: Path, tmp_path: Path) -> None:
    """Also --silent in a real process: nothing at all on the terminal, not even TensorFlow's."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("healthy_10s.wav", "other_healthy.wav"):
        (folder / name).write_bytes((audio_dir / name).read_bytes())
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "out"
    proc = _cli(
        "train",
        "--input_dir",
        str(folder),
        "--output_dir",
        str(out),
        "--epochs",
        "2",
        "--threshold-method",
        "max",
        "--silent",
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout == f"{out / 'model.onnx'}\n"
    meta = Model(out / "model.onnx").meta
    assert [f["name"] for f in meta.raw["training"]["files"]] == [
        "healthy_10s.wav",
        "other_healthy.wav",
    ]
    assert meta.threshold_method == "max"


def test_lstm_over_frames_trains_exports_and_scores(audio_dir: Path, tmp_path: Path) -> None:
    """The LSTM over log-mel frames (an evaluation candidate) end to end at 1 epoch: Keras to
    ONNX with its parity check, verified, and the monitor's own replay scores a faulty file."""
    out = tmp_path / "lstm-frames"
    args = ["--input-file", str(audio_dir / "healthy_10s.wav"), "--out", str(out)]
    args += ["--architecture", "lstm-frames", "--epochs", "1", "--threshold-method", "max"]
    proc = _cli("train", *args, "--silent")
    assert proc.returncode == 0, proc.stderr
    assert main(["verify", str(out / "model.onnx")]) == 0
    model = Model(out / "model.onnx")
    assert model.meta.raw["architecture"]["kind"] == "lstm-frames"
    assert model.meta.raw["parity"]["max_abs_diff"] <= 1e-4
    replay = [str(BIN / "amulet-stream"), "replay", str(audio_dir / "faulty.wav"), "--scores"]
    proc = subprocess.run(
        [*replay, "--model", str(out / "model.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    scores = [e["score"] for e in events if e["event"] == "score"]
    assert len(scores) > 20 and np.isfinite(scores).all() and max(scores) > 0
