"""MQTT alerts against a real Mosquitto broker on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from amulet_stream.synth import Fault, generate
from amulet_stream.wav import write_wav

from .servers import Mosquitto, Subscriber, binary, have, wait_until

BIN = Path(sys.executable).parent / "amulet-stream"
ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {
    name: json.loads((ROOT / "docs" / "schemas" / f"mqtt-{name}.schema.json").read_text())
    for name in ("alert", "state", "score")
}

pytestmark = pytest.mark.skipif(have("mosquitto") is not None, reason=str(have("mosquitto")))


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
    return [r for r in map(json.loads, stdout.splitlines()) if r["event"] in ("anomaly", "normal")]


def test_replay_publishes_alerts_state_and_availability(
    broker: Mosquitto, fault_wav: Path, tmp_path: Path
) -> None:
    sub = Subscriber(broker.port)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f"[mqtt]\nport = {broker.port}\nscores = true\nhomeassistant = true\n"
        '[source]\nstream = "pump-1"\n'
    )
    proc = _replay(fault_wav, "--config", cfg)
    assert proc.returncode == 0, proc.stderr
    expected = _events(proc.stdout)
    assert [e["event"] for e in expected] == ["anomaly", "normal"]
    wait_until(lambda: len(sub.on("amulet/pump-1/alert")) == 2, 10, "two alerts")
    wait_until(
        lambda: any(m.payload == "offline" for m in sub.on("amulet/status")),
        10,
        "offline after a clean exit",
    )
    alerts = [json.loads(m.payload) for m in sub.on("amulet/pump-1/alert")]
    for a in alerts:
        jsonschema.validate(a, SCHEMAS["alert"])
    assert [(a["event"], a["start"], a["score"]) for a in alerts] == [
        (e["event"], e["start"], e["score"]) for e in expected
    ]
    assert len({a["event_id"] for a in alerts}) == 2
    assert all(not m.retain for m in sub.on("amulet/pump-1/alert"))
    states = [json.loads(m.payload) for m in sub.on("amulet/pump-1/state")]
    for s in states:
        jsonschema.validate(s, SCHEMAS["state"])
    assert [s["state"] for s in states][-3:] == ["normal", "anomaly", "normal"]
    scores = [json.loads(m.payload) for m in sub.on("amulet/pump-1/score")]
    assert len(scores) == (934 - 26) // 8 + 1  # 30 s: 934 vectors, a window every 8
    for s in scores:
        jsonschema.validate(s, SCHEMAS["score"])
    assert [m.payload for m in sub.on("amulet/status")][:1] == ["online"]
    sub.close()

    late = Subscriber(broker.port, "#")
    wait_until(
        lambda: late.on("amulet/pump-1/state") and late.on("amulet/status"), 10, "retained messages"
    )
    assert json.loads(late.on("amulet/pump-1/state")[0].payload)["state"] == "normal"
    assert late.on("amulet/status")[0].payload == "offline"
    assert all(m.retain for m in late.messages)
    disc = late.on("homeassistant/binary_sensor/amulet_pump-1/anomaly/config")
    assert disc and json.loads(disc[0].payload)["availability_topic"] == "amulet/status"
    late.close()


def test_killed_daemon_leaves_offline_via_last_will(broker: Mosquitto, tmp_path: Path) -> None:
    sub = Subscriber(broker.port)
    proc = subprocess.Popen(
        [
            BIN,
            "run",
            "--source",
            "stdin",
            "--rate",
            "16000",
            "--mqtt",
            f"127.0.0.1:{broker.port}",
            "-q",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: [m.payload for m in sub.on("amulet/status")] == ["online"], 15, "online")
        assert proc.stdin is not None
        proc.stdin.write((np.zeros(16000, "<i2")).tobytes())
        proc.stdin.flush()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_until(
            lambda: [m.payload for m in sub.on("amulet/status")] == ["online", "offline"],
            15,
            "the last will",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()


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
        assert [(a["event"], a["start"]) for a in unique] == [
            (e["event"], e["start"]) for e in expected
        ]
        during = [m for m in sub.on("amulet/default/alert") if m.at > stopped]
        assert during, "some alerts were produced during the outage"
        assert "disconnected" in err
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
        broker.stop()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


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
        cfg = tmp_path / "tls.toml"
        cfg.write_text(
            f'[mqtt]\nport = {broker.port}\ntls = true\nca_file = "ca.crt"\n'
            'username = "monitor"\npassword_file = "pw"\n'
        )
        proc = _replay(fault_wav, "--config", cfg)
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: len(sub.on("amulet/default/alert")) == 2, 15, "alerts over TLS")
        sub.close()
        # a wrong password: refused, said, and the monitor still monitors
        (tmp_path / "pw").write_text("wrong\n")
        proc = _replay(fault_wav, "--config", cfg)
        assert proc.returncode == 0
        assert "refused the connection" in proc.stderr
        assert [e["event"] for e in _events(proc.stdout)] == ["anomaly", "normal"]
    finally:
        broker.stop()


def test_no_broker_at_all_still_monitors(fault_wav: Path, tmp_path: Path) -> None:
    from .servers import free_port

    proc = _replay(fault_wav, "--mqtt", f"127.0.0.1:{free_port()}")
    assert proc.returncode == 0
    assert [e["event"] for e in _events(proc.stdout)] == ["anomaly", "normal"]


def test_refused_publish_is_counted_not_retried(tmp_path: Path, fault_wav: Path) -> None:
    """An ACL that lets the monitor publish its status only: the PUBACK reason code says
    'not authorized' for the alerts, which are logged and dropped, not sent again forever."""
    acl = tmp_path / "acl"
    acl.write_text("topic write amulet/status\ntopic read #\n")
    broker = Mosquitto(tmp_path, extra=f"acl_file {acl}")
    broker.start()
    try:
        proc = _replay(fault_wav, "--mqtt", f"127.0.0.1:{broker.port}")
        assert proc.returncode == 0, proc.stderr
        assert "broker refused amulet/default/alert: Not authorized" in proc.stderr
        assert "not delivered at exit" not in proc.stderr
    finally:
        broker.stop()


def test_home_assistant_discovery_is_resent_when_it_comes_online(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cfg = tmp_path / "ha.toml"
    cfg.write_text(f"[mqtt]\nport = {broker.port}\nhomeassistant = true\n")
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
        assert config["state_topic"] == "amulet/default/state"
        assert config["availability_topic"] == "amulet/status"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
        sub.close()
