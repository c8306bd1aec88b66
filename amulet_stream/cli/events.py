"""events: the alert and state history a daemon keeps in its state directory, for people
(CSV) and scripts (JSON lines), newest first."""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from amulet_stream.cli.options import EXIT_OK, UsageError, daemon_state_dir
from amulet_stream.outputs.history import FILE, History, HistoryError
from amulet_stream.text import STREAM_ID, shown

AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
COLUMNS = [
    "time",
    "stream",
    "event",
    "score",
    "threshold",
    "level_db",
    "cause",
    "bands",
    "label",
    "file",
    "event_id",
]


def since_time(text: str, now: float | None = None) -> float:
    """Seconds since the epoch of --since: an age ('30m', '12h', '7d') or an ISO 8601 time
    (UTC when it has no zone); UsageError if it is neither."""
    age = AGE.fullmatch(text.strip())
    if age:
        return (time.time() if now is None else now) - float(age[1]) * UNITS[age[2]]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since {shown(text)}: not a time (2026-12-03T08:00, 2026-12-03) nor an age "
            "(30m, 12h, 7d)"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def events_command(args: argparse.Namespace) -> int:
    """Print the events that match, newest first; exit 2 with one line if there is no
    history where the arguments point."""
    if args.stream is not None and not STREAM_ID.fullmatch(args.stream):
        raise UsageError(f"--stream {shown(args.stream)}: not a stream id")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, not {args.limit}")
    since = None if args.since is None else since_time(args.since)
    folder, _ = daemon_state_dir(args, "events")
    try:
        history = History(folder / FILE, write=False)
        rows = history.events(args.stream, since, args.label, args.limit)
        history.close()
    except HistoryError as err:
        raise UsageError(str(err)) from err
    if args.format == "jsonl":
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
    else:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(COLUMNS)
        out.writerows([_cell(row, c) for c in COLUMNS] for row in rows)
    sys.stdout.flush()
    return EXIT_OK


def _cell(row: dict[str, Any], column: str) -> str:
    """One CSV cell: bands as '3000-3400 Hz +9.0 dB; ...', a missing field empty."""
    value = row.get(column)
    if column == "bands" and isinstance(value, list):
        return "; ".join(
            f"{b.get('low_hz', 0):.0f}-{b.get('high_hz', 0):.0f} Hz {b.get('db', 0):+.1f} dB"
            for b in value
            if isinstance(b, dict)
        )
    return "" if value is None else str(value)
