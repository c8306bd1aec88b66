"""The TOML config file: validated at start, with messages that name the key."""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from amulet_stream.audio.wav import MAX_CHANNELS, RATES
from amulet_stream.outputs.clips import ClipSettings
from amulet_stream.outputs.mqtt.settings import MqttSettings
from amulet_stream.scoring.detector import RENAMED, DetectorSettings
from amulet_stream.scoring.integrity import IntegritySettings

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


def shown(value: object, limit: int = 60) -> str:
    """repr(value), cut to about `limit` characters (a 100 kB value makes no readable message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def cut(text: str, limit: int = 200) -> str:
    """`text` (a path, a message) with its middle cut out when longer than `limit`."""
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return f"{text[:half]}...{text[-half:]}"


def _name(key: str) -> str:
    """A key or section name for a message: as is when plain, else shown()."""
    return key if re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", key) else shown(key)


STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""Stream ids: letters, digits, '_' and '-' (they become MQTT topic levels and HA ids)."""
KINDS = ("device", "stdin", "file")
MAX_THREADS = 256
"""More onnxruntime threads than this is a mistake (5000 hung the start for minutes)."""
MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than 1 MiB is refused unread (e.g. --config /dev/zero)."""


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
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {shown(self.kind)}")
        if not STREAM_ID.fullmatch(self.stream):
            raise ValueError(
                f"stream {shown(self.stream)}: use 1 to 64 letters, digits, '_' or '-' "
                "(it becomes an MQTT topic level)"
            )
        for key in ("rate", "channels"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be a positive number, not {value}")
        if self.rate is not None and not RATES[0] <= self.rate <= RATES[1]:
            raise ValueError(f"rate must be {RATES[0]} to {RATES[1]} Hz, not {self.rate}")
        if self.channels is not None and self.channels > MAX_CHANNELS:
            raise ValueError(f"channels must be 1 to {MAX_CHANNELS}, not {self.channels}")
        if self.channel is not None and self.channel < 0:
            raise ValueError(f"channel is 0-based and cannot be negative ({self.channel})")
        if self.channel is not None and self.channel >= MAX_CHANNELS:
            raise ValueError(f"channel must be 0 to {MAX_CHANNELS - 1}, not {self.channel}")
        if self.channel is not None and self.channels is not None and self.channel >= self.channels:
            raise ValueError(
                f"channel {self.channel} does not exist when {self.channels} channel(s) are opened"
            )
        if isinstance(self.device, str) and not self.device.strip():
            raise ValueError("device must name a device (or part of its name), not ''")
        if isinstance(self.device, int) and self.device < 0:
            raise ValueError(f"device index cannot be negative ({self.device})")
        if self.kind == "stdin" and self.device is not None:
            raise ValueError("device is for kind = 'device' (this source is kind = 'stdin')")
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
        if self.threads > MAX_THREADS:
            raise ValueError(f"threads must be at most {MAX_THREADS}, not {self.threads}")
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
    """Largest /submit body, MiB (0 < x <= 1024)."""
    submit_max_seconds: float = 1800.0
    """Longest audio /submit scores, s (0 < x <= 86400): bounds its time and memory."""
    submit_concurrency: int = 2
    """Uploads taken at once (1..64); beyond, 503 with Retry-After."""
    submit_upload_seconds: float = 300.0
    """Time a whole upload may take to arrive, s (0 < x <= 3600)."""
    tls_cert: Path | None = None
    """PEM certificate chain: the listener speaks HTTPS only."""
    tls_key: Path | None = None
    """PEM private key; None: in tls_cert's file."""
    basic_auth_user: str | None = None
    basic_auth_password_file: Path | None = None
    """The password (mode 0600 or stricter); with basic_auth_user every endpoint needs it."""

    def __post_init__(self) -> None:
        if self.listen is not None:
            check_listen(self.listen)
        if not 0 < self.submit_limit_mb <= 1024:
            raise ValueError(
                f"submit_limit_mb must be more than 0 and at most 1024, not {self.submit_limit_mb}"
            )
        for key, low, high in (
            ("submit_max_seconds", 0, 86400),
            ("submit_concurrency", 0, 64),
            ("submit_upload_seconds", 0, 3600),
        ):
            value = getattr(self, key)
            if not low < value <= high:
                raise ValueError(f"{key} must be more than {low} and at most {high}, not {value}")


def check_listen(text: str) -> None:
    """Refuse a listen address that is not [ADDR]:PORT with PORT 0..65535 (ValueError)."""
    host, _, port = text.rpartition(":")
    if not (port.isascii() and port.isdigit()):
        raise ValueError(
            f"listen {shown(text)}: port must be a number (ADDR:PORT, e.g. 127.0.0.1:8491)"
        )
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"listen {shown(text)}: port must be 0 to 65535, not {shown(int(port))}")
    if any(c.isspace() or c == "/" for c in host):
        raise ValueError(f"listen {shown(text)}: {shown(host)} is not a host name or address")


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
        if self.state_dir is not None:
            check_state_dir(self.state_dir)
        if not 0.5 <= self.stall_seconds <= 3600:
            raise ValueError(f"stall_seconds must be in [0.5, 3600], not {self.stall_seconds}")
        if self.reopen_attempts < 1:
            raise ValueError(f"reopen_attempts must be at least 1, not {self.reopen_attempts}")
        if not 1 <= self.reopen_max_seconds <= 3600:
            raise ValueError(
                f"reopen_max_seconds must be in [1, 3600], not {self.reopen_max_seconds}"
            )


def check_state_dir(path: Path) -> None:
    """Refuse a state_dir that cannot be a folder: a file, or a name the system refuses."""
    try:
        if path.exists() and not path.is_dir():
            raise ValueError(f"state_dir {cut(str(path))}: exists and is not a folder")
    except OSError as err:  # e.g. a name too long
        raise ValueError(f"state_dir {cut(str(path))}: {err.strerror or err}") from err


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
    "metrics": {
        "listen": (str,),
        "submit": (bool,),
        "submit_limit_mb": (int, float),
        "submit_max_seconds": (int, float),
        "submit_concurrency": (int,),
        "submit_upload_seconds": (int, float),
        "tls_cert": (str,),
        "tls_key": (str,),
        "basic_auth_user": (str,),
        "basic_auth_password_file": (str,),
    },
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
            raise ConfigError(f"{path}: unknown key {where}.{_name(key)} (known: {known})")
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = " or ".join("table" if t is dict else t.__name__ for t in types)
            raise ConfigError(f"{path}: {where}.{key} must be {want}, got {shown(value)}")
        out[key] = value
    return out


def build(cls: type[T], keys: dict[str, Any], where: str) -> T:
    """cls(**keys); its ValueError (which starts with the field name) becomes a ConfigError
    naming `where` and the key, e.g. 'FILE: stream 'm1'.rate must be ...'."""
    try:
        return cls(**keys)
    except ValueError as err:
        text = cut(str(err), 800)  # the checks of other modules may quote long values
        sep = "." if text.split(" ", 1)[0] in keys else ": "
        raise ConfigError(f"{where}{sep}{text}") from err


def _resolve(path: Path, value: str, key: str) -> Path:
    """A path key's value, relative to the config file's folder; '~' expanded."""
    if not value.strip() or "\0" in value:
        raise ConfigError(f"{path}: {key} must be a file or folder name, not {shown(value)}")
    try:
        return (path.parent / os.path.expanduser(value)).resolve()
    except (OSError, RuntimeError) as err:  # e.g. a symlink loop
        reason = err.strerror if isinstance(err, OSError) and err.strerror else cut(str(err))
        raise ConfigError(f"{path}: {key} {shown(value)}: {reason}") from err


def _stream(path: Path, table: Any, i: int, defaults: StreamConfig) -> StreamConfig:
    """One [[stream]] table over the defaults of [source], [model] and [detector]."""
    keys = _check(path, table, "stream", f"stream[{i + 1}]")
    if "id" not in keys:
        raise ConfigError(f'{path}: [[stream]] number {i + 1} needs an id (e.g. id = "pump-3")')
    if not STREAM_ID.fullmatch(keys["id"]):
        raise ConfigError(
            f"{path}: stream id {shown(keys['id'])}: use 1 to 64 letters, digits, '_' or '-' "
            "(it becomes an MQTT topic level)"
        )
    where = f"{path}: stream {keys['id']!r}"
    src = {k: v for k, v in keys.items() if k in _SOURCE}
    src["stream"] = keys["id"]
    if "path" in src:
        src["path"] = _resolve(path, src["path"], f"stream {keys['id']!r}.path")
    source = build(SourceConfig, src, where)
    mod: dict[str, Any] = {k: keys[k] for k in ("threads", "hop") if k in keys}
    if "model" in keys:
        mod["path"] = _resolve(path, keys["model"], f"stream {keys['id']!r}.model")
    model = build(ModelConfig, {**_fields(defaults.model), **mod}, where)
    det = _check(path, keys.get("detector", {}), "detector", f"stream {keys['id']!r}.detector")
    detector = build(DetectorSettings, {**_fields(defaults.detector), **det}, f"{where}.detector")
    return StreamConfig(source, model, detector)


def _fields(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


def read_text(path: Path) -> str:
    """The config file's text: a regular file of at most 1 MiB that only its owner may write."""
    try:  # O_NONBLOCK: a FIFO is refused below instead of waiting for a writer
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{path}: not a regular file (a TOML config is expected)")
            if st.st_mode & 0o022:
                raise ConfigError(
                    f"{path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                    f"whoever can write it controls the monitor; chmod go-w {path}"
                )
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from err
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB: not a config file")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a TOML config is expected)") from None


def load(path: Path) -> Config:
    """Read and validate a config file."""
    text = read_text(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    unknown = set(doc) - set(_TYPES)
    if unknown:
        raise ConfigError(
            f"{path}: unknown section [{_name(sorted(unknown)[0])}] (known: {', '.join(_TYPES)})"
        )
    sec = {name: _check(path, doc.get(name, {}), name, name) for name in _TYPES if name != "stream"}
    src, mod = sec["source"], sec["model"]
    for name, table in (("source", src), ("model", mod)):
        if "path" in table:
            table["path"] = _resolve(path, table["path"], f"{name}.path")
    source = build(SourceConfig, src, f"{path}: source")
    model = build(ModelConfig, mod, f"{path}: model")
    det = build(DetectorSettings, sec["detector"], f"{path}: detector")
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
            mq[key] = _resolve(path, mq[key], f"mqtt.{key}")
    if "password_file" in mq and "password_env" in mq:
        raise ConfigError(f"{path}: give mqtt.password_file or mqtt.password_env, not both")
    met = sec["metrics"]
    for key in ("tls_cert", "tls_key", "basic_auth_password_file"):
        if key in met:
            met[key] = _resolve(path, met[key], f"metrics.{key}")
    dmn = sec["daemon"]
    if "state_dir" in dmn:
        dmn["state_dir"] = _resolve(path, dmn["state_dir"], "daemon.state_dir")
    clips = sec["clips"]
    if "clips" in doc and "folder" not in clips:
        raise ConfigError(f"{path}: clips.folder is needed (where evidence clips go)")
    if "folder" in clips:
        if not clips["folder"].strip():
            raise ConfigError(f"{path}: clips.folder is empty: give the folder for the clips")
        clips["folder"] = _resolve(path, clips["folder"], "clips.folder")
    return Config(
        source,
        model,
        det,
        build(MqttSettings, mq, str(path)) if "mqtt" in doc else None,
        build(MetricsConfig, sec["metrics"], f"{path}: metrics"),
        streams,
        build(DaemonConfig, dmn, f"{path}: daemon"),
        build(ClipSettings, clips, f"{path}: clips") if "clips" in doc else None,
        build(IntegritySettings, sec["integrity"], f"{path}: integrity"),
    )
