"""Feedback: an operator's label of an alert (`normal` or `fault`) into the history, and the
alert's clip copied apart from clip retention, to `<state_dir>/feedback/<stream>/<label>/`
(a changed label moves it). `amulet-export adapt` and `evaluate --dataset` read that folder."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from amulet_stream.outputs.history import LABELS, History

_LOGGER = logging.getLogger(__name__)
FOLDER = "feedback"


def find_clip(clips: Path | None, stream: str, event_id: str) -> tuple[Path, dict[str, Any]] | None:
    """The evidence clip of an event and its sidecar, if the clip folder has it."""
    if clips is None or len(event_id) < 8 or not clips.is_dir():
        return None
    for side in clips.glob(f"{stream}-*-{event_id[:8].lower()}.json"):
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            continue
        wav = side.with_suffix(".wav")
        if isinstance(meta, dict) and meta.get("event_id") == event_id and wav.is_file():
            return wav, meta
    return None


class Feedback:
    """Labels events of `history`; copies their clips from `clips` into `folder`."""

    def __init__(self, history: History, clips: Path | None, folder: Path) -> None:
        self.history = history
        self.clips = clips
        self.folder = folder

    def mark_alert(
        self, stream: str, event_id: str, label: str, note: str
    ) -> dict[str, Any] | None:
        """A label from MQTT: `event_id` 'latest' is the stream's latest anomaly; None if
        there is no such alert of that stream."""
        if event_id == "latest":
            recent = self.history.events(stream=stream, limit=50)
            alerts = [e for e in recent if e["event"] == "anomaly"]
            event_id = str(alerts[0]["event_id"]) if alerts else ""
        event = self.history.event(event_id)
        if event is None or event.get("stream") != stream:
            return None
        return self.mark(event_id, label, note, "mqtt")

    def mark(self, event_id: str, label: str, note: str, source: str) -> dict[str, Any] | None:
        """Store the label (ValueError for another label); None if there is no such event."""
        if not self.history.label(event_id, label, note, source):
            return None
        event = self.history.event(event_id)
        assert event is not None
        _LOGGER.info("%s: event %s marked %s (%s)", event.get("stream"), event_id, label, source)
        self._keep(event, label)
        return event

    def _keep(self, event: dict[str, Any], label: str) -> None:
        """Copy the clip (wav and sidecar) to the label's folder, out of the other one's."""
        stream = str(event.get("stream", ""))
        found = find_clip(self.clips, stream, str(event["event_id"]))
        if found is None:
            _LOGGER.warning(
                "%s: event %s has no clip (yet): its label is kept, no audio with it",
                stream,
                event["event_id"],
            )
            return
        wav, _ = found
        try:
            for other in LABELS:
                for path in (wav, wav.with_suffix(".json")):
                    (self.folder / stream / other / path.name).unlink(missing_ok=True)
            dest = self.folder / stream / label
            for folder in (self.folder, self.folder / stream, dest):
                folder.mkdir(exist_ok=True, mode=0o700)  # private, as the state directory
            for path in (wav, wav.with_suffix(".json")):
                tmp = dest / f".{path.name}.tmp"
                shutil.copyfile(path, tmp)
                os.chmod(tmp, 0o600)
                os.replace(tmp, dest / path.name)
        except OSError as err:
            _LOGGER.error("%s: the clip of %s not kept apart: %s", stream, event["event_id"], err)
