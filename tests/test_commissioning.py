"""Commissioning: a stream learns its site (a background the training audio lacked) from its
first seconds of audio, then alerts on a fault but not on that background; a restarted daemon
keeps what it learned; `amulet-stream learn` and an MQTT command make it learn again."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.outputs.mqtt.routing import parse_command
from amulet_stream.scoring.commission import LearnedError, learned_from
from amulet_stream.scoring.model import Model, default_model_path
from amulet_stream.synth.motor import generate
from amulet_stream.synth.recordings import inject
from amulet_stream.synth.spec import Fault

from .servers import Mosquitto, Subscriber, have, wait_until
from .test_daemon import Daemon, stream

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "amulet-stream"
RATE = 16000
FAULT_AT = 40.0


@pytest.fixture(scope="module")
def rumble(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """60 s of a motor with a steady background rumble (the top of a 300 s passing rumble,
    within 0.5 dB of its peak), the same with rubbing from 40 s, and 12 s alone."""
    d = tmp_path_factory.mktemp("rumble")
    whole = generate(300.0, RATE, seed=3, fault=Fault("background", 0.0, 300.0, 0.4))
    x = whole[120 * RATE : 180 * RATE]
    out = {"rumble": d / "rumble.wav", "fault": d / "fault.wav", "short": d / "short.wav"}
    write_wav(out["rumble"], x, RATE)
    write_wav(out["fault"], inject(x, RATE, Fault("rubbing", FAULT_AT, 60.0, 0.8), seed=7), RATE)
    write_wav(out["short"], x[: 12 * RATE], RATE)
    return out


def replay(*args: object) -> list[dict]:
    proc = subprocess.run(
        [BIN, "replay", *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def events(lines: list[dict]) -> list[dict]:
    return [r for r in lines if r["event"] not in ("score", "summary")]


def test_the_rumble_alarms_without_commissioning(rumble: dict[str, Path]) -> None:
    """The premise: the shipped model never heard this background and alarms on it."""
    alerts = [e for e in events(replay(rumble["rumble"])) if e["event"] == "anomaly"]
    assert alerts and alerts[0]["end"] < FAULT_AT


def test_commissioning_learns_the_rumble_and_still_alerts_on_the_fault(
    rumble: dict[str, Path],
) -> None:
    got = events(replay(rumble["fault"], "--learn", 20))
    assert got[0]["event"] == "learning" and got[0]["learn_seconds"] == 20
    alerts = [e for e in got if e["event"] == "anomaly"]
    assert alerts, got
    assert alerts[0]["start"] >= FAULT_AT - 1.0, alerts[0]  # nothing on the rumble
    learned = alerts[0]["learned"]
    assert learned["threshold"] >= Model(default_model_path()).threshold
    assert learned["seconds"] == 20 and learned["suspect"] is None
    assert alerts[0]["level_ref"] == "commissioned"


def test_a_restarted_daemon_keeps_what_it_learned(rumble: dict[str, Path], tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    state = tmp_path / "state"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{state}"\n\n'
        + stream("m1", rumble["short"], realtime=False)
        + "[stream.detector]\nlearn_seconds = 6\n"
    )
    cfg.chmod(0o600)
    first = Daemon(cfg)
    assert first.proc.wait(60) == 0, first.stderr.decode()
    first.stop()
    got = [r for r in first.records if r["event"] != "score"]
    assert [r["event"] for r in got][:1] == ["learning"]
    saved = json.loads((state / "learned" / "m1.json").read_text())
    assert saved["model_sha256"] == Model(default_model_path()).sha256
    again = Daemon(cfg)
    assert again.proc.wait(60) == 0, again.stderr.decode()
    again.stop()
    states = [r for r in again.records if r["event"] != "score"]
    assert states and all(r["event"] != "learning" for r in states), states
    assert states[0]["learned"]["threshold"] == saved["threshold"]
    # what it learned folded into a new model file: the daemon takes it without learning again
    adapted = tmp_path / "adapted.onnx"
    proc = subprocess.run(
        [
            *(BIN.parent / "amulet-export", "adapt", default_model_path()),
            *("--feedback", state, "--stream", "m1", "-o", adapted),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and "stream's learned values" in proc.stderr, proc.stderr
    cfg.write_text(cfg.read_text().replace('kind = "file"', f'kind = "file"\nmodel = "{adapted}"'))
    third = Daemon(cfg)
    assert third.proc.wait(60) == 0, third.stderr.decode()
    third.stop()
    states = [r for r in third.records if r["event"] != "score"]
    assert states and all(r["event"] != "learning" for r in states), states
    assert states[0]["learned"]["threshold"] == pytest.approx(saved["threshold"])
    assert states[0]["learned"]["seconds"] == saved["seconds"]


def test_learned_values_of_another_model_or_malformed_are_refused() -> None:
    good = {"model_sha256": "a" * 64, "threshold": 0.4, "level": None, "seconds": 30}
    assert learned_from(good, "a" * 64).threshold == 0.4
    for doc, sha in (
        (good, "b" * 64),
        ({**good, "threshold": -1}, "a" * 64),
        ({**good, "threshold": float("nan")}, "a" * 64),
        ({**good, "seconds": True}, "a" * 64),
        ({**good, "level": {"low_db": 1, "high_db": 0, "median_db": 0, "margin_db": 0}}, "a" * 64),
        ([1, 2], "a" * 64),
    ):
        with pytest.raises(LearnedError):
            learned_from(doc, sha)


def test_mqtt_command_payloads() -> None:
    assert parse_command(b'{"learn_seconds": 30}') == 30.0
    assert parse_command(b'{"learn_seconds": null}') == 0.0
    bad = [b"learn", b'{"learn_seconds": 0}', b'{"learn_seconds": 1e9}', b"[30]", b"{" * 5000]
    bad += [b'{"learn_seconds": true}', b'{"learn_seconds": 5, "x": 1}']
    for payload in bad:
        assert parse_command(payload) is None


@pytest.mark.parametrize("how", ["learn-command", "mqtt-command", "mqtt-commands-off"])
def test_a_running_daemon_learns_again_when_asked(
    rumble: dict[str, Path], tmp_path: Path, how: str
) -> None:
    reason = have("mosquitto")
    if reason:
        pytest.skip(reason)
    broker = Mosquitto(tmp_path)
    broker.start()
    state = tmp_path / "state"
    commands = "true" if how == "mqtt-command" else "false"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{state}"\n\n[mqtt]\nport = {broker.port}\n'
        f'client_id = "learner"\ncommands = {commands}\n\n'
        + stream("m1", rumble["short"], realtime=True, loop=True)
        + "[stream.detector]\nlearn_seconds = 2\n"
    )
    cfg.chmod(0o600)
    sub = Subscriber(broker.port, "amulet/m1/state")
    d = Daemon(cfg)
    try:
        wait_until(lambda: (state / "learned" / "m1.json").exists(), 30, "the first learning")
        asked = time.monotonic()
        if how == "learn-command":
            proc = subprocess.run(
                [BIN, "learn", "--state-dir", state, "--stream", "m1", "--seconds", "2"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["event"] == "learn_requested"
        else:
            sub.client.publish("amulet/m1/command", json.dumps({"learn_seconds": 2}), qos=1)

        def again() -> bool:
            return len(d.events("learning")) >= 2

        if how == "mqtt-commands-off":
            time.sleep(4)
            assert not again(), "a command was taken with [mqtt] commands off"
        else:
            wait_until(again, 15, "learning again")
            assert time.monotonic() - asked < 10
            wait_until(
                lambda: (
                    sum(
                        json.loads(m.payload).get("state") == "learning"
                        for m in sub.on("amulet/m1/state")
                    )
                    >= 2
                ),
                10,
                "the learning state over MQTT",
            )
            schema = json.loads((ROOT / "docs" / "schemas" / "mqtt-state.schema.json").read_text())
            for m in sub.on("amulet/m1/state"):  # learning, and the learned values after it
                jsonschema.validate(json.loads(m.payload), schema)
    finally:
        d.stop()
        sub.close()
        broker.stop()


def test_the_evaluation_measures_commissioning(rumble: dict[str, Path], tmp_path: Path) -> None:
    """`evaluate`'s background-with-commissioning figure runs the runtime's commissioning: a
    stream that learned on 12 s of the rumble stays quiet on the rumble, one that learned on
    the clean motor does not."""
    from amulet_export.evaluate_site import commissioned_alerts

    clean = tmp_path / "clean.wav"
    write_wav(clean, generate(12.0, RATE, seed=3), RATE)
    model = Model(default_model_path())
    assert commissioned_alerts(model, rumble["short"], rumble["rumble"]) == 0
    assert commissioned_alerts(model, clean, rumble["rumble"]) >= 1
