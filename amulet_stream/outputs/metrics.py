"""Prometheus metrics (own registry), all `amulet_` prefixed, base units, per-stream labels."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from amulet_stream import __version__
from amulet_stream.scoring.integrity import REASONS

SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0, 5.0)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STATE_VALUES = {"normal": 0, "anomaly": 1, "input_problem": 2, "down": 3, "learning": 4}
INPUT_PROBLEM_REASONS = REASONS
MQTT_KINDS = ("alert", "state", "score", "other")
RELOAD_RESULTS = ("ok", "refused")


class Metrics:
    """Every metric the monitor exports, registered on `registry`, with process_* metrics.

    The amulet_mqtt_* metrics are registered by `mqtt_started()` (the sinks call it when MQTT
    is configured), so a monitor without MQTT exports none of them (and no "MQTT
    disconnected" alert can fire for it)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        s = ["stream"]
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self._registry = registry
        self.windows = Counter(
            "amulet_windows_scored", "Windows scored by the model.", s, registry=registry
        )
        self.anomalous = Counter(
            "amulet_anomalous_windows",
            "Scored windows whose score was above the threshold.",
            s,
            registry=registry,
        )
        self.alerts = Counter(
            "amulet_alerts",
            "Anomaly alerts raised: changes of the stream's state into anomaly.",
            s,
            registry=registry,
        )
        self.score = Histogram(
            "amulet_window_score",
            "Window scores (reconstruction MAE, same unit as amulet_threshold).",
            s,
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.last_score = Gauge(
            "amulet_last_score", "Score (MAE) of the latest scored window.", s, registry=registry
        )
        self.threshold = Gauge(
            "amulet_threshold",
            "Effective anomaly threshold (MAE), after the sensitivity setting.",
            s,
            registry=registry,
        )
        self.state = Gauge(
            "amulet_state",
            "Current state of the stream: 0 normal, 1 anomaly, 2 input_problem, 3 down, "
            "4 learning (commissioning); absent until the stream's first state change.",
            s,
            registry=registry,
        )
        self.suspect = Gauge(
            "amulet_learned_suspect",
            "1 when what the stream learned on site is far from the model's training audio "
            "(commissioning may have learned a fault), else 0.",
            s,
            registry=registry,
        )
        self.last_window = Gauge(
            "amulet_last_window_timestamp_seconds",
            "UNIX time (seconds) at which the latest window of the stream was scored.",
            s,
            registry=registry,
        )
        self.inference = Histogram(
            "amulet_inference_seconds",
            "Wall time (seconds) of features and model per batch of windows.",
            s,
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.lag = Histogram(
            "amulet_processing_lag_seconds",
            "Seconds from the end of a window's audio to its decision.",
            s,
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.overflows = Counter(
            "amulet_input_overflows",
            "Input overflows: blocks the sound device flagged as overflowed or that were dropped.",
            s,
            registry=registry,
        )
        self.level = Gauge(
            "amulet_input_level_dbfs",
            "RMS level (dBFS) of the latest 0.25 s of input audio (the input checks' block).",
            s,
            registry=registry,
        )
        self.clipped = Counter(
            "amulet_clipped_samples", "Input samples at full scale.", s, registry=registry
        )
        self.input_problems = Counter(
            "amulet_input_problems",
            "Changes of the stream's state into input_problem, by reason "
            "(non_finite, rate, silence, dropout, clipping, dc_offset, level_low, level_high).",
            [*s, "reason"],
            registry=registry,
        )
        self.source_up = Gauge(
            "amulet_source_up",
            "1 while the stream's source delivers audio, 0 once it is lost or ended.",
            s,
            registry=registry,
        )
        self.source_reopens = Counter(
            "amulet_source_reopens",
            "Attempts to reopen the stream's lost source (successful or not).",
            s,
            registry=registry,
        )
        self.model_reloads = Counter(
            "amulet_model_reloads",
            "Model reloads on SIGHUP, by result: ok (new model scoring) or refused "
            "(failed to load or verify; the old model kept scoring).",
            ["result"],
            registry=registry,
        )
        self.clips = Counter(
            "amulet_clips_written",
            "Evidence clips (wav and JSON sidecar) written.",
            s,
            registry=registry,
        )
        self.clip_errors = Counter(
            "amulet_clip_errors",
            "Evidence clips not written because of an error (disk full, permissions).",
            s,
            registry=registry,
        )
        self.mqtt_connected = Gauge(
            "amulet_mqtt_connected", "1 while connected to the MQTT broker, else 0.", registry=None
        )
        self.mqtt_queued = Gauge(
            "amulet_mqtt_queued_messages",
            "Messages waiting in the outbox for the MQTT broker.",
            registry=None,
        )
        self.mqtt_dropped = Counter(
            "amulet_mqtt_dropped_messages",
            "MQTT messages never delivered (outbox full or refused by the broker), by kind: "
            "alert, state, score, other (availability, discovery).",
            ["kind"],
            registry=None,
        )
        self.mqtt_connect_failures = Counter(
            "amulet_mqtt_connect_failures",
            "Failed attempts to connect to the MQTT broker (unknown host, refused, TLS, auth).",
            registry=None,
        )
        self.mqtt_outbox_errors = Counter(
            "amulet_mqtt_outbox_errors",
            "Durable outbox problems: 'write' (an alert or state could not be written to the "
            "state directory, e.g. disk full: it waits in memory only), 'corrupt' (a malformed "
            "file skipped on start).",
            ["problem"],
            registry=None,
        )
        self.history_problems = Counter(
            "amulet_history_problems",
            "Event history problems: 'slow' (keeping an event took over 0.5 s; the ring buffer "
            "absorbed it), 'error' (an event could not be kept, e.g. disk full).",
            ["problem"],
            registry=None,
        )
        self.model = Info("amulet_model", "The model in use.", s, registry=registry)
        self.build = Info("amulet_build", "amulet-stream build.", registry=registry)
        self.build.info({"version": __version__})
        for result in RELOAD_RESULTS:
            self.model_reloads.labels(result)
        self._mqtt_on = False
        self._reasons: dict[str, set[str]] = {}
        self._per_stream: tuple[Counter | Gauge | Histogram | Info, ...] = (
            *(self.windows, self.anomalous, self.alerts, self.score, self.last_score),
            *(self.threshold, self.state, self.suspect, self.last_window, self.inference),
            self.lag,
            *(self.overflows, self.level, self.clipped, self.source_up, self.source_reopens),
            *(self.clips, self.clip_errors, self.model),
        )
        self.last_progress = time.monotonic()
        self.ready = False

    def stream_started(
        self, stream: str, model_sha256: str, profile: str, threshold: float
    ) -> None:
        """Labels exist from the start, so dashboards show zeros rather than gaps (no state)."""
        self.model.labels(stream).info({"sha256": model_sha256, "profile": profile})
        self.threshold.labels(stream).set(threshold)
        self.suspect.labels(stream).set(0)
        for c in (
            self.windows,
            self.anomalous,
            self.alerts,
            self.overflows,
            self.clipped,
            self.source_reopens,
            self.clips,
            self.clip_errors,
            self.score,
            self.inference,
            self.lag,
        ):
            c.labels(stream)
        self._reasons[stream] = set(INPUT_PROBLEM_REASONS)
        for reason in INPUT_PROBLEM_REASONS:
            self.input_problems.labels(stream, reason)

    def stream_removed(self, stream: str) -> None:
        """The stream left the config: drop all its series (no alert about a stream not run)."""
        for metric in self._per_stream:
            with contextlib.suppress(KeyError):  # never set: older prometheus-client raises
                metric.remove(stream)
        for reason in self._reasons.pop(stream, set()):
            self.input_problems.remove(stream, reason)

    def record(self, rec: Mapping[str, Any]) -> None:
        """Count one record: a score, or a state change (normal, anomaly, input_problem, down)."""
        stream = rec["stream"]
        event = rec["event"]
        if event == "score":
            self.windows.labels(stream).inc()
            self.anomalous.labels(stream).inc(int(rec["anomaly"]))
            self.score.labels(stream).observe(rec["score"])
            self.last_score.labels(stream).set(rec["score"])
            self.last_window.labels(stream).set(time.time())
            self.source_up.labels(stream).set(1)
            self.last_progress = time.monotonic()
        elif event in STATE_VALUES:
            self.state.labels(stream).set(STATE_VALUES[event])
            if event == "anomaly":
                self.alerts.labels(stream).inc()
            elif event == "input_problem":
                self._reasons.setdefault(stream, set()).add(rec["reason"])
                self.input_problems.labels(stream, rec["reason"]).inc()
            elif event == "down":
                self.source_up.labels(stream).set(0)

    def history_started(self) -> None:
        """The event history is kept: register amulet_history_problems (each at zero)."""
        self._registry.register(self.history_problems)
        for problem in ("slow", "error"):
            self.history_problems.labels(problem)

    def mqtt_started(self) -> None:
        """MQTT is configured: register the amulet_mqtt_* metrics (every kind at zero)."""
        if self._mqtt_on:
            return
        self._mqtt_on = True
        for metric in (
            self.mqtt_connected,
            self.mqtt_queued,
            self.mqtt_dropped,
            self.mqtt_connect_failures,
            self.mqtt_outbox_errors,
        ):
            self._registry.register(metric)
        for kind in MQTT_KINDS:
            self.mqtt_dropped.labels(kind)
        for problem in ("write", "corrupt"):
            self.mqtt_outbox_errors.labels(problem)
