"""Where records go: JSON lines on stdout, MQTT, Prometheus metrics (and its HTTP listener)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from amulet_stream.outputs.jsonl import JsonLines
from amulet_stream.scoring.commission import Learned
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.records import Record, StreamStats
from amulet_stream.service.config import Config

if TYPE_CHECKING:  # each is imported where it is used: a replay loads none of them
    from prometheus_client import Counter

    from amulet_stream.outputs.board import Board
    from amulet_stream.outputs.feedback import Feedback
    from amulet_stream.outputs.history import History
    from amulet_stream.outputs.metrics import Metrics
    from amulet_stream.outputs.mqtt.sink import MqttSink
    from amulet_stream.service.listening import Listener

_LOGGER = logging.getLogger(__name__)


class Sinks:
    """Fan-out of every record; none of them blocks the processing loop."""

    def __init__(
        self,
        cfg: Config,
        model: Model,
        out: JsonLines | None,
        live: bool,
        state_dir: Path | None = None,
    ) -> None:
        """`model` answers /submit; `state_dir` keeps what MQTT announced between starts."""
        self.out = out
        self.live = live
        self.mqtt: MqttSink | None = None
        if cfg.mqtt is not None:
            from amulet_stream.outputs.mqtt.sink import MqttSink

            self.mqtt = MqttSink(cfg.mqtt, state_dir)
        self.history = _history(cfg, state_dir) if live else None
        self.marks: Feedback | None = None
        if self.history is not None and state_dir is not None:
            from amulet_stream.outputs.feedback import FOLDER, Feedback

            clip_folder = cfg.clips.folder if cfg.clips is not None else None
            self.marks = Feedback(self.history, clip_folder, state_dir / FOLDER)
        self.board: Board | None = None
        self.metrics: Metrics | None = None
        self._clipped: dict[str, int] = {}
        self._overflows: dict[str, int] = {}
        self._seen: dict[str, dict[str, int]] = {}
        """What each problem counter of another component counted at the last tick."""
        self.listener: Listener | None = None
        if cfg.metrics.listen is not None:
            from amulet_stream.service.listening import Listener

            listen = cfg.metrics.listen
            self.listener = Listener(cfg, listen, model, live, self.history, self.marks)
            self.metrics, self.board = self.listener.metrics, self.listener.board
        if self.mqtt is not None:
            if self.metrics is not None:
                self.metrics.mqtt_started()
            self.mqtt.start()

    @property
    def listener_down(self) -> bool:
        """The metrics listener is configured but could not be opened (yet)."""
        return self.listener is not None and self.listener.down

    def tick(self) -> None:
        """The loop's turn: labels that arrived over MQTT, the listener retried when due."""
        self.take_feedback()
        if self.listener is not None:
            self.listener.relisten()

    def stream_started(self, stream: str, model: Model, threshold: float) -> None:
        """A stream begins: retained state, discovery, labelled metrics, the console's card."""
        if self.board is not None:
            from amulet_stream.outputs.board import describe

            self.board.stream_started(stream, describe(model), threshold)
        if self.mqtt is not None:
            self.mqtt.add_stream(stream, threshold, model.sha256)
        if self.metrics is not None:
            self.metrics.stream_started(stream, model.sha256, model.profile.name, threshold)
            self.metrics.source_up.labels(stream).set(1)
            self.metrics.ready |= not self.live  # live: once audio flows (audio_flows)

    def learned(self, stream: str, model: Model, threshold: float, learned: Learned) -> None:
        """A stream learned its site: its new threshold (metrics, Home Assistant) and whether
        what it learned looks like a fault."""
        if self.board is not None:
            from amulet_stream.outputs.board import describe

            self.board.stream_started(stream, describe(model, learned), threshold)
        if self.mqtt is not None:
            self.mqtt.add_stream(stream, threshold, model.sha256)
        if self.metrics is not None:
            self.metrics.threshold.labels(stream).set(threshold)
            self.metrics.suspect.labels(stream).set(int(learned.suspect is not None))

    def commands(self) -> list[tuple[str, float]]:
        """Requests to learn again that arrived over MQTT: (stream, seconds or 0)."""
        return self.mqtt.take_commands() if self.mqtt is not None else []

    def take_feedback(self) -> None:
        """Store the labels that arrived over MQTT ("latest": the stream's latest alert)."""
        if self.mqtt is None:
            return
        for stream, event_id, label, note in self.mqtt.take_feedback():
            if self.marks is None or self.marks.mark_alert(stream, event_id, label, note) is None:
                _LOGGER.warning("mqtt: feedback for %s %s: no such alert kept", stream, event_id)

    def prune(self, streams: set[str]) -> None:
        """Forget (in Home Assistant) streams announced before and no longer configured."""
        if self.mqtt is not None:
            self.mqtt.prune(streams)

    def stream_removed(self, stream: str) -> None:
        """A stream left the config on reload: its entities go, its metrics stop."""
        if self.board is not None:
            self.board.stream_removed(stream)
        if self.mqtt is not None:
            self.mqtt.remove_stream(stream)
        if self.metrics is not None:
            self.metrics.stream_removed(stream)

    def audio_flows(self) -> None:
        """The first audio arrived: /readyz answers 200."""
        if self.metrics is not None:
            self.metrics.ready = True

    def stream_up(self, stream: str) -> None:
        """Audio flows again after the source was down."""
        if self.metrics is not None:
            self.metrics.source_up.labels(stream).set(1)

    def source_reopened(self, streams: list[str]) -> None:
        """An attempt to reopen the source these streams share."""
        if self.metrics is not None:
            for stream in streams:
                self.metrics.source_reopens.labels(stream).inc()

    def clips(self, stream: str, written: int, failed: int) -> None:
        """Evidence clips of a stream just written or failed."""
        if self.metrics is not None:
            self.metrics.clips.labels(stream).inc(written)
            self.metrics.clip_errors.labels(stream).inc(failed)

    def reloaded(self, result: str) -> None:
        """A reload ('ok') or a refused config or model ('refused')."""
        if self.metrics is not None:
            self.metrics.model_reloads.labels(result).inc()

    def record(self, rec: Record) -> None:
        """One pipeline record to every sink (MQTT and the history first: an event that
        reached stdout is queued and kept)."""
        if self.mqtt is not None:
            self.mqtt.publish_record(rec)
        if self.history is not None:
            self.history.add(rec)
        if self.board is not None:
            self.board.record(rec)
        if self.out is not None:
            self.out.emit(rec)
        if self.metrics is not None:
            self.metrics.record(rec)

    def after_block(self, stream: str, stats: StreamStats, overflows: int = 0) -> None:
        """Per-block gauges and counters from the pipeline's stats."""
        if self.board is not None:
            self.board.level(stream, stats.level_dbfs)
        m = self.metrics
        if m is None:
            stats.inference.clear()  # nobody reads them: they must not grow
            stats.lags.clear()
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
        self._problem_metrics(m)

    def _problem_metrics(self, m: Metrics) -> None:
        if self.history is not None:
            now = {"slow": self.history.slow_commits, "error": self.history.errors}
            self._bump(m.history_problems, "history", now)
        if self.mqtt is not None:
            m.mqtt_connected.set(int(self.mqtt.connected))
            m.mqtt_queued.set(self.mqtt.queued())
            self._bump(m.mqtt_dropped, "dropped", dict(self.mqtt.dropped_by_kind))
            self._bump(m.mqtt_connect_failures, "failures", {"": self.mqtt.connect_failures})
            box = self.mqtt.outbox
            now = {"write": box.write_errors, "corrupt": box.corrupt}
            self._bump(m.mqtt_outbox_errors, "outbox", now)

    def _bump(self, counter: Counter, key: str, now: dict[str, int]) -> None:
        """Increase `counter` (by label; "" for none) by what `now` counts beyond the last tick."""
        seen = self._seen.setdefault(key, {})
        for label, n in now.items():
            (counter.labels(label) if label else counter).inc(n - seen.get(label, 0))
            seen[label] = n

    def stream_stopped(self, stream: str) -> None:
        """The source ended."""
        if self.metrics is not None:
            self.metrics.source_up.labels(stream).set(0)

    def close(self, timeout: float = 5.0) -> int:
        """Flush MQTT (`timeout` s at most), stop the listener; return MQTT messages left."""
        left = self.mqtt.close(timeout) if self.mqtt is not None else 0
        if self.listener is not None:
            self.listener.close()
        if self.history is not None:
            self.history.close()
        return left


def _history(cfg: Config, state_dir: Path | None) -> History | None:
    """The event history in the state directory; None without one, or (logged) if the file
    cannot be used: monitoring goes on without it."""
    if state_dir is None:
        return None
    from amulet_stream.outputs.history import FILE, History, HistoryError

    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        return History(state_dir / FILE, cfg.history)
    except (HistoryError, OSError) as err:
        _LOGGER.error("%s; monitoring goes on without an event history", err)
        return None
