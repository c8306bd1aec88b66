"""Each command imports what it uses (issue 17): a replay of a file without --mqtt, --metrics
or --config loads neither paho nor prometheus_client, nor the listener, MQTT, history or daemon
modules; asking for metrics does load them (the check can fail)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate

UNUSED = (
    "paho",
    "prometheus_client",
    "sqlite3",
    "ssl",
    "wsgiref",
    "tensorflow",
    "onnx",
    "amulet_stream.http",
    "amulet_stream.service.daemon",
    "amulet_stream.service.listening",
    "amulet_stream.outputs.mqtt.sink",
    "amulet_stream.outputs.mqtt.connection",
    "amulet_stream.outputs.history",
    "amulet_stream.outputs.metrics",
    "amulet_stream.outputs.board",
    "amulet_stream.synth",
)
CODE = """
import json, sys
from amulet_stream.cli.main import main
rc = main(sys.argv[1:])
print(json.dumps([rc, sorted(sys.modules)]), file=sys.stderr)
"""


def loaded(*args: object) -> tuple[int, list[str]]:
    """The exit code and the modules loaded by `amulet-stream ARGS` (in a fresh interpreter)."""
    proc = subprocess.run(
        [sys.executable, "-c", CODE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    rc, modules = json.loads(proc.stderr.strip().splitlines()[-1])
    return rc, modules


def unused(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == u or m.startswith(u + ".") for u in UNUSED)]


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("imports") / "motor.wav"
    write_wav(path, generate(3.0, 16000, seed=1), 16000)
    return path


def test_a_replay_loads_only_what_it_uses(wav: Path) -> None:
    rc, modules = loaded("replay", wav, "-q")
    assert rc == 0 and "amulet_stream.scoring.pipeline" in modules
    assert unused(modules) == []


def test_a_replay_with_metrics_loads_them(wav: Path) -> None:
    rc, modules = loaded("replay", wav, "-q", "--metrics", "127.0.0.1:0")
    assert rc == 0
    assert {"prometheus_client", "amulet_stream.service.listening"} <= set(unused(modules))
    assert not any(m.startswith("paho") for m in modules)
