"""The metrics listener: /metrics, /healthz, /readyz, /submit and the operator's console, and
its retries when its address cannot be opened at start (a live daemon goes on without it)."""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

from prometheus_client import CollectorRegistry

from amulet_stream.http.console import Console
from amulet_stream.http.server import App, ListenError, ListenerSecurity, parse_address, serve
from amulet_stream.http.submit import SubmitLimits
from amulet_stream.outputs.board import Board
from amulet_stream.outputs.feedback import Feedback
from amulet_stream.outputs.history import History
from amulet_stream.outputs.metrics import Metrics
from amulet_stream.scoring.model import Model
from amulet_stream.service.config import Config
from amulet_stream.service.listen_settings import console_on

_LOGGER = logging.getLogger(__name__)
RELISTEN = 10.0
"""Seconds between attempts to open a metrics listener that could not be opened at start."""


class Listener:
    """The listener on `listen` (ADDR:PORT), its registry and metrics, and the console's board."""

    def __init__(
        self,
        cfg: Config,
        listen: str,
        model: Model,
        live: bool,
        history: History | None,
        marks: Feedback | None,
    ) -> None:
        """Open it; ListenError if it cannot (when live: logged, and retried every RELISTEN s)."""
        self.board: Board | None = None
        self._server: Any = None
        self._relisten: tuple[App, str, int, float] | None = None
        self._tls: ssl.SSLContext | None = None
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        if history is not None:
            self.metrics.history_started()
        m = cfg.metrics
        host, port = parse_address(listen)
        security = ListenerSecurity(
            m.tls_cert, m.tls_key, m.basic_auth_user, m.basic_auth_password_file
        )
        self._tls = security.tls_context()  # a mistake here is fatal: ListenError
        limits = SubmitLimits(
            int(m.submit_limit_mb * 1024 * 1024),
            m.submit_max_seconds,
            m.submit_concurrency,
            m.submit_upload_seconds,
        )
        console = None
        if console_on(cfg.ui, m):
            self.board = Board()
            clips = cfg.clips.folder if cfg.clips is not None else None
            console = Console(self.board, history, clips, cfg.ui.feedback, m.submit, marks)
        else:
            _LOGGER.info(
                "http: the console is off on %s without basic auth ([ui] enabled = true "
                "serves it anyway)",
                listen,
            )
        app = App(
            self.registry,
            self.metrics,
            model,
            cfg.detector,
            m.submit,
            live=live,
            limits=limits,
            auth=security.basic_auth(),
            console=console,
        )
        try:
            self._server, _ = serve(app, host, port, tls=self._tls)
        except ListenError as err:
            if not live:
                raise
            # a port still held by a process being replaced, an address not up yet at
            # boot: monitoring matters more than metrics, so go on and try again
            _LOGGER.error("%s; monitoring goes on, trying again every %.0f s", err, RELISTEN)
            self._relisten = (app, host, port, time.monotonic() + RELISTEN)

    @property
    def down(self) -> bool:
        """Configured but not open (yet)."""
        return self._relisten is not None

    def relisten(self) -> None:
        """Try again to open the listener that failed at start, when due."""
        if self._relisten is None or time.monotonic() < self._relisten[3]:
            return
        app, host, port, _ = self._relisten
        try:
            self._server, _ = serve(app, host, port, tls=self._tls)
        except ListenError:
            self._relisten = (app, host, port, time.monotonic() + RELISTEN)
            return
        self._relisten = None  # serve() logs the listener

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
