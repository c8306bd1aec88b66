"""Against a real Home Assistant 2024.3.3 (its own venv, named by $AMULET_HA_VENV; see
docs/mqtt.md): two monitor processes announce their streams over a real Mosquitto, and HA's
REST API shows the entities appear, change state, carry attributes, and go unavailable only
for the process that exited. Too slow and heavy for CI: skipped unless AMULET_HA_VENV is set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .servers import Mosquitto, free_port, have, wait_until

BIN = Path(sys.executable).parent / "amulet-stream"

HA_VENV = os.environ.get("AMULET_HA_VENV")
pytestmark = [
    pytest.mark.skipif(
        not HA_VENV,
        reason="AMULET_HA_VENV is not set: this test needs Home Assistant 2024.3.3 in a venv of "
        "its own (docs/mqtt.md has the install and the one command that runs it)",
    ),
    pytest.mark.skipif(have("mosquitto") is not None, reason=str(have("mosquitto"))),
]

CONFIG = """homeassistant:
  name: amulet-test
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
onboarding:
logger:
  default: warning
"""

MONITOR = """
import json, sys
from amulet_stream.outputs.mqtt.settings import MqttSettings
from amulet_stream.outputs.mqtt.sink import MqttSink
port, client_id = int(sys.argv[1]), sys.argv[2]
sink = MqttSink(MqttSettings(port=port, client_id=client_id, homeassistant=True,
                             score_interval=0.2))
sink.start()
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["do"] == "add":
        sink.add_stream(cmd["stream"], 0.4, "cd" * 32)
    elif cmd["do"] == "remove":
        sink.remove_stream(cmd["stream"])
    elif cmd["do"] == "record":
        sink.publish_record(cmd["record"])
    elif cmd["do"] == "close":
        print("left", sink.close(), flush=True)
        break
    print("ok", flush=True)
"""


@dataclass
class HomeAssistant:
    """A running HA with an owner account; get() reads its REST API."""

    url: str
    token: str
    log: Path

    def problems(self) -> list[str]:
        """Errors and warnings of HA's MQTT integration and templates in its output."""
        return [
            line
            for line in self.log.read_text().splitlines()
            if (" ERROR " in line or " WARNING " in line)
            and ("mqtt" in line or "template" in line or "amulet" in line)
        ]

    def call(self, path: str, data: Any = None, form: bool = False, auth: bool = True) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        body = None
        if data is not None:
            body = (urllib.parse.urlencode(data) if form else json.dumps(data)).encode()
            headers["Content-Type"] = (
                "application/x-www-form-urlencoded" if form else "application/json"
            )
        req = urllib.request.Request(self.url + path, data=body, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def state(self, entity_id: str) -> dict[str, Any] | None:
        """GET /api/states/<entity_id>; None: no such entity."""
        try:
            out: dict[str, Any] = self.call(f"/api/states/{entity_id}")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise
        return out


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path_factory.mktemp("ha-broker"))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def hass(tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto) -> Iterator[HomeAssistant]:
    """HA started with a fresh config dir, onboarded, MQTT integration added via config flow."""
    hass_bin = Path(str(HA_VENV), "bin", "hass")
    if not hass_bin.is_file():
        pytest.skip(f"{hass_bin} not found: install homeassistant==2024.3.3 there (docs/mqtt.md)")
    cfg = tmp_path_factory.mktemp("ha-config")
    port = free_port()
    (cfg / "configuration.yaml").write_text(CONFIG.format(port=port))
    log = (cfg / "hass.out").open("wb")
    proc = subprocess.Popen(
        [str(hass_bin), "-c", str(cfg), "--skip-pip"], stdout=log, stderr=subprocess.STDOUT
    )
    ha = HomeAssistant(f"http://127.0.0.1:{port}", "", cfg / "hass.out")

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"hass exited: {(cfg / 'hass.out').read_text()[-3000:]}")
        try:
            return isinstance(ha.call("/api/onboarding", auth=False), list)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    try:
        wait_until(up, 180, "Home Assistant's HTTP API")
        client = ha.url + "/"
        user = {"client_id": client, "name": "t", "username": "t", "password": "t-pass-1234"}
        code = ha.call("/api/onboarding/users", {**user, "language": "en"}, auth=False)
        grant = {"grant_type": "authorization_code", "code": code["auth_code"]}
        tok = ha.call("/auth/token", {**grant, "client_id": client}, form=True, auth=False)
        ha.token = tok["access_token"]
        flow = ha.call("/api/config/config_entries/flow", {"handler": "mqtt"})
        done = ha.call(
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"broker": "127.0.0.1", "port": broker.port},
        )
        assert done["type"] == "create_entry", done
        yield ha
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class Monitor:
    """A child process with one MqttSink, driven line by line on its stdin."""

    def __init__(self, port: int, client_id: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MONITOR, str(port), client_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def do(self, **cmd: Any) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def change(stream: str, event: str, **extra: Any) -> dict[str, Any]:
    rec = {
        "event": event,
        "stream": stream,
        "file": None,
        "start": 12.5,
        "end": 13.5,
        "score": 0.7 if event == "anomaly" else 0.2,
        "threshold": 0.4,
        "time": "2024-03-01T12:00:00.000Z",
        "event_id": str(uuid.uuid4()),
    }
    return {**rec, **extra}


def score(stream: str, value: float) -> dict[str, Any]:
    return {
        "event": "score",
        "stream": stream,
        "file": None,
        "start": 20.0,
        "end": 21.0,
        "score": value,
        "threshold": 0.4,
        "anomaly": value > 0.4,
    }


def entity(kind: str, stream: str, key: str) -> str:
    return f"{kind}.amulet_{stream.replace('-', '_')}_{key}"


def test_entities_follow_two_monitors(hass: HomeAssistant, broker: Mosquitto) -> None:
    a = Monitor(broker.port, "mon-a")
    b = Monitor(broker.port, "mon-b")
    try:
        assert a.do(do="add", stream="pump-a") == "ok"
        assert b.do(do="add", stream="pump-b") == "ok"
        assert b.do(do="add", stream="pump-c") == "ok"

        def shown(eid: str, want: str | None = None) -> bool:
            st = hass.state(eid)
            return st is not None and (want is None or st["state"] == want)

        for s in ("pump-a", "pump-b", "pump-c"):
            for kind, key in (
                ("binary_sensor", "anomaly"),
                ("binary_sensor", "input_problem"),
                ("sensor", "score"),
                ("sensor", "threshold"),
                ("sensor", "state"),
            ):
                eid = entity(kind, s, key)
                # no made-up state before a record: available, state unknown
                wait_until(lambda e=eid: shown(e, "unknown"), 60, f"{eid} in HA")
        anomaly_a = entity("binary_sensor", "pump-a", "anomaly")
        st = hass.state(anomaly_a)
        assert st is not None
        assert st["attributes"]["device_class"] == "problem"

        # states and attributes
        a.do(do="record", record=change("pump-a", "normal"))
        wait_until(lambda: shown(anomaly_a, "off"), 20, "pump-a normal")
        a.do(do="record", record=change("pump-a", "anomaly", clip="/clips/pump-a-1.wav"))
        wait_until(lambda: shown(anomaly_a, "on"), 20, "pump-a anomaly")
        attrs = hass.state(anomaly_a)["attributes"]
        for key in ("start", "end", "threshold", "time", "clip", "event_id"):
            assert key in attrs, (key, attrs)
        assert (attrs["start"], attrs["clip"]) == (12.5, "/clips/pump-a-1.wav")
        assert hass.state(entity("sensor", "pump-a", "state"))["state"] == "anomaly"

        problem_b = entity("binary_sensor", "pump-b", "input_problem")
        b.do(
            do="record",
            record=change(
                "pump-b", "input_problem", score=None, reason="silence", detail="level -96 dBFS"
            ),
        )
        wait_until(lambda: shown(problem_b, "on"), 20, "pump-b input problem")
        assert hass.state(problem_b)["attributes"]["reason"] == "silence"
        wait_until(
            lambda: shown(entity("binary_sensor", "pump-b", "anomaly"), "unknown"),
            5,
            "pump-b anomaly unknown while the input is bad",
        )

        # the score sensor: fed by the score topic, a measurement, rounded for display
        score_a = entity("sensor", "pump-a", "score")
        a.do(do="record", record=score("pump-a", 0.123456789))
        wait_until(lambda: shown(score_a, "0.123456789"), 20, "the score")
        attrs = hass.state(score_a)["attributes"]
        assert attrs["state_class"] == "measurement"
        wait_until(lambda: shown(entity("sensor", "pump-a", "threshold"), "0.4"), 10, "threshold")

        # a stream removed from the config loses its entities
        b.do(do="remove", stream="pump-c")
        wait_until(lambda: hass.state(entity("sensor", "pump-c", "score")) is None, 20, "gone")
        assert hass.state(entity("binary_sensor", "pump-c", "anomaly")) is None

        # monitor a exits cleanly: only its entities go unavailable
        assert a.do(do="close") == "left 0"
        wait_until(lambda: shown(anomaly_a, "unavailable"), 20, "pump-a unavailable")
        time.sleep(1.0)
        assert hass.state(problem_b)["state"] == "on"

        # monitor b is killed: its last will makes its entities unavailable
        b.kill()
        wait_until(lambda: shown(problem_b, "unavailable"), 20, "pump-b unavailable")
        assert hass.problems() == [], "HA took every discovery config and payload without a word"
    finally:
        a.kill()
        b.kill()


def test_daemon_streams_appear_alert_and_are_pruned(
    hass: HomeAssistant, broker: Mosquitto, tmp_path: Path
) -> None:
    """The real daemon with two [[stream]]s (a wav with a fault from 3 s, played in real time):
    both anomaly sensors turn on; a clean exit makes them unavailable; a restart without one
    stream removes that stream's entities."""
    from amulet_stream.audio.wav_write import write_wav
    from amulet_stream.synth.motor import generate
    from amulet_stream.synth.spec import Fault

    wav = tmp_path / "fault.wav"
    write_wav(wav, generate(20.0, 16000, seed=7, fault=Fault("imbalance", 3.0, 20.0, 0.8)), 16000)

    def config(*ids: str) -> Path:
        path = tmp_path / f"{'-'.join(ids)}.toml"
        text = f"[mqtt]\nport = {broker.port}\nhomeassistant = true\n"
        text += f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
        for i in ids:
            text += f'[[stream]]\nid = "{i}"\nkind = "file"\npath = "{wav}"\nloop = true\n'
        path.write_text(text)
        return path

    def run(cfg: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [BIN, "run", "--config", str(cfg), "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def state(eid: str) -> str | None:
        st = hass.state(eid)
        return None if st is None else str(st["state"])

    proc = run(config("motor-x", "motor-y"))
    try:
        for m in ("motor-x", "motor-y"):
            eid = entity("binary_sensor", m, "anomaly")
            wait_until(lambda e=eid: state(e) == "on", 60, f"{eid} on")
            score_id = entity("sensor", m, "score")
            wait_until(lambda e=score_id: state(e) not in (None, "unknown"), 20, "a score")
            float(state(score_id) or "nan")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""
        for m in ("motor-x", "motor-y"):
            eid = entity("binary_sensor", m, "anomaly")
            wait_until(lambda e=eid: state(e) == "unavailable", 20, f"{eid} unavailable")

        proc = run(config("motor-x"))
        wait_until(lambda: state(entity("sensor", "motor-y", "state")) is None, 30, "y removed")
        assert state(entity("binary_sensor", "motor-y", "anomaly")) is None
        x = entity("binary_sensor", "motor-x", "anomaly")
        wait_until(lambda: state(x) not in (None, "unavailable"), 30, "x available again")
        assert hass.problems() == []
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_the_feedback_button_marks_the_latest_alert_normal(
    hass: HomeAssistant, broker: Mosquitto, tmp_path: Path
) -> None:
    """`[mqtt] feedback = true`: the daemon's stream gets a button; pressing it in Home
    Assistant (its REST API, as the dashboard does) marks the stream's latest alert normal in
    the history, and its clip is kept apart for `amulet-export adapt`."""
    from amulet_stream.audio.wav_write import write_wav
    from amulet_stream.synth.motor import generate
    from amulet_stream.synth.spec import Fault

    wav = tmp_path / "fault.wav"
    write_wav(wav, generate(12.0, 16000, seed=7, fault=Fault("imbalance", 3.0, 12.0, 0.8)), 16000)
    state_dir = tmp_path / "state"
    cfg = tmp_path / "fb.toml"
    cfg.write_text(
        f"[mqtt]\nport = {broker.port}\nhomeassistant = true\nfeedback = true\n"
        f'[daemon]\nstate_dir = "{state_dir}"\n'
        f"[clips]\nbefore_seconds = 2\nafter_seconds = 0.5\n"
        f'[[stream]]\nid = "motor-fb"\nkind = "file"\npath = "{wav}"\nloop = true\n'
    )
    proc = subprocess.Popen(
        [BIN, "run", "--config", str(cfg), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    button = entity("button", "motor-fb", "mark_normal")
    try:
        wait_until(lambda: hass.state(button) is not None, 30, f"{button} discovered")
        anomaly = entity("binary_sensor", "motor-fb", "anomaly")
        wait_until(lambda: (hass.state(anomaly) or {}).get("state") == "on", 60, "an alert")
        time.sleep(1.0)  # its clip: 0.5 s after the trigger
        hass.call("/api/services/button/press", {"entity_id": button})

        def labelled() -> list[dict[str, Any]]:
            out = subprocess.run(
                [BIN, "events", "--state-dir", str(state_dir), "--label", "normal"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            return [json.loads(line) for line in out.splitlines()]

        wait_until(lambda: len(labelled()) == 1, 20, "the latest alert marked normal")
        assert labelled()[0]["event"] == "anomaly"
        assert hass.problems() == []
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
