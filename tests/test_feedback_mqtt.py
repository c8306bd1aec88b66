"""Feedback over MQTT (issue 16) against a real Mosquitto: with `[mqtt] feedback = true` a label
on <prefix>/<stream>/feedback lands in the history, Home Assistant's discovered button (its
payload as Home Assistant sends it) marks the latest alert normal, the clip is copied apart from
retention and moves with a changed label; with feedback off the topic changes nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import paho.mqtt.publish as publish
import pytest

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

from .servers import Mosquitto, Subscriber, have, wait_until
from .test_daemon import BIN, Daemon, stream

pytestmark = pytest.mark.skipif(have("mosquitto") is not None, reason=str(have("mosquitto")))


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    audio = np.concatenate(
        [
            generate(4.0, 16000, seed=1),
            generate(8.0, 16000, seed=2, fault=Fault("imbalance", 0.0, 8.0, 0.8)),
        ]
    )
    path = tmp_path_factory.mktemp("feedback") / "faulty.wav"
    write_wav(path, audio, 16000)
    return path


def labelled(state: Path, label: str) -> list[str]:
    out = subprocess.run(
        [BIN, "events", "--state-dir", str(state), "--label", label],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [json.loads(line)["event_id"] for line in out.splitlines()]


def run(tmp_path: Path, audio: Path, broker: Mosquitto, feedback: bool) -> tuple[Daemon, Path]:
    state = tmp_path / "state"
    cfg = tmp_path / "f.toml"
    cfg.write_text(
        stream("m1", audio, realtime=True, loop=True)
        + f'[daemon]\nstate_dir = "{state}"\n\n'
        + f'[clips]\nfolder = "{state / "clips"}"\nbefore_seconds = 2\nafter_seconds = 0.5\n\n'
        + f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nhomeassistant = true\n'
        + f"feedback = {str(feedback).lower()}\n"
    )
    return Daemon(cfg), state


def test_labels_over_mqtt_and_the_home_assistant_button(faulty: Path, tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    ha = Subscriber(broker.port, "homeassistant/#")
    d, state = run(tmp_path, faulty, broker, feedback=True)
    try:
        (alert,) = d.wait_for("anomaly", "m1", timeout=30)[:1]
        topic = "homeassistant/button/amulet_m1/mark_normal/config"
        wait_until(lambda: bool(ha.on(topic)), 20, "the button's discovery config")
        button = json.loads(ha.on(topic)[-1].payload)
        assert button["command_topic"] == "amulet/m1/feedback"
        clips = state / "clips"
        wait_until(lambda: any(clips.glob(f"m1-*-{alert['event_id'][:8]}.wav")), 20, "its clip")
        # what Home Assistant publishes when the button is pressed
        publish.single(
            button["command_topic"],
            button["payload_press"],
            hostname="127.0.0.1",
            port=broker.port,
            qos=1,
        )
        wait_until(lambda: labelled(state, "normal") == [alert["event_id"]], 20, "the label")
        normal = state / "feedback" / "m1" / "normal"
        assert [p.suffix for p in sorted(normal.iterdir())] == [".json", ".wav"]
        for p in [state / "feedback", *(state / "feedback").rglob("*")]:  # private, as the rest
            assert p.stat().st_mode & 0o777 == (0o700 if p.is_dir() else 0o600), p
        body = json.dumps({"event_id": alert["event_id"], "label": "fault", "note": "bearing"})
        publish.single("amulet/m1/feedback", body, hostname="127.0.0.1", port=broker.port, qos=1)
        wait_until(lambda: labelled(state, "fault") == [alert["event_id"]], 20, "the new label")
        assert not list(normal.iterdir())  # the clip moved with the label
        assert len(list((state / "feedback" / "m1" / "fault").glob("*.wav"))) == 1
        for bad in (b"not json", b'{"event_id": "nosuch", "label": "normal"}', b'{"label": "x"}'):
            publish.single("amulet/m1/feedback", bad, hostname="127.0.0.1", port=broker.port, qos=1)
        refused = (b"feedback on amulet/m1/feedback not understood", b"no such alert kept")
        wait_until(
            lambda: d.stderr.count(refused[0]) == 2 and refused[1] in d.stderr, 20, "refusals"
        )
        assert labelled(state, "fault") == [alert["event_id"]]
    finally:
        d.stop()
        ha.close()
        broker.stop()


def test_feedback_off_changes_nothing(faulty: Path, tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    ha = Subscriber(broker.port, "homeassistant/#")
    d, state = run(tmp_path, faulty, broker, feedback=False)
    try:
        (alert,) = d.wait_for("anomaly", "m1", timeout=30)[:1]
        body = json.dumps({"event_id": alert["event_id"], "label": "normal"})
        publish.single("amulet/m1/feedback", body, hostname="127.0.0.1", port=broker.port, qos=1)
        wait_until(
            lambda: bool(ha.on("homeassistant/sensor/amulet_m1/score/config")), 20, "discovery"
        )
        d.wait_for("score", "m1", n=len(d.events("score", "m1")) + 20, timeout=20)  # time passes
        assert labelled(state, "normal") == [] and not (state / "feedback").exists()
        assert not ha.on("homeassistant/button/amulet_m1/mark_normal/config")
    finally:
        d.stop()
        ha.close()
        broker.stop()
