"""What the log says about the broker connection: one line per outage (and when it ends),
another client with our id (a connection that keeps closing), a broker that never answers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

_LOGGER = logging.getLogger(__name__)
SILENT_SECONDS = 10.0
"""A connection that neither succeeds nor fails for this long is reported once."""

FLAP_SECONDS = 5.0
FLAP_COUNT = 3
"""FLAP_COUNT connections in a row closed within FLAP_SECONDS: another client with our id?"""


class Outages:
    """The connection's ups and downs, told once each. Sender thread only; `queued` counts the
    messages waiting in the outbox."""

    def __init__(self, where: str, client_id: str, queued: Callable[[], int]) -> None:
        self.where = where
        self.client_id = client_id
        self._queued = queued
        self._outage: tuple[float, int] | None = None  # (start, failed attempts) while away
        self._silent_warned = False
        self._was_up = False  # connected at least once
        self._up_since = 0.0  # time.monotonic() of the last connect
        self._flaps = 0  # connections in a row the broker closed within FLAP_SECONDS

    @property
    def failing(self) -> bool:
        """At least one attempt failed since the connection was lost (or first tried)."""
        return self._outage is not None and self._outage[1] > 0

    def trying(self) -> None:
        """The first connection attempt starts now."""
        self._outage = (time.monotonic(), 0)

    def connected(self) -> bool:
        """Log the connection; True when it is a reconnect (connected before)."""
        if self._outage is not None and self._outage[1] > 0:
            _LOGGER.info(
                "mqtt: connected to %s after %d failed attempt(s) / %.1f s",
                self.where,
                self._outage[1],
                time.monotonic() - self._outage[0],
            )
        else:
            _LOGGER.info("mqtt: connected to %s", self.where)
        again, self._outage, self._was_up = self._was_up, None, True
        self._up_since = time.monotonic()
        self._silent_warned = False
        return again

    def disconnected(self, reason: str) -> None:
        """The connection was lost."""
        self._outage = (time.monotonic(), 0)
        self._check_flapping(reason)
        _LOGGER.warning(
            "mqtt: disconnected from %s (%s); %d message(s) kept",
            self.where,
            reason,
            self._queued(),
        )

    def failed(self, reason: str) -> None:
        """A connection attempt failed: said at the first of an outage, debug after."""
        start, attempts = self._outage or (time.monotonic(), 0)
        self._outage = (start, attempts + 1)
        if attempts == 0:
            _LOGGER.warning(
                "mqtt: cannot connect to %s: %s; retrying with a backoff up to 30 s, "
                "messages wait in the outbox (%d)",
                self.where,
                reason,
                self._queued(),
            )
        else:
            _LOGGER.debug("mqtt: connection attempt %d failed: %s", attempts + 1, reason)

    def _check_flapping(self, reason: str) -> None:
        """Say once when the broker keeps closing the connection right after it opens: the
        sign of another client with this client id (each takes the session from the other)."""
        short = time.monotonic() - self._up_since < FLAP_SECONDS
        self._flaps = self._flaps + 1 if short else 0
        if self._flaps == FLAP_COUNT:
            _LOGGER.error(
                "mqtt: the broker closed the connection right after it opened, %d times in a "
                "row (last: %s): is another client using client_id %r? Each monitor needs its "
                "own ([mqtt] client_id)",
                self._flaps,
                reason,
                self.client_id,
            )

    def check_silent(self, connected: bool) -> None:
        """Warn once when a connection neither fails nor succeeds (a broker that accepts the
        TCP connection and never answers): otherwise nothing would say why nothing is sent."""
        if connected or self._outage is None or self._outage[1] > 0 or self._silent_warned:
            return
        waited = time.monotonic() - self._outage[0]
        if waited >= SILENT_SECONDS:
            self._silent_warned = True
            _LOGGER.warning(
                "mqtt: no answer from %s after %.0f s (is it an MQTT broker?); still trying, "
                "messages wait in the outbox (%d)",
                self.where,
                waited,
                self._queued(),
            )
