"""Where records go: JSON lines on stdout, MQTT, Prometheus metrics (and its HTTP listener)."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry

from .config import Config
from .httpserver import App, parse_address, serve
from .metrics import Metrics
from .model import Model
from .mqtt import MqttSink
from .output import JsonLines
from .pipeline import Record, StreamStats

_LOGGER = logging.getLogger(__name__)


class Sinks:
    """Fan-out of every record; none of them blocks the processing loop."""

    def __init__(self, cfg: Config, model: Model, out: JsonLines | None, live: bool) -> None:
        self.out = out
        self.mqtt = MqttSink(cfg.mqtt, model.sha256) if cfg.mqtt is not None else None
        self.registry: CollectorRegistry | None = None
        self.metrics: Metrics | None = None
        self._server: Any = None
        self._clipped: dict[str, int] = {}
        self._overflows: dict[str, int] = {}
        self._mqtt_dropped = 0
        if cfg.metrics.listen is not None:
            self.registry = CollectorRegistry()
            self.metrics = Metrics(self.registry)
            host, port = parse_address(cfg.metrics.listen)
            app = App(
                self.registry,
                self.metrics,
                model,
                cfg.detector,
                cfg.metrics.submit,
                int(cfg.metrics.submit_limit_mb * 1024 * 1024),
                live=live,
            )
            self._server, _ = serve(app, host, port)
        if self.mqtt is not None:
            self.mqtt.start()

    def stream_started(self, stream: str, model: Model, threshold: float) -> None:
        """A stream begins: retained state, discovery, labelled metrics."""
        if self.mqtt is not None:
            self.mqtt.add_stream(stream, threshold)
        if self.metrics is not None:
            self.metrics.stream_started(stream, model.sha256, model.profile.name, threshold)
            self.metrics.source_up.labels(stream).set(1)
            self.metrics.ready = True

    def record(self, rec: Record) -> None:
        """One pipeline record to every sink."""
        if self.out is not None:
            self.out.emit(rec)
        if self.mqtt is not None:
            self.mqtt.publish_record(rec)
        if self.metrics is not None:
            self.metrics.record(rec)

    def after_block(self, stream: str, stats: StreamStats, overflows: int = 0) -> None:
        """Per-block gauges and counters from the pipeline's stats."""
        m = self.metrics
        if m is None:
            return
        m.level.labels(stream).set(stats.level_dbfs)
        m.clipped.labels(stream).inc(stats.clipped - self._clipped.get(stream, 0))
        self._clipped[stream] = stats.clipped
        m.overflows.labels(stream).inc(overflows - self._overflows.get(stream, 0))
        self._overflows[stream] = overflows
        for seconds in stats.inference:
            m.inference.labels(stream).observe(seconds)
        for lag in stats.lags:
            m.lag.labels(stream).observe(lag)
        stats.inference.clear()
        stats.lags.clear()
        if self.mqtt is not None:
            m.mqtt_connected.set(int(self.mqtt.connected))
            m.mqtt_queued.set(self.mqtt.queued())
            m.mqtt_dropped.inc(self.mqtt.dropped - self._mqtt_dropped)
            self._mqtt_dropped = self.mqtt.dropped

    def stream_stopped(self, stream: str) -> None:
        """The source ended."""
        if self.metrics is not None:
            self.metrics.source_up.labels(stream).set(0)

    def close(self) -> None:
        """Flush MQTT (a few seconds at most), stop the listener."""
        if self.mqtt is not None:
            self.mqtt.close()
        if self._server is not None:
            self._server.shutdown()
