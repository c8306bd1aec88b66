"""No alert lost: fault injection on loopback against a real Mosquitto. Every state change the
monitor prints (normal, anomaly, input_problem, down: each one goes to <prefix>/<stream>/alert)
must reach a subscriber at least once, and exactly once after de-duplication by event_id: the
broker stopped with SIGTERM or SIGKILL and started again during a paced replay and during
`run`; a TCP proxy that cuts and stalls the connection; the daemon SIGKILLed right after an
alert and started again (broker up, and broker down until after the restart); a subscriber
that reads slowly; an exit with the broker away (the alerts wait in the state directory)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

from .proxy import Proxy
from .servers import Mosquitto, Subscriber, have, wait_until
from .test_daemon import Daemon, stream

BIN = Path(sys.executable).parent / "amulet-stream"
STATES = ("normal", "anomaly", "input_problem", "down")
RATE = 16000

pytestmark = pytest.mark.skipif(have("mosquitto") is not None, reason=str(have("mosquitto")))


@pytest.fixture(scope="module")
def cycles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 s: healthy 4 s / faulty 5 s, twice (about four state changes)."""
    parts = [
        generate(5.0, RATE, seed=s, fault=Fault("imbalance", 0.0, 5.0, 0.8))
        if s % 2
        else generate(4.0, RATE, seed=s)
        for s in range(4)
    ]
    path = tmp_path_factory.mktemp("lost") / "cycles.wav"
    write_wav(path, np.concatenate(parts), RATE)
    return path


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lost") / "healthy.wav"
    write_wav(path, generate(8.0, RATE, seed=2), RATE)
    return path


def state_changes(records: list[dict]) -> list[str]:
    return [r["event_id"] for r in records if r["event"] in STATES]


def delivered(sub: Subscriber, stream_id: str) -> list[str]:
    """Event ids of the alerts received, duplicates (re-sent alerts) removed, in order."""
    seen: dict[str, None] = {}
    for m in sub.on(f"amulet/{stream_id}/alert"):
        seen.setdefault(json.loads(m.payload)["event_id"], None)
    return list(seen)


def wait_delivered(sub: Subscriber, stream_id: str, expected: list[str], timeout: float) -> None:
    wait_until(
        lambda: set(expected) <= set(delivered(sub, stream_id)),
        timeout,
        f"alerts {expected}, got {delivered(sub, stream_id)}",
    )
    assert delivered(sub, stream_id) == expected  # in order, nothing extra


def subscribed_again(broker: Mosquitto, sub: Subscriber) -> None:
    """Wait until the subscriber is back on a restarted broker (a probe message reaches it)."""

    def probe_arrived() -> bool:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        try:
            c.connect("127.0.0.1", broker.port)
            c.loop_start()
            c.publish("amulet/probe/alert", '{"event_id": "probe"}', qos=1).wait_for_publish(2)
            c.disconnect()
            c.loop_stop()
        except (OSError, RuntimeError, ValueError):
            return False
        time.sleep(0.2)
        return bool(sub.on("amulet/probe/alert"))

    wait_until(probe_arrived, 20, "the subscriber back on the restarted broker")


def mqtt_section(port: int, **keys: object) -> str:
    lines = ["[mqtt]", 'host = "127.0.0.1"', f"port = {port}", "keepalive = 5"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def daemon_section(state: Path) -> str:
    return f'[daemon]\nstate_dir = "{state}"\n'


def outage(rig: Rig, how: signal.Signals) -> None:
    """Stop the broker with `how` and start it again after 3 s; the monitor (behind the proxy)
    gets through only once the subscriber is back on it, else it would publish to nobody."""
    assert rig.broker.proc is not None
    rig.proxy.block(True)
    rig.broker.proc.send_signal(how)
    rig.broker.proc.wait(10)
    rig.proxy.cut()
    time.sleep(3)
    rig.broker.start()
    subscribed_again(rig.broker, rig.sub)
    rig.proxy.block(False)


@dataclass
class Rig:
    """A broker, a proxy in front of it (the monitor's way in), a subscriber on the broker."""

    broker: Mosquitto
    proxy: Proxy
    sub: Subscriber
    state: Path

    def config(self, path: Path, streams: str = "") -> Path:
        path.write_text(streams + mqtt_section(self.proxy.port) + daemon_section(self.state))
        return path


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    broker = Mosquitto(tmp_path)
    broker.start()
    proxy = Proxy(broker.port)
    sub = Subscriber(broker.port)
    try:
        yield Rig(broker, proxy, sub, tmp_path / "state")
    finally:
        sub.close()
        proxy.close()
        broker.stop()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_broker_restarted_during_a_paced_replay(
    cycles: Path, tmp_path: Path, rig: Rig, how: signal.Signals
) -> None:
    cfg = rig.config(tmp_path / "r.toml")
    proc = subprocess.Popen(
        [BIN, "replay", cycles, "--speed", "2", "--config", cfg, "--stream", "default"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: len(rig.sub.on("amulet/default/alert")) >= 1, 20, "the first alert")
        outage(rig, how)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        expected = state_changes([json.loads(line) for line in out.splitlines()])
        assert len(expected) >= 3, out
        wait_delivered(rig.sub, "default", expected, 30)
        assert "mqtt: disconnected from" in err
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_broker_restarted_while_the_daemon_runs(
    cycles: Path, tmp_path: Path, rig: Rig, how: signal.Signals
) -> None:
    d = Daemon(rig.config(tmp_path / "d.toml", stream("m1", cycles)))
    try:
        d.wait_for("normal", "m1", timeout=20)
        outage(rig, how)
        assert d.proc.wait(60) == 0, d.stderr.decode()  # the file ends: exit 0
        d.stop()
        expected = state_changes(d.records)
        assert len(expected) >= 3, d.records
        wait_delivered(rig.sub, "m1", expected, 30)
    finally:
        d.stop()


def test_a_proxy_that_cuts_and_stalls_the_connection_loses_nothing(
    cycles: Path, tmp_path: Path, rig: Rig
) -> None:
    d = Daemon(rig.config(tmp_path / "p.toml", stream("m1", cycles)))
    try:
        d.wait_for("normal", "m1", timeout=20)
        assert rig.proxy.cut() >= 1  # a reset in the middle of the stream
        d.wait_for("anomaly", "m1", timeout=20)
        rig.proxy.stall(True)  # then a connection that goes quiet: no bytes either way
        time.sleep(6)
        rig.proxy.stall(False)
        assert d.proc.wait(60) == 0, d.stderr.decode()
        d.stop()
        expected = state_changes(d.records)
        assert len(expected) >= 3
        wait_delivered(rig.sub, "m1", expected, 40)
        assert rig.proxy.accepted >= 2  # it did reconnect
    finally:
        d.stop()


@pytest.mark.parametrize("broker_up", [True, False], ids=["broker-up", "broker-down"])
def test_a_daemon_killed_right_after_an_alert_sends_it_after_the_restart(
    cycles: Path, healthy: Path, tmp_path: Path, broker_up: bool
) -> None:
    broker = Mosquitto(tmp_path)
    state = tmp_path / "state"
    if broker_up:
        broker.start()
    cfg = tmp_path / "k.toml"
    cfg.write_text(stream("m1", cycles) + mqtt_section(broker.port) + daemon_section(state))
    sub = None
    d = Daemon(cfg)
    try:
        if broker_up:
            sub = Subscriber(broker.port)
        (alert,) = d.wait_for("anomaly", "m1", timeout=30)
        d.proc.kill()  # SIGKILL the moment the line is out: no flush, no last words
        d.proc.wait(10)
        d.stop()
        first = state_changes(d.records)
        assert first[-1] == alert["event_id"]
        if not broker_up:  # the broker is still away when the daemon starts again
            assert list((state / "outbox").glob("*/*.msg")), "the alert is on disk"
        cfg.write_text(stream("m1", healthy) + mqtt_section(broker.port) + daemon_section(state))
        again = Daemon(cfg)
        if not broker_up:
            time.sleep(2)
            broker.start()
            sub = Subscriber(broker.port)
        assert sub is not None
        assert again.proc.wait(60) == 0, again.stderr.decode()
        again.stop()
        expected = first + state_changes(again.records)
        wait_delivered(sub, "m1", expected, 30)
        states = [json.loads(m.payload) for m in sub.on("amulet/m1/state") if m.payload]
        # after the restart, the retained state is the last one (anomaly) until the detector
        # has heard enough of the new audio to say otherwise
        after_kill = [s for s in states if s["event_id"] not in first[:-1]]
        assert after_kill[0]["state"] == "anomaly"
        assert after_kill[0]["event_id"] == alert["event_id"]
        assert states[-1]["event_id"] == expected[-1]
        if not broker_up:
            assert b"undelivered message(s) from an earlier run" in again.stderr
    finally:
        d.stop()
        if sub is not None:
            sub.close()
        broker.stop()


def test_a_slow_subscriber_gets_every_alert(cycles: Path, tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    sub = Subscriber(broker.port)
    slow_on_message: Callable[..., None] = sub.client.on_message  # type: ignore[assignment]

    def slow(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        time.sleep(0.05)  # 20 messages a second at most, while scores come faster
        slow_on_message(client, userdata, msg)

    sub.client.on_message = slow
    cfg = tmp_path / "s.toml"
    cfg.write_text(mqtt_section(broker.port, scores=True) + daemon_section(tmp_path / "st"))
    try:
        proc = subprocess.run(
            [BIN, "replay", cycles, "--config", cfg, "--stream", "default"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(line) for line in proc.stdout.splitlines()]
        expected = state_changes(records)
        wait_delivered(sub, "default", expected, 60)
        assert len(sub.on("amulet/default/score")) > 0
    finally:
        sub.close()
        broker.stop()


def test_alerts_not_delivered_at_exit_wait_on_disk_for_the_next_start(
    cycles: Path, healthy: Path, tmp_path: Path
) -> None:
    broker = Mosquitto(tmp_path)  # not started: the broker is away for the first replay
    cfg = tmp_path / "x.toml"
    cfg.write_text(mqtt_section(broker.port) + daemon_section(tmp_path / "state"))
    args = ["--config", cfg, "--stream", "default"]
    first = subprocess.run(
        [BIN, "replay", cycles, *args], capture_output=True, text=True, timeout=60
    )
    assert first.returncode == 0, first.stderr
    expected = state_changes([json.loads(line) for line in first.stdout.splitlines()])
    n = 2 * len(expected)  # an alert and a retained state per change
    assert f"mqtt: {n} message(s) not delivered at exit" in first.stderr
    assert f"{n} alert/state message(s) wait in {tmp_path / 'state' / 'outbox'}" in first.stderr
    broker.start()
    sub = Subscriber(broker.port)
    try:
        second = subprocess.run(
            [BIN, "replay", healthy, *args], capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 0, second.stderr
        expected += state_changes([json.loads(line) for line in second.stdout.splitlines()])
        wait_delivered(sub, "default", expected, 30)
        assert not list((tmp_path / "state" / "outbox").glob("*/*.msg"))
    finally:
        sub.close()
        broker.stop()


def test_sigterm_on_a_replay_flushes_like_ctrl_c(cycles: Path, tmp_path: Path, rig: Rig) -> None:
    """Found by the stranger test: SIGTERM ended a replay at once (143) without the flush."""
    cfg = rig.config(tmp_path / "t.toml")
    proc = subprocess.Popen(
        [BIN, "replay", cycles, "--realtime", "--config", cfg, "--stream", "default"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: len(rig.sub.on("amulet/default/alert")) >= 1, 20, "the first alert")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 130 and "amulet-stream: interrupted" in err, err
        expected = state_changes([json.loads(line) for line in out.splitlines()])
        wait_delivered(rig.sub, "default", expected, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
