"""What the daemon checks and loads before it starts (and again on SIGHUP): sources that can
work, models loaded once per file, the state directory, the MQTT client id."""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import replace
from pathlib import Path

from amulet_stream.audio.devices import resolve
from amulet_stream.audio.wav import WavError, read_info
from amulet_stream.outputs.clip_store import ClipSettings
from amulet_stream.scoring.model import Model, default_model_path
from amulet_stream.service.config import Config, StreamConfig


class DaemonError(ValueError):
    """A configuration the daemon cannot start with (exit 2): the message says why."""


def default_client_id(streams: tuple[StreamConfig, ...]) -> str:
    """amulet-<host>-<stream ids>: stable across restarts (HA ids and availability depend on it)."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in platform.node())
    ids = "-".join(sorted(s.id for s in streams))
    if len(ids) > 40:  # many streams: a digest of the ids keeps the id short and distinct
        ids = hashlib.sha256(ids.encode()).hexdigest()[:16]
    return f"amulet-{host[:40]}-{ids}"


def state_dir(cfg: Config) -> Path | None:
    """The config's state_dir, else $STATE_DIRECTORY (set by systemd's StateDirectory=)."""
    if cfg.daemon.state_dir is not None:
        return cfg.daemon.state_dir
    env = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(env) if env else None


def with_default_clips(cfg: Config) -> Config:
    """`run` with a state directory keeps evidence clips in `<state_dir>/clips` unless the
    config has a [clips] section (or `[clips] enabled = false`): every alert has audio to play,
    label and learn from."""
    folder = state_dir(cfg)
    if cfg.clips is not None or not cfg.clips_enabled or folder is None:
        return cfg
    return replace(cfg, clips=ClipSettings(folder / "clips"))


class Models:
    """Loaded models by (path, threads); a file whose bytes did not change is not reloaded."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[Path, int], Model] = {}

    def get(self, path: Path | None, threads: int) -> Model:
        """The model at `path` (None: the shipped default), loaded and checked."""
        key = ((path or default_model_path()).resolve(), threads)
        old = self._loaded.get(key)
        model = Model(key[0], threads=threads)
        if old is not None and old.sha256 == model.sha256:
            return old
        self._loaded[key] = model  # Model() scored test batches already
        return model


def with_client_id(cfg: Config) -> Config:
    """The config with [mqtt] client_id set: the configured one, else default_client_id."""
    if cfg.mqtt is None or cfg.mqtt.client_id:
        return cfg
    return replace(cfg, mqtt=replace(cfg.mqtt, client_id=default_client_id(cfg.all_streams())))


def check_sources(cfg: Config) -> None:
    """Refuse sources that cannot work (DaemonError): stdin without a rate, a file that is not
    a wav or lacks the channel, a device that is not there or has too few channels."""
    for s in cfg.all_streams():
        src = s.source
        if src.kind == "stdin" and not src.rate:
            raise DaemonError(
                f"stream {s.id!r}: a stdin source needs a rate (--rate, or rate in the "
                "config): raw PCM has no header"
            )
        if src.kind == "file" and src.path is not None:
            try:  # a wrong file is a mistake (exit 2); a file that fails later is not
                info = read_info(src.path)
            except WavError as err:
                raise DaemonError(f"stream {s.id!r}: {err}") from err
            if (src.channel or 0) >= info.channels:
                raise DaemonError(
                    f"stream {s.id!r}: {src.path} has {info.channels} channel(s), "
                    f"channel {src.channel} asked"
                )
        if src.kind == "device":  # a typo is a user mistake (exit 2); a later loss is not
            dev = resolve(src.device)
            need = src.channels or (src.channel or 0) + 1
            if need > dev.channels:
                raise DaemonError(
                    f"stream {s.id!r}: device {dev.name!r} has {dev.channels} input "
                    f"channel(s), {need} requested"
                )
