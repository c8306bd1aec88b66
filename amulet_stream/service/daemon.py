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

import logging
import queue
import signal
import threading
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import TypeVar

import numpy as np

from amulet_stream.outputs.clip_store import ClipStore
from amulet_stream.outputs.clips import ClipRecorder
from amulet_stream.outputs.jsonl import JsonLines
from amulet_stream.scoring.detector import effective_threshold
from amulet_stream.scoring.integrity import IntegrityCheck
from amulet_stream.scoring.levels import level_range
from amulet_stream.scoring.pipeline import F32, StreamPipeline
from amulet_stream.scoring.records import Record
from amulet_stream.service.config import Config
from amulet_stream.service.feeds import Opened, Stream, source_name, status_line, windows_scored
from amulet_stream.service.learned import Commissioner
from amulet_stream.service.notify import Heartbeat, Notifier
from amulet_stream.service.reload import reread
from amulet_stream.service.sinks import Sinks
from amulet_stream.service.startup import Models, check_sources, state_dir, with_client_id
from amulet_stream.service.supervisor import EXIT_OK, Supervisor

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

TICK_SECONDS = 0.25
"""The loop's turn without audio (timers: stalls, MQTT labels, the watchdog); audio and
signals wake it at once. Each idle turn costs about 0.3 ms of CPU."""
BLOCKS_PER_TICK = 4
"""At most this many blocks (1 s) of a stream per tick: a backlog is worked off in steps, so
a clip's pre-trigger audio is still in its ring when the alert comes."""
STOP_FLUSH_SECONDS = 3.0
"""MQTT flush at shutdown: with the rest, the exit stays within systemd's 5 s budget."""


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
        self.notifier = Notifier()
        self.models = Models()
        self.wake = threading.Event()
        self._stop = False
        self._reload = False
        self.streams: dict[str, Stream] = {}
        self.clips = ClipStore(cfg.clips) if cfg.clips is not None else None
        for scfg in cfg.all_streams():
            self.streams[scfg.id] = Stream(
                scfg, self.models.get(scfg.model.path, scfg.model.threads)
            )
        check_sources(cfg)
        first = next(iter(self.streams.values())).model
        self.sinks = Sinks(with_client_id(cfg), first, out, live=True, state_dir=state_dir(cfg))
        for st in self.streams.values():
            self._announce(st)
        self.sinks.prune({st.id for st in self.streams.values()})
        self.commissioner = Commissioner(state_dir(cfg), self.sinks)
        self.sources = Supervisor(
            cfg.daemon, self.sinks, self._finish, self.wake, buffer_seconds, duration
        )
        self.heartbeat = Heartbeat(self.notifier)

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
        self.sources.start(self.streams)
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
                self.commissioner.tick(self.streams)
                code = self.sources.check(self.streams)
                self.sinks.tick()
                self.heartbeat.beat(windows_scored(self.streams), self._status)
        finally:
            self.notifier.stopping()
            self.sources.stop()
            self._tick()  # what was captured before the stop
            for st in self.streams.values():
                self._finish(st)
            self.sinks.close(STOP_FLUSH_SECONDS)  # logs what MQTT could not deliver
            for sig, old in handlers.items():
                signal.signal(sig, old)
        return EXIT_OK if code is None else code

    def _tick(self) -> None:
        """Every stream's new audio -> vectors; one model call per model; records to the sinks."""
        todo: dict[int, list[tuple[Stream, F32]]] = {}
        for st in self.streams.values():
            vectors = self._take(st)
            if vectors is not None and st.pipe is not None:
                todo.setdefault(id(st.model), []).append((st, vectors))
        overflows = {id(st): f.overflows for f in self.sources.feeds for st in f.streams}
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
        hop = st.model.profile.vectors_for_hop(c.model.hop)
        file = str(c.source.path) if c.source.kind == "file" else None
        learned = self.commissioner.restore(st)
        st.pipe = StreamPipeline(st.model, rate, st.id, file, c.detector, hop, integrity, learned)
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
        if not self.heartbeat.ready:
            self.heartbeat.ready = True
            self.sinks.audio_flows()
            self.notifier.ready(self._status())

    # -- systemd --------------------------------------------------------------------------

    def _status(self) -> str:
        return status_line(self.streams, self.sinks.listener_down)

    # -- reload ---------------------------------------------------------------------------

    def _do_reload(self) -> None:
        """SIGHUP: read the config again and load changed models; refuse what does not load."""
        self.notifier.reloading()
        plan = reread(self._reload_config, self.cfg, self.streams, self.models, self.sinks)
        if plan is None:
            self.notifier.ready(self._status())
            return
        cfg, new, models = plan
        sources_same = set(new) == set(self.streams) and all(
            new[s].source == self.streams[s].cfg.source for s in new
        )
        if not sources_same:
            self.sources.stop()
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
                for feed in self.sources.feeds:
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
        self.sources.settings = cfg.daemon
        if not sources_same:
            self.sources.start(self.streams)
        self.sinks.reloaded("ok")
        self.notifier.ready(self._status())
