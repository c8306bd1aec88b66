"""[metrics] and [ui]: the HTTP listener's address, /submit and its limits, TLS and basic auth,
and the console; plain settings, so that reading a config does not load the listener."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amulet_stream.text import shown

DEFAULT_PORT = 8491
"""Outside 9100-9999, the range the Prometheus default-port list gives to exporters."""


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


@dataclass(frozen=True)
class UiConfig:
    """[ui]: the operator's console on the metrics listener."""

    enabled: bool | None = None
    """None: on when the listener is on loopback or asks for basic auth, else off (logged)."""
    feedback: bool = False
    """Labels from the page and POST /api/events/<id>/feedback."""


def console_on(ui: UiConfig, metrics: MetricsConfig) -> bool:
    """Whether the listener serves the console: a plant's audio is not shown to its network
    by default (a listener on another address without basic auth keeps it off)."""
    if ui.enabled is not None:
        return ui.enabled
    host = (metrics.listen or "").rpartition(":")[0].strip("[]")
    loopback = host in ("", "localhost", "::1") or host.startswith("127.")
    return loopback or metrics.basic_auth_user is not None


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
