"""The event history: every state change of every stream (alerts among them) in
`<state_dir>/events.sqlite3` (SQLite, WAL), committed before the event's stdout line; bounded
by age and size. Feedback labels sit beside the events, each change kept with its time and
source; the latest one counts."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from amulet_stream.outputs.history_settings import HistorySettings

_LOGGER = logging.getLogger(__name__)
FILE = "events.sqlite3"
KEPT = frozenset({"anomaly", "normal", "input_problem", "learning", "down"})
"""The events the history keeps: the states a stream goes through (scores are not kept)."""
LABELS = ("normal", "fault")
SLOW_SECONDS = 0.5
"""A commit slower than this is logged (the ring buffer absorbs it; the count is kept)."""
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, stream TEXT NOT NULL, "
    "event TEXT NOT NULL, unix REAL NOT NULL, body TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_by_time ON events (unix)",
    "CREATE TABLE IF NOT EXISTS labels (event_id TEXT NOT NULL, label TEXT NOT NULL, "
    "note TEXT NOT NULL, source TEXT NOT NULL, unix REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS labels_by_event ON labels (event_id)",
)
LATEST_LABEL = (
    "(SELECT label FROM labels WHERE labels.event_id = events.event_id "
    "ORDER BY labels.rowid DESC LIMIT 1)"
)


class HistoryError(Exception):
    """The history file cannot be opened or is not an event history; names the file."""


def unix_time(iso: str) -> float:
    """Seconds since the epoch of an ISO 8601 time ('...Z' is UTC); ValueError if not one."""
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"{iso!r} has no time zone")
    return when.timestamp()


class History:
    """One SQLite file of events and labels; safe to use from several threads."""

    def __init__(self, path: Path, settings: HistorySettings | None = None, write: bool = True):
        """Open (and with `write`, create) the history at `path`; HistoryError if it cannot."""
        self.path = path
        self.settings = settings or HistorySettings()
        self.slow_commits = 0
        self.errors = 0
        self._lock = threading.Lock()
        if not write and not path.is_file():
            raise HistoryError(f"{path}: no event history there (no such file)")
        try:
            if write:  # private, like the rest of the state directory (WAL and SHM follow it)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            uri = f"{path.resolve().as_uri()}?mode={'rwc' if write else 'ro'}"
            self._db = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
            self._db.isolation_level = None  # autocommit: each statement is its own commit
            if write:
                self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
                for statement in SCHEMA:
                    self._db.execute(statement)
            self._db.execute("SELECT event_id, stream, event, unix, body FROM events LIMIT 1")
        except (sqlite3.Error, OSError, ValueError) as err:
            raise HistoryError(f"{path}: cannot use it as the event history: {err}") from err

    def add(self, record: dict[str, Any]) -> bool:
        """Commit one record if it is a state change; False if it is not kept or failed."""
        if record.get("event") not in KEPT or "event_id" not in record:
            return False
        try:
            unix = unix_time(str(record.get("time")))
        except ValueError:
            unix = time.time()
        row = (record["event_id"], record.get("stream", ""), record["event"], unix)
        t0 = time.monotonic()
        try:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?)",
                    (*row, json.dumps(record)),
                )
                self._prune(unix)
        except sqlite3.Error as err:
            self.errors += 1
            _LOGGER.error("%s: event %s not kept: %s", self.path, record["event_id"], err)
            return False
        took = time.monotonic() - t0
        if took > SLOW_SECONDS:
            self.slow_commits += 1
            _LOGGER.warning("%s: keeping an event took %.1f s (slow disk?)", self.path, took)
        return True

    def _prune(self, now: float) -> None:
        """Delete what is too old, then the oldest beyond the size limit."""
        old = self._db.execute(
            "DELETE FROM events WHERE unix < ?", (now - 86400 * self.settings.keep_days,)
        )
        if old.rowcount > 0:
            self._orphans()
        limit = self.settings.max_mb * 1e6
        while self._bytes() > limit and self._count() > 1:
            self._db.execute(
                "DELETE FROM events WHERE event_id IN (SELECT event_id FROM events "
                "ORDER BY unix LIMIT max(1, (SELECT count(*) / 10 FROM events)))"
            )
            self._orphans()
            self._db.execute("PRAGMA incremental_vacuum")

    def _orphans(self) -> None:
        """Delete the labels of events no longer kept."""
        self._db.execute("DELETE FROM labels WHERE event_id NOT IN (SELECT event_id FROM events)")

    def _bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        return int(pages) * int(self._db.execute("PRAGMA page_size").fetchone()[0])

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM events").fetchone()[0])

    def label(self, event_id: str, label: str, note: str = "", source: str = "api") -> bool:
        """Store a label of an event (`normal` or `fault`); False if there is no such event."""
        if label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
        with self._lock:
            if (
                self._db.execute("SELECT 1 FROM events WHERE event_id = ?", (event_id,)).fetchone()
                is None
            ):
                return False
            self._db.execute(
                "INSERT INTO labels VALUES (?, ?, ?, ?, ?)",
                (event_id, label, note, source, time.time()),
            )
        return True

    def event(self, event_id: str) -> dict[str, Any] | None:
        """One event with `label` (the latest) and `labels` (every change, oldest first)."""
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
            changes = self._db.execute(
                "SELECT label, note, source, unix FROM labels WHERE event_id = ? ORDER BY rowid",
                (event_id,),
            ).fetchall()
        if row is None:
            return None
        labels = [{"label": a, "note": b, "source": c, "unix": d} for a, b, c, d in changes]
        latest = labels[-1]["label"] if labels else None
        return {**json.loads(row[0]), "label": latest, "labels": labels}

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Stream -> latest label -> how many of its events carry it."""
        sql = f"SELECT stream, {LATEST_LABEL} AS l, count(*) FROM events WHERE l IS NOT NULL"
        with self._lock:
            rows = self._db.execute(sql + " GROUP BY stream, l").fetchall()
        out: dict[str, dict[str, int]] = {}
        for stream, label, n in rows:
            out.setdefault(stream, {})[label] = int(n)
        return out

    def events(
        self,
        stream: str | None = None,
        since: float | None = None,
        label: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Events, newest first, each its record with `label` (the latest, or None);
        `label` 'none' selects the unlabelled ones."""
        where: list[str] = []
        args: list[str | float] = []
        if stream is not None:
            where.append("stream = ?")
            args.append(stream)
        if since is not None:
            where.append("unix >= ?")
            args.append(since)
        if label == "none":
            where.append(f"{LATEST_LABEL} IS NULL")
        elif label is not None:
            where.append(f"{LATEST_LABEL} = ?")
            args.append(label)
        sql = f"SELECT body, {LATEST_LABEL} FROM events"
        sql += (" WHERE " + " AND ".join(where)) if where else ""
        sql += " ORDER BY unix DESC, rowid DESC" + (f" LIMIT {int(limit)}" if limit else "")
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [{**json.loads(body), "label": lab} for body, lab in rows]

    def close(self) -> None:
        """Close the file (the WAL is checkpointed by SQLite)."""
        with self._lock:
            self._db.close()
