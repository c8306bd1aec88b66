"""The daemon's sources: a Feed thread per source; a source that fails, stalls or ends marks
its streams down and is reopened with a backoff that doubles per failure, and the exit code
when every source is gone."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from amulet_stream.scoring.records import utc_iso
from amulet_stream.service.feeds import EOF, Feed, Stream, feed_key
from amulet_stream.service.settings import DaemonConfig
from amulet_stream.service.sinks import Sinks

_LOGGER = logging.getLogger(__name__)
EXIT_OK, EXIT_SOURCES_LOST = 0, 3


class Supervisor:
    """The feeds of the running streams. `finish` flushes a stream's pipeline and clip."""

    def __init__(
        self,
        settings: DaemonConfig,
        sinks: Sinks,
        finish: Callable[[Stream], None],
        wake: threading.Event,
        buffer_seconds: float,
        duration: float | None,
    ) -> None:
        self.settings = settings
        """[daemon]: stall time and reopen attempts (replaced on reload)."""
        self.sinks = sinks
        self.feeds: list[Feed] = []
        self._finish = finish
        self._wake = wake
        self._buffer = buffer_seconds
        self._duration = duration

    def start(self, streams: dict[str, Stream]) -> None:
        """A Feed per source (a multichannel card feeds several streams), started."""
        groups: dict[tuple[Any, ...], list[Stream]] = {}
        for st in streams.values():
            groups.setdefault(feed_key(st.cfg.source), []).append(st)
        self.feeds = [
            Feed(sts[0].cfg.source, sts, self._wake, self._buffer, self._duration)
            for sts in groups.values()
        ]
        for feed in self.feeds:
            _LOGGER.info("%s: feeds %s", feed.name, ", ".join(st.id for st in feed.streams))
            feed.start()

    def stop(self) -> None:
        """Stop every feed's thread (what it captured stays in the queues)."""
        for feed in self.feeds:
            feed.stop()

    def check(self, streams: dict[str, Stream]) -> int | None:
        """Mark lost or stalled sources down and reopen them; an exit code when done."""
        now = time.monotonic()
        stall = self.settings.stall_seconds
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
        if all(st.ended for st in streams.values()):
            if any(f.outcome == EOF for f in self.feeds):
                _LOGGER.error(
                    "%s: exiting (status %d) so that the service manager starts it again",
                    EOF,
                    EXIT_SOURCES_LOST,
                )
                return EXIT_SOURCES_LOST
            return EXIT_OK
        limit = self.settings.reopen_attempts
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
        wait = min(2.0 ** (feed.failures - 1), self.settings.reopen_max_seconds)
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
