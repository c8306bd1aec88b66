"""The TOML config file: validated at start, with messages that name the key."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .clips import ClipSettings
from .detector import RENAMED, DetectorSettings
from .integrity import IntegritySettings
from .mqtt import MqttSettings

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""Stream ids: letters, digits, '_' and '-' (they become MQTT topic levels and HA ids)."""
KINDS = ("device", "stdin", "file")


@dataclass(frozen=True)
class SourceConfig:
    """Where a stream's audio comes from."""

    kind: str = "device"
    """'device' (sound card), 'stdin' (raw S16_LE PCM) or 'file' (a wav played as a stream)."""
    device: str | int | None = None
    """Device name (or unique part of it) or index; None: the system default input."""
    rate: int | None = None
    """Capture rate in Hz; None: the device's default (stdin: required)."""
    channels: int | None = None
    """Channels to open; None: enough for `channel` (stdin: 1)."""
    channel: int | None = None
    """0-based channel to use; None: down-mix."""
    stream: str = "default"
    """Stream id in every output line."""
    path: Path | None = None
    """kind 'file': the wav to play."""
    realtime: bool = True
    """kind 'file': pace at real time (False: as fast as it reads)."""
    loop: bool = False
    """kind 'file': start again at the end (a demo that never ends)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not STREAM_ID.fullmatch(self.stream):
            raise ValueError(
                f"stream {self.stream!r}: use 1 to 64 letters, digits, '_' or '-' "
                "(it becomes an MQTT topic level)"
            )
        for key in ("rate", "channels"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be a positive number, not {value}")
        if self.channel is not None and self.channel < 0:
            raise ValueError(f"channel is 0-based and cannot be negative ({self.channel})")
        if self.channel is not None and self.channels is not None and self.channel >= self.channels:
            raise ValueError(
                f"channel {self.channel} does not exist when {self.channels} channel(s) are opened"
            )
        if isinstance(self.device, str) and not self.device.strip():
            raise ValueError("device must name a device (or part of its name), not ''")
        if self.kind != "file" and self.path is not None:
            raise ValueError(
                f"path is for kind = 'file' (this source is kind = {self.kind!r}"
                + (", the default)" if self.kind == "device" else ")")
            )
        if self.kind == "file" and (self.device, self.rate, self.channels) != (None,) * 3:
            raise ValueError("kind = 'file' takes no device, rate or channels: the wav sets them")
        if self.kind == "file" and self.path is None:
            raise ValueError("path is needed for kind = 'file' (the wav to play)")


@dataclass(frozen=True)
class ModelConfig:
    """Which model and how to run it."""

    path: Path | None = None
    threads: int = 1
    hop: float | None = None
    """Seconds between window starts; None: the model's own hop."""

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads}")
        if self.hop is not None and not 0.001 <= self.hop <= 60:
            raise ValueError(f"hop must be between 0.001 and 60 seconds, not {self.hop}")


@dataclass(frozen=True)
class StreamConfig:
    """One [[stream]]: a source, a model and detector settings."""

    source: SourceConfig
    model: ModelConfig
    detector: DetectorSettings

    @property
    def id(self) -> str:
        """The stream id."""
        return self.source.stream


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics]: the HTTP listener with /metrics, /healthz, /readyz and /submit."""

    listen: str | None = None
    """ADDR:PORT, e.g. '127.0.0.1:8491'; None: no listener."""
    submit: bool = False
    """Serve AMULET's POST /submit."""
    submit_limit_mb: float = 50.0


@dataclass(frozen=True)
class DaemonConfig:
    """[daemon]: how `run` keeps streams alive."""

    state_dir: Path | None = None
    """Where the daemon keeps state between starts; None: $STATE_DIRECTORY if set."""
    stall_seconds: float = 5.0
    """A source that delivers no audio this long is marked down and reopened."""
    reopen_attempts: int = 10
    """Exit (status 3, for systemd to restart) after this many failed reopens of every stream."""
    reopen_max_seconds: float = 60.0
    """Longest wait between reopen attempts (the backoff doubles from 1 s up to this)."""

    def __post_init__(self) -> None:
        if not 0.5 <= self.stall_seconds <= 3600:
            raise ValueError(f"stall_seconds must be in [0.5, 3600], not {self.stall_seconds}")
        if self.reopen_attempts < 1:
            raise ValueError(f"reopen_attempts must be at least 1, not {self.reopen_attempts}")
        if not 1 <= self.reopen_max_seconds <= 3600:
            raise ValueError(
                f"reopen_max_seconds must be in [1, 3600], not {self.reopen_max_seconds}"
            )


@dataclass(frozen=True)
class Config:
    """The whole file."""

    source: SourceConfig = field(default_factory=SourceConfig)
    """[source]: the single stream's source, and defaults of every [[stream]]."""
    model: ModelConfig = field(default_factory=ModelConfig)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    mqtt: MqttSettings | None = None
    """None: no MQTT."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    streams: tuple[StreamConfig, ...] = ()
    """[[stream]] tables; empty: one stream from [source], [model] and [detector]."""
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    clips: ClipSettings | None = None
    """[clips]; None: no evidence clips."""
    integrity: IntegritySettings = field(default_factory=IntegritySettings)

    def all_streams(self) -> tuple[StreamConfig, ...]:
        """The [[stream]] tables, or the single stream of [source]/[model]/[detector]."""
        return self.streams or (StreamConfig(self.source, self.model, self.detector),)


_DETECTOR: dict[str, tuple[type, ...]] = {
    "sensitivity": (int, float),
    "alert_seconds": (int, float),
    "within_seconds": (int, float),
    "burst_ratio": (int, float),
    "burst_seconds": (int, float),
    "clear_seconds": (int, float),
    "clear_ratio": (int, float),
}
_SOURCE: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "device": (str, int),
    "rate": (int,),
    "channels": (int,),
    "channel": (int,),
    "stream": (str,),
    "path": (str,),
    "realtime": (bool,),
    "loop": (bool,),
}
_MODEL: dict[str, tuple[type, ...]] = {"path": (str,), "threads": (int,), "hop": (int, float)}
_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "source": _SOURCE,
    "model": _MODEL,
    "detector": _DETECTOR,
    "stream": {
        "id": (str,),
        **{k: v for k, v in _SOURCE.items() if k != "stream"},
        "model": (str,),
        "threads": (int,),
        "hop": (int, float),
        "detector": (dict,),
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
        "score_interval": (int, float),
    },
    "metrics": {"listen": (str,), "submit": (bool,), "submit_limit_mb": (int, float)},
    "daemon": {
        "state_dir": (str,),
        "stall_seconds": (int, float),
        "reopen_attempts": (int,),
        "reopen_max_seconds": (int, float),
    },
    "clips": {
        "folder": (str,),
        "before_seconds": (int, float),
        "after_seconds": (int, float),
        "max_count": (int,),
        "max_mb": (int, float),
    },
    "integrity": {
        "silence_dbfs": (int, float),
        "clip_fraction": (int, float),
        "dc_offset": (int, float),
        "dropout_ms": (int, float),
        "level_margin_db": (int, float),
        "problem_seconds": (int, float),
        "clear_seconds": (int, float),
    },
}


def _check(path: Path, table: Any, name: str, where: str) -> dict[str, Any]:
    """Keys and types of one table (`where` names it in messages, e.g. 'stream[2]')."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{where}] must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if name in ("detector", "stream") and key in RENAMED:
            raise ConfigError(
                f"{path}: {where}.{key} counted windows and is gone: give durations in "
                f"seconds with {RENAMED[key]}"
            )
        types = _TYPES[name].get(key)
        if types is None:
            known = ", ".join(_TYPES[name])
            raise ConfigError(f"{path}: unknown key {where}.{key} (known: {known})")
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = " or ".join("table" if t is dict else t.__name__ for t in types)
            raise ConfigError(f"{path}: {where}.{key} must be {want}, got {value!r}")
        out[key] = value
    return out


def build(cls: type[T], keys: dict[str, Any], where: str) -> T:
    """cls(**keys); its ValueError (which starts with the field name) becomes a ConfigError
    naming `where` and the key, e.g. 'FILE: stream 'm1'.rate must be ...'."""
    try:
        return cls(**keys)
    except ValueError as err:
        text = str(err)
        sep = "." if text.split(" ", 1)[0] in keys else ": "
        raise ConfigError(f"{where}{sep}{text}") from err


def _resolve(path: Path, value: str) -> Path:
    return (path.parent / os.path.expanduser(value)).resolve()


def _stream(path: Path, table: Any, i: int, defaults: StreamConfig) -> StreamConfig:
    """One [[stream]] table over the defaults of [source], [model] and [detector]."""
    keys = _check(path, table, "stream", f"stream[{i + 1}]")
    if "id" not in keys:
        raise ConfigError(f'{path}: [[stream]] number {i + 1} needs an id (e.g. id = "pump-3")')
    if not STREAM_ID.fullmatch(keys["id"]):
        raise ConfigError(
            f"{path}: stream id {keys['id']!r}: use 1 to 64 letters, digits, '_' or '-' "
            "(it becomes an MQTT topic level)"
        )
    where = f"{path}: stream {keys['id']!r}"
    src = {k: v for k, v in keys.items() if k in _SOURCE}
    src["stream"] = keys["id"]
    if "path" in src:
        src["path"] = _resolve(path, src["path"])
    source = build(SourceConfig, src, where)
    mod: dict[str, Any] = {k: keys[k] for k in ("threads", "hop") if k in keys}
    if "model" in keys:
        mod["path"] = _resolve(path, keys["model"])
    model = build(ModelConfig, {**_fields(defaults.model), **mod}, where)
    det = _check(path, keys.get("detector", {}), "detector", f"stream {keys['id']!r}.detector")
    detector = build(DetectorSettings, {**_fields(defaults.detector), **det}, f"{where}.detector")
    return StreamConfig(source, model, detector)


def _fields(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


def load(path: Path) -> Config:
    """Read and validate a config file."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a TOML config is expected)") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    unknown = set(doc) - set(_TYPES)
    if unknown:
        raise ConfigError(
            f"{path}: unknown section [{sorted(unknown)[0]}] (known: {', '.join(_TYPES)})"
        )
    sec = {name: _check(path, doc.get(name, {}), name, name) for name in _TYPES if name != "stream"}
    src, mod = sec["source"], sec["model"]
    for table in (src, mod):
        if "path" in table:
            table["path"] = _resolve(path, table["path"])
    source = build(SourceConfig, src, f"{path}: source")
    model = build(ModelConfig, mod, f"{path}: model")
    det = build(DetectorSettings, sec["detector"], f"{path}: [detector]")
    tables = doc.get("stream", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{path}: write streams as [[stream]] tables (an array of tables)")
    defaults = StreamConfig(source, model, det)
    streams = tuple(_stream(path, t, i, defaults) for i, t in enumerate(tables))
    ids = [s.id for s in streams]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"{path}: stream id {dup[0]!r} is used twice")
    if streams and src:
        raise ConfigError(
            f"{path}: [source] and [[stream]] both given: put each source in its [[stream]]"
        )
    mq = sec["mqtt"]
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        if key in mq:
            mq[key] = _resolve(path, mq[key])
    if "password_file" in mq and "password_env" in mq:
        raise ConfigError(f"{path}: give mqtt.password_file or mqtt.password_env, not both")
    dmn = sec["daemon"]
    if "state_dir" in dmn:
        dmn["state_dir"] = _resolve(path, dmn["state_dir"])
    clips = sec["clips"]
    if "clips" in doc and "folder" not in clips:
        raise ConfigError(f"{path}: clips.folder is needed (where evidence clips go)")
    if "folder" in clips:
        if not clips["folder"].strip():
            raise ConfigError(f"{path}: clips.folder is empty: give the folder for the clips")
        clips["folder"] = _resolve(path, clips["folder"])
    return Config(
        source,
        model,
        det,
        build(MqttSettings, mq, str(path)) if "mqtt" in doc else None,
        MetricsConfig(**sec["metrics"]),
        streams,
        build(DaemonConfig, dmn, f"{path}: daemon"),
        build(ClipSettings, clips, f"{path}: clips") if "clips" in doc else None,
        build(IntegritySettings, sec["integrity"], f"{path}: integrity"),
    )
