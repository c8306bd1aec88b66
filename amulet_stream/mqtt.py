"""MQTT sink (paho-mqtt 2.x): availability, retained state, ordered QoS 1 alerts, optional scores
and Home Assistant discovery. Publishing never blocks the audio path.

Messages go into our own bounded outbox; one sender thread publishes them in order and waits
for each alert's PUBACK before the next. While the broker is away they wait in the outbox;
past the bound the oldest are dropped and counted. paho's own queue is left unbounded (it
holds at most the one message in flight), so the `online` birth message that on_connect
publishes can never be refused. paho callbacks take no locks of ours and never block: they
only put notes on a SimpleQueue.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import ssl
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from . import __version__

_LOGGER = logging.getLogger(__name__)

STATES = ("normal", "anomaly", "input_problem")


class MqttConfigError(ValueError):
    """An MQTT setting that cannot work (password file unreadable, TLS file missing...)."""


@dataclass(frozen=True)
class MqttSettings:
    """[mqtt] in the config file."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    """Empty: amulet-<hostname>-<pid>."""
    keepalive: int = 30
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    """Name of the environment variable holding the password (never argv)."""
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    prefix: str = "amulet"
    qos: int = 1
    queue_limit: int = 1000
    """Messages kept while the broker is away; past it the oldest are dropped."""
    scores: bool = False
    """Also publish every window's score (QoS 0) to <prefix>/<stream>/score."""
    homeassistant: bool = False
    discovery_prefix: str = "homeassistant"

    def password(self) -> str | None:
        """The password from its file or environment variable."""
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as err:
                raise MqttConfigError(
                    f"mqtt.password_file {self.password_file}: {err.strerror or err}"
                ) from err
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise MqttConfigError(f"mqtt.password_env: ${self.password_env} is not set")
            return value
        return None


@dataclass
class _Message:
    topic: str
    payload: str
    qos: int
    retain: bool
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))


class MqttSink:
    """One connection for all streams. publish_* are called from the processing loop."""

    def __init__(self, settings: MqttSettings, model_sha256: str) -> None:
        self.settings = settings
        self.model_sha256 = model_sha256
        self.connected = False
        self.dropped = 0
        """Messages dropped because the outbox was full (or refused by the broker)."""
        self.refused = False
        """The broker refused our credentials at least once."""
        self._outbox: deque[_Message] = deque()
        self._notes: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # outbox only; never taken in paho callbacks
        self._states: dict[str, str] = {}  # stream -> last retained state payload
        self._streams: set[str] = set()
        self._connects = 0
        client_id = settings.client_id or f"amulet-{os.uname().nodename}-{os.getpid()}"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.will_set(self.topic("status"), "offline", qos=1, retain=True)
        if settings.username is not None:
            self._client.username_pw_set(settings.username, settings.password())
        if settings.tls:
            for name in ("ca_file", "cert_file", "key_file"):
                path = getattr(settings, name)
                if path is not None and not Path(path).is_file():
                    raise MqttConfigError(f"mqtt.{name} {path}: no such file")
            self._client.tls_set(
                ca_certs=str(settings.ca_file) if settings.ca_file else None,
                certfile=str(settings.cert_file) if settings.cert_file else None,
                keyfile=str(settings.key_file) if settings.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._acks: dict[int, ReasonCode] = {}  # mid -> PUBACK reason (written by paho)
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)

    def topic(self, *parts: str) -> str:
        """<prefix>/<parts...>."""
        return "/".join((self.settings.prefix, *parts))

    # -- processing-loop side -------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; the monitor runs whether or not the broker is there."""
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        self._client.loop_start()
        self._sender.start()

    def add_stream(self, stream: str, threshold: float) -> None:
        """Announce a stream: retained state 'normal' and, if enabled, discovery."""
        self._streams.add(stream)
        start = {
            "event": "normal",
            "stream": stream,
            "start": 0.0,
            "end": 0.0,
            "score": 0.0,
            "threshold": threshold,
        }
        self._set_state(stream, "normal", start)
        if self.settings.homeassistant:
            self._notes.put(("discovery", stream))
            self._wake.set()

    def publish_record(self, record: dict[str, Any]) -> None:
        """Route a pipeline record: state changes -> state + alert; scores -> score topic."""
        stream = record["stream"]
        if record["event"] == "score":
            if self.settings.scores:
                self._enqueue(self.topic(stream, "score"), self._payload(record), 0, False)
            return
        if record["event"] in STATES:
            msg = self._enqueue(self.topic(stream, "alert"), "", self.settings.qos, False)
            msg.payload = self._payload(record, msg.event_id)
            self._set_state(stream, record["event"], record)

    def queued(self) -> int:
        """Messages waiting in the outbox."""
        return len(self._outbox)

    def close(self, timeout: float = 5.0) -> None:
        """Flush what can be flushed within `timeout`, publish 'offline', disconnect."""
        deadline = time.monotonic() + timeout
        while self._outbox and not self.refused and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._outbox:
            _LOGGER.warning("mqtt: %d message(s) not delivered at exit", len(self._outbox))
        self._stop.set()
        self._wake.set()
        self._sender.join(timeout=max(0.1, deadline - time.monotonic()))
        if self.connected:
            info = self._client.publish(self.topic("status"), "offline", qos=1, retain=True)
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()

    def _payload(self, record: dict[str, Any], event_id: str | None = None) -> str:
        body = {
            "event_id": event_id or str(uuid.uuid4()),
            "event": record["event"],
            "stream": record["stream"],
            "time": record.get("time") or _utc_now(),
            "start": record["start"],
            "end": record["end"],
            "score": record["score"],
            "threshold": record["threshold"],
            "model_sha256": self.model_sha256,
            "version": __version__,
        }
        if record.get("file") is not None:
            body["file"] = record["file"]
        return json.dumps(body)

    def _set_state(self, stream: str, state: str, record: dict[str, Any]) -> None:
        body = json.loads(self._payload(record))
        body["state"] = state
        self._states[stream] = json.dumps(body)
        self._enqueue(self.topic(stream, "state"), self._states[stream], 1, True)

    def _enqueue(self, topic: str, payload: str, qos: int, retain: bool) -> _Message:
        msg = _Message(topic, payload, qos, retain)
        with self._lock:
            if len(self._outbox) >= self.settings.queue_limit:
                self._outbox.popleft()
                self.dropped += 1
                dropped = self.dropped
            else:
                dropped = 0
            self._outbox.append(msg)
        if dropped:
            _LOGGER.warning(
                "mqtt: outbox full (%d): oldest message dropped (%d so far)",
                self.settings.queue_limit,
                dropped,
            )
        self._wake.set()
        return msg

    # -- paho callbacks (paho's thread: no locks of ours, no blocking) ----------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._notes.put(("refused", str(reason)))
            return
        client.publish(self.topic("status"), "online", qos=1, retain=True)
        if self.settings.homeassistant:
            client.subscribe(f"{self.settings.discovery_prefix}/status", qos=1)
        self.connected = True
        self._notes.put(("connected", None))
        self._wake.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected = False
        self._notes.put(("disconnected", str(reason)))
        self._wake.set()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._acks[mid] = reason

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == f"{self.settings.discovery_prefix}/status" and msg.payload == b"online":
            self._notes.put(("ha-online", None))
            self._wake.set()

    # -- sender thread --------------------------------------------------------------------

    def _handle_notes(self) -> None:
        while True:
            try:
                kind, arg = self._notes.get_nowait()
            except queue.Empty:
                return
            if kind == "connected":
                _LOGGER.info("mqtt: connected to %s:%d", self.settings.host, self.settings.port)
                self._connects += 1
                for stream, payload in list(self._states.items()) if self._connects > 1 else ():
                    # retained state again: a broker restarted without persistence lost it
                    self._enqueue(self.topic(stream, "state"), payload, 1, True)
                if self.settings.homeassistant:
                    for stream in sorted(self._streams):
                        self._publish_discovery(stream)
            elif kind == "disconnected":
                _LOGGER.warning(
                    "mqtt: disconnected (%s); %d message(s) kept", arg, len(self._outbox)
                )
            elif kind == "refused":
                self.refused = True
                _LOGGER.error("mqtt: broker refused the connection: %s", arg)
            elif kind in ("discovery", "ha-online") and self.connected:
                for stream in sorted(self._streams if kind == "ha-online" else {arg}):
                    self._publish_discovery(stream)

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._handle_notes()
            if not self.connected or not self._outbox:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            msg = self._outbox[0]
            info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            if msg.qos > 0:
                # paho raises RuntimeError when the message was dropped by a disconnect
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(timeout=5.0)
                if not info.is_published():
                    continue  # not acknowledged: keep it and send it again after reconnect
                # a PUBACK only confirms the hop to the broker: its reason code says whether
                # the broker took the message (e.g. 0x87 not authorized by an ACL)
                reason = self._acks.pop(info.mid, None)
                if reason is not None and reason.is_failure:
                    self.dropped += 1
                    _LOGGER.error(
                        "mqtt: broker refused %s: %s (%d dropped so far)",
                        msg.topic,
                        reason,
                        self.dropped,
                    )
            with self._lock:
                if self._outbox and self._outbox[0] is msg:
                    self._outbox.popleft()

    def _publish_discovery(self, stream: str) -> None:
        dev = {
            "identifiers": [f"amulet_{stream}"],
            "name": f"amulet {stream}",
            "manufacturer": "amulet-stream",
            "sw_version": __version__,
        }
        avail = {
            "availability_topic": self.topic("status"),
            "payload_available": "online",
            "payload_not_available": "offline",
        }
        base = f"{self.settings.discovery_prefix}"
        configs = {
            f"{base}/binary_sensor/amulet_{stream}/anomaly/config": {
                "name": "anomaly",
                "unique_id": f"amulet_{stream}_anomaly",
                "device_class": "problem",
                "state_topic": self.topic(stream, "state"),
                "value_template": "{{ 'ON' if value_json.state == 'anomaly' else 'OFF' }}",
                "device": dev,
                **avail,
            },
            f"{base}/sensor/amulet_{stream}/score/config": {
                "name": "score",
                "unique_id": f"amulet_{stream}_score",
                "state_topic": self.topic(stream, "state"),
                "value_template": "{{ value_json.score }}",
                "device": dev,
                **avail,
            },
        }
        for topic, cfg in configs.items():
            self._client.publish(topic, json.dumps(cfg), qos=1, retain=True)


def _utc_now() -> str:
    from .pipeline import utc_iso

    return utc_iso()
