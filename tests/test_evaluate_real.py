"""`amulet-export evaluate --dataset` on real recordings of a real machine (the shared MIMII
fan): folds by whole recording, the closed-form candidates and the default with few epochs,
the loudness baseline beside them. Each fold trains on 5 normal recordings (the threshold's
held-out calibration fits a model per training recording: 10 took 2.5 times as long). The
full run (every candidate, 5 folds, 20 epochs) is in docs/evaluation/real/ (docs/evaluation.md
has its command)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAN = ROOT.parent / "shared" / "data" / "real" / "mimii-fan-id00"
BIN = Path(sys.executable).parent / "amulet-export"


def test_real_fan_cross_validated_by_whole_recording(tmp_path: Path) -> None:
    if not FAN.is_dir():
        pytest.skip(f"the shared real recordings are not at {FAN} (../shared is absent)")
    out = tmp_path / "real"
    proc = subprocess.run(
        [
            *(BIN, "evaluate", "--dataset", FAN, "--candidates", "pca,mahalanobis,dense-ae"),
            *("--folds", "2", "--train-files", "5", "--epochs", "3", "--out", out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    assert doc["normal"] == 20 and doc["anomaly"] == 20 and doc["folds"] == 2
    assert doc["loudness"]["auc"] > 0.9  # the anomalous fan is louder: the baseline says so
    for name, c in doc["candidates"].items():
        normal = [r for r in c["recordings"] if r["label"] == "normal"]
        assert len(normal) == 20 and len({r["name"] for r in normal}) == 20, name  # once each
        assert c["anomalies_tested"] == 40, name
        assert c["auc"] >= 0.9, (name, c["auc"])
        assert 0.0 <= c["spectrum_auc"] <= 1.0, (name, c["spectrum_auc"])  # measured, not NaN
        assert c["normal_alerted"] == 0, (name, c["normal_alerted_names"])
        assert c["anomalies_alerted"] >= 36, (name, c["anomalies_alerted"])
    table = (out / "evaluation.md").read_text()
    assert "| loudness alone" in table and "spectrum alone: clip AUC" in table
    assert "| loudness alone" in table and all(f"| {n} |" in table for n in doc["candidates"])
    for png in ("roc.png", "recordings.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_dataset_refuses_careless_input(tmp_path: Path) -> None:
    (tmp_path / "normal").mkdir()
    for args, words in (
        ([tmp_path / "nowhere"], "no such folder"),
        ([tmp_path], "0 normal and 0 anomalous"),
        ([tmp_path, "--folds", "1"], "--folds must be at least 2"),
        ([tmp_path, "--train-files", "0"], "--train-files must be at least 1"),
    ):
        proc = subprocess.run(
            [BIN, "evaluate", "--dataset", *map(str, args), "--candidates", "pca"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 2 and words in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_state_directory_s_labelled_clips_are_a_dataset(tmp_path: Path) -> None:
    """`evaluate --dataset STATE_DIR`: the clips operators marked normal and fault (feedback/),
    not the unlabelled ones beside them (clips/)."""
    from amulet_export.realdata import find
    from amulet_stream.audio.wav_write import write_wav
    from amulet_stream.synth.motor import generate

    layout = {
        "feedback/m1/normal": 3,
        "feedback/m2/normal": 1,
        "feedback/m1/fault": 2,
        "clips": 4,  # unlabelled: not part of it
    }
    for folder, n in layout.items():
        (tmp_path / folder).mkdir(parents=True)
        for i in range(n):
            write_wav(tmp_path / folder / f"m-{i}.wav", generate(0.5, 16000, seed=i), 16000)
    data = find(tmp_path)
    assert len(data.normal) == 4 and len(data.anomaly) == 2
    assert all("feedback" in p.parts for p in data.normal + data.anomaly)
