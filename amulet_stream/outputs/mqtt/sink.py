"""MQTT sink: the topic layout, the streams, and the sender thread. Publishing never blocks
the audio path.

Topics: `<prefix>/<client_id>/status` (this process's availability, retained, last will),
`<prefix>/<stream>/state` (retained), `/alert` (QoS 1), `/score` (QoS 0). Records become
payloads (routing.py) in the bounded outbox (outbox.py; on disk too: spool.py); one sender
thread publishes them in order over the connection (connection.py) and waits for each QoS 1
PUBACK before the next. Home Assistant discovery (homeassistant.py) is kept as wanted
retained payloads, sent on every connect, when Home Assistant comes online and on changes;
the last states (states.py) are sent again after a reconnect.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from amulet_stream import __version__
from amulet_stream.outputs.mqtt.connection import Connection, Sent
from amulet_stream.outputs.mqtt.homeassistant import (
    Announced,
    Discovery,
    StreamTopics,
    node_id,
)
from amulet_stream.outputs.mqtt.outbox import Message
from amulet_stream.outputs.mqtt.routing import (
    STATES,
    StreamInfo,
    take_commands,
    take_feedback,
    with_defaults,
)
from amulet_stream.outputs.mqtt.settings import MqttConfigError, MqttSettings, check_topic_part
from amulet_stream.outputs.mqtt.spool import DurableOutbox, SpoolError, open_outbox
from amulet_stream.outputs.mqtt.states import RetainedStates
from amulet_stream.text import STREAM_ID

_LOGGER = logging.getLogger(__name__)


class MqttSink:
    """One connection for all streams of this process. add_stream, remove_stream, prune and
    publish_record are called from the processing loop; they never block."""

    def __init__(self, settings: MqttSettings, state_dir: Path | None = None) -> None:
        self.settings = settings
        host = "".join(c if c not in "+#/\0" else "_" for c in os.uname().nodename)
        self.client_id = settings.client_id or f"amulet-{host}"
        check_topic_part("client_id", self.client_id, level=True)
        check_topic_part("prefix", settings.prefix, level=False)
        check_topic_part("discovery_prefix", settings.discovery_prefix, level=False)
        self.availability_topic = self.topic(self.client_id, "status")
        try:
            self.outbox = open_outbox(settings.queue_limit, state_dir, self.client_id)
        except SpoolError as err:
            raise MqttConfigError(str(err)) from err
        """Messages waiting for the broker (in memory, or also on disk with a state_dir)."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # streams, states, discovery; never in paho callbacks
        self._streams: dict[str, StreamInfo] = {}
        self._states = RetainedStates(self.outbox, lambda stream: self.topic(stream, "state"))
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
        self._link = Connection(
            settings, self.client_id, self.availability_topic, self._wake, self.queued
        )
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)

    @property
    def connected(self) -> bool:
        """Connected to the broker now."""
        return self._link.connected

    @property
    def connect_failures(self) -> int:
        """Failed connection attempts (unreachable, refused, TLS, auth), all outages."""
        return self._link.connect_failures

    def topic(self, *parts: str) -> str:
        """<prefix>/<parts...>."""
        return "/".join((self.settings.prefix, *parts))

    @property
    def dropped_by_kind(self) -> dict[str, int]:
        """Messages dropped (outbox bound, refused by the broker) by kind: alert, state..."""
        return self.outbox.dropped_by_kind

    @property
    def dropped(self) -> int:
        """All dropped messages."""
        return sum(self.outbox.dropped_by_kind.values())

    # -- processing-loop side -------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; the monitor runs whether or not the broker is there."""
        self._link.start()
        self._sender.start()

    def add_stream(self, stream: str, threshold: float, model_sha256: str) -> None:
        """Announce a stream (or update it: reload) to Home Assistant; publishes no state."""
        if not STREAM_ID.fullmatch(stream):
            raise MqttConfigError(f"stream id {stream!r}: use 1 to 64 letters, digits, _ or -")
        with self._lock:
            old = self._streams.get(stream)
            new = self._streams[stream] = StreamInfo(model_sha256)
            if old is not None:  # a reload: the score interval goes on
                new.last_score_sent, new.pending_score = old.last_score_sent, old.pending_score
            self._discovery.add(stream, model_sha256, threshold)
        self._wake.set()

    def remove_stream(self, stream: str) -> None:
        """A stream left the config: remove its HA entities and clear its retained state."""
        with self._lock:
            info = self._streams.pop(stream, None)
            self._states.remove([stream])
            if info is not None:
                self._enqueue(self.topic(stream, "score"), info.take_pending(), 0, "score")
            self._discovery.remove(stream)
        self._enqueue_text(self.topic(stream, "state"), "", 1, True, "state")

    def prune(self, configured: set[str]) -> None:
        """Remove what a previous run announced and is no longer wanted: the HA entities and
        retained state of streams not in `configured`; all its entities if HA is now off."""
        with self._lock:
            gone = self._discovery.prune(configured, self.availability_topic)
            old = self._states.others(configured)  # streams of an earlier run's config
            self._states.remove(old)
            gone += [self.topic(stream, "state") for stream in old]
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
            self.outbox.discard("score" if event == "score" else "alert")
            return
        if event == "score":
            self._route_score(stream, record)
            return
        body = self._body(stream, record)
        body.setdefault("event_id", str(uuid.uuid4()))
        self._enqueue(self.topic(stream, "alert"), body, self.settings.qos, "alert")
        state = json.dumps({**body, "state": event})
        with self._lock:
            self._states.put(stream, state)
        self._enqueue_text(self.topic(stream, "state"), state, 1, True, "state")

    def take_commands(self) -> list[tuple[str, float]]:
        """Commands received on <prefix>/<stream>/command: (stream, learn_seconds, or 0 for
        the stream's own); malformed ones are logged and dropped."""
        return take_commands(self._link.commands, self.settings.prefix)

    def take_feedback(self) -> list[tuple[str, str, str, str]]:
        """Labels received on <prefix>/<stream>/feedback: (stream, event_id, label, note)."""
        return take_feedback(self._link.feedback, self.settings.prefix)

    def queued(self) -> int:
        """Messages waiting in the outbox."""
        return len(self.outbox)

    def close(self, timeout: float = 5.0) -> int:
        """Flush what can be flushed within `timeout` s, publish 'offline', disconnect; returns
        the number of messages not delivered (also logged)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            for stream, info in self._streams.items():
                self._enqueue(self.topic(stream, "score"), info.take_pending(), 0, "score")
        durable = isinstance(self.outbox, DurableOutbox)
        while len(self.outbox) and not self._link.refused and time.monotonic() < deadline:
            if self._link.away and durable:
                break  # the broker is away: the alerts wait on disk for the next start
            time.sleep(0.02)  # memory only: give a reconnect its chance until the deadline
        left = len(self.outbox)
        if left:
            _LOGGER.warning("mqtt: %s", self.outbox.describe_left())
        self._stop.set()
        self._wake.set()
        if self._sender.is_alive():
            self._sender.join(timeout=max(0.1, deadline - time.monotonic()))
        self._link.close(deadline)
        self.outbox.close()
        return left

    # -- helpers (callers hold self._lock where they touch streams and states) --------------

    def _topics(self, stream: str) -> StreamTopics:
        return StreamTopics(
            stream,
            self.topic(stream, "state"),
            self.topic(stream, "score"),
            self.availability_topic,
            self.topic(stream, "feedback") if self.settings.feedback else None,
        )

    def _body(self, stream: str, record: dict[str, Any]) -> dict[str, Any]:
        info = self._streams.get(stream)
        return with_defaults(record, info.model_sha256 if info is not None else None)

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
            send = info.offer(info.payload(record), self.settings.score_interval, now)
        self._enqueue(self.topic(stream, "score"), send, 0, "score")

    def _enqueue(self, topic: str, body: dict[str, Any] | None, qos: int, kind: str) -> None:
        if body is not None:
            self._enqueue_text(topic, json.dumps(body), qos, False, kind)

    def _enqueue_text(self, topic: str, payload: str, qos: int, retain: bool, kind: str) -> None:
        victim = self.outbox.put(Message(topic, payload, qos, retain, kind))
        if victim is not None:
            dropped = self.outbox.dropped_by_kind
            n = dropped[victim.kind]
            if n == 10 ** (len(str(n)) - 1):  # the 1st, 10th, 100th... drop of a kind
                _LOGGER.warning(
                    "mqtt: outbox full (%d): oldest %s message dropped (%s dropped so far)",
                    self.settings.queue_limit,
                    victim.kind,
                    ", ".join(f"{k} {d}" for k, d in dropped.items() if d),
                )
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
        self._handle_events(self._link.notes())
        if not self._link.connected:
            return False
        self._send_discovery()
        msg = self.outbox.peek()
        if msg is None:
            return False
        sent, reason = self._link.publish(msg, self._stop)
        if sent is Sent.AGAIN:
            return True  # not acknowledged: keep it and send it again after reconnect
        if sent is Sent.DONE:
            self.outbox.done(msg)
            return True
        self.outbox.drop(msg)
        if sent is Sent.REFUSED:
            _LOGGER.error(
                "mqtt: broker refused %s: %s (%d dropped so far)", msg.topic, reason, self.dropped
            )
        return True

    def _send_discovery(self) -> None:
        with self._lock:
            todo = self._discovery.take()
        for topic, payload in todo:
            self._link.publish_retained(topic, payload)

    def _handle_events(self, events: list[str]) -> None:
        """After a connect: the retained states again (a broker restarted without persistence
        lost them; on the first connect, the states an earlier run left) and discovery."""
        for event in events:
            with self._lock:
                if event != "ha-online":
                    for stream, payload in self._states.to_send(event == "reconnected"):
                        self._enqueue_text(self.topic(stream, "state"), payload, 1, True, "state")
                self._discovery.resend()
