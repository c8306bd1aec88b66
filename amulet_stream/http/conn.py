"""The listener's connections: one thread each up to a bound, TLS handshakes in that thread,
deadlines on reading, Expect: 100-continue, and a lingering close after refused bodies."""

from __future__ import annotations

import io
import logging
import socket
import ssl
import sys
import threading
import time
from socketserver import ThreadingMixIn
from typing import IO, Any, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

_LOGGER = logging.getLogger(__name__)

IDLE_SECONDS = 15.0
"""A connection silent this long (reading or writing) is closed."""
HEADER_SECONDS = 10.0
"""The request line and headers must arrive within this time of the connection."""
MAX_CONNECTIONS = 32
"""Connections served at once (one thread each); more are answered 503 and closed."""
LINGER_SECONDS = 5.0
DISCARD_LIMIT = 256 * 1024 * 1024
"""After answering a request whose body was not read (refused), up to this many bytes are
read and dropped for up to LINGER_SECONDS, so the client, still sending, reads the answer
rather than a connection reset."""
RETRY_AFTER = "5"


class _Reader(io.RawIOBase):
    """Socket reads that fail (TimeoutError) after `idle` s without data or past `deadline`
    (time.monotonic())."""

    def __init__(self, sock: socket.socket, idle: float, deadline: float) -> None:
        self._sock = sock
        self.idle = idle
        self.deadline = deadline
        self.timed_out = False
        """A read ended by a timeout: the client is too slow to wait for again."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.timed_out = True
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(min(self.idle, left))
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            self.timed_out = True
            raise
        finally:
            self._sock.settimeout(self.idle)


class _WsgiHandler(ServerHandler):
    def log_exception(self, exc_info: Any) -> None:
        env: dict[str, Any] = getattr(self, "environ", {})
        method, path = env.get("REQUEST_METHOD"), env.get("PATH_INFO")
        _LOGGER.error("http: %s %s failed: %r", method, path, exc_info[1])
        _LOGGER.debug("http: traceback", exc_info=exc_info)


class _Handler(WSGIRequestHandler):
    """wsgiref's handler with deadlines, Expect: 100-continue and a lingering close."""

    server: Server

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        idle = self.server.idle_seconds
        self._reader = _Reader(self.connection, idle, time.monotonic() + HEADER_SECONDS)
        self.rfile = io.BufferedReader(self._reader)

    def log_message(self, format: str, *args: Any) -> None:
        _LOGGER.debug("http: " + format, *args)

    def _extend(self, seconds: float) -> None:
        self._reader.deadline = time.monotonic() + seconds

    def _continue(self) -> None:
        if self.request_version == "HTTP/1.1":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def handle(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        environ = self.get_environ()
        environ["amulet.deadline"] = self._extend
        environ["amulet.continue"] = self._continue
        out = cast(IO[bytes], self.wfile)
        handler = _WsgiHandler(self.rfile, out, sys.stderr, environ, multithread=False)
        handler.request_handler = self  # type: ignore[attr-defined]  # wsgiref logs through it
        app = self.server.get_app()
        assert app is not None
        handler.run(app)
        has_body = environ.get("CONTENT_LENGTH", "0") not in ("", "0")
        if (has_body or "HTTP_TRANSFER_ENCODING" in environ) and not self._reader.timed_out:
            self._linger()

    def _linger(self) -> None:
        """Read and drop what the client still sends (bounded), after the answer."""
        try:
            self.wfile.flush()
            if not isinstance(self.connection, ssl.SSLSocket):
                self.connection.shutdown(socket.SHUT_WR)
            self._reader.idle = 1.0
            self._reader.deadline = time.monotonic() + LINGER_SECONDS
            left = DISCARD_LIMIT
            while left > 0 and (chunk := self.rfile.read1(1 << 16)):
                left -= len(chunk)
        except (OSError, ValueError):
            pass


class Server(ThreadingMixIn, WSGIServer):
    """Threaded WSGI server: at most `max_connections` at once, TLS handshakes in the
    connection's own thread."""

    daemon_threads = True
    request_queue_size = 64
    """Connections the kernel queues before they are accepted (socketserver's default: 5)."""

    def __init__(
        self,
        address: tuple[str, int],
        tls: ssl.SSLContext | None,
        idle_seconds: float,
        max_connections: int,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.tls = tls
        self.idle_seconds = idle_seconds
        self._conns = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._conns.acquire(blocking=False):
            _LOGGER.debug("http: too many connections: refused %s", client_address[0])
            if self.tls is None:
                try:
                    request.settimeout(0.5)
                    request.sendall(
                        b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: "
                        + RETRY_AFTER.encode()
                        + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                except OSError:
                    pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._conns.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._conns.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.idle_seconds)
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except OSError as err:
            _LOGGER.debug("http: TLS handshake with %s failed: %s", client_address[0], err)
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        _LOGGER.debug("http: connection from %s: %r", client_address[0], sys.exc_info()[1])
