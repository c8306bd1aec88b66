"""Short faults injected into the real recording alert with default settings; healthy does not.

The model is trained on the first 60 % of ../shared/data/amulet-seed/good.wav (the default
profile and architecture, as `amulet-export train` makes it); the test audio is the rest,
looped to 12 s (export/corpus.py real_corpus), with one fault injected from 5 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amulet_export.corpus import real_corpus
from amulet_export.train import train
from amulet_export.train_config import TrainConfig
from amulet_stream.audio.wav import iter_blocks, read_info
from amulet_stream.audio.wav_write import write_wav
from amulet_stream.scoring.features import DEFAULT_PROFILE
from amulet_stream.synth.recordings import inject
from amulet_stream.synth.spec import Fault

BIN = Path(sys.executable).parent / "amulet-stream"
LEVELS = {"louder": 5.0, "quieter": -5.0}
BURST, BURST_HZ = (5.0, 7.0), 3200.0
FAULTS = {
    "stop": Fault("stop", 5.0, 5.5, 0.5),  # the motor stops for half a second
    "rubbing": Fault("rubbing", 5.0, 6.5, 0.5),  # a 1.5 s transient: rubbing
}


@pytest.fixture(scope="module")
def replayed(seed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Output lines of one `replay` of the healthy loop and each faulty copy, per file name."""
    work = tmp_path_factory.mktemp("real")
    corp = real_corpus(seed_dir / "good.wav", work / "corpus")
    model = train(TrainConfig(corp.train, work / "model", DEFAULT_PROFILE))
    healthy = next(r for r in corp.test if r.kind == "healthy").path
    info = read_info(healthy)
    x = np.concatenate([b[:, 0] for b in iter_blocks(info)])
    files = {"healthy": healthy}
    for name, fault in FAULTS.items():
        files[name] = work / f"{name}.wav"
        write_wav(files[name], inject(x, info.rate, fault, seed=7), info.rate)
    t = np.arange(x.size) / info.rate
    tone = np.where((t >= BURST[0]) & (t < BURST[1]), np.sin(2 * np.pi * BURST_HZ * t), 0.0)
    files["burst"] = work / "burst.wav"  # a whine at 3.2 kHz for 2 s, 10 dB below the motor
    write_wav(files["burst"], x + 0.32 * np.sqrt(np.mean(x**2)) * np.sqrt(2) * tone, info.rate)
    for name, db in LEVELS.items():  # the same machine heard louder or quieter from the middle
        gain = np.where(np.arange(x.size) >= x.size // 2, 10 ** (db / 20), 1.0)
        files[name] = work / f"{name}.wav"
        write_wav(files[name], x * gain, info.rate)
    proc = subprocess.run(
        [BIN, "replay", *files.values(), "--model", model],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, list[dict]] = {name: [] for name in files}
    by_path = {str(p): name for name, p in files.items()}
    for line in proc.stdout.splitlines():
        rec = json.loads(line)
        out[by_path[rec["file"]]].append(rec)
    return out


def test_healthy_real_recording_raises_no_alert(replayed: dict[str, list[dict]]) -> None:
    lines = replayed["healthy"]
    assert [r["event"] for r in lines] == ["normal", "summary"]
    assert lines[-1]["verdict"] == "good" and lines[-1]["windows"] > 30


@pytest.mark.parametrize("name", list(FAULTS))
def test_short_fault_alerts_within_two_seconds(replayed: dict[str, list[dict]], name: str) -> None:
    fault = FAULTS[name]
    alerts = [r for r in replayed[name] if r["event"] == "anomaly"]
    assert alerts, f"{name}: no alert ({replayed[name][-1]})"
    first = alerts[0]
    # the alerting window overlaps the fault, and the alert comes within 2 s of its onset
    assert first["end"] > fault.start and first["start"] < fault.end
    assert first["end"] - fault.start <= 2.0
    assert replayed[name][-1]["verdict"] == "defect"


@pytest.mark.parametrize("name", list(LEVELS))
def test_a_level_change_of_5_db_alerts_as_a_level_change(
    replayed: dict[str, list[dict]], name: str
) -> None:
    """A steady real recording, 5 dB louder (quieter) from its middle: one alert, caused by
    the level, saying by how much; nothing before the change."""
    alerts = [r for r in replayed[name] if r["event"] == "anomaly"]
    assert alerts, f"{name}: no alert ({replayed[name][-1]})"
    first = alerts[0]
    assert first["cause"] == "level", first
    assert first["level_db"] == pytest.approx(LEVELS[name], abs=1.0), first
    assert first["level_ref"] == "model" and first["start"] >= 6.0 - 1.0


def test_a_burst_at_3_2_khz_names_its_band(replayed: dict[str, list[dict]]) -> None:
    """A tone burst at 3.2 kHz in the real recording: the alert's first or second band holds
    3.2 kHz, louder than expected."""
    alerts = [r for r in replayed["burst"] if r["event"] == "anomaly"]
    assert alerts, f"burst: no alert ({replayed['burst'][-1]})"
    bands = alerts[0]["bands"]
    assert 1 <= len(bands) <= 3 and alerts[0]["cause"] in ("spectrum", "both"), alerts[0]
    hits = [b for b in bands[:2] if b["low_hz"] <= BURST_HZ <= b["high_hz"]]
    assert hits and hits[0]["db"] > 0, bands
