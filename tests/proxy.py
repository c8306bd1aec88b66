"""A TCP proxy on 127.0.0.1 for fault injection: it forwards to a port and can cut every
connection at once or stall them (stop forwarding, keep them open)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from .servers import free_port


class Proxy:
    """127.0.0.1:port -> 127.0.0.1:target; `cut()` resets the connections, `stall(True)`
    holds every byte until `stall(False)`, `block(True)` closes new connections at once."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.accepted = 0
        self._stalled = threading.Event()
        self._blocked = threading.Event()
        self._stop = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self, on: bool) -> None:
        if on:
            self._stalled.set()
        else:
            self._stalled.clear()

    def block(self, on: bool) -> None:
        if on:
            self._blocked.set()
        else:
            self._blocked.clear()

    def cut(self) -> int:
        """Reset every open connection; returns how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    s.close()
        return len(pairs)

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._blocked.is_set():
                client.close()  # as if the broker were away
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()  # the broker is away: the client sees the connection drop
                continue
            self.accepted += 1
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        try:
            while not self._stop.is_set():
                if self._stalled.is_set():
                    self._stop.wait(0.05)
                    continue
                ready, _, _ = select.select([a, b], [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peer[s].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()
