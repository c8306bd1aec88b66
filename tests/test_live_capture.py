"""Real PortAudio capture from an ALSA `file` plugin device reading a raw file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

BIN = Path(sys.executable).parent / "amulet-stream"
RATE = 16000
SECONDS = 16.0


def _portaudio_reason() -> str | None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sounddevice"], capture_output=True, text=True, check=False
    )
    return None if proc.returncode == 0 else f"PortAudio not loadable: {proc.stderr.strip()}"


@pytest.fixture(scope="module")
def alsa_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    reason = _portaudio_reason()
    if reason:
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("alsa")
    pcm = np.round(
        32767 * generate(SECONDS, RATE, seed=31, fault=Fault("imbalance", 4.0, 8.0, 0.8))
    )
    audio = (pcm / 32768).astype(np.float32)  # what the wav reader makes of 16-bit PCM
    (home / "in.raw").write_bytes(audio.astype("<f4").tobytes())
    write_wav(home / "in.wav", pcm / 32767, RATE)
    # PortAudio hides PCMs named file/null/hw..., so the device has its own name
    (home / ".asoundrc").write_text(
        'pcm.amuletcap {\n  type file\n  slave.pcm "null"\n  file "/dev/null"\n'
        f'  infile "{home / "in.raw"}"\n  format "raw"\n}}\n'
    )
    return home, audio


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home)}


def test_samples_reaching_the_ring_buffer_equal_the_file(alsa_home) -> None:
    home, audio = alsa_home
    script = (
        "import numpy as np, sys\n"
        "from amulet_stream.audio.devices import resolve\n"
        "from amulet_stream.audio.sources import DeviceSource\n"
        "dev = resolve('amuletcap')\n"
        f"src = DeviceSource(dev.index, {RATE}, 1, buffer_seconds=60, duration={SECONDS})\n"
        "got = np.concatenate([b.samples for b in src.blocks()])\n"
        "np.save(sys.argv[1], got)\n"
        "print(src.ring.overflowed, src.input_overflows)\n"
    )
    out = home / "got.npy"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got = np.load(out)
    assert got.size == audio.size
    np.testing.assert_array_equal(got, audio.astype(np.float32))
    assert proc.stdout.split() == ["0", "0"]


def _events(out: str) -> list[tuple[str, float, float, float]]:
    return [
        (r["event"], r["start"], r["end"], r["score"])
        for r in map(json.loads, out.splitlines())
        if r["event"] != "summary"
    ]


def test_live_events_equal_replay_events(alsa_home) -> None:
    home, _ = alsa_home
    live = subprocess.run(
        [
            BIN,
            "run",
            "--device",
            "amuletcap",
            "--rate",
            str(RATE),
            "--duration",
            str(SECONDS),
            "--buffer",
            "60",
            "--scores",
        ],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert live.returncode == 0, live.stderr
    replay = subprocess.run(
        [BIN, "replay", home / "in.wav", "--scores"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    got, want = _events(live.stdout), _events(replay.stdout)
    assert got == want
    assert [e for e, *_ in got if e != "score"] == ["normal", "anomaly", "normal"]


def test_unknown_device_lists_devices(alsa_home) -> None:
    home, _ = alsa_home
    proc = subprocess.run(
        [BIN, "run", "--device", "no-such-mic"],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "device 'no-such-mic' is not an input device" in proc.stderr
    assert "amuletcap" in proc.stderr
    listing = subprocess.run(
        [BIN, "devices"], env=_env(home), capture_output=True, text=True, timeout=60, check=False
    )
    names = [json.loads(line)["name"] for line in listing.stdout.splitlines()]
    assert "amuletcap" in names
