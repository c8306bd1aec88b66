"""The daemon behind `amulet-stream run`: several streams in one process.

Each source runs in its own thread (a `Feed`) and hands blocks to its streams' bounded queues;
a multichannel card is opened once and each of its channels feeds a stream. One processing
loop takes every stream's new audio, scores the vectors of all streams that share a model in
one onnxruntime call, runs each stream's detector and hands the records to the sinks. A
source that fails or stops delivering marks its streams down and is reopened with backoff;
SIGHUP reloads the config and models (a model that does not load is refused and the old one
keeps scoring); SIGTERM/SIGINT finish what was captured and exit 0. systemd is told READY=1,
WATCHDOG=1 (only while windows are scored), STATUS= and STOPPING=1.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import numpy as np

from amulet_stream.audio.devices import DeviceError, resolve
from amulet_stream.audio.wav import WavError, read_info
from amulet_stream.outputs.clips import ClipRecorder, ClipStore
from amulet_stream.outputs.jsonl import JsonLines
from amulet_stream.scoring.detector import effective_threshold
from amulet_stream.scoring.integrity import IntegrityCheck, level_range
from amulet_stream.scoring.model import Model, ModelError, default_model_path
from amulet_stream.scoring.pipeline import F32, Record, StreamPipeline, utc_iso
from amulet_stream.service.config import Config, ConfigError, StreamConfig
from amulet_stream.service.feeds import EOF, Feed, Opened, Stream, feed_key, source_name
from amulet_stream.service.notify import Notifier
from amulet_stream.service.sinks import Sinks

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_OK, EXIT_SOURCES_LOST = 0, 3
TICK_SECONDS = 0.1
BLOCKS_PER_TICK = 4
"""At most this many blocks (1 s) of a stream per tick: a backlog is worked off in steps, so
a clip's pre-trigger audio is still in its ring when the alert comes."""
STATUS_SECONDS = 10.0
STOP_FLUSH_SECONDS = 3.0
"""MQTT flush at shutdown: with the rest, the exit stays within systemd's 5 s budget."""


class DaemonError(ValueError):
    """A configuration the daemon cannot start with (exit 2): the message says why."""


def default_client_id(streams: tuple[StreamConfig, ...]) -> str:
    """amulet-<host>-<stream ids>: stable across restarts (HA ids and availability depend on it)."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    ids = "-".join(sorted(s.id for s in streams))
    if len(ids) > 40:  # many streams: a digest of the ids keeps the id short and distinct
        ids = hashlib.sha256(ids.encode()).hexdigest()[:16]
    return f"amulet-{host[:40]}-{ids}"


def state_dir(cfg: Config) -> Path | None:
    """The config's state_dir, else $STATE_DIRECTORY (set by systemd's StateDirectory=)."""
    if cfg.daemon.state_dir is not None:
        return cfg.daemon.state_dir
    env = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(env) if env else None


class Models:
    """Loaded models by (path, threads); a file whose bytes did not change is not reloaded."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[Path, int], Model] = {}

    def get(self, path: Path | None, threads: int) -> Model:
        """The model at `path` (None: the shipped default), loaded and checked."""
        key = ((path or default_model_path()).resolve(), threads)
        old = self._loaded.get(key)
        model = Model(key[0], threads=threads)
        if old is not None and old.sha256 == model.sha256:
            return old
        self._loaded[key] = model  # Model() scored test batches already
        return model


class Daemon:
    """Runs every configured stream until stopped; run() returns the exit code."""

    def __init__(
        self,
        cfg: Config,
        out: JsonLines | None,
        reload: Callable[[], Config] | None = None,
        buffer_seconds: float = 10.0,
        duration: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = out
        self._reload_config = reload
        self.buffer = buffer_seconds
        self.duration = duration
        self.notifier = Notifier()
        self.models = Models()
        self.wake = threading.Event()
        self._stop = False
        self._reload = False
        self.streams: dict[str, Stream] = {}
        self.feeds: list[Feed] = []
        self.clips = ClipStore(cfg.clips) if cfg.clips is not None else None
        for scfg in cfg.all_streams():
            self.streams[scfg.id] = Stream(
                scfg, self.models.get(scfg.model.path, scfg.model.threads)
            )
        self._check_sources(cfg)
        first = next(iter(self.streams.values())).model
        self.sinks = Sinks(
            self._with_client_id(cfg), first, out, live=True, state_dir=state_dir(cfg)
        )
        for st in self.streams.values():
            self._announce(st)
        self.sinks.prune({st.id for st in self.streams.values()})
        self._ready = False
        self._windows_at_ping = 0
        self._last_ping = self._last_status = time.monotonic()

    @staticmethod
    def _with_client_id(cfg: Config) -> Config:
        if cfg.mqtt is None or cfg.mqtt.client_id:
            return cfg
        return replace(cfg, mqtt=replace(cfg.mqtt, client_id=default_client_id(cfg.all_streams())))

    @staticmethod
    def _check_sources(cfg: Config) -> None:
        for s in cfg.all_streams():
            src = s.source
            if src.kind == "stdin" and not src.rate:
                raise DaemonError(
                    f"stream {s.id!r}: a stdin source needs a rate (--rate, or rate in the "
                    "config): raw PCM has no header"
                )
            if src.kind == "file" and src.path is not None:
                try:  # a wrong file is a mistake (exit 2); a file that fails later is not
                    info = read_info(src.path)
                except WavError as err:
                    raise DaemonError(f"stream {s.id!r}: {err}") from err
                if (src.channel or 0) >= info.channels:
                    raise DaemonError(
                        f"stream {s.id!r}: {src.path} has {info.channels} channel(s), "
                        f"channel {src.channel} asked"
                    )
            if src.kind == "device":  # a typo is a user mistake (exit 2); a later loss is not
                dev = resolve(src.device)
                need = src.channels or (src.channel or 0) + 1
                if need > dev.channels:
                    raise DaemonError(
                        f"stream {s.id!r}: device {dev.name!r} has {dev.channels} input "
                        f"channel(s), {need} requested"
                    )

    def _announce(self, st: Stream) -> None:
        thr = effective_threshold(st.model.threshold, st.cfg.detector.sensitivity)
        self.sinks.stream_started(st.id, st.model, thr)

    # -- signals --------------------------------------------------------------------------

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True
        self.wake.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload = True
        self.wake.set()

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Process until SIGTERM/SIGINT, the end of every source, or all sources lost."""
        handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        self._start_feeds()
        code: int | None = None
        try:
            while not self._stop and code is None:
                if not any(st.queue.qsize() for st in self.streams.values()):
                    self.wake.wait(TICK_SECONDS)
                self.wake.clear()
                if self._reload:
                    self._reload = False
                    self._do_reload()
                self._tick()
                code = self._health()
                self.sinks.relisten()
                self._notify()
        finally:
            self.notifier.stopping()
            for feed in self.feeds:
                feed.stop()
            self._tick()  # what was captured before the stop
            for st in self.streams.values():
                self._finish(st)
            self.sinks.close(STOP_FLUSH_SECONDS)  # logs what MQTT could not deliver
            for sig, old in handlers.items():
                signal.signal(sig, old)
        return EXIT_OK if code is None else code

    def _start_feeds(self) -> None:
        groups: dict[tuple[Any, ...], list[Stream]] = {}
        for st in self.streams.values():
            groups.setdefault(feed_key(st.cfg.source), []).append(st)
        self.feeds = [
            Feed(sts[0].cfg.source, sts, self.wake, self.buffer, self.duration)
            for sts in groups.values()
        ]
        for feed in self.feeds:
            _LOGGER.info("%s: feeds %s", feed.name, ", ".join(st.id for st in feed.streams))
            feed.start()

    def _tick(self) -> None:
        """Every stream's new audio -> vectors; one model call per model; records to the sinks."""
        todo: dict[int, list[tuple[Stream, F32]]] = {}
        for st in self.streams.values():
            vectors = self._take(st)
            if vectors is not None and st.pipe is not None:
                todo.setdefault(id(st.model), []).append((st, vectors))
        overflows = {id(st): f.overflows for f in self.feeds for st in f.streams}
        for group in todo.values():
            model = group[0][0].model
            pending = [(st, v) for st, v in group if v.shape[0]]
            parts = [st.pipe.model_input(v) for st, v in pending if st.pipe is not None]
            scores = dict(
                zip(
                    (id(st) for st, _ in pending),
                    model.score_many(parts) if parts else [],
                    strict=True,
                )
            )
            for st, v in group:
                assert st.pipe is not None
                self._deliver(st, st.pipe.score(v, scores.get(id(st))))
                self.sinks.after_block(st.id, st.pipe.stats, overflows.get(id(st), 0))

    def _take(self, st: Stream) -> F32 | None:
        """The vectors (n, D) of the audio a stream's queue holds (at most BLOCKS_PER_TICK
        blocks); None when it had none."""
        chunks: list[F32] = []
        while len(chunks) < BLOCKS_PER_TICK:
            try:
                item = st.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Opened):
                if chunks and st.pipe is not None:
                    self._deliver(st, st.pipe.score(np.concatenate(chunks)))
                chunks = []
                self._opened(st, item.rate)
                continue
            if st.pipe is None:
                continue
            if st.down:
                st.down = False
                _LOGGER.info("%s: audio flows again", st.id)
                self.sinks.stream_up(st.id)
            if st.clip is not None:
                self._clip(
                    st,
                    partial(
                        ClipRecorder.push, samples=item.samples, capture_time=item.capture_time
                    ),
                )
            chunks.append(st.pipe.take(item))
            self._ready_once()
        if st.pipe is None or not chunks:
            return None  # nothing new this tick
        return np.concatenate(chunks)

    def _opened(self, st: Stream, rate: int) -> None:
        """A (re)opened source: a new pipeline, anchored at its first sample."""
        self._finish(st)
        c = st.cfg
        integrity = IntegrityCheck(rate, level_range(st.model.meta.raw), self.cfg.integrity)
        hop = (
            None
            if c.model.hop is None
            else max(1, round(c.model.hop * st.model.profile.rate / st.model.profile.step))
        )
        file = str(c.source.path) if c.source.kind == "file" else None
        st.pipe = StreamPipeline(st.model, rate, st.id, file, c.detector, hop, integrity)
        st.rate = rate
        if self.clips is not None:
            st.clip = ClipRecorder(self.clips, st.id, rate, st.model.sha256)
        st.ended = False
        if st.down:
            st.down = False
            self.sinks.stream_up(st.id)
        _LOGGER.info("%s: audio from %s at %d Hz", st.id, source_name(c.source), rate)

    def _finish(self, st: Stream) -> None:
        """Close a stream's pipeline: flush its last frames and its pending clip."""
        if st.pipe is not None:
            self._deliver(st, st.pipe.finish() if st.pipe.stats.audio_seconds else [])
            s = st.pipe.stats
            _LOGGER.info(
                "%s: %.1f s of audio, %d windows, %d anomaly events",
                st.id,
                s.audio_seconds,
                s.windows,
                s.anomaly_events,
            )
            st.pipe = None
        if st.clip is not None:
            self._clip(st, ClipRecorder.close)
            st.clip = None

    def _deliver(self, st: Stream, records: list[Record]) -> None:
        for rec in records:
            if st.clip is not None:
                if rec["event"] == "score":
                    self._clip(st, partial(ClipRecorder.scores, records=[rec]))
                elif rec["event"] == "anomaly":
                    path = self._clip(st, partial(ClipRecorder.trigger, record=rec))
                    if path is not None:
                        rec["clip"] = path
            self.sinks.record(rec)

    def _clip(self, st: Stream, call: Callable[[ClipRecorder], T]) -> T:
        """A call on the stream's clip recorder; the clips it wrote or failed are counted."""
        assert st.clip is not None and self.clips is not None
        before = self.clips.written, self.clips.failed
        result = call(st.clip)
        written, failed = self.clips.written - before[0], self.clips.failed - before[1]
        if written or failed:
            self.sinks.clips(st.id, written, failed)
        return result

    def _ready_once(self) -> None:
        if not self._ready:
            self._ready = True
            self.sinks.audio_flows()
            self.notifier.ready(self._status())

    # -- health: lost and stalled sources, reopen with backoff ------------------------------

    def _health(self) -> int | None:
        """Mark lost or stalled sources down and reopen them; an exit code when done."""
        now = time.monotonic()
        stall = self.cfg.daemon.stall_seconds
        for feed in self.feeds:
            if feed.reopen_at is not None:
                if now >= feed.reopen_at:
                    feed.reopen_at = None
                    self.sinks.source_reopened([st.id for st in feed.streams])
                    feed.start()
                continue
            if feed.alive:
                self._check_rate(feed)
                if now - feed.last_data > stall and feed.src.kind != "stdin":
                    self._lost(feed, f"no audio for {now - feed.last_data:.1f} s")
                    feed.stop()
                elif now - feed.last_data > stall:
                    self._down(feed, f"no audio for {now - feed.last_data:.1f} s")
                continue
            if any(not st.queue.empty() for st in feed.streams):
                continue  # deliver what it captured first
            if feed.outcome in ("ended", EOF):
                if feed.outcome == EOF:  # the pipe's writer is gone: nothing to reopen
                    self._down(feed, EOF)
                for st in feed.streams:
                    if not st.ended:
                        st.ended = True
                        self._finish(st)
                        _LOGGER.info("%s: end of %s", st.id, feed.name)
                continue
            self._lost(feed, feed.outcome or "source thread ended")
        if all(st.ended for st in self.streams.values()):
            if any(f.outcome == EOF for f in self.feeds):
                _LOGGER.error(
                    "%s: exiting (status %d) so that the service manager starts it again",
                    EOF,
                    EXIT_SOURCES_LOST,
                )
                return EXIT_SOURCES_LOST
            return EXIT_OK
        limit = self.cfg.daemon.reopen_attempts
        if all(f.failures >= limit for f in self.feeds):
            _LOGGER.error(
                "every source failed %d times in a row: exiting (status %d) for a fresh start",
                limit,
                EXIT_SOURCES_LOST,
            )
            return EXIT_SOURCES_LOST
        return None

    def _check_rate(self, feed: Feed) -> None:
        """A stdin writer far off its configured rate: an input problem ('rate') of its
        streams while it lasts (their windows are not judged by the detector)."""
        if feed.src.kind != "stdin" or feed.src.rate is None:
            return
        problem = feed.rate.problem(feed.src.rate)
        for st in feed.streams:
            check = st.pipe.integrity if st.pipe is not None else None
            if check is not None and check.wrong_rate != problem:
                check.wrong_rate = problem
                if problem is None:
                    _LOGGER.info("%s: stdin delivers at its rate again", st.id)

    def _lost(self, feed: Feed, reason: str) -> None:
        """The source failed: streams down, reopen after a backoff that doubles per failure."""
        delivered = any(
            st.pipe is not None and st.pipe.stats.audio_seconds > 0 for st in feed.streams
        )
        feed.failures = 1 if delivered else feed.failures + 1
        self._down(feed, reason)
        for st in feed.streams:
            self._finish(st)
        wait = min(2.0 ** (feed.failures - 1), self.cfg.daemon.reopen_max_seconds)
        feed.reopen_at = time.monotonic() + wait
        _LOGGER.warning(
            "%s: %s; reopening in %.0f s (attempt %d)",
            ", ".join(st.id for st in feed.streams),
            reason,
            wait,
            feed.failures,
        )

    def _down(self, feed: Feed, reason: str) -> None:
        for st in feed.streams:
            if st.down:
                continue
            st.down = True
            thr = st.pipe.detector.threshold if st.pipe is not None else None
            if st.pipe is not None:
                st.pipe.state = "down"
            rec = {
                "event": "down",
                "stream": st.id,
                "file": None,
                "start": None,
                "end": None,
                "score": None,
                "threshold": thr,
                "time": utc_iso(),
                "event_id": str(uuid.uuid4()),
                "reason": reason,
            }
            _LOGGER.warning("%s: down: %s", st.id, reason)
            self.sinks.record(rec)

    # -- systemd --------------------------------------------------------------------------

    def _windows(self) -> int:
        return sum(st.pipe.stats.windows for st in self.streams.values() if st.pipe is not None)

    def _status(self) -> str:
        states: dict[str, int] = {}
        for st in self.streams.values():
            state = (
                "down"
                if st.down
                else (st.pipe.state if st.pipe is not None else None) or "starting"
            )
            states[state] = states.get(state, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        listener = "; metrics listener not open" if self.sinks.listener_down else ""
        return f"{len(self.streams)} stream(s): {summary}{listener}"

    def _notify(self) -> None:
        now = time.monotonic()
        timeout = self.notifier.watchdog_seconds
        interval = None if timeout is None else timeout / 2
        windows = self._windows()
        if (
            interval is not None
            and now - self._last_ping >= interval
            and windows != self._windows_at_ping
        ):
            self.notifier.watchdog()
            self._last_ping, self._windows_at_ping = now, windows
        if self._ready and now - self._last_status >= STATUS_SECONDS:
            self.notifier.status(self._status())
            self._last_status = now

    # -- reload ---------------------------------------------------------------------------

    def _do_reload(self) -> None:
        """SIGHUP: read the config again and load changed models; refuse what does not load."""
        self.notifier.reloading()
        try:
            cfg = self._reload_config() if self._reload_config is not None else self.cfg
        except (ConfigError, ValueError) as err:
            _LOGGER.error("reload refused: %s; going on with the running config", err)
            self.sinks.reloaded("refused")
            self.notifier.ready(self._status())
            return
        try:
            self._check_sources(cfg)
        except (DaemonError, DeviceError) as err:
            _LOGGER.error("reload refused: %s; going on with the running config", err)
            self.sinks.reloaded("refused")
            self.notifier.ready(self._status())
            return
        new = {s.id: s for s in cfg.all_streams()}
        models: dict[str, Model] = {}
        for sid, scfg in new.items():
            try:
                models[sid] = self.models.get(scfg.model.path, scfg.model.threads)
            except ModelError as err:
                _LOGGER.error(
                    "reload: stream %s: model refused, the old one keeps scoring: %s", sid, err
                )
                self.sinks.reloaded("refused")
                if sid in self.streams:
                    new[sid] = self.streams[sid].cfg
                    models[sid] = self.streams[sid].model
                else:
                    del new[sid]
        if not new:
            self.notifier.ready(self._status())
            return
        sources_same = set(new) == set(self.streams) and all(
            new[s].source == self.streams[s].cfg.source for s in new
        )
        if not sources_same:
            for feed in self.feeds:
                feed.stop()
            self._tick()
        for sid in set(self.streams) - set(new):
            self._finish(self.streams.pop(sid))
            self.sinks.stream_removed(sid)
            _LOGGER.info("reload: stream %s removed", sid)
        for sid, scfg in new.items():
            old = self.streams.get(sid)
            if old is not None and old.cfg == scfg and old.model is models[sid]:
                continue
            st = Stream(scfg, models[sid])
            if old is not None and sources_same:
                st.queue, st.down = old.queue, old.down
                rate = old.rate if old.pipe is not None else None
                self._finish(old)
                self.streams[sid] = st
                for feed in self.feeds:
                    feed.streams = [st if s is old else s for s in feed.streams]
                if rate is not None:
                    self._opened(st, rate)
            else:
                self.streams[sid] = st
            self._announce(st)
            _LOGGER.info(
                "reload: stream %s: model %s (sha256 %s)", sid, st.model.path, st.model.sha256[:12]
            )
        self.cfg = cfg
        if not sources_same:
            self._start_feeds()
        self.sinks.reloaded("ok")
        self.notifier.ready(self._status())
