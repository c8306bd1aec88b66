"""systemd's sd_notify protocol without dependencies: one datagram per message to $NOTIFY_SOCKET.

The service manager passes a Unix datagram socket path in NOTIFY_SOCKET (a leading '@' names
an abstract socket) and, with WatchdogSec=, the watchdog timeout in WATCHDOG_USEC and the pid
it is meant for in WATCHDOG_PID. Messages are newline-separated KEY=VALUE lines. Sending never
raises: a lost notification must never stop monitoring; the first failure is logged once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

_LOGGER = logging.getLogger(__name__)
STATUS_SECONDS = 10.0
"""STATUS= with the streams' states this often (once ready)."""


def _address(value: str) -> str | bytes:
    """The socket address for a NOTIFY_SOCKET value: a path, or abstract bytes for '@name'."""
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    return value


def _one_line(text: str) -> str:
    """Text as a single line: CR and LF become spaces (a newline would start a new field)."""
    return " ".join(text.splitlines())


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """Watchdog timeout in seconds from WATCHDOG_USEC, None when off or meant for another pid."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            _LOGGER.warning("WATCHDOG_PID=%r is not a process id; watchdog off", pid)
            return None
    try:
        value = int(usec)
    except ValueError:
        _LOGGER.warning("WATCHDOG_USEC=%r is not a number of microseconds; watchdog off", usec)
        return None
    if value <= 0:
        _LOGGER.warning("WATCHDOG_USEC=%r is not positive; watchdog off", usec)
        return None
    return value / 1e6


class Notifier:
    """systemd notifications; a no-op when $NOTIFY_SOCKET is unset.

    Thread-safe: every message is one sendto() on a fresh socket.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        environ: Mapping[str, str] = os.environ if env is None else env
        self._socket_name = environ.get("NOTIFY_SOCKET", "")
        self.enabled: bool = bool(self._socket_name)
        """True when NOTIFY_SOCKET names a socket to notify."""
        self.watchdog_seconds: float | None = _watchdog_seconds(environ) if self.enabled else None
        """Watchdog timeout in seconds (WatchdogSec=), None when off; ping every half of it."""
        self._address = _address(self._socket_name)
        self._lock = threading.Lock()
        self._warned = False

    def ready(self, status: str) -> None:
        """Startup (or a reload) finished: READY=1 with a one-line status."""
        self._send(f"READY=1\nSTATUS={_one_line(status)}")

    def watchdog(self) -> None:
        """Keep-alive ping: WATCHDOG=1; send every watchdog_seconds / 2 while work advances."""
        self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """A one-line summary shown by `systemctl status` (newlines become spaces)."""
        self._send(f"STATUS={_one_line(text)}")

    def reloading(self) -> None:
        """A reload starts: RELOADING=1 with CLOCK_MONOTONIC in microseconds; send ready() after."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Shutdown begins: STOPPING=1."""
        self._send("STOPPING=1")

    def _send(self, message: str) -> None:
        """One datagram to NOTIFY_SOCKET; failures are logged once at warning, never raised."""
        if not self.enabled:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as err:
            with self._lock:
                if self._warned:
                    return
                self._warned = True
            _LOGGER.warning(
                "cannot notify systemd at NOTIFY_SOCKET=%s: %s (further failures not logged)",
                self._socket_name,
                err,
            )


class Heartbeat:
    """WATCHDOG=1 every half watchdog timeout while windows are scored; once ready, STATUS=
    every STATUS_SECONDS."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.ready = False
        """Set when audio first flows (READY=1 was sent)."""
        self._windows_at_ping = 0
        self._last_ping = self._last_status = time.monotonic()

    def beat(self, windows: int, status: Callable[[], str]) -> None:
        """Called every tick with the windows scored so far and the status line's maker."""
        now = time.monotonic()
        timeout = self.notifier.watchdog_seconds
        interval = None if timeout is None else timeout / 2
        if (
            interval is not None
            and now - self._last_ping >= interval
            and windows != self._windows_at_ping
        ):
            self.notifier.watchdog()
            self._last_ping, self._windows_at_ping = now, windows
        if self.ready and now - self._last_status >= STATUS_SECONDS:
            self.notifier.status(status())
            self._last_status = now
