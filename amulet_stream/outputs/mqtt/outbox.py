"""The MQTT outbox: messages waiting for the broker, in memory, bounded, with priorities.

Two queues, each first in first out. Alerts, states and other messages share one queue
bounded by `limit`; scores have their own, bounded by `score_limit`. The sender takes the
oldest alert/state/other message before any score, so a flood of scores can never push out
an alert or a state. Past a bound, the oldest message of that queue is dropped (in the alert
queue, a retained state that a newer queued state on the same topic supersedes goes first),
and every drop is counted by kind.

The interface (put, peek, done, drop) is what a durable outbox needs too: a subclass can
write a message on put and forget it on done or drop (issue 9).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

KINDS = ("alert", "state", "score", "other")


@dataclass(eq=False)
class Message:
    """One MQTT message; `kind` is one of KINDS."""

    topic: str
    payload: str
    qos: int
    retain: bool
    kind: str


class Outbox:
    """Bounded priority outbox. Thread-safe: any thread may put; one sender peeks, then calls
    done or drop. The message last returned by peek is in flight and never evicted."""

    folder: Path | None = None
    """Where undelivered alerts and states are kept; None: memory only."""
    corrupt = 0
    """Malformed outbox files skipped on start."""
    write_errors = 0
    """Alerts and states that could not be written to the outbox folder."""

    def __init__(self, limit: int, score_limit: int) -> None:
        if limit < 1 or score_limit < 1:
            raise ValueError(f"outbox limits must be at least 1, not {limit}, {score_limit}")
        self.limit = limit
        self.score_limit = score_limit
        self._main: deque[Message] = deque()
        self._scores: deque[Message] = deque()
        self._inflight: Message | None = None
        self._lock = threading.Lock()
        self._dropped = dict.fromkeys(KINDS, 0)

    def close(self) -> None:
        """Release what the outbox holds (memory: nothing)."""

    def put(self, msg: Message) -> Message | None:
        """Queue a message; returns the message dropped to make room, if any."""
        if msg.kind not in KINDS:
            raise ValueError(f"unknown message kind {msg.kind!r} (known: {', '.join(KINDS)})")
        with self._lock:
            queue, bound = (
                (self._scores, self.score_limit)
                if msg.kind == "score"
                else (self._main, self.limit)
            )
            victim = self._evict(queue) if len(queue) >= bound else None
            queue.append(msg)
            if victim is not None:
                self._dropped[victim.kind] += 1
            return victim

    def peek(self) -> Message | None:
        """The next message to send (alerts, states and others before scores); None: empty."""
        with self._lock:
            head = self._main[0] if self._main else self._scores[0] if self._scores else None
            self._inflight = head
            return head

    def done(self, msg: Message) -> None:
        """The message was delivered (or is given up without counting): forget it."""
        with self._lock:
            self._remove(msg)

    def drop(self, msg: Message) -> None:
        """The message cannot be delivered (refused, unpublishable): forget and count it."""
        with self._lock:
            if self._remove(msg):
                self._dropped[msg.kind] += 1

    def discard(self, kind: str) -> None:
        """Count a message of `kind` dropped before it was ever queued (unusable topic)."""
        with self._lock:
            self._dropped[kind] += 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._main) + len(self._scores)

    def queued_by_kind(self) -> dict[str, int]:
        """Messages waiting, by kind."""
        with self._lock:
            out = dict.fromkeys(KINDS, 0)
            for msg in (*self._main, *self._scores):
                out[msg.kind] += 1
            return out

    def describe_left(self) -> str:
        """What is still queued at exit, and what becomes of it, in words."""
        queued = self.queued_by_kind()
        kinds = ", ".join(f"{k} {n}" for k, n in queued.items() if n)
        kept = queued["alert"] + queued["state"]
        if self.folder is None:
            where = "; they are lost (no state directory keeps them)"
        elif kept:
            where = f"; {kept} alert/state message(s) wait in {self.folder} for the next start"
        else:
            where = ""
        return f"{sum(queued.values())} message(s) not delivered at exit ({kinds}){where}"

    @property
    def dropped_by_kind(self) -> dict[str, int]:
        """Messages dropped so far (bound reached, refused by the broker...), by kind."""
        with self._lock:
            return dict(self._dropped)

    def _remove(self, msg: Message) -> bool:
        if self._inflight is msg:
            self._inflight = None
        for queue in (self._main, self._scores):
            for i, queued in enumerate(queue):
                if queued is msg:
                    del queue[i]
                    return True
        return False

    def _evict(self, queue: deque[Message]) -> Message | None:
        """Remove and return the message to drop from a full queue (lock held)."""
        newest: dict[str, int] = {}
        for i, msg in enumerate(queue):
            if msg.retain:
                newest[msg.topic] = i
        victim = next(
            (
                m
                for i, m in enumerate(queue)
                if m.retain and newest[m.topic] > i and m is not self._inflight
            ),
            None,
        )
        if victim is None:
            victim = next((m for m in queue if m is not self._inflight), None)
        if victim is not None:
            queue.remove(victim)
        return victim
