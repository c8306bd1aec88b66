"""The durable outbox: alerts and states kept in a folder until the broker acknowledges them.

One file per message, `<sequence>.msg` (12 digits), holding one JSON object (topic, payload,
qos, retain, kind). A file is written to `<name>.tmp`, fsynced, renamed and the folder
fsynced before `put` returns, so a message that reached stdout survives a crash or power
loss; it is deleted on PUBACK (`done`) or when dropped. On start the files are read back in
sequence order and sent first; an unreadable or malformed file is logged, counted and
deleted. Scores and other messages stay in memory only. The folder holds at most `limit`
messages (the alert queue's bound), about 1 kB each. A flock on `<folder>/lock` keeps a
second process with the same client id out. `states.json` keeps each stream's last retained
state, re-published on start. Files are 0600, the folder 0700.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from amulet_stream.files import make_private_dirs, read_small, replace_file
from amulet_stream.outputs.mqtt.outbox import KINDS, Message, Outbox

_LOGGER = logging.getLogger(__name__)
DURABLE_KINDS = ("alert", "state")
SUFFIX = ".msg"
STATES_FILE = "states.json"
MAX_FILE_BYTES = 1 << 20
"""A larger file in the folder is not one of ours: it is counted as corrupt, not read."""


class SpoolError(OSError):
    """The outbox folder cannot be used (not creatable, taken by another process)."""


class DurableOutbox(Outbox):
    """Outbox whose alerts and states are also files in `folder` until delivered."""

    def __init__(self, limit: int, score_limit: int, folder: Path) -> None:
        super().__init__(limit, score_limit)
        self.folder: Path = folder
        self.corrupt = 0
        """Files found unreadable or malformed on start (deleted)."""
        self.write_errors = 0
        """Messages that could not be written (disk full...): kept in memory only."""
        self.replayed = 0
        """Messages read back on start."""
        self.replayed_topics: set[str] = set()
        """Their topics."""
        try:
            make_private_dirs(folder)
            lock = folder / "lock"
            self._lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            where = err.filename or folder
            raise SpoolError(
                f"mqtt outbox folder {folder}: {where}: {err.strerror or err}"
                + (" (a file is in the way)" if isinstance(err, FileExistsError) else "")
            ) from err
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._lock_fd)
            raise SpoolError(
                f"mqtt outbox folder {folder} is in use by another amulet-stream process "
                "(two processes with one client_id?)"
            ) from err
        self._seq = 0
        self._seq_lock = threading.Lock()  # put() runs in the loop and the sender thread
        self._paths: dict[int, Path] = {}  # id(message) -> its file
        self._load()

    def put(self, msg: Message) -> Message | None:
        """Write the message (alerts, states) to its file and fsync, then queue it."""
        if msg.kind in DURABLE_KINDS:
            self._write(msg)
        victim = super().put(msg)
        if victim is not None:
            self._forget(victim)
        return victim

    def done(self, msg: Message) -> None:
        """Delivered: delete its file."""
        super().done(msg)
        self._forget(msg)

    def drop(self, msg: Message) -> None:
        """Given up: delete its file."""
        super().drop(msg)
        self._forget(msg)

    def load_states(self) -> dict[str, str]:
        """Stream -> the last retained state payload a previous run published."""
        path = self.folder / STATES_FILE
        if not os.path.lexists(path):
            return {}
        try:
            doc: Any = json.loads(read_small(path, MAX_FILE_BYTES))
            if not isinstance(doc, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
            ):
                raise ValueError("not an object of strings")
        except (OSError, ValueError) as err:
            _LOGGER.warning("mqtt: ignoring %s: %s", path, err)
            return {}
        return dict(doc)

    def save_states(self, states: dict[str, str]) -> None:
        """Replace the last-states file (temporary file, fsync, rename)."""
        path = self.folder / STATES_FILE
        try:
            replace_file(path, json.dumps(states, sort_keys=True).encode())
        except OSError as err:
            self.write_errors += 1
            _LOGGER.error("mqtt: cannot write %s: %s", path, err.strerror or err)

    def close(self) -> None:
        """Release the folder's lock (the files stay for the next start)."""
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def _write(self, msg: Message) -> None:
        with self._seq_lock:
            self._seq += 1
            path = self.folder / f"{self._seq:012d}{SUFFIX}"
        body = json.dumps(
            {
                "topic": msg.topic,
                "payload": msg.payload,
                "qos": msg.qos,
                "retain": msg.retain,
                "kind": msg.kind,
            }
        ).encode()
        try:
            replace_file(path, body + b"\n")
        except OSError as err:
            self.write_errors += 1
            if self.write_errors in (1, 10, 100, 1000) or self.write_errors % 10000 == 0:
                _LOGGER.error(
                    "mqtt: cannot write %s (%s): this %s waits in memory only "
                    "(%d such message(s) so far)",
                    path,
                    err.strerror or err,
                    msg.kind,
                    self.write_errors,
                )
            return
        self._paths[id(msg)] = path

    def _forget(self, msg: Message) -> None:
        path = self._paths.pop(id(msg), None)
        if path is not None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as err:
                _LOGGER.warning("mqtt: cannot delete delivered %s: %s", path, err)

    def _load(self) -> None:
        """Queue the files a previous run left, oldest first; delete the malformed ones."""
        for tmp in self.folder.glob("*.tmp"):  # a write interrupted before its rename
            with contextlib.suppress(OSError):
                tmp.unlink()
        found: list[tuple[int, Path]] = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            stem = path.name[: -len(SUFFIX)]
            if stem.isdigit():
                found.append((int(stem), path))
            else:
                self._bad(path, "not a sequence number")
        found.sort()
        for seq, path in found:
            self._seq = max(self._seq, seq)
            msg = self._read(path)
            if msg is None:
                continue
            victim = Outbox.put(self, msg)
            self._paths[id(msg)] = path
            self.replayed += 1
            self.replayed_topics.add(msg.topic)
            if victim is not None:
                self._forget(victim)
        if self.replayed:
            _LOGGER.warning(
                "mqtt: %d undelivered message(s) from an earlier run in %s (sent first)",
                self.replayed,
                self.folder,
            )

    def _read(self, path: Path) -> Message | None:
        try:
            doc: Any = json.loads(read_small(path, MAX_FILE_BYTES))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            topic, payload, qos = doc.get("topic"), doc.get("payload"), doc.get("qos")
            retain, kind = doc.get("retain"), doc.get("kind")
            if not (isinstance(topic, str) and topic and isinstance(payload, str)):
                raise ValueError("topic or payload missing")
            if type(qos) is not int or qos not in (0, 1, 2):
                raise ValueError(f"qos {qos!r} invalid")
            if not isinstance(retain, bool) or kind not in KINDS:
                raise ValueError("qos, retain or kind invalid")
        except (OSError, ValueError) as err:
            self._bad(path, err.strerror or str(err) if isinstance(err, OSError) else str(err))
            return None
        return Message(topic, payload, qos, retain, kind)

    def _bad(self, path: Path, why: str) -> None:
        self.corrupt += 1
        try:
            path.unlink()
            fate = "deleted"
        except OSError as err:
            fate = f"cannot delete it: {err.strerror or err}"
        _LOGGER.error("mqtt: skipping malformed outbox file %s (%s): %s", path, why, fate)


def open_outbox(limit: int, state_dir: Path | None, client_id: str) -> Outbox:
    """The durable outbox in <state_dir>/outbox/<client_id>; without a state directory, one
    in memory (with a warning: what is not delivered is lost at exit). SpoolError."""
    if state_dir is None:
        _LOGGER.warning(
            "mqtt: no state directory ([daemon] state_dir, --state-dir or systemd's "
            "StateDirectory=): alerts not yet delivered are lost if the process ends"
        )
        return Outbox(limit, limit)
    return DurableOutbox(limit, limit, state_dir / "outbox" / client_id)
