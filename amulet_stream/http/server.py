"""One HTTP listener: /metrics, /healthz, /readyz and (off by default) AMULET's POST /submit;
optional TLS and basic auth; bounded connections, time and body size."""

from __future__ import annotations

import errno
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from amulet_stream.http.conn import IDLE_SECONDS, MAX_CONNECTIONS, RETRY_AFTER, Server
from amulet_stream.http.console import Console
from amulet_stream.http.security import BasicAuth, ListenError, ListenerSecurity
from amulet_stream.http.submit import SUBMIT_LIMIT, SubmitLimits, score_upload, upload_file
from amulet_stream.http.upload import (
    RAW_TYPES,
    Body,
    SubmitError,
    body_length,
    content_type,
    save_upload,
)
from amulet_stream.outputs.metrics import Metrics
from amulet_stream.scoring.detector import DetectorSettings
from amulet_stream.scoring.model import Model

_LOGGER = logging.getLogger(__name__)

HEALTH_SECONDS = 10.0
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
__all__ = ["App", "BasicAuth", "ListenError", "ListenerSecurity", "parse_address", "serve"]
_REALM = 'Basic realm="amulet-stream", charset="UTF-8"'


def _json(
    start: StartResponse, status: str, body: dict[str, Any], extra: Iterable[tuple[str, str]] = ()
) -> list[bytes]:
    data = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start(status, headers + list(extra))
    return [data]


class App:
    """The WSGI application; health comes from Metrics.last_progress and Metrics.ready.

    `limits` bound /submit (default: SubmitLimits(max_bytes=submit_limit)); `auth`: credentials
    every request needs; `upload_dir`: where uploads are spooled (unlinked files; None: the
    system's temporary folder)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        metrics: Metrics,
        model: Model | None = None,
        settings: DetectorSettings | None = None,
        submit: bool = False,
        submit_limit: int = SUBMIT_LIMIT,
        live: bool = True,
        *,
        limits: SubmitLimits | None = None,
        auth: BasicAuth | None = None,
        upload_dir: Path | None = None,
        console: Console | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.model = model
        self.settings = settings
        self.submit = submit
        self.limits = limits or SubmitLimits(max_bytes=submit_limit)
        self.live = live
        self.auth = auth
        self.upload_dir = upload_dir
        self.console = console
        self._slots = threading.BoundedSemaphore(self.limits.concurrent)
        self._lock = threading.Lock()
        self._refused = 0  # requests refused for credentials since the last log line
        self._refused_logged = -1e9

    def __call__(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        if self.auth is not None and not self.auth.check(environ.get("HTTP_AUTHORIZATION")):
            self._log_refused(environ.get("REMOTE_ADDR", "?"))
            return _json(
                start,
                "401 Unauthorized",
                {"error": "credentials needed"},
                [("WWW-Authenticate", _REALM)],
            )
        if self.console is not None:
            answer = self.console(environ, start)
            if answer is not None:
                return answer
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics" and method == "GET":
            data = generate_latest(self.registry)
            start(
                "200 OK",
                [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(data)))],
            )
            return [data]
        if path == "/healthz":
            age = time.monotonic() - self.metrics.last_progress
            ok = age < HEALTH_SECONDS or not self.live
            return _json(
                start,
                "200 OK" if ok else "503 Service Unavailable",
                {"healthy": ok, "seconds_since_progress": round(age, 3)},
            )
        if path == "/readyz":
            ok = self.metrics.ready
            return _json(start, "200 OK" if ok else "503 Service Unavailable", {"ready": ok})
        if path == "/submit" and self.submit:
            if method != "POST":
                return _json(start, "405 Method Not Allowed", {"error": "use POST"})
            if not self._slots.acquire(blocking=False):
                return _json(
                    start,
                    "503 Service Unavailable",
                    {"error": f"{self.limits.concurrent} uploads in progress: retry later"},
                    [("Retry-After", RETRY_AFTER)],
                )
            try:
                return self._submit(environ, start)
            finally:
                self._slots.release()
        return _json(start, "404 Not Found", {"error": f"no such endpoint: {path}"})

    def _log_refused(self, client: str) -> None:
        """A warning for refused credentials: the first, then at most one a minute."""
        with self._lock:
            self._refused += 1
            now = time.monotonic()
            if now - self._refused_logged < 60.0:
                return
            count, self._refused, self._refused_logged = self._refused, 0, now
        _LOGGER.warning(
            "http: %d request(s) refused for credentials (latest from %s)", count, client
        )

    def _submit(self, environ: dict[str, Any], start: StartResponse) -> list[bytes]:
        limits = self.limits
        try:
            length = body_length(environ, limits.max_bytes)
            media, boundary = content_type(environ.get("CONTENT_TYPE", ""))
            if media != "multipart/form-data" and media not in RAW_TYPES:
                raise SubmitError(
                    "415 Unsupported Media Type",
                    "send multipart/form-data with a field data_file (or the wav as audio/wav)",
                )
            environ.get("amulet.deadline", lambda _: None)(limits.upload_seconds)
            if environ.get("HTTP_EXPECT", "").strip().lower() == "100-continue":
                environ.get("amulet.continue", lambda: None)()
            body = Body(environ["wsgi.input"], length, limits.max_bytes)
            assert self.model is not None
            with upload_file(self.upload_dir) as fh:
                save_upload(media, boundary, body, fh)
                scores = "scores=1" in environ.get("QUERY_STRING", "").split("&")
                status, answer = score_upload(
                    self.model, fh, self.settings, limits.max_seconds, scores
                )
        except SubmitError as err:
            return _json(start, err.status, {"error": str(err)})
        except TimeoutError:
            return _json(
                start,
                "408 Request Timeout",
                {
                    "error": f"the body did not arrive in time (at most {limits.upload_seconds:g} "
                    "s in all, and no long pause)"
                },
            )
        except ssl.SSLError as err:  # the client broke the TLS connection off
            _LOGGER.debug("http: /submit: %s", err)
            return _json(start, "400 Bad Request", {"error": "the upload broke off"})
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise
            _LOGGER.warning("http: /submit: no room for the upload: %s", err.strerror)
            return _json(start, "507 Insufficient Storage", {"error": "no room for the upload"})
        return _json(start, status, answer)


def parse_address(text: str) -> tuple[str, int]:
    """'ADDR:PORT', ':PORT' or 'PORT' -> (host, port); the host defaults to 127.0.0.1."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError as err:
        raise ListenError(f"metrics address {text!r}: port must be a number") from err
    if not 0 <= number <= 65535:
        raise ListenError(f"metrics address {text!r}: port must be 0 to 65535")
    return host.strip("[]") or "127.0.0.1", number


def serve(
    app: App,
    host: str,
    port: int,
    tls: ssl.SSLContext | None = None,
    idle_seconds: float = IDLE_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
) -> tuple[WSGIServer, int]:
    """Start the listener in a daemon thread (HTTPS with `tls`); returns the server and the
    bound port."""
    try:
        server = Server((host, port), tls, idle_seconds, max_connections)
    except (OSError, UnicodeError) as err:
        raise ListenError(
            f"metrics listener {host}:{port}: {getattr(err, 'strerror', None) or err}"
        ) from err
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    bound = int(server.server_address[1])
    loopback = host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
    if not loopback and (tls is None or app.auth is None):
        _LOGGER.warning(
            "http: listening on %s without %s",
            host,
            " and ".join(w for w, off in (("TLS", tls is None), ("auth", app.auth is None)) if off),
        )
    _LOGGER.info(
        "http%s: %s/metrics /healthz /readyz%s on %s:%d%s",
        "s" if tls else "",
        "/ (console) " if app.console else "",
        " /submit" if app.submit else "",
        host,
        bound,
        " (basic auth)" if app.auth else "",
    )
    return server, bound
