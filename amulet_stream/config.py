"""The TOML config file: validated at start, with messages that name the key."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .detector import RENAMED, DetectorSettings
from .mqtt import MqttSettings


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class SourceConfig:
    """[source]: where the audio comes from."""

    kind: str = "device"
    """'device' (sound card) or 'stdin' (raw S16_LE PCM)."""
    device: str | int | None = None
    """Device name (or unique part of it) or index; None: the system default input."""
    rate: int | None = None
    """Capture rate in Hz; None: the device's default (stdin: required)."""
    channels: int | None = None
    """Channels to open; None: all the device has (stdin: 1)."""
    channel: int | None = None
    """0-based channel to use; None: down-mix."""
    stream: str = "default"
    """Stream id in every output line."""

    def __post_init__(self) -> None:
        for key in ("rate", "channels"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be a positive number, not {value}")
        if self.channel is not None and self.channel < 0:
            raise ValueError(f"channel is 0-based and cannot be negative ({self.channel})")


@dataclass(frozen=True)
class ModelConfig:
    """[model]: which model and how to run it."""

    path: Path | None = None
    threads: int = 1
    hop: float | None = None
    """Seconds between window starts; None: the model's own hop."""

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads}")
        if self.hop is not None and not 0 < self.hop <= 60:
            raise ValueError(f"hop must be between 0 and 60 seconds, not {self.hop}")


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics]: the HTTP listener with /metrics, /healthz, /readyz and /submit."""

    listen: str | None = None
    """ADDR:PORT, e.g. '127.0.0.1:8491'; None: no listener."""
    submit: bool = False
    """Serve AMULET's POST /submit."""
    submit_limit_mb: float = 50.0


@dataclass(frozen=True)
class Config:
    """The whole file."""

    source: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    mqtt: MqttSettings | None = None
    """None: no MQTT."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "source": {
        "kind": (str,),
        "device": (str, int),
        "rate": (int,),
        "channels": (int,),
        "channel": (int,),
        "stream": (str,),
    },
    "model": {"path": (str,), "threads": (int,), "hop": (int, float)},
    "detector": {
        "sensitivity": (int, float),
        "alert_seconds": (int, float),
        "within_seconds": (int, float),
        "burst_ratio": (int, float),
        "burst_seconds": (int, float),
        "clear_seconds": (int, float),
        "clear_ratio": (int, float),
    },
    "mqtt": {
        "host": (str,),
        "port": (int,),
        "client_id": (str,),
        "keepalive": (int,),
        "username": (str,),
        "password_file": (str,),
        "password_env": (str,),
        "tls": (bool,),
        "ca_file": (str,),
        "cert_file": (str,),
        "key_file": (str,),
        "prefix": (str,),
        "qos": (int,),
        "queue_limit": (int,),
        "scores": (bool,),
        "homeassistant": (bool,),
        "discovery_prefix": (str,),
    },
    "metrics": {"listen": (str,), "submit": (bool,), "submit_limit_mb": (int, float)},
}


def _section(path: Path, doc: dict[str, Any], name: str) -> dict[str, Any]:
    table = doc.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        types = _TYPES[name].get(key)
        if name == "detector" and key in RENAMED:
            raise ConfigError(
                f"{path}: detector.{key} counted windows and is gone: give durations in "
                f"seconds with detector.{RENAMED[key]}"
            )
        if types is None:
            known = ", ".join(_TYPES[name])
            raise ConfigError(f"{path}: unknown key {name}.{key} (known: {known})")
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{path}: {name}.{key} must be {want}, got {value!r}")
        out[key] = value
    return out


def load(path: Path) -> Config:
    """Read and validate a config file."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    unknown = set(doc) - set(_TYPES)
    if unknown:
        raise ConfigError(
            f"{path}: unknown section [{sorted(unknown)[0]}] (known: {', '.join(_TYPES)})"
        )
    src = _section(path, doc, "source")
    if src.get("kind", "device") not in ("device", "stdin"):
        raise ConfigError(f"{path}: source.kind must be 'device' or 'stdin'")
    mod = _section(path, doc, "model")
    if "path" in mod:
        mod["path"] = (path.parent / mod["path"]).resolve()
    try:
        source, model = SourceConfig(**src), ModelConfig(**mod)
    except ValueError as err:
        section = "source" if str(err).split()[0] in src else "model"
        raise ConfigError(f"{path}: {section}.{err}") from err
    det_keys = _section(path, doc, "detector")
    try:
        det = DetectorSettings(**det_keys)
    except ValueError as err:
        raise ConfigError(f"{path}: [detector]: {err}") from err
    mq = _section(path, doc, "mqtt")
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        if key in mq:
            mq[key] = (path.parent / mq[key]).resolve()
    if mq.get("qos", 1) not in (0, 1, 2) or mq.get("queue_limit", 1) < 1:
        raise ConfigError(f"{path}: mqtt.qos must be 0, 1 or 2 and mqtt.queue_limit >= 1")
    if "password_file" in mq and "password_env" in mq:
        raise ConfigError(f"{path}: give mqtt.password_file or mqtt.password_env, not both")
    met = _section(path, doc, "metrics")
    return Config(
        source,
        model,
        det,
        MqttSettings(**mq) if "mqtt" in doc else None,
        MetricsConfig(**met),
    )
