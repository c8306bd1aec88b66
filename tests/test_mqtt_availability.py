"""MQTT availability per process, connection-failure logging, outbox priorities and event ids:
MqttSink in this process (and one in a child process) against a real Mosquitto."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from amulet_stream.outputs.mqtt.settings import MqttSettings
from amulet_stream.outputs.mqtt.sink import MqttSink

from .servers import Mosquitto, Subscriber, have, wait_until
from .test_mqtt import _score as score

ROOT = Path(__file__).resolve().parents[1]
SHA = "ab" * 32
pytestmark = pytest.mark.skipif(have("mosquitto") is not None, reason=str(have("mosquitto")))


def schema(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "docs" / "schemas" / f"mqtt-{name}.schema.json").read_text())


@pytest.fixture
def broker(tmp_path: Path):
    b = Mosquitto(tmp_path)
    b.start()
    yield b
    b.stop()


def change(stream: str, event: str, **extra: Any) -> dict[str, Any]:
    """A state-change record (records.md): fresh event_id and UTC time."""
    rec: dict[str, Any] = {
        "event": event,
        "stream": stream,
        "file": None,
        "start": 3.0,
        "end": 4.0,
        "score": 0.9 if event == "anomaly" else 0.1,
        "threshold": 0.4,
        "time": "2024-03-01T12:00:00.000Z",
        "event_id": str(uuid.uuid4()),
    }
    if event == "anomaly":  # what an anomaly says changed, as the pipeline writes it
        rec |= {"level_db": 0.4, "level_ref": "model", "cause": "spectrum", "bands": []}
    return {**rec, **extra}


def started(port: int, client_id: str, **kw: Any) -> MqttSink:
    sink = MqttSink(MqttSettings(port=port, client_id=client_id, **kw))
    sink.start()
    return sink


def test_two_processes_keep_separate_availability(broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, "#")
    a = started(broker.port, "mon-a", homeassistant=True)
    b = started(broker.port, "mon-b", homeassistant=True)
    a.add_stream("pump-1", 0.4, SHA)
    b.add_stream("pump-2", 0.4, SHA)
    try:
        wait_until(lambda: a.connected and b.connected, 10, "both connected")
        disc = "homeassistant/binary_sensor/amulet_pump-{}/anomaly/config"
        wait_until(lambda: sub.on(disc.format(1)) and sub.on(disc.format(2)), 10, "discovery")
        for n, client in ((1, "mon-a"), (2, "mon-b")):
            cfg = json.loads(sub.on(disc.format(n))[-1].payload)
            assert cfg["availability"][0]["topic"] == f"amulet/{client}/status"
        assert a.close() == 0
        wait_until(lambda: sub.on("amulet/mon-a/status")[-1].payload == "offline", 10, "a off")
        time.sleep(0.3)
        assert [m.payload for m in sub.on("amulet/mon-b/status")] == ["online"]
        late = Subscriber(broker.port, "amulet/+/status")
        wait_until(lambda: len(late.messages) == 2, 10, "two retained availability topics")
        assert {m.topic: m.payload for m in late.messages} == {
            "amulet/mon-a/status": "offline",
            "amulet/mon-b/status": "online",
        }
        late.close()
    finally:
        b.close()
        sub.close()


CHILD = """
import sys, time
from amulet_stream.outputs.mqtt.settings import MqttSettings
from amulet_stream.outputs.mqtt.sink import MqttSink
sink = MqttSink(MqttSettings(port=int(sys.argv[1]), client_id="victim", homeassistant=True))
sink.start()
sink.add_stream("victim-pump", 0.4, "cd" * 32)
while not sink.connected:
    time.sleep(0.02)
print("up", flush=True)
time.sleep(60)
"""


def test_killed_process_marks_only_its_own_streams_unavailable(broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, "amulet/#")
    survivor = started(broker.port, "survivor")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(broker.port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "up"
        wait_until(lambda: sub.on("amulet/victim/status"), 10, "victim online")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        wait_until(
            lambda: [m.payload for m in sub.on("amulet/victim/status")] == ["online", "offline"],
            10,
            "the last will of the killed process",
        )
        time.sleep(0.3)
        assert survivor.connected
        assert [m.payload for m in sub.on("amulet/survivor/status")] == ["online"]
    finally:
        if child.poll() is None:
            child.kill()
        survivor.close()
        sub.close()


@pytest.mark.parametrize("where", ["closed-port", "nosuchhost.invalid"])
def test_connection_failure_logged_once_per_outage_with_reason(
    where: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="amulet_stream.outputs.mqtt")
    later = Mosquitto(tmp_path)  # its port is closed until later.start()
    host = "127.0.0.1" if where == "closed-port" else where
    reason = "connection refused" if where == "closed-port" else "unknown host"
    sink = MqttSink(MqttSettings(host=host, port=later.port, client_id="lonely"))
    t0 = time.monotonic()
    sink.start()

    def failures() -> list[str]:
        return [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]

    try:
        wait_until(lambda: bool(failures()), 2.0, "the connection failure in the log")
        assert time.monotonic() - t0 < 2.0
        assert f"cannot connect to {host}:{later.port}: {reason}" in failures()[0]
        assert all(r.levelno == logging.WARNING for r in caplog.records if "cannot" in r.msg)
        if where == "closed-port":  # paho retries after 3 s, then 4, 8... up to 30 s
            wait_until(lambda: sink.connect_failures >= 2, 10, "a second attempt")
            time.sleep(0.2)
            assert len(failures()) == 1, "logged once per outage, not once per attempt"
            later.start()
            wait_until(lambda: sink.connected, 15, "the reconnect")
            wait_until(
                lambda: any("failed attempt(s)" in r.getMessage() for r in caplog.records),
                5,
                "the reconnect line",
            )
            line = next(r.getMessage() for r in caplog.records if "failed attempt" in r.msg)
            assert f"connected to 127.0.0.1:{later.port} after " in line
            assert int(line.split(" after ")[1].split()[0]) == sink.connect_failures
    finally:
        sink.close(timeout=1.0)
        later.stop()


def test_scores_never_evict_alerts(tmp_path: Path) -> None:
    """Broker away, queue_limit 2: 50 scores and then an alert; the alert and its state stay,
    the scores are dropped first and counted as scores; once back, the alert goes first."""
    broker = Mosquitto(tmp_path)
    sink = MqttSink(MqttSettings(port=broker.port, client_id="tiny", queue_limit=2, scores=True))
    sink.start()
    sink.add_stream("pump-1", 0.4, SHA)
    try:
        wait_until(lambda: sink.connect_failures >= 1, 5, "the broker to be missing")
        for i in range(50):
            sink.publish_record(score("pump-1", i * 0.25, 0.1))
        alert = change("pump-1", "anomaly")
        sink.publish_record(alert)
        assert sink.dropped_by_kind == {"alert": 0, "state": 0, "score": 48, "other": 0}
        assert sink.queued() == 4
        broker.start()
        sub = Subscriber(broker.port, "amulet/pump-1/#")
        wait_until(lambda: sub.on("amulet/pump-1/alert"), 20, "the alert after the reconnect")
        wait_until(lambda: len(sub.on("amulet/pump-1/score")) == 2, 5, "the two kept scores")
        got = json.loads(sub.on("amulet/pump-1/alert")[0].payload)
        assert got["event_id"] == alert["event_id"]
        order = [m.topic.rsplit("/", 1)[1] for m in sub.messages]
        assert order.index("alert") < order.index("score"), order
        assert [json.loads(m.payload)["start"] for m in sub.on("amulet/pump-1/score")] == [
            12.0,
            12.25,
        ]
        sub.close()
    finally:
        sink.close(timeout=2.0)
        broker.stop()


def test_state_and_alert_share_the_event_id(broker: Mosquitto) -> None:
    sink = started(broker.port, "ids", homeassistant=True)
    sink.add_stream("pump-1", 0.4, SHA)
    sub = Subscriber(broker.port, "amulet/pump-1/#")
    try:
        wait_until(lambda: sink.connected, 10, "connected")
        time.sleep(0.3)
        assert sub.on("amulet/pump-1/state") == [], "no made-up state before the first record"
        records = [
            change("pump-1", "normal"),
            change("pump-1", "anomaly", clip="/var/lib/amulet/clips/pump-1.wav"),
            change("pump-1", "input_problem", score=None, reason="silence", detail="-96 dBFS"),
            {
                "event": "down",
                "stream": "pump-1",
                "file": None,
                "start": None,
                "end": None,
                "score": None,
                "threshold": 0.4,
                "time": "2024-03-01T12:01:00.000Z",
                "event_id": str(uuid.uuid4()),
                "reason": "device 'USB' disappeared",
            },
        ]
        for rec in records:
            sink.publish_record(rec)
        wait_until(lambda: len(sub.on("amulet/pump-1/state")) == 4, 10, "four states")
        wait_until(lambda: len(sub.on("amulet/pump-1/alert")) == 4, 10, "four alerts")
        states = [json.loads(m.payload) for m in sub.on("amulet/pump-1/state")]
        alerts = [json.loads(m.payload) for m in sub.on("amulet/pump-1/alert")]
        for rec, st, al in zip(records, states, alerts, strict=True):
            jsonschema.validate(st, schema("state"))
            jsonschema.validate(al, schema("alert"))
            assert st["event_id"] == al["event_id"] == rec["event_id"]
            assert st["state"] == rec["event"]
            assert {k: st[k] for k in rec} == rec == {k: al[k] for k in rec}
            assert st["model_sha256"] == SHA
        assert states[1]["clip"].endswith("pump-1.wav")
        assert (states[2]["reason"], states[2]["detail"]) == ("silence", "-96 dBFS")
        late = Subscriber(broker.port, "amulet/pump-1/#")
        wait_until(lambda: late.on("amulet/pump-1/state"), 10, "the retained state")
        time.sleep(0.2)
        assert [json.loads(m.payload)["state"] for m in late.messages] == ["down"]
        assert late.messages[0].retain
        late.close()
    finally:
        sink.close()
        sub.close()


def test_a_broker_that_never_answers_is_reported_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    import amulet_stream.outputs.mqtt.outage as mqtt_module

    monkeypatch.setattr(mqtt_module, "SILENT_SECONDS", 1.0)  # 10 s in service
    caplog.set_level(logging.INFO, logger="amulet_stream.outputs.mqtt")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts TCP connections (the kernel does) and never answers MQTT
    port = silent.getsockname()[1]
    sink = MqttSink(MqttSettings(host="127.0.0.1", port=port, client_id="patient"))
    sink.start()
    try:

        def lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if "no answer" in r.getMessage()]

        wait_until(lambda: bool(lines()), 5, "the no-answer warning")
        time.sleep(1.5)
        assert len(lines()) == 1 and f"no answer from 127.0.0.1:{port}" in lines()[0]
        assert not sink.connected
    finally:
        sink.close(timeout=0.5)
        silent.close()
