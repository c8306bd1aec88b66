"""A fleet on one broker (issue 9): 20 daemon processes, each with its own two paced streams and
its own fault, publish to one Mosquitto (persistence off) that is stopped with SIGTERM and
started again on the same port in the middle. Every alert each daemon wrote on stdout reaches
the subscriber; after de-duplication by event_id the received set is exactly the stdout set."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from amulet_stream.audio.wav import read_info
from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

from .servers import Mosquitto, have, wait_until

BIN = Path(sys.executable).parent / "amulet-stream"
RATE = 16000
DAEMONS = 20
STATES = ("normal", "anomaly", "input_problem", "down")
"""Events published on <prefix>/<stream>/alert (and as retained state)."""
FAULTS = ("truncated", "deleted", "silent-channel", "none")
"""Daemon k's own fault: FAULTS[k % 4]."""
RUN_BEFORE, OUTAGE, RUN_AFTER = 10.0, 4.0, 8.0
"""Seconds with the broker up, away (SIGTERM to start), and up again after the restart.
Source faults come half-way through RUN_BEFORE; a deleted file is back half-way through
RUN_AFTER, after its loop (12 s) has ended and failed to reopen.
The daemons' MQTT client retries 1, 3 and 7 s after losing the broker: a 4 s outage brings
the broker back about 3 s before their next attempt, while the test's subscriber (which
subscribes at once) is already there; the broker's log is checked for that order."""


@dataclass
class Proc:
    """One daemon: its index, fault, stream ids and output files."""

    k: int
    fault: str
    streams: tuple[str, str]
    folder: Path
    proc: subprocess.Popen[bytes]

    def records(self) -> list[dict[str, object]]:
        """The JSON lines written to stdout so far (the last one may be incomplete)."""
        out = []
        for line in (self.folder / "stdout").read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out

    def stderr(self) -> str:
        return (self.folder / "stderr").read_text()


@dataclass
class Collector:
    """An MQTT subscriber (QoS 1) that records every (topic, JSON payload); `subscribed` is set
    once the broker acknowledged the subscription."""

    port: int
    name: str
    pattern: str = "amulet/+/alert"
    received: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.name)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(self.pattern, qos=1)
        self.client.on_subscribe = lambda c, u, m, r, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((msg.topic, json.loads(msg.payload)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _audio(folder: Path) -> dict[str, Path]:
    """12 s recordings at 16 kHz: healthy; faulty 3-8 s of every loop; a stereo file whose
    channel 1 is the healthy sound with 4 s of digital silence (a dead microphone)."""
    healthy = generate(12.0, RATE, seed=21)
    faulty = generate(12.0, RATE, seed=22, fault=Fault("imbalance", 3.0, 8.0, 0.8))
    dead = healthy.copy()
    dead[5 * RATE : 9 * RATE] = 0.0
    out = {"healthy": folder / "healthy.wav", "faulty": folder / "faulty.wav"}
    out["silent"] = folder / "silent.wav"
    write_wav(out["healthy"], healthy, RATE)
    write_wav(out["faulty"], faulty, RATE)
    write_wav(out["silent"], np.stack([healthy, dead], axis=1), RATE)
    return out


def _start(k: int, audio: dict[str, Path], root: Path, port: int) -> Proc:
    """Daemon k: a faulty and a healthy (or silent-channel) stream, both paced and looping."""
    fault = FAULTS[k % len(FAULTS)]
    folder = root / f"d{k:02d}"
    folder.mkdir()
    faulty = folder / "faulty.wav"  # its own copy: truncated or deleted for some daemons
    shutil.copy(audio["faulty"], faulty)
    sid = (f"d{k:02d}-motor", f"d{k:02d}-fan")
    second = (
        f'path = "{audio["silent"]}"\nchannel = 1\n'
        if fault == "silent-channel"
        else f'path = "{audio["healthy"]}"\n'
    )
    (folder / "cfg.toml").write_text(
        f'[[stream]]\nid = "{sid[0]}"\nkind = "file"\npath = "{faulty}"\nloop = true\n\n'
        f'[[stream]]\nid = "{sid[1]}"\nkind = "file"\n{second}loop = true\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nclient_id = "fleet-{k:02d}"\n\n'
        f'[daemon]\nstate_dir = "{folder / "state"}"\nreopen_max_seconds = 2\n'
    )
    with (folder / "stdout").open("wb") as out, (folder / "stderr").open("wb") as err:
        proc = subprocess.Popen(
            [BIN, "run", "--config", str(folder / "cfg.toml")], stdout=out, stderr=err
        )
    return Proc(k, fault, sid, folder, proc)


def _inject(p: Proc) -> None:
    """The daemon's own source fault, in the middle of the run."""
    faulty = p.folder / "faulty.wav"
    if p.fault == "truncated":  # cut to 5 s: reading fails, the reopened file is shorter
        os.truncate(faulty, read_info(faulty).data_offset + 5 * RATE * 2)
    elif p.fault == "deleted":  # gone at the next loop: down, reopened in vain until it is back
        faulty.unlink()


def _restored(p: Proc, audio: dict[str, Path]) -> None:
    if p.fault == "deleted":
        shutil.copy(audio["faulty"], p.folder / "faulty.wav")


def _usage(pid: int) -> tuple[float, float]:
    """(VmRSS in MB, CPU seconds so far) of a process."""
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss / 1024, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _broker_order(log: str, subscriber: str) -> list[str]:
    """Daemon connections after the restart that came before `subscriber` subscribed."""
    after = log.split(" starting", 2)[-1]  # the second start's lines
    early = []
    for line in after.splitlines():
        if f" {subscriber} 1 amulet/+/alert" in line:
            return early
        if "New client connected" in line and re.search(r" as fleet-\d\d ", line):
            early.append(line)
    raise AssertionError(f"{subscriber} never subscribed after the restart:\n{after[-3000:]}")


@pytest.fixture
def broker(tmp_path: Path):
    reason = have("mosquitto")
    if reason:
        pytest.skip(reason)
    b = Mosquitto(
        tmp_path,
        extra="\n".join(
            f"log_type {t}" for t in ("error", "warning", "notice", "information", "subscribe")
        ),
    )
    b.start()
    yield b
    b.stop()


def test_twenty_daemons_on_one_broker_deliver_every_alert_across_a_broker_restart(
    tmp_path: Path, broker: Mosquitto
) -> None:
    t_start = time.monotonic()
    audio = _audio(tmp_path)
    first = Collector(broker.port, "fleet-sub-1")
    wait_until(first.subscribed.is_set, 10, "the first subscription")
    daemons = [_start(k, audio, tmp_path, broker.port) for k in range(DAEMONS)]
    second: Collector | None = None
    try:
        for p in daemons:  # every stream of every daemon has decided a first state
            wait_until(
                lambda p=p: (
                    {r["stream"] for r in p.records()} >= set(p.streams)
                    or p.proc.poll() is not None
                ),
                60,
                f"first states of daemon {p.k}",
            )
            assert p.proc.poll() is None, p.stderr()
        t_up = time.monotonic()
        time.sleep(RUN_BEFORE / 2)
        for p in daemons:
            _inject(p)
        time.sleep(RUN_BEFORE / 2)
        broker.stop()  # SIGTERM
        first.close()
        down_at = time.time()
        time.sleep(OUTAGE)
        broker.start()
        up_at = time.time()
        second = Collector(broker.port, "fleet-sub-2")
        wait_until(second.subscribed.is_set, 10, "the subscription after the restart")
        time.sleep(RUN_AFTER / 2)
        for p in daemons:
            _restored(p, audio)
        time.sleep(RUN_AFTER / 2)
        usage = [_usage(p.proc.pid) for p in daemons]
        for p in daemons:
            p.proc.send_signal(signal.SIGTERM)
        codes = [p.proc.wait(20) for p in daemons]
        time.sleep(0.5)  # the last QoS 1 deliveries to the subscriber
    finally:
        for p in daemons:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
        first.close()
        if second is not None:
            second.close()
    assert codes == [0] * DAEMONS, [p.stderr()[-1500:] for p in daemons if p.proc.returncode]
    early = _broker_order(broker.log.read_text(), "fleet-sub-2")
    assert not early, f"daemons reconnected before the test subscribed again: {early}"

    received: dict[str, list[dict[str, object]]] = {}
    for _, alert in first.received + second.received:
        received.setdefault(str(alert["stream"]), []).append(alert)
    total = dupes = during = 0
    kinds: dict[str, int] = {}
    for p in daemons:
        written = [r for r in p.records() if r["event"] in STATES]
        want = {str(r["event_id"]) for r in written}
        got = [a for s in p.streams for a in received.get(s, [])]
        ids = {str(a["event_id"]) for a in got}
        assert ids == want, (
            f"daemon {p.k} ({p.fault}): missing {sorted(want - ids)}, "
            f"unexpected {sorted(ids - want)}; stderr: {p.stderr()[-2000:]}"
        )
        assert any(r["event"] == "anomaly" for r in written), f"daemon {p.k}: no anomaly"
        if p.fault in ("truncated", "deleted"):
            assert any(r["event"] == "down" for r in written), f"daemon {p.k}: never down"
        if p.fault == "silent-channel":
            assert any(
                r["event"] == "input_problem" and r["reason"] == "silence" for r in written
            ), f"daemon {p.k}: the silent channel gave no input_problem"
        total += len(want)
        dupes += len(got) - len(ids)
        for r in written:
            kinds[str(r["event"])] = kinds.get(str(r["event"]), 0) + 1
            during += down_at <= datetime.fromisoformat(str(r["time"])).timestamp() <= up_at
    print(
        f"fleet: {DAEMONS} daemons, {total} alert/state events ({kinds}) all received, "
        f"{dupes} duplicate(s) dropped by event_id, {during} raised while the broker was "
        f"away; {time.monotonic() - t_up:.0f} s from all up, "
        f"{time.monotonic() - t_start:.0f} s in all; VmRSS {sum(r for r, _ in usage):.0f} MB "
        f"for all ({min(r for r, _ in usage):.1f}-{max(r for r, _ in usage):.1f} MB each), "
        f"CPU {sum(c for _, c in usage):.1f} s for all by the stop"
    )
    assert during > 0, "no alert was raised while the broker was away: the restart tested nothing"


def test_a_site_broker_bridged_to_a_central_one_forwards_alerts_and_states(
    tmp_path: Path,
) -> None:
    # the bridge of docs/scaling.md: alerts, states and availability cross under the site's
    # prefix; scores stay on the site
    reason = have("mosquitto")
    if reason:
        pytest.skip(reason)
    (tmp_path / "central").mkdir()
    (tmp_path / "site").mkdir()
    central = Mosquitto(tmp_path / "central")
    central.start()
    site = Mosquitto(
        tmp_path / "site",
        extra=f"connection central\naddress 127.0.0.1:{central.port}\n"
        "bridge_protocol_version mqttv50\nremote_clientid site-hall3\ncleansession false\n"
        + "".join(
            f'topic amulet/+/{kind} out 1 "" sites/hall3/\n'
            for kind in ("alert", "state", "status")
        ),
    )
    site.start()
    hq: Collector | None = None
    try:
        wait_until(lambda: "as site-hall3" in central.log.read_text(), 10, "the bridge to connect")
        hq = Collector(central.port, "hq", "sites/#")
        wait_until(hq.subscribed.is_set, 10, "the central subscription")
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="amulet-site")
        pub.connect("127.0.0.1", site.port)
        pub.loop_start()
        alert = {"event": "anomaly", "stream": "m1", "event_id": "e1"}
        for topic, payload, qos, retain in (
            ("amulet/m1/score", {"score": 0.3}, 0, False),
            ("amulet/m1/alert", alert, 1, False),
            ("amulet/m1/state", {**alert, "state": "anomaly"}, 1, True),
        ):
            pub.publish(topic, json.dumps(payload), qos=qos, retain=retain).wait_for_publish(5)
        wait_until(lambda: len(hq.received) >= 2, 10, "alert and state at the central broker")
        time.sleep(0.3)  # a score would have arrived by now
        pub.disconnect()
        pub.loop_stop()
        assert [(t, b["event_id"]) for t, b in hq.received] == [
            ("sites/hall3/amulet/m1/alert", "e1"),
            ("sites/hall3/amulet/m1/state", "e1"),
        ]  # the score, published first, stayed on the site
        late = Collector(central.port, "dashboard", "sites/#")  # connects later: retained state
        try:
            wait_until(lambda: len(late.received) >= 1, 10, "the retained state")
            assert [t for t, _ in late.received] == ["sites/hall3/amulet/m1/state"]
        finally:
            late.close()
    finally:
        if hq is not None:
            hq.close()
        site.stop()
        central.stop()
