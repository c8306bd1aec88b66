"""`amulet-export adapt` (issue 16): a false alarm marked normal on a running daemon is folded
into the model; its clip then replays without an alert, while a fault injected into the same
audio still alerts. Closed-form models are refitted exactly, others retrained where their
training audio is given. Careless use gets one line and exit 2, and nothing is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amulet_stream.audio.wav import iter_blocks, read_info, select_channel
from amulet_stream.audio.wav_write import write_wav
from amulet_stream.scoring.features import PROFILES
from amulet_stream.synth.motor import generate
from amulet_stream.synth.recordings import inject
from amulet_stream.synth.spec import Fault
from export import dataset, linear
from export.train_data import augment, scaler

from .test_console import alert_with_clip, call, start

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "default.onnx"
BIN = Path(sys.executable).parent


def anomalies(wav: Path, model: Path) -> int:
    proc = subprocess.run(
        [BIN / "amulet-stream", "replay", str(wav), "--model", str(model)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return sum(json.loads(line)["event"] == "anomaly" for line in proc.stdout.splitlines())


def adapt(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "amulet-export", "adapt", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def write_rumble(path: Path) -> Path:
    """20 s of the motor with a background rumble the training audio lacked: it alarms."""
    write_wav(path, generate(20.0, 16000, seed=7, fault=Fault("background", 0.0, 20.0, 0.8)), 16000)
    return path


def faults_alert(clip: Path, model: Path, tmp_path: Path) -> None:
    """Rubbing and supply-hum sidebands injected into the clip (severity 0.8) alert."""
    info = read_info(clip)
    audio = np.concatenate([select_channel(b, None) for b in iter_blocks(info)])
    for kind in ("rubbing", "electrical"):  # spectrum and level, on top of the rumble
        faulty = tmp_path / f"clip-with-{kind}.wav"
        fault = Fault(kind, 2.0, info.duration, 0.8)
        write_wav(faulty, inject(audio, info.rate, fault, 3), info.rate)
        assert anomalies(faulty, model) >= 1, kind


def train(tmp_path: Path, architecture: str, *more: str) -> Path:
    """A model trained on 30 s of the healthy motor (no rumble)."""
    folder = tmp_path / "training"
    folder.mkdir()
    write_wav(folder / "healthy.wav", generate(30.0, 16000, seed=1), 16000)
    out = tmp_path / architecture
    subprocess.run(
        [
            *(BIN / "amulet-export", "train", "--input-dir", folder, "--output-dir", out),
            *("--profile", "logmel-v1", "--architecture", architecture, "--silent", *more),
        ],
        capture_output=True,
        timeout=300,
        check=True,
    )
    return out / "model.onnx"


def test_a_false_alarm_marked_normal_is_learned_and_faults_still_alert(tmp_path: Path) -> None:
    rumble = write_rumble(tmp_path / "rumble.wav")
    d, base = start(tmp_path / "site", rumble, "[ui]\nfeedback = true\n", clip=(6, 2))
    try:
        alert = alert_with_clip(base)
        status, event = call(f"{base}/api/events/{alert['event_id']}/feedback", {"label": "normal"})
        assert status == 200 and event["label"] == "normal"
    finally:
        d.stop()
    state = tmp_path / "site" / "state"
    (clip,) = (state / "feedback" / "motor-1" / "normal").glob("*.wav")
    assert anomalies(clip, MODEL) >= 1  # the false alarm, replayed
    new = tmp_path / "adapted.onnx"
    proc = adapt(MODEL, "--feedback", state, "--stream", "motor-1", "-o", new)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(new)
    assert "1 clip(s) marked normal" in proc.stderr and "threshold 0.326" in proc.stderr
    assert anomalies(clip, new) == 0
    faults_alert(clip, new, tmp_path)
    meta = json.loads(
        subprocess.run(
            [BIN / "amulet-stream", "info", str(new)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert meta["adapted"]["normal_files"] == [clip.name]
    assert meta["threshold"] > meta["adapted"]["threshold_before"]


@pytest.mark.parametrize("kind", linear.KINDS)
def test_closed_form_models_are_refitted_exactly(tmp_path: Path, kind: str) -> None:
    model = train(tmp_path, kind)
    rumble = write_rumble(tmp_path / "rumble.wav")
    assert anomalies(rumble, model) >= 1
    new = tmp_path / "adapted.onnx"
    proc = adapt(model, "--normal", rumble, "-o", new)
    assert proc.returncode == 0, proc.stderr
    assert f"{kind} refitted exactly" in proc.stderr
    assert anomalies(rumble, new) == 0
    faults_alert(rumble, new, tmp_path)
    # exactly: the sums the file keeps equal those of its training vectors plus the rumble's
    import onnx

    profile = PROFILES["logmel-v1"]
    before, after = (linear.Stats.from_model(onnx.load(str(p))) for p in (model, new))
    assert before is not None and after is not None
    doc = json.loads(
        subprocess.run(
            [BIN / "amulet-stream", "info", str(model)], capture_output=True, check=True
        ).stdout
    )
    scale = np.asarray(doc["scaler"]["scale"], np.float32)
    bias = np.asarray(doc["scaler"]["bias"], np.float32)
    vectors = augment(profile, dataset.load([rumble], profile).vectors)
    expected = before.add(linear.Stats.of(linear.scaled(vectors, scale, bias)))
    assert after.count == expected.count
    np.testing.assert_allclose(after.outer, expected.outer, rtol=1e-12)
    # and the graph is what a fit on all those vectors builds
    built, _, _ = linear.build(kind, expected, scale, bias)
    weights = [(t.name, onnx.numpy_helper.to_array(t)) for t in built.graph.initializer]
    got = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(new)).graph.initializer}
    for name, value in weights:
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-9, err_msg=name)


def test_the_exact_sums_give_the_fit_of_all_vectors_at_once(tmp_path: Path) -> None:
    profile = PROFILES["logmel-v1"]
    for name, seed, fault in (("a", 1, None), ("b", 7, Fault("background", 0.0, 20.0, 0.8))):
        write_wav(tmp_path / f"{name}.wav", generate(20.0, 16000, seed=seed, fault=fault), 16000)
    a, b = (dataset.load([tmp_path / f"{n}.wav"], profile).vectors for n in "ab")
    scale, bias, _ = scaler(profile, a)
    x = np.concatenate([a, b])
    for kind in linear.KINDS:
        _, desc_all, at_once = linear.fit(kind, x, scale, bias)
        sums = linear.Stats.of(linear.scaled(a, scale, bias))
        sums = sums.add(linear.Stats.of(linear.scaled(b, scale, bias)))
        _, desc_sums, folded = linear.build(kind, sums, scale, bias)
        assert desc_all == desc_sums
        np.testing.assert_allclose(folded(x), at_once(x), rtol=1e-5, atol=1e-7)


def test_other_models_are_retrained_on_their_training_audio(tmp_path: Path) -> None:
    model = train(tmp_path, "dense", "--epochs", "2")
    rumble = write_rumble(tmp_path / "rumble.wav")
    assert anomalies(rumble, model) >= 1
    new = tmp_path / "adapted.onnx"
    proc = adapt(model, "--normal", rumble, "--input-dir", tmp_path / "training", "-o", new)
    assert proc.returncode == 0, proc.stderr
    assert "retrained on 2 file(s), 50.0 s (1 marked normal)" in proc.stderr
    assert anomalies(rumble, new) == 0
    faults_alert(rumble, new, tmp_path)
    proc = adapt(model, "--normal", rumble, "--input-dir", tmp_path / "nowhere", "-o", new)
    assert proc.returncode == 2 and "--input-dir" in proc.stderr and "no such folder" in proc.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((), "adapt needs --feedback STATE_DIR --stream ID, or --normal FILE"),
        (("--feedback", "{tmp}/nowhere", "--stream", "m1"), "no such folder"),
        (("--feedback", "{tmp}"), "--feedback needs --stream ID"),
        (("--feedback", "{tmp}", "--stream", "m1"), "nothing to fold in: 0 clip(s)"),
        (("--normal", "{tmp}/missing.wav"), "--normal {tmp}/missing.wav: no such file"),
        (("--normal", "{tmp}/notes.wav"), "notes.wav"),
    ],
)
def test_careless_use_gets_one_line_and_nothing_written(
    tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    (tmp_path / "notes.wav").write_text("not audio")
    out = tmp_path / "new.onnx"
    proc = adapt(MODEL, *(a.format(tmp=tmp_path) for a in args), "-o", out)
    assert proc.returncode == 2 and words.format(tmp=tmp_path) in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
    proc = adapt(tmp_path / "notes.wav", "--normal", MODEL, "-o", out)  # not a model
    assert proc.returncode == 2 and "notes.wav" in proc.stderr and not out.exists()
    proc = adapt(MODEL, "--normal", tmp_path / "notes.wav", "-o", MODEL)
    assert proc.returncode == 2 and "-o must name a new file" in proc.stderr


def test_an_imported_amulet_model_is_recalibrated_with_a_warning(
    seed_dir: Path, tmp_path: Path
) -> None:
    """AMULET's model names its architecture in words: recalibrated, not refitted; the rumble
    it never heard lifts the threshold far, and adapt says what that risks."""
    seed = tmp_path / "seed.onnx"
    subprocess.run(
        [BIN / "amulet-export", "import-seed", seed_dir / "example_model", "-o", seed],
        capture_output=True,
        check=True,
    )
    new = tmp_path / "adapted.onnx"
    proc = adapt(seed, "--normal", write_rumble(tmp_path / "rumble.wav"), "-o", new)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "refitted" not in proc.stderr and "the adapted model may miss faults" in proc.stderr
    assert anomalies(tmp_path / "rumble.wav", new) == 0
