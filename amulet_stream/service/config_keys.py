"""The config file's tables, the TOML types of their keys, and reading the file itself."""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than 1 MiB is refused unread (e.g. --config /dev/zero)."""


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


DETECTOR: dict[str, tuple[type, ...]] = {
    "sensitivity": (int, float),
    "alert_seconds": (int, float),
    "within_seconds": (int, float),
    "burst_ratio": (int, float),
    "burst_seconds": (int, float),
    "clear_seconds": (int, float),
    "clear_ratio": (int, float),
    "level_floor_db": (int, float),
    "learn_seconds": (int, float),
}
SOURCE: dict[str, tuple[type, ...]] = {
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
MODEL: dict[str, tuple[type, ...]] = {"path": (str,), "threads": (int,), "hop": (int, float)}
TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "source": SOURCE,
    "model": MODEL,
    "detector": DETECTOR,
    "stream": {
        "id": (str,),
        **{k: v for k, v in SOURCE.items() if k != "stream"},
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
        "commands": (bool,),
        "feedback": (bool,),
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
        "enabled": (bool,),
        "folder": (str,),
        "before_seconds": (int, float),
        "after_seconds": (int, float),
        "max_count": (int,),
        "max_mb": (int, float),
    },
    "ui": {"enabled": (bool,), "feedback": (bool,)},
    "history": {"keep_days": (int, float), "max_mb": (int, float)},
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
