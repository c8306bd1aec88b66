"""Shared fixtures: the AMULET seed data from ../shared, generated motor audio, tiny models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

ROOT = Path(__file__).resolve().parents[1]
SEED_DIR = ROOT.parent / "shared" / "data" / "amulet-seed"
SEED_REASON = f"AMULET seed data not found at {SEED_DIR} (../shared is absent)"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# config files writable by group are refused: the tests write theirs under umask 022 whatever
# the account's own (002 on some distributions)
os.umask(0o022)


@pytest.fixture(scope="session")
def seed_dir() -> Path:
    """../shared/data/amulet-seed, or skip with the reason."""
    if not (SEED_DIR / "good.wav").is_file():
        pytest.skip(SEED_REASON)
    return SEED_DIR


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated recordings: healthy 20 s at 48 kHz stereo, healthy 10 s, faulty 20 s."""
    d = tmp_path_factory.mktemp("audio")
    healthy = generate(20.0, 48000, seed=1)
    write_wav(d / "healthy_48k_stereo.wav", np.stack([healthy, 0.5 * healthy], axis=1), 48000)
    write_wav(d / "healthy_10s.wav", generate(10.0, 16000, seed=3), 16000)
    write_wav(d / "other_healthy.wav", generate(20.0, 16000, seed=4), 16000)
    fault = Fault("imbalance", 8.0, 14.0, 0.8)
    write_wav(d / "faulty.wav", generate(20.0, 16000, seed=5, fault=fault), 16000)
    return d


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fuzzers' input counts (their `fuzz_*_inputs` properties) at the end of every run."""
    lines = [
        f"{report.nodeid}: {value} inputs, 0 failures"
        for report in terminalreporter.stats.get("passed", [])
        for name, value in report.user_properties
        if name.startswith("fuzz_") and name.endswith("_inputs")
    ]
    if lines:
        terminalreporter.section("fuzzers")
        for line in lines:
            terminalreporter.write_line(line)
