"""The TOML config file: each stage's settings assembled from its table, validated at start,
with messages that name the key (the settings dataclasses live with their stages)."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from amulet_stream.audio.settings import SourceConfig
from amulet_stream.outputs.clip_store import ClipSettings
from amulet_stream.outputs.history_settings import HistorySettings
from amulet_stream.outputs.mqtt.settings import MqttSettings
from amulet_stream.scoring.detector import RENAMED, DetectorSettings
from amulet_stream.scoring.integrity import IntegritySettings
from amulet_stream.scoring.model import ModelConfig
from amulet_stream.service.config_keys import SOURCE, TYPES, ConfigError, read_text
from amulet_stream.service.listen_settings import MetricsConfig, UiConfig
from amulet_stream.service.settings import DaemonConfig
from amulet_stream.text import STREAM_ID, cut, shown

T = TypeVar("T")


def _name(key: str) -> str:
    """A key or section name for a message: as is when plain, else shown()."""
    return key if re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", key) else shown(key)


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
    """[clips]; None: no evidence clips (`run` with a state directory: `<state_dir>/clips`)."""
    clips_enabled: bool = True
    """[clips] enabled = false: no clips even with a state directory."""
    integrity: IntegritySettings = field(default_factory=IntegritySettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    ui: UiConfig = field(default_factory=UiConfig)
    """[ui]: the console on the metrics listener."""
    """[history]: how much of the event history (in the state directory) is kept."""

    def all_streams(self) -> tuple[StreamConfig, ...]:
        """The [[stream]] tables, or the single stream of [source]/[model]/[detector]."""
        return self.streams or (StreamConfig(self.source, self.model, self.detector),)


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
        types = TYPES[name].get(key)
        if types is None:
            known = ", ".join(TYPES[name])
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
    src = {k: v for k, v in keys.items() if k in SOURCE}
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


def load(path: Path) -> Config:
    """Read and validate a config file."""
    text = read_text(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    unknown = set(doc) - set(TYPES)
    if unknown:
        raise ConfigError(
            f"{path}: unknown section [{_name(sorted(unknown)[0])}] (known: {', '.join(TYPES)})"
        )
    sec = {name: _check(path, doc.get(name, {}), name, name) for name in TYPES if name != "stream"}
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
    clips_enabled = clips.pop("enabled", True)
    if clips_enabled and "clips" in doc and "folder" not in clips:
        if "state_dir" not in dmn:
            raise ConfigError(
                f"{path}: clips.folder is needed (where evidence clips go), or a [daemon] "
                "state_dir (clips then go to its clips folder)"
            )
        clips["folder"] = str(Path(dmn["state_dir"]) / "clips")
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
        build(ClipSettings, clips, f"{path}: clips") if "clips" in doc and clips_enabled else None,
        clips_enabled=clips_enabled,
        integrity=build(IntegritySettings, sec["integrity"], f"{path}: integrity"),
        history=build(HistorySettings, sec["history"], f"{path}: history"),
        ui=build(UiConfig, sec["ui"], f"{path}: ui"),
    )
