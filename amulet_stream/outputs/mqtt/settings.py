"""[mqtt] settings: the broker, credentials, TLS files, topic prefixes and what is published."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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
    commands: bool = False
    """Take commands on <prefix>/<stream>/command ({"learn_seconds": N}: learn the site again).
    Off by default: whoever may publish there could make the monitor learn a fault."""
    feedback: bool = False
    """Take labels on <prefix>/<stream>/feedback ({"event_id": ID or "latest", "label":
    "normal"|"fault"}) and offer Home Assistant a button that marks the latest alert normal.
    Off by default: the broker's ACLs then decide who may teach the monitor."""
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


def check_topic_part(name: str, value: str, level: bool) -> None:
    """Refuse a client id (one topic level) or prefix that would make illegal topics."""
    bad = "+#\0/" if level else "+#\0"
    if not value or any(c in value for c in bad) or value.startswith("/"):
        rule = "one topic level: no +, # or /" if level else "no +, # or leading /"
        raise MqttConfigError(f"mqtt.{name} {value!r}: not usable in MQTT topics ({rule})")
