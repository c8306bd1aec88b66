"""Home Assistant MQTT discovery (schema of HA 2024.3): the retained config payloads of one
stream's entities, and the small file that remembers what this process announced so a later
start can remove the entities of streams that left the config."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amulet_stream.files import make_private_dirs, read_small, replace_file

_LOGGER = logging.getLogger(__name__)

ANNOUNCED_FILE = "mqtt-discovery.json"

# state topic -> entity value; "None" is HA's payload for "unknown". The state topic may get
# an empty payload (stream removed, its retained state cleared): no template error for it.
_STATE = "{% set s = value_json.state if value_json is defined else '' %}"
_ANOMALY = _STATE + "{{ 'ON' if s == 'anomaly' else 'OFF' if s == 'normal' else 'None' }}"
_INPUT_PROBLEM = (
    _STATE + "{{ 'ON' if s in ('input_problem', 'down') else 'OFF' if s in ('normal', "
    "'anomaly') else 'None' }}"
)
_STATE_NAME = "{{ value_json.state if value_json is defined else this.state }}"
_ATTRIBUTES = "{{ value if value else '{}' }}"


@dataclass(frozen=True)
class StreamTopics:
    """The MQTT topics of one stream and of the process that runs it."""

    stream: str
    state: str
    score: str
    availability: str
    feedback: str | None = None
    """Where labels go (feedback on): Home Assistant gets a button that marks an alert normal."""


def node_id(prefix: str, stream: str) -> str:
    """Discovery node id and device identifier: '<prefix as a slug>_<stream>'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", prefix) + "_" + stream


def discovery_configs(
    topics: StreamTopics,
    discovery_prefix: str,
    node: str,
    model_sha256: str,
    threshold: float,
    version: str,
) -> dict[str, str]:
    """Retained discovery payloads (JSON text) by config topic for one stream's five entities
    (six with feedback: the button that marks the latest alert normal)."""
    device = {
        "identifiers": [node],
        "name": f"amulet {topics.stream}",
        "manufacturer": "amulet-stream",
        "model": f"model {model_sha256[:12]}, threshold {threshold:.4g}",
        "sw_version": version,
    }
    common: dict[str, Any] = {
        "qos": 1,
        "availability": [
            {
                "topic": topics.availability,
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ],
        "json_attributes_topic": topics.state,
        "json_attributes_template": _ATTRIBUTES,
        "device": device,
        "origin": {"name": "amulet-stream", "sw_version": version},
    }
    entities: dict[tuple[str, str], dict[str, Any]] = {
        ("binary_sensor", "anomaly"): {
            "name": "anomaly",
            "device_class": "problem",
            "state_topic": topics.state,
            "value_template": _ANOMALY,
        },
        ("binary_sensor", "input_problem"): {
            "name": "input problem",
            "device_class": "problem",
            "state_topic": topics.state,
            "value_template": _INPUT_PROBLEM,
        },
        ("sensor", "score"): {
            "name": "score",
            "state_topic": topics.score,
            "value_template": "{{ value_json.score }}",
            "state_class": "measurement",
            "suggested_display_precision": 3,
        },
        ("sensor", "threshold"): {
            "name": "threshold",
            "state_topic": topics.score,
            "value_template": "{{ value_json.threshold }}",
            "suggested_display_precision": 4,
            "entity_category": "diagnostic",
        },
        ("sensor", "state"): {
            "name": "state",
            "state_topic": topics.state,
            "value_template": _STATE_NAME,
            "icon": "mdi:engine",
        },
    }
    if topics.feedback is not None:
        entities["button", "mark_normal"] = {
            "name": "latest alert was normal",
            "command_topic": topics.feedback,
            "payload_press": json.dumps({"event_id": "latest", "label": "normal"}),
            "icon": "mdi:thumb-up-outline",
        }
    out: dict[str, str] = {}
    for (component, key), entity in entities.items():
        cfg = {**entity, "unique_id": f"{node}_{key}", "object_id": f"{node}_{key}", **common}
        out[f"{discovery_prefix}/{component}/{node}/{key}/config"] = json.dumps(cfg)
    return out


class Announced:
    """<state_dir>/mqtt-discovery.json: the retained topics (discovery configs and state) of
    every stream this daemon announced and has not removed yet, and its availability topic.
    A file that cannot be read or written is logged, never fatal."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = state_dir / ANNOUNCED_FILE if state_dir is not None else None
        self._warned = False

    def load(self) -> tuple[dict[str, list[str]], str | None]:
        """(stream -> retained topics, availability topic) as a previous run left them."""
        if self.path is None or not os.path.lexists(self.path):
            return {}, None
        try:
            doc = json.loads(read_small(self.path, 1 << 24))
            streams, availability = doc["streams"], doc.get("availability")
            if not isinstance(streams, dict) or not all(
                isinstance(t, list) and all(isinstance(x, str) for x in t) for t in streams.values()
            ):
                raise TypeError("streams must map to lists of topics")
            if availability is not None and not isinstance(availability, str):
                raise TypeError("availability must be a topic")
        except (OSError, ValueError, KeyError, TypeError) as err:
            _LOGGER.warning("mqtt: ignoring %s: %s", self.path, err)
            return {}, None
        return {stream: list(t) for stream, t in streams.items()}, availability

    def save(self, streams: dict[str, list[str]], availability: str) -> None:
        """Replace the file (atomically: write a temporary file, rename)."""
        if self.path is None:
            return
        doc = {"version": 1, "availability": availability, "streams": streams}
        try:
            make_private_dirs(self.path.parent)
            replace_file(self.path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
        except OSError as err:
            if not self._warned:
                _LOGGER.warning(
                    "mqtt: cannot write %s (%s): entities of streams removed while this "
                    "file is unwritable stay in Home Assistant",
                    self.path,
                    err.strerror or err,
                )
                self._warned = True


class Discovery:
    """The retained discovery configs this process wants on the broker, the removals still to
    send, and (through Announced) what a later start must remove. Not thread-safe: MqttSink
    holds its lock around every call. `enabled` False: announces nothing, prunes everything."""

    def __init__(
        self,
        enabled: bool,
        topics: Callable[[str], StreamTopics],
        discovery_prefix: str,
        node: Callable[[str], str],
        version: str,
        availability: str,
        announced: Announced,
    ) -> None:
        self.enabled = enabled
        self._availability = availability
        self._topics = topics
        self._discovery_prefix = discovery_prefix
        self._node = node
        self._version = version
        self._announced = announced
        self._streams: dict[str, dict[str, str]] = {}  # stream -> config topic -> payload
        self._wanted: dict[str, str] = {}  # topic -> retained payload ("" = remove)
        self._dirty: set[str] = set()  # wanted topics to publish at the next chance
        # stream -> retained topics a past run announced; its availability topic
        self._previous, self._old_availability = announced.load()
        self._retiring: dict[str, list[str]] = {}  # removed streams with removals unsent
        self._saved = (dict(self._previous), self._old_availability)  # as in the file

    def add(self, stream: str, model_sha256: str, threshold: float) -> None:
        """Announce (or update) a stream's entities; drops stale configs a past run left."""
        if not self.enabled:
            return
        configs = discovery_configs(
            self._topics(stream),
            self._discovery_prefix,
            self._node(stream),
            model_sha256,
            threshold,
            self._version,
        )
        state = self._topics(stream).state
        stale = {*self._previous.get(stream, ()), *self._streams.get(stream, {})}
        for topic in stale - {*configs, state}:
            self._want(topic, "")
        for topic, payload in configs.items():
            self._want(topic, payload)
        self._streams[stream] = configs
        self._retiring.pop(stream, None)
        self._save()

    def remove(self, stream: str) -> None:
        """Remove a stream's entities (empty retained configs)."""
        configs = self._streams.pop(stream, None)
        if configs is not None:
            self._retire(stream, [*configs, self._topics(stream).state])

    def prune(self, configured: set[str], availability: str) -> list[str]:
        """Retire what a past run announced for streams not configured now (all of it when
        disabled); returns the retained topics to clear: state topics of the streams that are
        gone, and the past run's availability topic if it was another."""
        gone: list[str] = []
        if self._old_availability not in (None, availability):
            gone.append(self._old_availability)
        for stream, topics in self._previous.items():
            kept = stream in configured or stream in self._streams
            if kept and self.enabled:
                continue  # add() replaced its configs and dropped stale ones
            self._retire(stream, topics)
            state = self._topics(stream).state
            if not kept and state in topics:
                gone.append(state)
        self._previous, self._old_availability = {}, None
        self._save()
        return gone

    def resend(self) -> None:
        """Send every wanted config again (on connect; when Home Assistant comes online)."""
        self._dirty.update(t for t, p in self._wanted.items() if p)

    def take(self) -> list[tuple[str, str]]:
        """(topic, retained payload) to publish now; removals are then forgotten."""
        todo = sorted((t, self._wanted[t]) for t in self._dirty)
        self._dirty.clear()
        for topic, payload in todo:
            if not payload:
                del self._wanted[topic]
        done = [s for s, ts in self._retiring.items() if not set(ts) & set(self._wanted)]
        for stream in done:
            del self._retiring[stream]
        if done:
            self._save()
        return todo

    def _want(self, topic: str, payload: str) -> None:
        self._wanted[topic] = payload
        self._dirty.add(topic)

    def _retire(self, stream: str, topics: list[str]) -> None:
        state = self._topics(stream).state
        for topic in topics:
            if topic != state:
                self._want(topic, "")
        self._retiring[stream] = topics
        self._save()

    def _save(self) -> None:
        streams = {**self._previous, **self._retiring}
        for stream, configs in self._streams.items():
            streams[stream] = [*configs, self._topics(stream).state]
        if (streams, self._availability) != self._saved:
            self._announced.save(streams, self._availability)
            self._saved = (streams, self._availability)
