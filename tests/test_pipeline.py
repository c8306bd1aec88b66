"""The streaming pipeline: scores bit-identical however audio arrives; too-short recordings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amulet_stream.audio.sources import Block
from amulet_stream.audio.wav_write import write_wav
from amulet_stream.scoring.integrity import IntegrityCheck
from amulet_stream.scoring.levels import level_range
from amulet_stream.scoring.model import Model, default_model_path
from amulet_stream.scoring.pipeline import StreamPipeline
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

BIN = Path(sys.executable).parent / "amulet-stream"


def _records(model: Model, x: np.ndarray, rate: int, block: int, hop: int) -> list[tuple]:
    pipe = StreamPipeline(model, rate, hop=hop)
    recs = []
    for i in range(0, x.size, block):
        recs += pipe.feed(Block(x[i : i + block], None))
    recs += pipe.finish()
    return [(r["event"], r["start"], r["end"], r["score"]) for r in recs]


@pytest.mark.parametrize("rate", [16000, 44100])
def test_scores_bit_identical_across_block_sizes_at_the_finest_hop(rate: int) -> None:
    model = Model(default_model_path())
    x = generate(12.0, rate, seed=21, fault=Fault("bearing", 5.0, 8.0, 0.6))
    want = _records(model, x, rate, x.size, 1)
    assert sum(e == "score" for e, *_ in want) == (
        (12 * 16000 - 1024) // 512 + 1 - 4 - 26 + 1
    )  # one window per vector: 375 - 26 + 1
    assert "anomaly" in [e for e, *_ in want]
    for block in (1000, 4096, 12345):
        assert _records(model, x, rate, block, 1) == want


def test_window_hop_only_picks_windows(tmp_path: Path) -> None:
    model = Model(default_model_path())
    x = generate(6.0, 16000, seed=2)
    fine = [r for r in _records(model, x, 16000, 5000, 1) if r[0] == "score"]
    coarse = [r for r in _records(model, x, 16000, 5000, 8) if r[0] == "score"]
    assert coarse == fine[::8]


def test_too_short_recording_is_not_good(tmp_path: Path) -> None:
    short = tmp_path / "short.wav"
    write_wav(short, generate(0.6, 16000, seed=1), 16000)
    proc = subprocess.run(
        [BIN, "replay", short, "--fail-on-anomaly"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["verdict"] == "too_short" and summary["windows"] == 0
    assert (
        summary["problem"] == "too short to analyse: 0.60 s of audio, the model needs "
        "at least 0.99 s"
    )
    assert "too short to analyse" in proc.stderr
    amulet = subprocess.run(
        [BIN, "replay", short, "--format", "amulet-json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert amulet.returncode == 2
    doc = json.loads(amulet.stdout)
    assert doc["verdict"] == "too_short" and doc["Analysis"] == [] and "0.60 s" in doc["error"]


def test_input_problems_come_in_time_order_whatever_the_block_length() -> None:
    """An input problem is announced before the first window that ends after it took effect,
    not when its block was read: with blocks of 0.25 s to 10 s of 48 kHz audio (a block
    may hold seconds of windows before the problem), the same state events in the same
    order, at non-decreasing times, and the same scores."""
    model = Model(default_model_path())
    rate = 48000
    x = generate(30.0, rate, seed=4)
    x[9 * rate : 12 * rate] = np.clip(x[9 * rate : 12 * rate] * 30, -1, 1)  # clipping
    x[18 * rate : 21 * rate] = 0.0  # the input goes silent
    runs = []
    for seconds in (0.25, 1.37, 2.73, 10.0):
        pipe = StreamPipeline(
            model, rate, integrity=IntegrityCheck(rate, level_range(model.meta.raw))
        )
        block = round(seconds * rate)
        recs = [
            r for i in range(0, x.size, block) for r in pipe.feed(Block(x[i : i + block], None))
        ]
        recs += pipe.finish()
        runs.append([(r["event"], r["end"], r["score"], r.get("reason")) for r in recs])
    events = [e for e in runs[0] if e[0] != "score"]
    assert [(e[0], e[3]) for e in events] == [
        ("normal", None),
        ("input_problem", "clipping"),
        ("normal", None),
        ("input_problem", "silence"),
        ("normal", None),
    ]
    ends = [e[1] for e in runs[0]]
    assert ends == sorted(ends)
    assert all(run == runs[0] for run in runs[1:])
