"""Settings from the command line: the config file with the flags over it, each flag through
its config key's check; the model; the exit codes every command shares."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any, TypeVar

from amulet_stream.outputs.mqtt.settings import MqttConfigError, MqttSettings
from amulet_stream.scoring.detector import RENAMED
from amulet_stream.scoring.model import Model, ModelConfig, default_model_path
from amulet_stream.service.config import Config, StreamConfig, load
from amulet_stream.service.listen_settings import DEFAULT_PORT
from amulet_stream.service.startup import state_dir

_LOGGER = logging.getLogger("amulet_stream")
EXIT_OK, EXIT_ANOMALY, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
BUFFERS = (0.5, 600.0)
"""--buffer range, seconds."""
T = TypeVar("T")
DET_FLAGS = {"learn_seconds": "learn"}
"""Detector settings whose flag is not their name."""


class UsageError(ValueError):
    """Bad command line or input: exit 2 with the message."""


def config_from_args(args: argparse.Namespace) -> Config:
    cfg = load(args.config) if args.config else Config()
    for old, new in RENAMED.items():
        if getattr(args, f"old_{old}") is not None:
            flag = "--" + new.replace("_", "-")
            raise UsageError(
                f"--{old} counted windows and is gone: give durations in seconds with "
                f"{flag} (see --help)"
            )
    det = {
        k: getattr(args, k)
        for k in (
            "sensitivity",
            "alert_seconds",
            "within_seconds",
            "burst_ratio",
            "burst_seconds",
            "clear_seconds",
            "level_floor_db",
            "learn_seconds",
        )
        if getattr(args, k) is not None
    }
    model = {
        k: v
        for k, v in (("path", args.model), ("threads", args.threads), ("hop", args.hop))
        if v is not None
    }
    source = {
        k: getattr(args, k, None) for k in ("device", "rate", "channels", "channel", "stream")
    }
    if getattr(args, "source", None):
        source["kind"] = args.source
    mqtt = cfg.mqtt
    if args.mqtt is not None:
        host, _, port = args.mqtt.rpartition(":") if ":" in args.mqtt else (args.mqtt, "", "")
        if port and not port.lstrip("-").isdigit():
            raise UsageError(f"--mqtt {args.mqtt!r}: port must be a number")
        if not args.mqtt.strip():
            raise UsageError("--mqtt needs the broker: HOST or HOST:PORT")
        try:
            mqtt = dataclasses.replace(
                mqtt or MqttSettings(),
                host=host.strip("[]") or "127.0.0.1",
                port=int(port) if port else 1883,
            )
        except MqttConfigError as err:
            raise UsageError(f"--mqtt {args.mqtt!r}: {err}") from err
    metrics = cfg.metrics
    if args.metrics is not None or args.http_submit:
        listen = args.metrics
        if listen is None:
            listen = metrics.listen or f"127.0.0.1:{DEFAULT_PORT}"
        listener = {"listen": listen, "submit": metrics.submit or args.http_submit}
        metrics = flagged(metrics, listener, {"listen": "metrics"})
    daemon = cfg.daemon
    if args.state_dir is not None:
        if not args.state_dir.strip():
            raise UsageError("--state-dir needs a folder name")
        folder = Path(args.state_dir).expanduser().absolute()
        daemon = flagged(daemon, {"state_dir": folder})
    source = {k: v for k, v in source.items() if v is not None}
    if cfg.streams and args.command == "replay":  # replay as one of the config's streams
        cfg = _replay_as(cfg, source.pop("stream", None))
    if cfg.streams and source:
        flags = ", ".join("--" + ("source" if k == "kind" else k) for k in source)
        raise UsageError(
            f"{flags}: the config has [[stream]] tables; set the source of each stream there"
        )
    src = flagged(cfg.source, source)
    streams = tuple(
        StreamConfig(s.source, flagged(s.model, model), flagged(s.detector, det, DET_FLAGS))
        for s in cfg.streams
    )
    return dataclasses.replace(
        cfg,
        source=src,
        model=flagged(cfg.model, model),
        detector=flagged(cfg.detector, det, DET_FLAGS),
        mqtt=mqtt,
        metrics=metrics,
        streams=streams,
        daemon=daemon,
    )


def _replay_as(cfg: Config, stream: str | None) -> Config:
    """A config with [[stream]] tables for replay: --stream ID takes that stream's model and
    detector settings (e.g. to replay one of its evidence clips); without it, the defaults."""
    ids = [s.id for s in cfg.streams]
    if stream is None:
        if len(ids) > 1:
            _LOGGER.info("replay: [model] and [detector] defaults; --stream ID takes a stream's")
        return dataclasses.replace(cfg, streams=())
    match = [s for s in cfg.streams if s.id == stream]
    if not match:
        raise UsageError(f"--stream {stream!r}: the config has no such stream ({', '.join(ids)})")
    (s,) = match
    return dataclasses.replace(
        cfg,
        source=dataclasses.replace(cfg.source, stream=s.id),
        model=s.model,
        detector=s.detector,
        streams=(),
    )


def flagged(obj: T, flags: dict[str, Any], names: dict[str, str] | None = None) -> T:
    """obj with the flags' values, through the same checks as the config keys; a failed check
    names the flag (the checks' messages start with the setting's name; `names` maps a
    setting to its flag where they differ, e.g. listen -> metrics)."""
    if not flags:
        return obj
    try:
        return dataclasses.replace(obj, **flags)  # type: ignore[type-var]
    except ValueError as err:
        first, _, rest = str(err).partition(" ")
        if first in flags:
            flag = (names or {}).get(first, first)
            raise UsageError(f"--{flag.replace('_', '-')} {rest}") from err
        raise UsageError(str(err)) from err


def load_model(cfg: ModelConfig) -> Model:
    path = cfg.path or default_model_path()
    model = Model(path, threads=cfg.threads)
    _LOGGER.info("model %s: profile %s, threshold %.4g", path, model.profile.name, model.threshold)
    if path.resolve() == default_model_path().resolve():
        _LOGGER.warning(
            "%s is the demo model: it was trained on generated motor sound, and on a real "
            "motor it will report anomalies all the time. Train one on your motor: "
            "amulet-stream record --device DEV --seconds 600 -o healthy.wav && "
            "amulet-export train --input-file healthy.wav --output-dir mymodel, then "
            "--model mymodel/model.onnx",
            path.name,
        )
    return model


def check_buffer(seconds: float) -> None:
    """Refuse a --buffer outside 0.5..600 s (its memory is seconds x rate x channels)."""
    if not BUFFERS[0] <= seconds <= BUFFERS[1]:
        raise UsageError(
            f"--buffer must be between {BUFFERS[0]:g} and {BUFFERS[1]:g} seconds, not {seconds:g}"
        )


def daemon_state_dir(args: argparse.Namespace, command: str) -> tuple[Path, Config | None]:
    """The state directory a command about a running daemon names (--state-dir DIR, or
    --config FILE's state_dir), with that config; UsageError if neither, both, or no folder."""
    if (args.state_dir is None) == (args.config is None):
        raise UsageError(
            f"{command} needs --state-dir DIR or --config FILE (its [daemon] state_dir)"
        )
    cfg = None if args.config is None else load(args.config)
    folder = Path(args.state_dir) if cfg is None else state_dir(cfg)
    if folder is None:
        raise UsageError(f"{args.config} sets no [daemon] state_dir: give --state-dir")
    if not folder.is_dir():
        raise UsageError(f"--state-dir {folder}: no such folder (the daemon's state_dir)")
    return folder, cfg
