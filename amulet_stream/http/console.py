"""The operator's console on the metrics listener: the page (`/`, `/static/...`) and the JSON
API it uses (`/api/streams`, `/api/events`, an event, its clip and spectrogram, feedback).
Feedback is off unless enabled; a browser's request needs the page's token and its own origin."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from amulet_stream.audio.wav import WavError, iter_blocks, read_info, select_channel
from amulet_stream.outputs.board import Board
from amulet_stream.outputs.feedback import Feedback, find_clip
from amulet_stream.outputs.history import LABELS, History, unix_time
from amulet_stream.outputs.spectrogram import pcm16_wav, spectrogram_png

_LOGGER = logging.getLogger(__name__)
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
STATIC = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
]
MAX_FEEDBACK_BYTES = 4096
MAX_NOTE = 500
MAX_CLIP_SECONDS = 120.0
MAX_POSTS = 30
"""Feedback requests taken per minute (all clients); beyond, 429 with Retry-After."""
Answer = tuple[str, str, bytes]
"""(status, content type, body)."""


def _json(status: str, body: Any) -> Answer:
    return status, "application/json", json.dumps(body).encode()


def _error(status: str, text: str) -> Answer:
    return _json(status, {"error": text})


class Console:
    """Routes of the console; `history` None: the board's recent events (nothing kept)."""

    def __init__(
        self,
        board: Board,
        history: History | None,
        clips: Path | None,
        feedback: bool,
        submit: bool = False,
        marks: Feedback | None = None,
    ) -> None:
        """`feedback`: labels taken ([ui] feedback); `marks` stores them (None: no history)."""
        self.board = board
        self.submit = submit
        self.history = history
        self.clips = clips
        self.feedback = feedback
        self.marks = marks
        self._posts: deque[float] = deque(maxlen=MAX_POSTS)
        self.token = secrets.token_urlsafe(24)
        """The page's CSRF token (a new one each start: an open page reloads)."""

    def __call__(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes] | None:
        """Answer a console request; None if the path is not the console's."""
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path != "/" and not path.startswith(("/static/", "/api/")):
            return None
        parts = path.strip("/").split("/")
        if method == "POST" and len(parts) == 4 and parts[:2] == ["api", "events"]:
            status, kind, body = self._feedback(environ, parts[2])
        elif method not in ("GET", "HEAD"):
            status, kind, body = _error("405 Method Not Allowed", "use GET")
        else:
            status, kind, body = self._get(parts, environ.get("QUERY_STRING", ""))
        headers = [("Content-Type", kind), ("Content-Length", str(len(body)))]
        start(status, [*headers, *SECURITY_HEADERS])
        return [b"" if method == "HEAD" else body]

    def _get(self, parts: list[str], query: str) -> Answer:
        if parts == [""]:
            page = _static("index.html").decode().replace("{{token}}", self.token)
            return "200 OK", "text/html; charset=utf-8", page.encode()
        if parts[0] == "static" and len(parts) == 2 and parts[1] in STATIC:
            return "200 OK", STATIC[parts[1]], _static(parts[1])
        if parts == ["api", "streams"]:
            kept = "file" if self.history is not None else "memory"
            counts = self.history.label_counts() if self.history is not None else {}
            streams = [{**s, "feedback": counts.get(s["id"], {})} for s in self.board.streams()]
            body = {
                "streams": streams,
                "history": kept,
                "feedback": self.feedback,
                "submit": self.submit,
            }
            return _json("200 OK", body)
        if parts == ["api", "events"]:
            return self._events(parse_qs(query))
        if len(parts) in (3, 4) and parts[:2] == ["api", "events"]:
            event = self._event(parts[2])
            if event is None:
                return _error("404 Not Found", f"no event {parts[2]!r} in the history")
            if len(parts) == 3:
                return _json("200 OK", {**event, **self._clip_facts(event)})
            if parts[3] in ("clip.wav", "spectrogram.png"):
                return self._clip_answer(event, parts[3])
        return _error("404 Not Found", "no such endpoint: /" + "/".join(parts))

    def _events(self, q: dict[str, list[str]]) -> Answer:
        stream = q.get("stream", [""])[0] or None
        try:
            limit = min(max(int(q.get("limit", ["100"])[0]), 1), 1000)
            since_text = q.get("since", [""])[0]
            since = None
            if since_text:
                since = (
                    float(since_text)
                    if since_text.replace(".", "").isdigit()
                    else (unix_time(since_text))
                )
        except ValueError:
            return _error(
                "400 Bad Request", "since: unix seconds or ISO 8601 with a zone; limit: a number"
            )
        if self.history is not None:
            found = self.history.events(stream, since, None, limit)
        else:
            found = [
                e
                for e in self.board.recent()
                if (stream is None or e.get("stream") == stream)
                and (since is None or unix_time(str(e.get("time"))) >= since)
            ][:limit]
        return _json("200 OK", {"events": found})

    def _event(self, event_id: str) -> dict[str, Any] | None:
        if self.history is not None:
            return self.history.event(event_id)
        found = [e for e in self.board.recent() if e.get("event_id") == event_id]
        return {**found[0], "labels": []} if found else None

    def _clip(self, event: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
        return find_clip(self.clips, str(event.get("stream", "")), str(event.get("event_id", "")))

    def _clip_facts(self, event: dict[str, Any]) -> dict[str, Any]:
        """Whether the event has a clip, and the window scores inside it: [[s from the
        clip's start, score], ...]."""
        found = self._clip(event)
        if found is None:
            return {"clip": False, "scores": []}
        meta = found[1]
        t0 = float(meta.get("start", 0.0))
        rows = meta.get("scores", [])
        scores = [
            [round(float(r["end"]) - t0, 3), r["score"]]
            for r in rows
            if isinstance(r, dict) and isinstance(r.get("score"), int | float)
        ]
        return {"clip": True, "scores": scores}

    def _clip_answer(self, event: dict[str, Any], name: str) -> Answer:
        found = self._clip(event)
        if found is None:
            why = "clips are off, still being written, or deleted by retention"
            return _error("404 Not Found", f"this event has no clip ({why})")
        wav, meta = found
        try:
            info = read_info(wav)
            if info.duration > MAX_CLIP_SECONDS:
                return _error("413 Content Too Large", "clip longer than 120 s")
            audio = np.concatenate([select_channel(b, None) for b in iter_blocks(info)])
        except (OSError, WavError, ValueError) as err:
            _LOGGER.warning("console: clip %s: %s", wav, err)
            return _error("500 Internal Server Error", f"the clip cannot be read: {err}")
        if name == "clip.wav":
            return "200 OK", "audio/wav", pcm16_wav(audio, info.rate)
        trigger = meta.get("trigger", {})
        mark = None
        if isinstance(trigger, dict) and isinstance(trigger.get("end"), int | float):
            mark = float(trigger["end"]) - float(meta.get("start", 0.0))
        return "200 OK", "image/png", spectrogram_png(audio, info.rate, mark)

    def _feedback(self, environ: dict[str, Any], event_id: str) -> Answer:
        if not self.feedback:
            return _error("403 Forbidden", "feedback is off: set [ui] feedback = true")
        now = time.monotonic()
        if len(self._posts) == MAX_POSTS and now - self._posts[0] < 60.0:
            return _error("429 Too Many Requests", f"at most {MAX_POSTS} labels a minute")
        self._posts.append(now)
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None:  # a browser: its own origin, and the page's token
            if urlsplit(origin).netloc != environ.get("HTTP_HOST", ""):
                return _error("403 Forbidden", f"cross-site request from {origin!r} refused")
            if not secrets.compare_digest(environ.get("HTTP_X_CSRF_TOKEN", ""), self.token):
                return _error(
                    "403 Forbidden", "the page's token is missing or stale: reload the page"
                )
        if environ.get("CONTENT_TYPE", "").split(";")[0].strip() != "application/json":
            return _error("415 Unsupported Media Type", "send application/json")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_FEEDBACK_BYTES:
            return _error("413 Content Too Large", f"a body of 1 to {MAX_FEEDBACK_BYTES} bytes")
        try:
            doc = json.loads(environ["wsgi.input"].read(length))
        except (ValueError, OSError):
            return _error("400 Bad Request", "the body is not JSON")
        label = doc.get("label") if isinstance(doc, dict) else None
        note = doc.get("note", "") if isinstance(doc, dict) else ""
        if label not in LABELS or not isinstance(note, str) or len(note) > MAX_NOTE:
            want = '{"label": "normal"|"fault", "note": "..."}'
            return _error(
                "400 Bad Request", f"give {want} (a note of {MAX_NOTE} characters at most)"
            )
        if self.marks is None:
            return _error("409 Conflict", "no event history is kept (no state directory)")
        event = self.marks.mark(event_id, label, note, "page" if origin else "api")
        if event is None:
            return _error("404 Not Found", f"no event {event_id!r} in the history")
        return _json("200 OK", event)


def _static(name: str) -> bytes:
    """A file shipped in amulet_stream/http/static."""
    return resources.files("amulet_stream.http").joinpath("static", name).read_bytes()
