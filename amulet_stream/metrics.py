"""Prometheus metrics (own registry), all `amulet_` prefixed, base units, per-stream labels."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from . import __version__

SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0, 5.0)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STATE_VALUES = {"normal": 0, "anomaly": 1, "input_problem": 2}


class Metrics:
    """Every metric the monitor exports, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        s = ["stream"]
        self.windows = Counter("amulet_windows_scored", "Windows scored.", s, registry=registry)
        self.anomalous = Counter(
            "amulet_anomalous_windows",
            "Windows whose score was above the threshold.",
            s,
            registry=registry,
        )
        self.alerts = Counter(
            "amulet_alerts", "Changes to the anomaly state.", s, registry=registry
        )
        self.score = Histogram(
            "amulet_window_score",
            "Window scores (MAE).",
            s,
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.last_score = Gauge(
            "amulet_last_score", "Score of the latest window.", s, registry=registry
        )
        self.threshold = Gauge("amulet_threshold", "Effective threshold.", s, registry=registry)
        self.state = Gauge(
            "amulet_state",
            "Current state: 0 normal, 1 anomaly, 2 input_problem.",
            s,
            registry=registry,
        )
        self.inference = Histogram(
            "amulet_inference_seconds",
            "Feature and model time per batch of windows.",
            s,
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.lag = Histogram(
            "amulet_processing_lag_seconds",
            "From the end of a window's audio to its decision.",
            s,
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.overflows = Counter(
            "amulet_input_overflows",
            "Input overflows (device flags and dropped blocks).",
            s,
            registry=registry,
        )
        self.level = Gauge(
            "amulet_input_level_dbfs", "RMS input level of the latest block.", s, registry=registry
        )
        self.clipped = Counter(
            "amulet_clipped_samples", "Samples at full scale.", s, registry=registry
        )
        self.source_up = Gauge(
            "amulet_source_up", "1 while the source delivers audio.", s, registry=registry
        )
        self.mqtt_connected = Gauge(
            "amulet_mqtt_connected", "1 while connected to the broker.", registry=registry
        )
        self.mqtt_queued = Gauge(
            "amulet_mqtt_queued_messages", "Messages waiting for the broker.", registry=registry
        )
        self.mqtt_dropped = Counter(
            "amulet_mqtt_dropped_messages",
            "Messages dropped because the outbox was full.",
            registry=registry,
        )
        self.model = Info("amulet_model", "The model in use.", s, registry=registry)
        self.build = Info("amulet_build", "amulet-stream build.", registry=registry)
        self.build.info({"version": __version__})
        self.last_progress = time.monotonic()
        self.ready = False

    def stream_started(
        self, stream: str, model_sha256: str, profile: str, threshold: float
    ) -> None:
        """Labels exist from the start, so dashboards show zeros rather than gaps."""
        self.model.labels(stream).info({"sha256": model_sha256, "profile": profile})
        self.threshold.labels(stream).set(threshold)
        self.state.labels(stream).set(0)
        for c in (self.windows, self.anomalous, self.alerts, self.overflows, self.clipped):
            c.labels(stream)

    def record(self, rec: dict[str, Any]) -> None:
        """Count one pipeline record."""
        stream = rec["stream"]
        if rec["event"] == "score":
            self.windows.labels(stream).inc()
            self.anomalous.labels(stream).inc(int(rec["anomaly"]))
            self.score.labels(stream).observe(rec["score"])
            self.last_score.labels(stream).set(rec["score"])
            self.last_progress = time.monotonic()
        elif rec["event"] in STATE_VALUES:
            self.alerts.labels(stream).inc(int(rec["event"] == "anomaly"))
            self.state.labels(stream).set(STATE_VALUES[rec["event"]])
