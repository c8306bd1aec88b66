"""The event history (issue 16): every state change a daemon prints is kept in
<state_dir>/events.sqlite3 before its stdout line, survives a SIGKILL, is bounded by age and
size, carries feedback labels, and `amulet-stream events` prints it; careless use gets one line
and exit 2."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.outputs.history import FILE, History, HistoryError
from amulet_stream.outputs.history_settings import HistorySettings
from amulet_stream.scoring.records import utc_iso
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

from .test_daemon import Daemon, stream

BIN = Path(sys.executable).parent / "amulet-stream"
STATES = ("normal", "anomaly", "input_problem", "learning", "down")
DAY = 86400.0


def event(kind: str = "anomaly", stream_id: str = "m1", when: float | None = None) -> dict:
    return {
        "event": kind,
        "stream": stream_id,
        "time": utc_iso(when),
        "event_id": str(uuid.uuid4()),
        "score": 1.5,
        "bands": [{"low_hz": 3000.0, "high_hz": 3400.0, "db": 9.0}],
    }


def events_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN, "events", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_kept_filtered_labelled_and_newest_first(tmp_path: Path) -> None:
    h = History(tmp_path / FILE)
    now = time.time()
    old = event("normal", "m1", now - 3 * 3600)
    a1, a2 = event("anomaly", "m1", now - 60), event("anomaly", "m2", now - 30)
    for rec in (old, a1, a2, {**event(), "event": "score"}, {"event": "summary"}):
        h.add(rec)
    assert [e["event_id"] for e in h.events()] == [a2["event_id"], a1["event_id"], old["event_id"]]
    assert h.events()[0] == {**a2, "label": None}  # the whole record comes back
    assert [e["event_id"] for e in h.events(stream="m1", since=now - 3600)] == [a1["event_id"]]
    assert h.label(a1["event_id"], "fault", "bearing noise", "page")
    assert h.label(a1["event_id"], "normal", "it was the forklift", "mqtt")  # changed: latest
    assert not h.label("no-such-id", "normal")
    with pytest.raises(ValueError, match="label must be one of normal, fault"):
        h.label(a2["event_id"], "maybe")
    assert [e["event_id"] for e in h.events(label="normal")] == [a1["event_id"]]
    assert h.events(label="fault") == []
    assert len(h.events(label="none")) == 2 and len(h.events(limit=1)) == 1
    assert h.label_counts() == {"m1": {"normal": 1}}
    h.close()
    db = sqlite3.connect(tmp_path / FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM labels").fetchone()[0] == 2  # each change kept


def test_bounded_by_age_and_by_size(tmp_path: Path) -> None:
    h = History(tmp_path / "age.sqlite3", HistorySettings(keep_days=1))
    now = time.time()
    oldest = event(when=now - 2 * DAY)
    h.add(oldest)
    assert h.label(oldest["event_id"], "normal")
    h.add(event(when=now - 0.5 * DAY))
    h.add(event(when=now))
    assert len(h.events()) == 2  # the one from two days ago went when the newest came
    assert h.label_counts() == {}  # and its label with it
    small = History(tmp_path / "size.sqlite3", HistorySettings(max_mb=0.2))
    padding = "x" * 2000
    for i in range(400):  # about 0.9 MB of records
        small.add({**event(when=now - 400 + i), "detail": padding})
    kept = small.events()
    assert 20 < len(kept) < 150, len(kept)
    assert kept[0]["time"] == utc_iso(now - 1)  # the newest stay
    assert (tmp_path / "size.sqlite3").stat().st_size <= 0.25e6
    for bad, words in (({"keep_days": 0}, "keep_days must be within"), ({"max_mb": "1"}, "number")):
        with pytest.raises(ValueError, match=words):
            HistorySettings(**bad)  # type: ignore[arg-type]


def test_a_file_that_is_not_a_history_is_named(tmp_path: Path) -> None:
    notes = tmp_path / FILE
    notes.write_text("not a database, some notes\n" * 100)
    with pytest.raises(HistoryError, match=f"{notes}: cannot use it as the event history"):
        History(notes)
    with pytest.raises(HistoryError, match="no such file"):
        History(tmp_path / "missing.sqlite3", write=False)


@pytest.fixture(scope="module")
def cycles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 s: healthy 4 s / faulty 5 s, twice."""
    parts = [
        generate(5.0, 16000, seed=s, fault=Fault("imbalance", 0.0, 5.0, 0.8))
        if s % 2
        else generate(4.0, 16000, seed=s)
        for s in range(4)
    ]
    path = tmp_path_factory.mktemp("history") / "cycles.wav"
    write_wav(path, np.concatenate(parts), 16000)
    return path


def test_every_printed_event_survives_a_sigkill_and_events_prints_it(
    cycles: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "h.toml"
    cfg.write_text(stream("m1", cycles, realtime=True) + f'[daemon]\nstate_dir = "{state}"\n')
    d = Daemon(cfg)
    try:
        (alert,) = d.wait_for("anomaly", "m1", timeout=30)
        d.proc.kill()  # at once: no flush, no close
        d.proc.wait(10)
    finally:
        d.stop()
    printed = [r for r in d.records if r["event"] in STATES]
    assert alert in printed
    proc = events_cli("--state-dir", str(state))
    assert proc.returncode == 0, proc.stderr
    kept = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [{k: v for k, v in e.items() if k != "label"} for e in kept] == printed[::-1]
    assert all(e["label"] is None for e in kept)
    proc = events_cli("--config", str(cfg), "--format", "csv", "--since", "10m", "--stream", "m1")
    rows = proc.stdout.splitlines()
    assert proc.returncode == 0 and rows[0].startswith("time,stream,event,score,threshold")
    assert len(rows) == len(printed) + 1 and alert["event_id"] in proc.stdout
    proc = events_cli("--state-dir", str(state), "--since", "2000-01-01T00:00Z", "--label", "none")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == len(printed)
    proc = events_cli("--state-dir", str(state), "--since", "2000-01-01", "--label", "fault")
    assert (proc.returncode, proc.stdout) == (0, "")


def test_a_slow_or_failed_commit_is_counted_and_the_next_one_kept(tmp_path: Path) -> None:
    history = History(tmp_path / FILE, HistorySettings())
    other = sqlite3.connect(tmp_path / FILE, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")  # another writer holds the file for 1 s
    release = threading.Timer(1.0, other.rollback)
    release.start()
    assert history.add(event()) and history.slow_commits == 1 and history.errors == 0
    release.join()
    other.execute("BEGIN EXCLUSIVE")  # and then for longer than the history waits (5 s)
    assert not history.add(event()) and history.errors == 1
    other.rollback()
    assert history.add(event()) and len(history.events()) == 2
    history.close()


def test_an_unusable_history_does_not_stop_monitoring(cycles: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / FILE).mkdir(parents=True)  # a folder where the file should be
    cfg = tmp_path / "h.toml"
    cfg.write_text(stream("m1", cycles, realtime=False) + f'[daemon]\nstate_dir = "{state}"\n')
    d = Daemon(cfg)
    assert d.proc.wait(60) == 0
    d.stop()
    assert d.events("anomaly", "m1"), d.stderr.decode()
    assert b"monitoring goes on without an event history" in d.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((), "events needs --state-dir DIR or --config FILE"),
        (("--state-dir", "{tmp}/nowhere"), "no such folder"),
        (("--state-dir", "{tmp}"), "no event history there"),
        (("--state-dir", "{tmp}", "--since", "yesterday"), "--since 'yesterday': not a time"),
        (("--state-dir", "{tmp}", "--stream", "a b"), "not a stream id"),
        (("--state-dir", "{tmp}", "--limit", "0"), "--limit must be at least 1"),
        (("--state-dir", "{tmp}", "--label", "maybe"), "invalid choice: 'maybe'"),
        (("--config", "{tmp}/missing.toml"), "cannot read"),
    ],
)
def test_careless_use_gets_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    proc = events_cli(*(a.format(tmp=tmp_path) for a in args))
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""


@pytest.mark.parametrize(
    "clips", ["", "[clips]\nenabled = false\n", "[clips]\nafter_seconds = 1\n"]
)
def test_a_state_directory_keeps_clips_unless_told_not_to(
    cycles: Path, tmp_path: Path, clips: str
) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        stream("m1", cycles, realtime=False) + f'[daemon]\nstate_dir = "{state}"\n\n' + clips
    )
    d = Daemon(cfg)
    assert d.proc.wait(60) == 0, d.stderr.decode()
    d.stop()
    assert d.events("anomaly", "m1")
    kept = sorted(p.suffix for p in (state / "clips").glob("m1-*"))
    if "enabled = false" in clips:
        assert not (state / "clips").exists()
    else:  # every alert has its audio: a wav and its sidecar each
        assert kept and kept.count(".wav") == kept.count(".json") == len(d.events("anomaly"))


def test_clips_without_a_folder_need_a_state_directory(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[source]\nkind = "file"\npath = "x.wav"\n\n[clips]\nafter_seconds = 1\n')
    proc = subprocess.run(
        [BIN, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2 and "clips.folder is needed" in proc.stderr, proc.stderr
    assert "or a [daemon] state_dir" in proc.stderr
