"""MQTT against a real Mosquitto broker on 127.0.0.1: the CLI end to end (replay, run), and
MqttSink's routing, score interval, stream removal and pruning, and its outbox."""

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
import numpy as np
import pytest

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.outputs.mqtt.homeassistant import StreamTopics, discovery_configs
from amulet_stream.outputs.mqtt.outbox import Message, Outbox
from amulet_stream.outputs.mqtt.settings import MqttConfigError, MqttSettings
from amulet_stream.outputs.mqtt.sink import MqttSink
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

from .servers import Mosquitto, Subscriber, binary, free_port, have, wait_until

BIN = Path(sys.executable).parent / "amulet-stream"
ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {
    name: json.loads((ROOT / "docs" / "schemas" / f"mqtt-{name}.schema.json").read_text())
    for name in ("alert", "state", "score")
}
SHA = "ab" * 32
STATES = ("normal", "anomaly", "input_problem", "down")
ENTITIES = [
    "binary_sensor/amulet_{}/anomaly",
    "binary_sensor/amulet_{}/input_problem",
    "sensor/amulet_{}/score",
    "sensor/amulet_{}/state",
    "sensor/amulet_{}/threshold",
]

needs_broker = pytest.mark.skipif(have("mosquitto") is not None, reason=str(have("mosquitto")))


@pytest.fixture
def broker(tmp_path: Path):
    b = Mosquitto(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def fault_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 s at 16 kHz, imbalance from 8 s to 16 s."""
    path = tmp_path_factory.mktemp("mqtt") / "fault.wav"
    write_wav(path, generate(30.0, 16000, seed=41, fault=Fault("imbalance", 8.0, 16.0, 0.8)), 16000)
    return path


def _replay(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN, "replay", *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def _events(stdout: str) -> list[dict]:
    return [r for r in map(json.loads, stdout.splitlines()) if r["event"] in STATES]


def _score(stream: str, start: float, value: float) -> dict[str, Any]:
    return {
        "event": "score",
        "stream": stream,
        "file": None,
        "start": start,
        "end": start + 1.0,
        "score": value,
        "threshold": 0.4,
        "anomaly": value > 0.4,
    }


def _change(stream: str, event: str) -> dict[str, Any]:
    return {
        **_score(stream, 2.0, 0.9 if event == "anomaly" else 0.1),
        "event": event,
        "time": "2024-03-01T12:00:00.000Z",
        "event_id": str(uuid.uuid4()),
    }


@needs_broker
def test_replay_publishes_alerts_state_scores_and_availability(
    broker: Mosquitto, fault_wav: Path, tmp_path: Path
) -> None:
    sub = Subscriber(broker.port, "#")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[mqtt]\nport = {broker.port}\nclient_id = "replay-test"\nscores = true\n'
        'homeassistant = true\n[source]\nstream = "pump-1"\n'
    )
    proc = _replay(fault_wav, "--config", cfg, "--scores")
    assert proc.returncode == 0, proc.stderr
    expected = _events(proc.stdout)
    assert "anomaly" in [e["event"] for e in expected]
    status = "amulet/replay-test/status"
    wait_until(lambda: len(sub.on("amulet/pump-1/alert")) == len(expected), 10, "the alerts")
    wait_until(lambda: [m.payload for m in sub.on(status)] == ["online", "offline"], 10, "status")
    alerts = [json.loads(m.payload) for m in sub.on("amulet/pump-1/alert")]
    states = [json.loads(m.payload) for m in sub.on("amulet/pump-1/state")]
    for a, st, e in zip(alerts, states, expected, strict=True):
        jsonschema.validate(a, SCHEMAS["alert"])
        jsonschema.validate(st, SCHEMAS["state"])
        assert {k: a[k] for k in e} == e, "the alert is the stdout record as is"
        assert st["event_id"] == a["event_id"] == e["event_id"]
        assert st["state"] == e["event"]
    assert all(not m.retain for m in sub.on("amulet/pump-1/alert"))
    printed = [r for r in map(json.loads, proc.stdout.splitlines()) if r["event"] == "score"]
    scores = [json.loads(m.payload) for m in sub.on("amulet/pump-1/score")]
    assert len(scores) == len(printed) > 100  # every window
    for s, p in zip(scores, printed, strict=True):
        jsonschema.validate(s, SCHEMAS["score"])
        assert {k: s[k] for k in p} == p, "the score message is the stdout line as is"
    assert len({s["model_sha256"] for s in scores}) == 1
    sub.close()

    late = Subscriber(broker.port, "#")
    wait_until(lambda: late.on("amulet/pump-1/state") and late.on(status), 10, "retained")
    assert json.loads(late.on("amulet/pump-1/state")[0].payload)["state"] == expected[-1]["event"]
    assert late.on(status)[0].payload == "offline"
    assert all(m.retain for m in late.messages)
    for entity in ENTITIES:
        wait_until(lambda e=entity: late.on(f"homeassistant/{e.format('pump-1')}/config"), 5, e)
    disc = json.loads(late.on(f"homeassistant/{ENTITIES[0].format('pump-1')}/config")[0].payload)
    assert disc["availability"] == [
        {"topic": status, "payload_available": "online", "payload_not_available": "offline"}
    ]
    late.close()


@needs_broker
def test_killed_daemon_leaves_offline_via_last_will(broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, "amulet/+/status")
    mqtt = f"127.0.0.1:{broker.port}"
    proc = subprocess.Popen(
        [BIN, "run", "--source", "stdin", "--rate", "16000", "--mqtt", mqtt, "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: [m.payload for m in sub.messages] == ["online"], 15, "online")
        topic = sub.messages[0].topic
        assert proc.stdin is not None
        proc.stdin.write((np.zeros(16000, "<i2")).tobytes())
        proc.stdin.flush()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_until(
            lambda: [m.payload for m in sub.on(topic)] == ["online", "offline"],
            15,
            "the last will",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()


@needs_broker
def test_broker_outage_loses_no_alert(tmp_path: Path) -> None:
    """Mosquitto stopped for 10 s in the middle of a paced replay: every alert arrives."""
    broker = Mosquitto(tmp_path, persistence=True)
    broker.start()
    sub = Subscriber(broker.port, persistent=True, client_id="outage-subscriber")
    wav = tmp_path / "outage.wav"
    faults = [
        generate(6.0, 16000, seed=s, fault=Fault("imbalance", 0.0, 6.0, 0.8))
        if s % 2
        else generate(7.0, 16000, seed=s)
        for s in range(6)
    ]
    write_wav(wav, np.concatenate(faults), 16000)  # healthy 7 s / faulty 6 s, 3 times: 39 s
    proc = subprocess.Popen(
        [BIN, "replay", wav, "--speed", "2", "--mqtt", f"127.0.0.1:{broker.port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: len(sub.on("amulet/default/state")) >= 1, 15, "first state")
        broker.stop()
        stopped = time.time()
        time.sleep(10)
        broker.start()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        expected = _events(out)
        assert len(expected) >= 4
        wait_until(
            lambda: (
                len({json.loads(m.payload)["event_id"] for m in sub.on("amulet/default/alert")})
                >= len(expected)
            ),
            60,
            "every alert after the reconnect",
        )
        got = [json.loads(m.payload) for m in sub.on("amulet/default/alert")]
        unique: list[dict] = []
        for a in got:  # a re-sent duplicate carries the same event id
            if a["event_id"] not in {u["event_id"] for u in unique}:
                unique.append(a)
        assert [a["event_id"] for a in unique] == [e["event_id"] for e in expected]
        during = [m for m in sub.on("amulet/default/alert") if m.at > stopped]
        assert during, "some alerts were produced during the outage"
        assert "mqtt: disconnected from" in err
        assert err.count(f"mqtt: cannot connect to 127.0.0.1:{broker.port}") == 1, err
        assert "failed attempt(s)" in err
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
        broker.stop()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@needs_broker
@pytest.mark.skipif(have("openssl") is not None, reason=str(have("openssl")))
def test_tls_and_password(tmp_path: Path, fault_wav: Path) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=amulet-test-ca",
        cwd=tmp_path,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=tmp_path,
    )
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        cwd=tmp_path,
    )
    passwd = tmp_path / "passwd"
    tool = binary("mosquitto_passwd") or "mosquitto_passwd"
    subprocess.run(
        [tool, "-b", "-c", str(passwd), "monitor", "s3cret"], check=True, capture_output=True
    )
    broker = Mosquitto(
        tmp_path,
        extra=(
            f"cafile {tmp_path / 'ca.crt'}\ncertfile {tmp_path / 'server.crt'}\n"
            f"keyfile {tmp_path / 'server.key'}\nallow_anonymous false\npassword_file {passwd}"
        ),
    )
    broker.start()
    try:
        tls = {"ca_certs": str(tmp_path / "ca.crt")}
        sub = Subscriber(broker.port, tls=tls, auth=("monitor", "s3cret"))
        (tmp_path / "pw").write_text("s3cret\n")
        (tmp_path / "pw").chmod(0o600)  # a password file others can read is refused
        cfg = tmp_path / "tls.toml"
        cfg.write_text(
            f'[mqtt]\nport = {broker.port}\ntls = true\nca_file = "ca.crt"\n'
            'username = "monitor"\npassword_file = "pw"\n'
        )
        proc = _replay(fault_wav, "--config", cfg)
        assert proc.returncode == 0, proc.stderr
        n = len(_events(proc.stdout))
        wait_until(lambda: len(sub.on("amulet/default/alert")) == n, 15, "alerts over TLS")
        sub.close()
        # a wrong password: refused, said, and the monitor still monitors
        (tmp_path / "pw").write_text("wrong\n")
        proc = _replay(fault_wav, "--config", cfg)
        assert proc.returncode == 0
        assert proc.stderr.count("refused the connection") == 1, proc.stderr
        assert "anomaly" in [e["event"] for e in _events(proc.stdout)]
        # no CA file: the system's CAs do not know the broker's certificate
        cfg.write_text(cfg.read_text().replace('ca_file = "ca.crt"\n', ""))
        proc = _replay(fault_wav, "--config", cfg)
        assert proc.returncode == 0
        line = "TLS: the broker's certificate failed verification (self-signed certificate"
        assert proc.stderr.count(line) == 1, proc.stderr
    finally:
        broker.stop()


@needs_broker
def test_no_broker_at_all_still_monitors(fault_wav: Path) -> None:
    port = free_port()
    t0 = time.monotonic()
    proc = _replay(fault_wav, "--mqtt", f"127.0.0.1:{port}")
    took = time.monotonic() - t0
    assert proc.returncode == 0
    assert "anomaly" in [e["event"] for e in _events(proc.stdout)]
    line = f"mqtt: cannot connect to 127.0.0.1:{port}: connection refused"
    assert proc.stderr.count(line) == 1, proc.stderr
    assert "not delivered at exit (alert " in proc.stderr
    assert took < 15, "no 5 s wait at exit for a broker that is known to be away"


@needs_broker
def test_refused_publish_is_counted_not_retried(tmp_path: Path, fault_wav: Path) -> None:
    """An ACL that lets the monitor publish its status only: the PUBACK reason code says
    'not authorized' for the alerts, which are logged and dropped, not sent again forever."""
    acl = tmp_path / "acl"
    acl.write_text("topic write amulet/+/status\ntopic read #\n")
    broker = Mosquitto(tmp_path, extra=f"acl_file {acl}")
    broker.start()
    try:
        proc = _replay(fault_wav, "--mqtt", f"127.0.0.1:{broker.port}")
        assert proc.returncode == 0, proc.stderr
        assert "broker refused amulet/default/alert: Not authorized" in proc.stderr
        assert "not delivered at exit" not in proc.stderr
    finally:
        broker.stop()


@needs_broker
def test_home_assistant_discovery_is_resent_when_it_comes_online(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cfg = tmp_path / "ha.toml"
    cfg.write_text(f'[mqtt]\nport = {broker.port}\nhomeassistant = true\nclient_id = "ha-1"\n')
    sub = Subscriber(broker.port, "homeassistant/#")
    proc = subprocess.Popen(
        [BIN, "run", "--source", "stdin", "--rate", "16000", "--config", cfg, "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    topic = "homeassistant/sensor/amulet_default/score/config"
    try:
        wait_until(lambda: len(sub.on(topic)) >= 1, 15, "discovery")
        before = len(sub.on(topic))
        sub.client.publish("homeassistant/status", "online", qos=1)
        wait_until(lambda: len(sub.on(topic)) > before, 15, "discovery sent again")
        config = json.loads(sub.on(topic)[-1].payload)
        assert config["state_topic"] == "amulet/default/score"
        assert config["json_attributes_topic"] == "amulet/default/state"
        assert config["availability"][0]["topic"] == "amulet/ha-1/status"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
        sub.close()


def test_discovery_payloads() -> None:
    topics = StreamTopics("pump-1", "amulet/pump-1/state", "amulet/pump-1/score", "amulet/m/status")
    configs = {
        t: json.loads(p)
        for t, p in discovery_configs(
            topics, "homeassistant", "amulet_pump-1", SHA, 0.4226, "9.9"
        ).items()
    }
    assert sorted(configs) == sorted(f"homeassistant/{e.format('pump-1')}/config" for e in ENTITIES)
    for topic, cfg in configs.items():
        key = topic.split("/")[3]
        assert cfg["qos"] == 1
        assert cfg["unique_id"] == cfg["object_id"] == f"amulet_pump-1_{key}"
        assert cfg["availability"][0]["topic"] == "amulet/m/status"
        assert cfg["json_attributes_topic"] == "amulet/pump-1/state"
        assert cfg["device"]["identifiers"] == ["amulet_pump-1"]
    score = configs["homeassistant/sensor/amulet_pump-1/score/config"]
    assert (score["state_topic"], score["state_class"]) == ("amulet/pump-1/score", "measurement")
    assert score["suggested_display_precision"] == 3 and "unit_of_measurement" not in score
    problem = configs["homeassistant/binary_sensor/amulet_pump-1/input_problem/config"]
    assert problem["device_class"] == "problem"


@needs_broker
def test_score_interval_sends_the_highest_score(broker: Mosquitto) -> None:
    """homeassistant on, scores off: one score message per interval, the highest since the
    last one; the one still pending goes at close. scores on: every window."""
    sub = Subscriber(broker.port, "amulet/+/score")
    every = MqttSink(MqttSettings(port=broker.port, client_id="all", scores=True))
    sink = MqttSink(
        MqttSettings(port=broker.port, client_id="ha", homeassistant=True, score_interval=0.5)
    )
    for s, name in ((sink, "pump-1"), (every, "pump-2")):
        s.start()
        s.add_stream(name, 0.4, SHA)
    try:
        wait_until(lambda: sink.connected and every.connected, 10, "connected")
        for i, value in enumerate([0.1, 0.5, 0.2]):
            sink.publish_record(_score("pump-1", i, value))
            every.publish_record(_score("pump-2", i, value))
        time.sleep(0.6)
        sink.publish_record(_score("pump-1", 3, 0.15))
        sink.publish_record(_score("pump-1", 4, 0.3))
        assert sink.close() == 0
        assert every.close() == 0
        wait_until(lambda: len(sub.on("amulet/pump-1/score")) == 3, 5, "three scores")
        got = [json.loads(m.payload) for m in sub.on("amulet/pump-1/score")]
        # 0.1 at once; 0.5 (the highest of 0.5, 0.2, 0.15) when the interval is over; 0.3 at close
        assert [(g["start"], g["score"]) for g in got] == [(0, 0.1), (1, 0.5), (4, 0.3)]
        wait_until(lambda: len(sub.on("amulet/pump-2/score")) == 3, 5, "every score")
    finally:
        sub.close()


@needs_broker
def test_removed_and_pruned_streams_leave_home_assistant(broker: Mosquitto, tmp_path: Path) -> None:
    def retained() -> dict[str, str]:
        late = Subscriber(broker.port, "#")
        time.sleep(0.5)
        late.close()
        return {m.topic: m.payload for m in late.messages}

    first = MqttSink(MqttSettings(port=broker.port, client_id="one", homeassistant=True), tmp_path)
    first.start()
    for stream in ("a", "b", "c"):
        first.add_stream(stream, 0.4, SHA)
        first.publish_record(_change(stream, "normal"))
    wait_until(lambda: first.connected and first.queued() == 0, 10, "delivery")
    assert first.close() == 0
    before = retained()
    for stream in ("a", "b", "c"):
        assert all(f"homeassistant/{e.format(stream)}/config" in before for e in ENTITIES)
        assert json.loads(before[f"amulet/{stream}/state"])["state"] == "normal"
    assert set(json.loads((tmp_path / "mqtt-discovery.json").read_text())["streams"]) == {
        "a",
        "b",
        "c",
    }

    # restart with a new client id and without b: b's entities and state go, and so does
    # the old availability topic; then c is removed (a reload) while running
    second = MqttSink(MqttSettings(port=broker.port, client_id="two", homeassistant=True), tmp_path)
    second.start()
    second.add_stream("a", 0.4, SHA)
    second.add_stream("c", 0.4, SHA)
    second.prune({"a", "c"})
    second.remove_stream("c")
    wait_until(lambda: second.connected and second.queued() == 0, 10, "delivery")
    time.sleep(0.3)
    after = retained()
    assert all(f"homeassistant/{e.format('a')}/config" in after for e in ENTITIES)
    assert json.loads(after["amulet/a/state"])["state"] == "normal"
    for gone in ("b", "c"):
        assert not any(gone in t.split("/") or f"amulet_{gone}" in t for t in after), after
    assert "amulet/one/status" not in after
    assert after["amulet/two/status"] == "online"
    saved = json.loads((tmp_path / "mqtt-discovery.json").read_text())
    assert (saved["availability"], set(saved["streams"])) == ("amulet/two/status", {"a"})
    assert second.close() == 0


@needs_broker
def test_bad_ids_never_reach_the_sender(broker: Mosquitto) -> None:
    for bad in ("a/b", "a+b", "#", ""):
        with pytest.raises(MqttConfigError, match="client_id"):
            MqttSink(MqttSettings(client_id=bad or "/"))
    sink = MqttSink(MqttSettings(port=broker.port, client_id="ids"))
    with pytest.raises(MqttConfigError, match=r"pump\.3"):
        sink.add_stream("pump.3", 0.4, SHA)
    sub = Subscriber(broker.port, "amulet/#")
    sink.start()
    try:
        sink.publish_record(_change("a+b", "anomaly"))
        sink.publish_record(_score("x/y", 0.0, 0.1))
        sink.publish_record(_change("ok", "anomaly"))
        wait_until(lambda: sub.on("amulet/ok/alert"), 10, "the good alert after the bad ones")
        assert sink.dropped_by_kind == {"alert": 1, "state": 0, "score": 1, "other": 0}
        assert [m.topic for m in sub.messages if "status" not in m.topic] == [
            "amulet/ok/alert",
            "amulet/ok/state",
        ]
    finally:
        sink.close()
        sub.close()


def _msg(kind: str, topic: str = "t", retain: bool = False) -> Message:
    return Message(topic, kind, 1, retain, kind)


def test_outbox_priorities_bounds_and_drops() -> None:
    box = Outbox(limit=3, score_limit=2)
    scores = [_msg("score") for _ in range(5)]
    for m in scores:
        box.put(m)
    alert = _msg("alert")
    box.put(alert)
    assert box.peek() is alert, "alerts go before scores"
    box.done(alert)
    assert box.peek() is scores[3]
    assert box.dropped_by_kind == {"alert": 0, "state": 0, "score": 3, "other": 0}
    # a full alert queue drops a superseded retained state first, then the oldest message
    box = Outbox(limit=3, score_limit=1)
    old_state, a1 = _msg("state", "s", True), _msg("alert")
    for m in (old_state, a1, _msg("state", "s", True)):
        box.put(m)
    assert box.put(_msg("alert")) is old_state
    assert box.peek() is a1  # in flight: never evicted
    box.put(_msg("other"))  # evicts the newer state (no newer one supersedes it)
    box.put(_msg("other"))  # evicts the second alert
    assert box.peek() is a1
    assert box.dropped_by_kind == {"alert": 1, "state": 2, "score": 0, "other": 0}
    box.drop(a1)
    assert box.dropped_by_kind["alert"] == 2
    assert box.queued_by_kind() == {"alert": 0, "state": 0, "score": 0, "other": 2}
    with pytest.raises(ValueError, match="kind"):
        box.put(_msg("bogus"))


@needs_broker
def test_two_monitors_with_one_client_id_are_told_so(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the stranger test: they take the session from each other forever, and only
    'disconnected' lines said anything."""
    caplog.set_level(logging.WARNING, logger="amulet_stream.outputs.mqtt")
    one = MqttSink(MqttSettings(port=broker.port, client_id="twin"))
    two = MqttSink(MqttSettings(port=broker.port, client_id="twin"))
    one.start()
    two.start()
    try:
        wait_until(lambda: "is another client using client_id 'twin'" in caplog.text, 40, "a hint")
    finally:
        one.close(0.5)
        two.close(0.5)
