"""One HTTP listener: /metrics, /healthz, /readyz and (off by default) AMULET's POST /submit."""

from __future__ import annotations

import email.parser
import email.policy
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .detector import DetectorSettings
from .metrics import Metrics
from .model import Model
from .output import amulet_json
from .pipeline import StreamPipeline, replay, verdict
from .sources import FileSource
from .wav import WavError, read_info

_LOGGER = logging.getLogger(__name__)

DEFAULT_PORT = 8491
"""Outside 9100-9999, the range the Prometheus default-port list gives to exporters."""
HEALTH_SECONDS = 10.0
SUBMIT_LIMIT = 50 * 1024 * 1024
DISCARD_LIMIT = 256 * 1024 * 1024
"""A refused body up to this size is read (and dropped) before the answer, so the client,
still sending, reads a 413 rather than a broken pipe; a larger one is cut off."""


class ListenError(ValueError):
    """The metrics listener cannot be opened (bad address, port in use)."""


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        _LOGGER.debug("http: " + format, *args)


def _discard(stream: Any, n: int) -> None:
    """Read and drop n bytes of a request body, 1 MiB at a time."""
    while n > 0:
        chunk = stream.read(min(n, 1 << 20))
        if not chunk:
            return
        n -= len(chunk)


def _json(start: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


class App:
    """The WSGI application; health comes from Metrics.last_progress and Metrics.ready."""

    def __init__(
        self,
        registry: CollectorRegistry,
        metrics: Metrics,
        model: Model | None = None,
        settings: DetectorSettings | None = None,
        submit: bool = False,
        submit_limit: int = SUBMIT_LIMIT,
        live: bool = True,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.model = model
        self.settings = settings
        self.submit = submit
        self.submit_limit = submit_limit
        self.live = live

    def __call__(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
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
            return self._submit(environ, start)
        return _json(start, "404 Not Found", {"error": f"no such endpoint: {path}"})

    def _submit(self, environ: dict[str, Any], start: StartResponse) -> list[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > self.submit_limit:
            _discard(environ["wsgi.input"], min(length, DISCARD_LIMIT))
            return _json(
                start,
                "413 Payload Too Large",
                {"error": f"body of {length} bytes exceeds {self.submit_limit}"},
            )
        ctype = environ.get("CONTENT_TYPE", "")
        if not ctype.startswith("multipart/form-data"):
            return _json(
                start,
                "415 Unsupported Media Type",
                {"error": "send multipart/form-data with a field data_file"},
            )
        body = environ["wsgi.input"].read(length)
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + body
        )
        data: bytes | None = None
        for part in msg.iter_parts():
            if part.get_param("name", header="content-disposition") == "data_file":
                payload = part.get_payload(decode=True)
                data = payload if isinstance(payload, bytes) else None
        if data is None:
            return _json(start, "400 Bad Request", {"error": "missing field data_file"})
        assert self.model is not None
        with tempfile.TemporaryDirectory(prefix="amulet-submit-") as tmp:
            wav = Path(tmp) / "upload.wav"
            wav.write_bytes(data)
            try:
                rows, problem, judged = score_wav(self.model, wav, self.settings)
            except WavError as err:
                return _json(
                    start, "400 Bad Request", {"error": f"data_file: {str(err).split(': ', 1)[-1]}"}
                )
        if problem is not None:
            return _json(start, "422 Unprocessable Entity", amulet_json(rows, problem, judged))
        return _json(start, "200 OK", amulet_json(rows))


def score_wav(
    model: Model, path: Path, settings: DetectorSettings | None
) -> tuple[list[dict[str, Any]], str | None, str]:
    """Score records of a whole wav file, as `replay` computes them, why nothing could be
    scored (None if something was) and the verdict."""
    info = read_info(path)
    pipe = StreamPipeline(model, info.rate, "submit", str(path), settings)
    rows = replay(pipe, FileSource(info))
    return [r for r in rows if r["event"] == "score"], pipe.problem(), verdict(pipe.stats)


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


def serve(app: App, host: str, port: int) -> tuple[WSGIServer, int]:
    """Start the listener in a daemon thread; returns the server and the bound port."""
    try:
        server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
    except OSError as err:
        raise ListenError(f"metrics listener {host}:{port}: {err.strerror or err}") from err
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    bound = int(server.server_address[1])
    _LOGGER.info(
        "http: /metrics /healthz /readyz%s on %s:%d", " /submit" if app.submit else "", host, bound
    )
    return server, bound
