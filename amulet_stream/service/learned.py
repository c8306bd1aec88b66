"""Commissioning across restarts: each stream's learned values in the state directory
(`<state_dir>/learned/<stream>.json`, keyed by the model's sha256, so a new model file learns
again), and requests to learn again (`<stream>.request`, written by `amulet-stream learn`)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from amulet_stream.files import make_private_dirs, read_small, replace_file
from amulet_stream.scoring.commission import MAX_SECONDS, Learned, LearnedError, learned_from
from amulet_stream.service.feeds import Stream
from amulet_stream.service.sinks import Sinks

_LOGGER = logging.getLogger(__name__)
FOLDER = "learned"
MAX_BYTES = 64 << 10
"""A learned-values or request file larger than this is not ours: ignored."""
POLL_SECONDS = 1.0
"""How often a running daemon looks for requests to learn again."""
DEFAULT_SECONDS = 300.0
"""Learning again without seconds, for a stream without learn_seconds: 5 min of audio."""


def folder(state_dir: Path) -> Path:
    """Where learned values and requests live."""
    return state_dir / FOLDER


def load(state_dir: Path | None, stream: str, model_sha256: str) -> Learned | None:
    """The stream's learned values for this model, or None (none kept, another model's, or a
    file that cannot be used: logged, and the stream learns again)."""
    if state_dir is None:
        return None
    path = folder(state_dir) / f"{stream}.json"
    try:
        doc = json.loads(read_small(path, MAX_BYTES))
        return learned_from(doc, model_sha256)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # LearnedError, JSONDecodeError: ValueError
        if not isinstance(err, LearnedError) or "another model" not in str(err):
            _LOGGER.warning("%s: %s: not used (%s); the stream learns again", stream, path, err)
        return None


def save(state_dir: Path | None, stream: str, learned: Learned) -> None:
    """Keep a stream's learned values for the next start (0600 file, written atomically)."""
    if state_dir is None:
        return
    try:
        make_private_dirs(folder(state_dir))
        data = json.dumps(learned.to_dict(), indent=1).encode() + b"\n"
        replace_file(folder(state_dir) / f"{stream}.json", data)
    except OSError as err:
        _LOGGER.error("%s: cannot keep the learned values in %s: %s", stream, state_dir, err)


def request(state_dir: Path, stream: str, seconds: float | None) -> Path:
    """Ask a running daemon to learn `stream` again (None: its own learn_seconds); OSError."""
    make_private_dirs(folder(state_dir))
    path = folder(state_dir) / f"{stream}.request"
    replace_file(path, json.dumps({"learn_seconds": seconds}).encode() + b"\n")
    return path


def take_request(state_dir: Path | None, stream: str) -> float | None:
    """A pending request to learn `stream` again: its seconds (0 for the stream's own), or None;
    the request is consumed."""
    if state_dir is None:
        return None
    path = folder(state_dir) / f"{stream}.request"
    try:
        doc = json.loads(read_small(path, MAX_BYTES))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        doc = err
    path.unlink(missing_ok=True)
    seconds = doc.get("learn_seconds") if isinstance(doc, dict) else doc
    if seconds is None:
        return 0.0
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not (0 < seconds <= MAX_SECONDS)
    ):
        _LOGGER.warning("%s: learn request %s not understood (%s): ignored", stream, path, seconds)
        return None
    return float(seconds)


class Commissioner:
    """The daemon's side of commissioning: learned values kept and given back to a stream's
    new pipeline, requests to learn again (files, MQTT commands) passed to the streams."""

    def __init__(self, state_dir: Path | None, sinks: Sinks) -> None:
        self.state_dir = state_dir
        self.sinks = sinks
        self._polled = 0.0

    def restore(self, st: Stream) -> Learned | None:
        """What the stream learned before (this run, or an earlier one) for its model."""
        if st.learned is not None and st.learned.model_sha256 == st.model.sha256:
            return st.learned
        st.learned = load(self.state_dir, st.id, st.model.sha256)
        return st.learned

    def tick(self, streams: dict[str, Stream]) -> None:
        """Keep what streams just learned; at most once a second, pass on requests."""
        for each in streams.values():
            site = each.pipe.site if each.pipe is not None else None
            if each.pipe is None or site is None or site.just_learned is None:
                continue
            each.learned, site.just_learned = site.just_learned, None
            save(self.state_dir, each.id, each.learned)
            self.sinks.learned(each.id, each.model, each.pipe.detector.threshold, each.learned)
        now = time.monotonic()
        if now - self._polled < POLL_SECONDS:
            return
        self._polled = now
        asked = [(s, take_request(self.state_dir, s)) for s in streams]
        for stream, seconds in [*asked, *self.sinks.commands()]:
            st = streams.get(stream)
            if seconds is not None and st is not None:
                self._relearn(st, seconds or st.cfg.detector.learn_seconds or DEFAULT_SECONDS)

    def _relearn(self, st: Stream, seconds: float) -> None:
        """Forget what the stream learned; it learns from the next `seconds` of its audio."""
        if st.pipe is None:
            _LOGGER.warning("%s: no audio flows: nothing to learn from now", st.id)
            return
        st.learned = None
        if self.state_dir is not None:
            (folder(self.state_dir) / f"{st.id}.json").unlink(missing_ok=True)
        st.pipe.site.relearn(seconds, st.pipe.stats.audio_seconds)
        _LOGGER.info("%s: learning the site again from the next %g s of audio", st.id, seconds)
