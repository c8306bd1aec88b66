"""Each stream's last retained state: kept across restarts in the durable outbox's folder,
and published again after a connect (a broker restarted without persistence lost it)."""

from __future__ import annotations

from collections.abc import Callable

from amulet_stream.outputs.mqtt.outbox import Outbox
from amulet_stream.outputs.mqtt.spool import DurableOutbox


class RetainedStates:
    """Stream -> its last state payload (JSON text). Not thread-safe: the sink's lock."""

    def __init__(self, outbox: Outbox, state_topic: Callable[[str], str]) -> None:
        self._durable = outbox if isinstance(outbox, DurableOutbox) else None
        self._states: dict[str, str] = {}
        self._seeded: set[str] = set()
        """Streams whose state an earlier run left and that is not queued to be sent anyway."""
        if self._durable is not None:
            self._states = self._durable.load_states()
            queued = self._durable.replayed_topics
            self._seeded = {s for s in self._states if state_topic(s) not in queued}

    def put(self, stream: str, payload: str) -> None:
        """A new state of `stream` (saved for the next start)."""
        self._states[stream] = payload
        self._seeded.discard(stream)
        self._save()

    def remove(self, streams: list[str]) -> None:
        """Forget the states of `streams` (the ones it has)."""
        gone = [s for s in streams if s in self._states]
        for stream in gone:
            del self._states[stream]
            self._seeded.discard(stream)
        if gone:
            self._save()

    def others(self, configured: set[str]) -> list[str]:
        """Streams with a state that are not in `configured` (an earlier run's config)."""
        return [s for s in self._states if s not in configured]

    def to_send(self, reconnected: bool) -> list[tuple[str, str]]:
        """(stream, payload) to publish after a connect: all after a reconnect, those an
        earlier run left on the first connect."""
        send = [(s, p) for s, p in self._states.items() if reconnected or s in self._seeded]
        self._seeded.clear()
        return send

    def _save(self) -> None:
        if self._durable is not None:
            self._durable.save_states(self._states)
