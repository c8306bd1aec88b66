"""Evidence clips: the real pipeline and model, real wav files, the replay CLI as a subprocess."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from amulet_stream import __version__
from amulet_stream.audio.sources import Block
from amulet_stream.audio.wav import iter_blocks, read_info
from amulet_stream.outputs.clip_store import CLIP_NAME, ClipSettings, ClipStore
from amulet_stream.outputs.clips import ClipRecorder
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.pipeline import StreamPipeline
from amulet_stream.scoring.records import utc_iso
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "amulet-stream"
MODEL = ROOT / "models" / "default.onnx"
RATE = 16000
T0 = 1_700_000_000.0
"""Capture time (UNIX s) of each test stream's first sample."""
F32 = npt.NDArray[np.float32]
Record = dict[str, Any]
Run = tuple[str | None, list[Record], ClipStore]


@pytest.fixture(scope="module")
def model() -> Model:
    return Model(MODEL)


@pytest.fixture(scope="module")
def faulty() -> F32:
    """30 s at 16 kHz, imbalance (severity 0.8) from 12 s to the end."""
    return generate(30.0, RATE, seed=5, fault=Fault("imbalance", 12.0, 30.0, 0.8))


def run_stream(model: Model, audio: F32, block: int, folder: Path) -> Run:
    """Feed `audio` block by block to a pipeline and a clip recorder, as the daemon does;
    return the first anomaly's clip path, every record and the store."""
    store = ClipStore(ClipSettings(folder))
    recorder = ClipRecorder(store, "motor-1", RATE, model.sha256)
    pipe = StreamPipeline(model, RATE, stream="motor-1")
    records: list[Record] = []
    clip = None
    for i in range(0, audio.shape[0], block):
        samples, t = audio[i : i + block], T0 + i / RATE
        recorder.push(samples, t)
        out = pipe.feed(Block(samples, t))
        recorder.scores(out)
        records += out
        for rec in out:
            if rec["event"] == "anomaly" and clip is None:
                clip = recorder.trigger(rec)
    out = pipe.finish()
    recorder.scores(out)
    recorder.close()
    return clip, records + out, store


@pytest.fixture(scope="module")
def quarter(model: Model, faulty: F32, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The faulty recording in blocks of 0.25 s (4000 samples)."""
    return run_stream(model, faulty, 4000, tmp_path_factory.mktemp("clips-4000"))


def read_clip(path: Path) -> tuple[F32, Record]:
    """A clip's float32 samples and its sidecar."""
    info = read_info(path)
    assert info.is_float and info.bits == 32 and info.channels == 1 and info.rate == RATE
    samples = np.concatenate([b[:, 0] for b in iter_blocks(info)])
    return samples, json.loads(path.with_suffix(".json").read_text())


def test_clip_holds_the_trigger_and_replays_to_the_same_alert(
    quarter: Run, faulty: F32, model: Model
) -> None:
    clip, records, store = quarter
    assert clip is not None and store.written == 1 and store.failed == 0
    path = Path(clip)
    assert CLIP_NAME.fullmatch(path.name) and path.name.startswith("motor-1-")
    samples, side = read_clip(path)
    trigger = next(r for r in records if r["event"] == "anomaly")
    assert 12.0 < trigger["end"] < 15.0
    # 10 s before the end of the trigger window, 5 s after, at the source rate
    trig = round(trigger["end"] * RATE)
    first, stop = trig - 10 * RATE, trig + 5 * RATE
    assert side["start_sample"] == first and side["samples"] == stop - first
    assert np.array_equal(samples, faulty[first:stop])  # bit for bit
    assert side["start"] == pytest.approx(first / RATE)
    assert side["end"] == pytest.approx(stop / RATE)
    assert side["start_utc"] == utc_iso(T0 + first / RATE)
    assert side["end_utc"] == utc_iso(T0 + stop / RATE)
    assert side["stream"] == "motor-1" and side["model_sha256"] == model.sha256
    assert side["rate"] == RATE and side["version"] == __version__ and side["complete"] is True
    assert side["trigger"] == trigger and side["threshold"] == trigger["threshold"]
    assert side["wav"] == path.name and side["skipped_triggers"] == []
    inside = [
        r
        for r in records
        if r["event"] == "score" and r["start"] >= first / RATE and r["end"] <= stop / RATE
    ]
    assert len(inside) > 40 and side["scores"] == inside  # every window of the clip
    assert any(r["end"] == trigger["end"] and r["anomaly"] for r in side["scores"])

    proc = subprocess.run(
        [BIN, "replay", path, "--model", MODEL],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    alerts = [r for r in out if r["event"] == "anomaly"]
    assert alerts and out[-1]["event"] == "summary" and out[-1]["verdict"] == "defect"
    # the fault starts 12 s into the recording, (12 - first / RATE) s into the clip
    assert alerts[0]["end"] > 12.0 - first / RATE


def test_clip_does_not_depend_on_block_size(
    quarter: Run, model: Model, faulty: F32, tmp_path: Path
) -> None:
    clip, _, _ = quarter
    other, _, store = run_stream(model, faulty, 1000, tmp_path)
    assert clip is not None and other is not None and store.written == 1
    assert Path(clip).read_bytes() == Path(other).read_bytes()
    a, b = (json.loads(Path(c).with_suffix(".json").read_text()) for c in (clip, other))
    for side in (a, b):  # a fresh event id per run, hence another name
        del side["wav"], side["event_id"]
        side["trigger"].pop("event_id", None)
    assert a == b


def anomaly(end: float) -> Record:
    """An anomaly record of a window ending `end` s into the stream."""
    return {
        "event": "anomaly",
        "stream": "m",
        "file": None,
        "start": round(end - 0.8, 4),
        "end": end,
        "score": 0.9,
        "threshold": 0.5,
        "event_id": str(uuid.uuid4()),
        "time": utc_iso(T0 + end),
    }


def noise(seconds: float, seed: int) -> F32:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(
        np.float32
    )


def clips_in(folder: Path) -> dict[str, set[str]]:
    """Our clip files in `folder`: stem -> suffixes."""
    found: dict[str, set[str]] = {}
    for p in folder.iterdir():
        if m := CLIP_NAME.fullmatch(p.name):
            found.setdefault(m["stem"], set()).add(p.suffix)
    return found


class Feeder:
    """Pushes noise into a recorder and knows the stream time."""

    def __init__(self, recorder: ClipRecorder) -> None:
        self.recorder = recorder
        self.samples = 0

    def push(self, seconds: float, seed: int, capture: bool = True) -> None:
        t = T0 + self.samples / RATE if capture else None
        block = noise(seconds, seed)
        self.recorder.push(block, t)
        self.samples += block.shape[0]

    def trigger(self) -> str | None:
        return self.recorder.trigger(anomaly(self.samples / RATE))


def make_clips(feeder: Feeder, n: int, seed: int = 0) -> list[str]:
    """Trigger `n` clips, 3.5 s of stream apart, each written in full; return their wav paths."""
    paths = []
    for k in range(n):
        feeder.push(1.0, seed + k)
        path = feeder.trigger()
        assert path is not None
        paths.append(path)
        feeder.push(2.5, seed + 100 + k)  # after_seconds and LAG_SECONDS: written
        assert Path(path).is_file()
    return paths


def test_retention_by_count_keeps_the_newest_pairs(tmp_path: Path) -> None:
    foreign = ["notes.txt", "recording.wav", "motor-20240101T000000Z-nothex00.wav"]
    for name in foreign:
        (tmp_path / name).write_bytes(b"not ours")
    store = ClipStore(ClipSettings(tmp_path, 0.5, 0.25, max_count=3))
    a = Feeder(ClipRecorder(store, "pump_a", RATE, "0" * 64))
    b = Feeder(ClipRecorder(store, "pump-b", RATE, "0" * 64))
    paths = make_clips(a, 2) + make_clips(b, 3, seed=10) + make_clips(a, 1, seed=20)
    assert store.written == 6 and store.failed == 0
    kept = clips_in(tmp_path)
    assert kept == {Path(p).stem: {".wav", ".json"} for p in paths[-3:]}
    assert all((tmp_path / name).read_bytes() == b"not ours" for name in foreign)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_retention_by_size(tmp_path: Path) -> None:
    # one clip: 0.75 s of float32 at 16 kHz, 48058 bytes + its sidecar: two fit in 0.12 MB
    store = ClipStore(ClipSettings(tmp_path, 0.5, 0.25, max_count=100, max_mb=0.12))
    paths = make_clips(Feeder(ClipRecorder(store, "m", RATE, "0" * 64)), 5)
    kept = clips_in(tmp_path)
    assert kept == {Path(p).stem: {".wav", ".json"} for p in paths[-2:]}
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 0.12e6


def test_unwritable_folder_costs_clips_not_monitoring(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file where the clip folder's parent should be")
    folder = blocker / "clips"
    caplog.set_level(logging.DEBUG, logger="amulet_stream.outputs")
    store = ClipStore(ClipSettings(folder, 0.5, 0.25))  # no exception
    feeder = Feeder(ClipRecorder(store, "m", RATE, "0" * 64))
    for k in range(2):
        feeder.push(1.0, k, capture=False)
        assert feeder.trigger() is None
        feeder.push(3.0, k, capture=False)  # monitoring goes on
    assert store.failed == 2 and store.written == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot write" in warnings[0].getMessage()  # one per outage
    blocker.unlink()  # the outage ends
    assert make_clips(feeder, 1) and store.written == 1 and store.failed == 2
    assert "writing to" in caplog.records[-1].getMessage()


def test_read_only_folder(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: root writes into a folder whatever its mode")
    tmp_path.chmod(0o500)
    try:
        store = ClipStore(ClipSettings(tmp_path, 0.5, 0.25))
        feeder = Feeder(ClipRecorder(store, "m", RATE, "0" * 64))
        feeder.push(1.0, 0)
        assert feeder.trigger() is None
        feeder.push(3.0, 1)
        assert store.failed == 1 and not list(tmp_path.iterdir())
    finally:
        tmp_path.chmod(0o700)


def test_close_writes_the_pending_clip_and_notes_later_triggers(tmp_path: Path) -> None:
    store = ClipStore(ClipSettings(tmp_path, before_seconds=1.0, after_seconds=5.0))
    recorder = ClipRecorder(store, "m", RATE, "0" * 64)
    audio = noise(20.0, 7)
    recorder.push(audio[: 12 * RATE], T0)  # one block longer than the ring (1 s + LAG_SECONDS)
    first, second = anomaly(12.0), anomaly(13.5)
    path = recorder.trigger(first)
    assert path is not None
    recorder.push(audio[12 * RATE : 14 * RATE], T0 + 12.0)
    assert recorder.trigger(second) is None  # a clip is pending
    assert not Path(path).exists()
    recorder.close()  # the source is lost: write what there is
    samples, side = read_clip(Path(path))
    assert np.array_equal(samples, audio[11 * RATE : 14 * RATE])
    assert side["complete"] is False and side["samples"] == 3 * RATE
    assert side["trigger"] == first and side["skipped_triggers"] == [second]
    assert side["start_utc"] == utc_iso(T0 + 11.0) and side["end_utc"] == utc_iso(T0 + 14.0)
    recorder.push(audio[14 * RATE :], T0 + 14.0)
    assert recorder.trigger(anomaly(2.0)) is None  # older than the ring: no clip, no failure
    assert store.written == 1 and store.failed == 0


def score(start: float, end: float) -> Record:
    return {
        "event": "score",
        "stream": "m",
        "file": None,
        "start": start,
        "end": end,
        "score": 0.1,
        "threshold": 0.5,
        "anomaly": False,
    }


def test_clip_waits_for_the_scores_of_its_last_windows(tmp_path: Path) -> None:
    store = ClipStore(ClipSettings(tmp_path, before_seconds=1.0, after_seconds=1.0))
    feeder = Feeder(ClipRecorder(store, "m", RATE, "0" * 64))
    feeder.push(2.0, 0)
    early, inside = score(0.5, 1.5), score(1.0, 2.0)
    feeder.recorder.scores([early, inside])
    path = feeder.trigger()  # at 2.0 s: the clip spans 1.0 .. 3.0 s
    assert path is not None
    feeder.push(1.5, 1)
    assert not Path(path).exists()  # its audio is complete, the scores of 2.2 .. 3.0 s are not
    last, beyond = score(2.2, 3.0), score(2.5, 3.3)
    feeder.recorder.scores([last, {"event": "normal", "end": 3.1}, beyond])
    assert Path(path).is_file()
    assert json.loads(Path(path).with_suffix(".json").read_text())["scores"] == [inside, last]


DISK_FULL = """
import json, resource, signal, sys
from pathlib import Path
import numpy as np
from amulet_stream.outputs.clip_store import ClipSettings, ClipStore
from amulet_stream.outputs.clips import ClipRecorder

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes beyond the limit fail with EFBIG
folder, rate = Path(sys.argv[1]), 16000
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
store = ClipStore(ClipSettings(folder, before_seconds=2.0, after_seconds=1.0))
rec = ClipRecorder(store, "m", rate, "0" * 64)
rng = np.random.default_rng(0)
pushed = 0

def push(seconds):
    global pushed
    rec.push((0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32), None)
    pushed += int(seconds * rate)

def trigger():
    end = pushed / rate
    return rec.trigger({"event": "anomaly", "start": end - 0.8, "end": end, "threshold": 0.5,
                        "event_id": "0123abcd-0000", "time": "2024-05-01T12:00:00.000Z"})

def files():
    return sorted(p.name for p in folder.iterdir())

out = {}
push(3.0)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, hard))  # the 128 kB before-part fails
out["at_start"] = [trigger(), store.failed, files()]
push(3.0)
resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, hard))  # before fits, after does not
path = trigger()
push(3.0)
out["in_after"] = [path, Path(path).exists(), store.failed, files()]
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
path = trigger()
push(3.0)
out["recovered"] = [Path(path).stat().st_size, store.written, store.failed, files()]
print(json.dumps(out))
"""


def test_full_disk_costs_clips_not_monitoring(tmp_path: Path) -> None:
    """A real EFBIG from RLIMIT_FSIZE (in a subprocess) stands in for ENOSPC."""
    proc = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["at_start"] == [None, 1, []]  # not started, counted, nothing left behind
    path, exists, failed, files = out["in_after"]
    assert path.endswith("m-20240501T120000Z-0123abcd.wav") and not exists
    assert failed == 2 and files == []
    assert proc.stderr.count("cannot write") == 1  # one warning for the outage
    size, written, failed, files = out["recovered"]
    assert size == 58 + 4 * 3 * RATE and written == 1 and failed == 2
    assert files == ["m-20240501T120000Z-0123abcd.json", "m-20240501T120000Z-0123abcd.wav"]


def test_settings_are_validated(tmp_path: Path) -> None:
    for kwargs, field in [
        ({"before_seconds": -1.0}, "before_seconds"),
        ({"after_seconds": float("nan")}, "after_seconds"),
        ({"before_seconds": 0.0, "after_seconds": 0.0}, "before_seconds"),
        ({"max_count": 0}, "max_count"),
        ({"max_count": 2.5}, "max_count"),
        ({"max_mb": 0.0}, "max_mb"),
    ]:
        with pytest.raises(ValueError, match=f"^{field}"):
            ClipSettings(tmp_path, **kwargs)
    with pytest.raises(ValueError, match="stream id"):
        ClipRecorder(ClipStore(ClipSettings(tmp_path)), "pump.3", RATE, "0" * 64)
