"""MQTT sink (paho-mqtt 2.x): the connection, the topic layout and the routing of records.
Publishing never blocks the audio path.

Topics: `<prefix>/<client_id>/status` (this process's availability, retained, last will),
`<prefix>/<stream>/state` (retained), `/alert` (QoS 1), `/score` (QoS 0). Records go into the
bounded outbox (outbox.py); one sender thread publishes them in order and waits for each
QoS 1 PUBACK before the next. Home Assistant discovery (homeassistant.py) is kept as wanted
retained payloads, sent on every connect, when Home Assistant comes online and on changes.
paho callbacks take no locks of ours and never block: they only put notes on a SimpleQueue
for the sender thread, which does all the logging.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from amulet_stream import __version__
from amulet_stream.outputs.mqtt.homeassistant import (
    STREAM_ID,
    Announced,
    Discovery,
    StreamTopics,
    node_id,
)
from amulet_stream.outputs.mqtt.outbox import Message, Outbox
from amulet_stream.outputs.mqtt.spool import DurableOutbox, SpoolError

_LOGGER = logging.getLogger(__name__)
SILENT_SECONDS = 10.0
"""A connection that neither succeeds nor fails for this long is reported once."""

FLAP_SECONDS = 5.0
FLAP_COUNT = 3
"""FLAP_COUNT connections in a row closed within FLAP_SECONDS: another client with our id?"""

STATES = ("normal", "anomaly", "input_problem", "down")


class MqttConfigError(ValueError):
    """An MQTT setting that cannot work (password file unreadable, TLS file missing...)."""


@dataclass(frozen=True)
class MqttSettings:
    """[mqtt] in the config file."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    """Stable across restarts (availability topic, HA ids); empty: amulet-<hostname>."""
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
    """Alerts and states kept while the broker is away, and as many scores in a queue of
    their own (sent after them); past it the oldest of that queue are dropped."""
    scores: bool = False
    """Publish every window's score (QoS 0) to <prefix>/<stream>/score."""
    homeassistant: bool = False
    discovery_prefix: str = "homeassistant"
    score_interval: float = 10.0
    """Seconds between score messages when homeassistant is on and scores off (max score)."""

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise MqttConfigError("mqtt.host is empty: give the broker's name or address")
        if not 1 <= self.port <= 65535:
            raise MqttConfigError(f"mqtt.port must be 1 to 65535, not {self.port}")
        if self.qos not in (0, 1, 2):
            raise MqttConfigError(f"mqtt.qos must be 0, 1 or 2, not {self.qos}")
        if self.queue_limit < 1:
            raise MqttConfigError(f"mqtt.queue_limit must be at least 1, not {self.queue_limit}")
        if not self.score_interval >= 0:
            raise MqttConfigError(
                f"mqtt.score_interval must be 0 or more seconds, not {self.score_interval}"
            )

    def password(self) -> str | None:
        """The password from its file or environment variable."""
        if self.password_file is not None:
            try:
                mode = self.password_file.stat().st_mode
                if mode & 0o077:
                    raise MqttConfigError(
                        f"mqtt.password_file {self.password_file}: readable by others than "
                        f"its owner (mode {mode & 0o777:04o}): chmod 600 it"
                    )
                secret = self.password_file.read_text().strip()
                if not secret:
                    raise MqttConfigError(f"mqtt.password_file {self.password_file}: empty")
                return secret
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
class _Stream:
    model_sha256: str
    last_score_sent: float = float("-inf")
    """time.monotonic() of the last score message (score_interval mode)."""
    pending_score: dict[str, Any] | None = None
    """The highest-scoring window not yet sent (score_interval mode)."""


def _check_topic_part(name: str, value: str, level: bool) -> None:
    """Refuse a client id (one topic level) or prefix that would make illegal topics."""
    bad = "+#\0/" if level else "+#\0"
    if not value or any(c in value for c in bad) or value.startswith("/"):
        rule = "one topic level: no +, # or /" if level else "no +, # or leading /"
        raise MqttConfigError(f"mqtt.{name} {value!r}: not usable in MQTT topics ({rule})")


class MqttSink:
    """One connection for all streams of this process. add_stream, remove_stream, prune and
    publish_record are called from the processing loop; they never block."""

    def __init__(self, settings: MqttSettings, state_dir: Path | None = None) -> None:
        self.settings = settings
        host = "".join(c if c not in "+#/\0" else "_" for c in os.uname().nodename)
        self.client_id = settings.client_id or f"amulet-{host}"
        _check_topic_part("client_id", self.client_id, level=True)
        _check_topic_part("prefix", settings.prefix, level=False)
        _check_topic_part("discovery_prefix", settings.discovery_prefix, level=False)
        self.availability_topic = self.topic(self.client_id, "status")
        self.connected = False
        self.refused = False
        """A failure that waiting will not mend: credentials refused, certificate untrusted."""
        self.connect_failures = 0
        """Failed connection attempts (unreachable, refused, TLS, auth), all outages."""
        self._outbox = self._make_outbox(state_dir)
        self._notes: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # streams, states, discovery; never in paho callbacks
        self._streams: dict[str, _Stream] = {}
        self._states: dict[str, str] = {}  # stream -> last retained state payload
        self._seeded: set[str] = set()  # streams whose state comes from an earlier run
        if isinstance(self._outbox, DurableOutbox):
            self._states = self._outbox.load_states()
            queued = self._outbox.replayed_topics  # sent anyway: not twice
            self._seeded = {s for s in self._states if self.topic(s, "state") not in queued}
        self._discovery = Discovery(
            settings.homeassistant,
            self._topics,
            settings.discovery_prefix,
            lambda stream: node_id(settings.prefix, stream),
            __version__,
            self.availability_topic,
            Announced(state_dir),
        )
        self._bad_streams: set[str] = set()
        self._outage: tuple[float, int] | None = None  # (start, failed attempts) while away
        self._silent_warned = False
        self._was_up = False  # connected at least once (sender thread only)
        self._up_since = 0.0  # time.monotonic() of the last connect (sender thread only)
        self._flaps = 0  # connections in a row the broker closed within FLAP_SECONDS
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.will_set(self.availability_topic, "offline", qos=1, retain=True)
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
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._acks: dict[int, ReasonCode] = {}  # mid -> PUBACK reason (written by paho)
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)

    def _make_outbox(self, state_dir: Path | None) -> Outbox:
        limit = self.settings.queue_limit
        if state_dir is None:
            _LOGGER.warning(
                "mqtt: no state directory ([daemon] state_dir, --state-dir or systemd's "
                "StateDirectory=): alerts not yet delivered are lost if the process ends"
            )
            return Outbox(limit, limit)
        try:
            return DurableOutbox(limit, limit, state_dir / "outbox" / self.client_id)
        except SpoolError as err:
            raise MqttConfigError(str(err)) from err

    @property
    def outbox_folder(self) -> Path | None:
        """Where undelivered alerts and states are kept; None: memory only."""
        return self._outbox.folder if isinstance(self._outbox, DurableOutbox) else None

    @property
    def outbox_corrupt(self) -> int:
        """Malformed outbox files skipped on start."""
        return self._outbox.corrupt if isinstance(self._outbox, DurableOutbox) else 0

    @property
    def outbox_write_errors(self) -> int:
        """Alerts and states that could not be written to the outbox folder."""
        return self._outbox.write_errors if isinstance(self._outbox, DurableOutbox) else 0

    def topic(self, *parts: str) -> str:
        """<prefix>/<parts...>."""
        return "/".join((self.settings.prefix, *parts))

    @property
    def dropped_by_kind(self) -> dict[str, int]:
        """Messages dropped (outbox bound, refused by the broker) by kind: alert, state..."""
        return self._outbox.dropped_by_kind

    @property
    def dropped(self) -> int:
        """All dropped messages."""
        return sum(self._outbox.dropped_by_kind.values())

    # -- processing-loop side -------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; the monitor runs whether or not the broker is there."""
        self._outage = (time.monotonic(), 0)
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        self._client.loop_start()
        self._sender.start()

    def add_stream(self, stream: str, threshold: float, model_sha256: str) -> None:
        """Announce a stream (or update it: reload) to Home Assistant; publishes no state."""
        if not STREAM_ID.fullmatch(stream):
            raise MqttConfigError(f"stream id {stream!r}: use 1 to 64 letters, digits, _ or -")
        with self._lock:
            old = self._streams.get(stream)
            new = self._streams[stream] = _Stream(model_sha256)
            if old is not None:  # a reload: the score interval goes on
                new.last_score_sent, new.pending_score = old.last_score_sent, old.pending_score
            self._discovery.add(stream, model_sha256, threshold)
        self._wake.set()

    def remove_stream(self, stream: str) -> None:
        """A stream left the config: remove its HA entities and clear its retained state."""
        with self._lock:
            info = self._streams.pop(stream, None)
            if self._states.pop(stream, None) is not None:
                self._save_states()
            if info is not None and info.pending_score is not None:
                self._enqueue(self.topic(stream, "score"), info.pending_score, 0, "score")
            self._discovery.remove(stream)
        self._enqueue_text(self.topic(stream, "state"), "", 1, True, "state")

    def prune(self, configured: set[str]) -> None:
        """Remove what a previous run announced and is no longer wanted: the HA entities and
        retained state of streams not in `configured`; all its entities if HA is now off."""
        with self._lock:
            gone = self._discovery.prune(configured, self.availability_topic)
            old = [s for s in self._states if s not in configured]
            for stream in old:  # a stream of an earlier run's config: clear its state
                del self._states[stream]
                self._seeded.discard(stream)
                gone.append(self.topic(stream, "state"))
            if old:
                self._save_states()
        for topic in dict.fromkeys(gone):
            kind = "state" if topic.endswith("/state") else "other"
            self._enqueue_text(topic, "", 1, True, kind)
        self._wake.set()

    def publish_record(self, record: dict[str, Any]) -> None:
        """Route a record: state changes -> retained state + alert (one event_id); scores ->
        score topic (every one with scores on; with HA only, the max every score_interval)."""
        event, stream = record.get("event"), str(record.get("stream"))
        if event != "score" and event not in STATES:
            return
        if not STREAM_ID.fullmatch(stream):
            if stream not in self._bad_streams:
                self._bad_streams.add(stream)
                _LOGGER.error("mqtt: stream id %r cannot be a topic level: not published", stream)
            self._outbox.discard("score" if event == "score" else "alert")
            return
        if event == "score":
            self._route_score(stream, record)
            return
        body = self._body(stream, record)
        body.setdefault("event_id", str(uuid.uuid4()))
        self._enqueue(self.topic(stream, "alert"), body, self.settings.qos, "alert")
        state = json.dumps({**body, "state": event})
        with self._lock:
            self._states[stream] = state
            self._seeded.discard(stream)
            self._save_states()
        self._enqueue_text(self.topic(stream, "state"), state, 1, True, "state")

    def queued(self) -> int:
        """Messages waiting in the outbox."""
        return len(self._outbox)

    def close(self, timeout: float = 5.0) -> int:
        """Flush what can be flushed within `timeout` s, publish 'offline', disconnect; returns
        the number of messages not delivered (also logged)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            for stream, info in self._streams.items():
                if info.pending_score is not None:
                    self._enqueue(self.topic(stream, "score"), info.pending_score, 0, "score")
                    info.pending_score = None
        durable = isinstance(self._outbox, DurableOutbox)
        while len(self._outbox) and not self.refused and time.monotonic() < deadline:
            away = not self.connected and self._outage is not None and self._outage[1] > 0
            if away and durable:
                break  # the broker is away: the alerts wait on disk for the next start
            time.sleep(0.02)  # memory only: give a reconnect its chance until the deadline
        left = len(self._outbox)
        if left:
            queued = self._outbox.queued_by_kind()
            kinds = ", ".join(f"{k} {n}" for k, n in queued.items() if n)
            folder = self.outbox_folder
            kept = queued["alert"] + queued["state"]
            if folder is None:
                where = "; they are lost (no state directory keeps them)"
            elif kept:
                where = f"; {kept} alert/state message(s) wait in {folder} for the next start"
            else:
                where = ""
            _LOGGER.warning("mqtt: %d message(s) not delivered at exit (%s)%s", left, kinds, where)
        self._stop.set()
        self._wake.set()
        if self._sender.is_alive():
            self._sender.join(timeout=max(0.1, deadline - time.monotonic()))
        if self.connected:
            bye = self._client.publish(self.availability_topic, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                bye.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()
        if isinstance(self._outbox, DurableOutbox):
            self._outbox.close()
        return left

    def _save_states(self) -> None:
        """Keep the last states for the next start (lock held)."""
        if isinstance(self._outbox, DurableOutbox):
            self._outbox.save_states(self._states)

    # -- helpers (callers hold self._lock where they touch streams and states) --------------

    def _topics(self, stream: str) -> StreamTopics:
        return StreamTopics(
            stream,
            self.topic(stream, "state"),
            self.topic(stream, "score"),
            self.availability_topic,
        )

    def _body(self, stream: str, record: dict[str, Any]) -> dict[str, Any]:
        info = self._streams.get(stream)
        body = dict(record)
        body.setdefault("time", _utc_now())
        body.setdefault("model_sha256", info.model_sha256 if info is not None else None)
        body.setdefault("version", __version__)
        return body

    def _route_score(self, stream: str, record: dict[str, Any]) -> None:
        if self.settings.scores:
            self._enqueue(self.topic(stream, "score"), self._body(stream, record), 0, "score")
            return
        if not self.settings.homeassistant:
            return
        now = time.monotonic()
        with self._lock:
            info = self._streams.get(stream)
            if info is None:
                return
            body = self._body(stream, record)
            pending = info.pending_score
            if pending is None or body["score"] > pending["score"]:
                info.pending_score = body
            if now - info.last_score_sent < self.settings.score_interval:
                return
            send, info.pending_score, info.last_score_sent = info.pending_score, None, now
        self._enqueue(self.topic(stream, "score"), send, 0, "score")

    def _enqueue(self, topic: str, body: dict[str, Any] | None, qos: int, kind: str) -> None:
        if body is not None:
            self._enqueue_text(topic, json.dumps(body), qos, False, kind)

    def _enqueue_text(self, topic: str, payload: str, qos: int, retain: bool, kind: str) -> None:
        victim = self._outbox.put(Message(topic, payload, qos, retain, kind))
        if victim is not None:
            dropped = self._outbox.dropped_by_kind
            n = dropped[victim.kind]
            if n == 10 ** (len(str(n)) - 1):  # the 1st, 10th, 100th... drop of a kind
                _LOGGER.warning(
                    "mqtt: outbox full (%d): oldest %s message dropped (%s dropped so far)",
                    self.settings.queue_limit,
                    victim.kind,
                    ", ".join(f"{k} {d}" for k, d in dropped.items() if d),
                )
        self._wake.set()

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
            self._acks[mid] = reason

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == f"{self.settings.discovery_prefix}/status" and msg.payload == b"online":
            self._notes.put(("ha-online", None))
            self._wake.set()

    # -- sender thread --------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the work: a wake-up during it is not lost
            try:
                if not self._send_one():
                    self._wake.wait(0.5)
            except Exception:  # the sender outlives any one bad message or bug
                _LOGGER.exception("mqtt: sender error (the sender goes on)")
                self._stop.wait(0.5)

    def _send_one(self) -> bool:
        """Handle notes, send wanted discovery, then one outbox message; False: nothing to do."""
        self._handle_notes()
        if not self.connected:
            return False
        self._send_discovery()
        msg = self._outbox.peek()
        if msg is None:
            return False
        try:
            info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        except (ValueError, TypeError) as err:
            _LOGGER.error("mqtt: cannot publish to %r: %s (dropped)", msg.topic, err)
            self._outbox.drop(msg)
            return True
        if msg.qos > 0:
            while not info.is_published() and self.connected and not self._stop.is_set():
                # paho raises RuntimeError when the message was dropped by a disconnect
                try:
                    info.wait_for_publish(timeout=1.0)
                except (RuntimeError, ValueError):
                    break
            if not info.is_published():
                return True  # not acknowledged: keep it and send it again after reconnect
            # a PUBACK only confirms the hop to the broker: its reason code says whether
            # the broker took the message (e.g. 0x87 not authorized by an ACL)
            reason = self._acks.pop(info.mid, None)
            if reason is not None and reason.is_failure:
                self._outbox.drop(msg)
                _LOGGER.error(
                    "mqtt: broker refused %s: %s (%d dropped so far)",
                    msg.topic,
                    reason,
                    self.dropped,
                )
                return True
        self._outbox.done(msg)
        return True

    def _send_discovery(self) -> None:
        with self._lock:
            todo = self._discovery.take()
        for topic, payload in todo:
            self._client.publish(topic, payload, qos=1, retain=True)

    def _handle_notes(self) -> None:
        where = f"{self.settings.host}:{self.settings.port}"
        while True:
            try:
                kind, arg = self._notes.get_nowait()
            except queue.Empty:
                self._check_silent(where)
                return
            if kind == "connected":
                if self._outage is not None and self._outage[1] > 0:
                    _LOGGER.info(
                        "mqtt: connected to %s after %d failed attempt(s) / %.1f s",
                        where,
                        self._outage[1],
                        time.monotonic() - self._outage[0],
                    )
                else:
                    _LOGGER.info("mqtt: connected to %s", where)
                resend, self._outage, self._was_up = self._was_up, None, True
                self._up_since = time.monotonic()
                self._silent_warned = False
                with self._lock:
                    for stream, payload in self._states.items():
                        # retained state again: a broker restarted without persistence lost
                        # it; on the first connect, the states an earlier run left
                        if resend or stream in self._seeded:
                            self._enqueue_text(
                                self.topic(stream, "state"), payload, 1, True, "state"
                            )
                    self._seeded.clear()
                    self._discovery.resend()
            elif kind == "disconnected":
                self._outage = (time.monotonic(), 0)
                self._check_flapping(arg)
                _LOGGER.warning(
                    "mqtt: disconnected from %s (%s); %d message(s) kept",
                    where,
                    arg,
                    len(self._outbox),
                )
            elif kind == "failed":
                start, attempts = self._outage or (time.monotonic(), 0)
                self._outage = (start, attempts + 1)
                if attempts == 0:
                    _LOGGER.warning(
                        "mqtt: cannot connect to %s: %s; retrying with a backoff up to 30 s, "
                        "messages wait in the outbox (%d)",
                        where,
                        arg,
                        len(self._outbox),
                    )
                else:
                    _LOGGER.debug("mqtt: connection attempt %d failed: %s", attempts + 1, arg)
            elif kind == "ha-online":
                with self._lock:
                    self._discovery.resend()

    def _check_flapping(self, reason: str) -> None:
        """Say once when the broker keeps closing the connection right after it opens: the
        sign of another client with this client id (each takes the session from the other)."""
        short = time.monotonic() - self._up_since < FLAP_SECONDS
        self._flaps = self._flaps + 1 if short else 0
        if self._flaps == FLAP_COUNT:
            _LOGGER.error(
                "mqtt: the broker closed the connection right after it opened, %d times in a "
                "row (last: %s): is another client using client_id %r? Each monitor needs its "
                "own ([mqtt] client_id)",
                self._flaps,
                reason,
                self.client_id,
            )

    def _check_silent(self, where: str) -> None:
        """Warn once when a connection neither fails nor succeeds (a broker that accepts the
        TCP connection and never answers): otherwise nothing would say why nothing is sent."""
        if self.connected or self._outage is None or self._outage[1] > 0 or self._silent_warned:
            return
        waited = time.monotonic() - self._outage[0]
        if waited >= SILENT_SECONDS:
            self._silent_warned = True
            _LOGGER.warning(
                "mqtt: no answer from %s after %.0f s (is it an MQTT broker?); still trying, "
                "messages wait in the outbox (%d)",
                where,
                waited,
                len(self._outbox),
            )


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


def _utc_now() -> str:
    from amulet_stream.scoring.pipeline import utc_iso

    return utc_iso()
