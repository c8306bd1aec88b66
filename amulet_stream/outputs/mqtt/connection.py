"""The broker connection (paho-mqtt 2.x): connect in the background, availability with last
will, publish and wait for the PUBACK.

paho callbacks take no locks of ours and never block: they only put notes on a SimpleQueue
that the sender thread reads with `notes()`, which does all the logging (outage.py).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from amulet_stream.outputs.mqtt.outage import Outages
from amulet_stream.outputs.mqtt.outbox import Message
from amulet_stream.outputs.mqtt.settings import MqttConfigError, MqttSettings

_LOGGER = logging.getLogger(__name__)
MAX_COMMAND = 1024
"""Bytes of a command payload read at most."""


class Sent(Enum):
    """What became of one publish."""

    DONE = "done"
    """Sent (QoS 0) or acknowledged (QoS 1, 2)."""
    AGAIN = "again"
    """Not acknowledged (the connection went): keep it and send it after the reconnect."""
    REFUSED = "refused"
    """The broker's PUBACK refused it (e.g. 0x87 not authorized by an ACL)."""
    INVALID = "invalid"
    """paho cannot publish it (a bad topic or payload)."""


class Connection:
    """One MQTT connection with availability topic and last will. `wake` is set on every
    event the sender thread should look at; `queued` counts the messages waiting (for logs)."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        availability_topic: str,
        wake: threading.Event,
        queued: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.availability_topic = availability_topic
        self.connected = False
        self.refused = False
        """A failure that waiting will not mend: credentials refused, certificate untrusted."""
        self.connect_failures = 0
        """Failed connection attempts (unreachable, refused, TLS, auth), all outages."""
        self._wake = wake
        self._notes: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._outages = Outages(f"{settings.host}:{settings.port}", client_id, queued)
        self.commands: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        """(topic, payload) of command messages, for the sink to read."""
        self.feedback: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        """(topic, payload) of feedback messages, likewise."""
        self.acks: dict[int, ReasonCode] = {}
        """mid -> PUBACK reason of refused messages (written by paho, popped by publish)."""
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        settings = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password())
        if settings.tls:
            for name in ("ca_file", "cert_file", "key_file"):
                path = getattr(settings, name)
                if path is not None and not Path(path).is_file():
                    raise MqttConfigError(f"mqtt.{name} {path}: no such file")
            client.tls_set(
                ca_certs=str(settings.ca_file) if settings.ca_file else None,
                certfile=str(settings.cert_file) if settings.cert_file else None,
                keyfile=str(settings.key_file) if settings.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    @property
    def away(self) -> bool:
        """Not connected, and at least one attempt failed since the connection was lost."""
        return not self.connected and self._outages.failing

    def start(self) -> None:
        """Connect in the background (paho's thread retries with a backoff up to 30 s)."""
        self._outages.trying()
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        self._client.loop_start()

    def publish(self, msg: Message, stop: threading.Event) -> tuple[Sent, ReasonCode | None]:
        """Publish one message; with QoS > 0 wait for its PUBACK while connected (sender).
        The reason code comes with REFUSED."""
        try:
            info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        except (ValueError, TypeError) as err:
            _LOGGER.error("mqtt: cannot publish to %r: %s (dropped)", msg.topic, err)
            return Sent.INVALID, None
        if msg.qos == 0:
            return Sent.DONE, None
        while not info.is_published() and self.connected and not stop.is_set():
            # paho raises RuntimeError when the message was dropped by a disconnect
            try:
                info.wait_for_publish(timeout=1.0)
            except (RuntimeError, ValueError):
                break
        if not info.is_published():
            return Sent.AGAIN, None
        # a PUBACK only confirms the hop to the broker: its reason code says whether the
        # broker took the message
        reason = self.acks.pop(info.mid, None)
        if reason is not None and reason.is_failure:
            return Sent.REFUSED, reason
        return Sent.DONE, None

    def publish_retained(self, topic: str, payload: str) -> None:
        """Send a retained QoS 1 message without waiting (discovery configs)."""
        self._client.publish(topic, payload, qos=1, retain=True)

    def close(self, deadline: float) -> None:
        """Publish 'offline' (waiting until `deadline`, time.monotonic()) and disconnect."""
        if self.connected:
            bye = self._client.publish(self.availability_topic, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                bye.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()

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
            self.connect_failures += 1
            self._notes.put(("failed", f"broker refused the connection ({reason})"))
            if reason.value in (0x86, 0x87, 0x8C):  # bad credentials, not authorized, bad auth
                self.refused = True
            self._wake.set()
            return
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        if self.settings.homeassistant:
            client.subscribe(f"{self.settings.discovery_prefix}/status", qos=1)
        if self.settings.commands:
            client.subscribe(f"{self.settings.prefix}/+/command", qos=1)
        if self.settings.feedback:
            client.subscribe(f"{self.settings.prefix}/+/feedback", qos=1)
        self.connected = True
        self._notes.put(("connected", None))
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError:` block: the exception is the reason
        err = sys.exc_info()[1]
        self.connect_failures += 1
        if isinstance(err, ssl.SSLCertVerificationError):
            self.refused = True  # the exit does not wait for a reconnect that cannot succeed
        self._notes.put(("failed", _reason(err)))
        self._wake.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self.connected
        self.connected = False
        if was:
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
        if reason.is_failure:  # success is the default: only refusals are kept (and popped)
            self.acks[mid] = reason

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == f"{self.settings.discovery_prefix}/status" and msg.payload == b"online":
            self._notes.put(("ha-online", None))
            self._wake.set()
        elif self.settings.commands and msg.topic.endswith("/command") and not msg.retain:
            self.commands.put((msg.topic, bytes(msg.payload[:MAX_COMMAND])))
        elif self.settings.feedback and msg.topic.endswith("/feedback") and not msg.retain:
            self.feedback.put((msg.topic, bytes(msg.payload[:MAX_COMMAND])))

    # -- sender thread --------------------------------------------------------------------

    def notes(self) -> list[str]:
        """Log what the callbacks noted; the events the sink acts on: 'connected' (the first
        connect), 'reconnected', 'ha-online' (Home Assistant started)."""
        events: list[str] = []
        while True:
            try:
                kind, arg = self._notes.get_nowait()
            except queue.Empty:
                self._outages.check_silent(self.connected)
                return events
            if kind == "connected":
                events.append("reconnected" if self._outages.connected() else "connected")
            elif kind == "disconnected":
                self._outages.disconnected(arg)
            elif kind == "failed":
                self._outages.failed(arg)
            elif kind == "ha-online":
                events.append(kind)


def _reason(err: BaseException | None) -> str:
    """One line for a failed connection attempt."""
    if err is None:
        return "connection failed"
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate failed verification ({err.verify_message})"
    if isinstance(err, ssl.SSLError):
        return f"TLS: {err.reason or err}"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (no broker listening)"
    if isinstance(err, socket.gaierror):
        return f"unknown host ({err.strerror})"
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return f"{type(err).__name__}: {text}"
