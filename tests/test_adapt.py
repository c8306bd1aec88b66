"""`amulet-export adapt` (issue 16): a false alarm marked normal on a running daemon is folded
into the model; its clip then replays without an alert, while a fault injected into the same
audio still alerts. Careless use gets one line and exit 2, and nothing is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amulet_stream.audio.wav import iter_blocks, read_info, select_channel
from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate
from amulet_stream.synth.recordings import inject
from amulet_stream.synth.spec import Fault

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


def test_a_false_alarm_marked_normal_is_learned_and_faults_still_alert(tmp_path: Path) -> None:
    rumble = tmp_path / "rumble.wav"  # a background the default model never heard: it alarms
    write_wav(
        rumble, generate(20.0, 16000, seed=7, fault=Fault("background", 0.0, 20.0, 0.8)), 16000
    )
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
    info = read_info(clip)
    audio = np.concatenate([select_channel(b, None) for b in iter_blocks(info)])
    for kind in ("rubbing", "electrical"):  # spectrum and level, on top of the rumble
        faulty = tmp_path / f"clip-with-{kind}.wav"
        fault = Fault(kind, 2.0, info.duration, 0.8)
        write_wav(faulty, inject(audio, info.rate, fault, 3), info.rate)
        assert anomalies(faulty, new) >= 1, kind
    meta = json.loads(
        subprocess.run(
            [BIN / "amulet-stream", "info", str(new)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert meta["adapted"]["normal_files"] == [clip.name]
    assert meta["threshold"] > meta["adapted"]["threshold_before"]


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
