"""The daemon (`amulet-stream run --config`) as a plant runs it: several streams with their own
models, a four-channel source, input problems, lost sources, SIGHUP reloads, SIGTERM, clips.
Real subprocesses, real wav files, real onnxruntime on real model files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from amulet_stream.audio.wav import read_info
from amulet_stream.audio.wav_write import write_wav
from amulet_stream.scoring.model import BATCH, Model, default_model_path
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

from .servers import Mosquitto, Subscriber, have, wait_until

BIN = Path(sys.executable).parent / "amulet-stream"
EXPORT = Path(sys.executable).parent / "amulet-export"
RATE = 16000


class Daemon:
    """`amulet-stream run --config CFG --scores` in the background; stdout lines collected."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [BIN, "run", "--config", str(config), "--scores", *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.records: list[dict] = []
        self.stderr = b""
        self._lock = threading.Lock()
        self._out = threading.Thread(target=self._read, daemon=True)
        self._out.start()
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.records.append(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr += line

    def events(self, event: str, stream: str | None = None) -> list[dict]:
        with self._lock:
            return [
                r
                for r in self.records
                if r["event"] == event and (stream is None or r["stream"] == stream)
            ]

    def wait_for(self, event: str, stream: str | None = None, n: int = 1, timeout: float = 30):
        wait_until(
            lambda: len(self.events(event, stream)) >= n or self.proc.poll() is not None,
            timeout,
            f"{n} {event} event(s) of {stream}; stderr: {self.stderr.decode()[-2000:]}",
        )
        found = self.events(event, stream)
        assert len(found) >= n, self.stderr.decode()
        return found

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._out.join(5)
        self._err.join(5)
        return code


def stream(sid: str, path: Path, **keys: object) -> str:
    lines = ["[[stream]]", f'id = "{sid}"', 'kind = "file"', f'path = "{path}"']
    for key, value in keys.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n\n"


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Healthy and faulty 12 s motor recordings at 16 kHz, and a 4-channel one."""
    d = tmp_path_factory.mktemp("daemon-audio")
    healthy = generate(12.0, RATE, seed=1)
    faulty = generate(12.0, RATE, seed=5, fault=Fault("imbalance", 4.0, 12.0, 0.8))
    clipped = np.clip(healthy * 20, -1, 1)
    out = {"healthy": d / "healthy.wav", "faulty": d / "faulty.wav", "quad": d / "quad.wav"}
    write_wav(out["healthy"], healthy, RATE)
    write_wav(out["faulty"], faulty, RATE)
    # channel 0 healthy, 1 faulty, 2 a dead input (digital zeros), 3 clipping
    write_wav(out["quad"], np.stack([healthy, faulty, 0 * healthy, clipped], axis=1), RATE)
    return out


@pytest.fixture(scope="module")
def pca_model(audio: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, different model: closed-form PCA trained in seconds on the healthy file."""
    out = tmp_path_factory.mktemp("pca") / "out"
    args = ["train", "--input-file", audio["healthy"], "--output-dir", out, "--silent"]
    proc = subprocess.run(
        [EXPORT, *args, "--architecture", "pca"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return out / "model.onnx"


def test_streams_with_different_models_each_give_their_own_events(
    audio: dict[str, Path], pca_model: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "two.toml"
    cfg.write_text(
        stream("dense", audio["faulty"], realtime=False)
        + stream("pca", audio["faulty"], realtime=False, model=str(pca_model))
        + stream("calm", audio["healthy"], realtime=False)
    )
    d = Daemon(cfg)
    assert d.proc.wait(60) == 0, d.stderr.decode()
    d.stop()
    for sid in ("dense", "pca", "calm"):
        scores = d.events("score", sid)
        assert len(scores) == 44, sid  # (12 s - 0.992 s) / 0.256 s + 1 windows
    assert d.events("anomaly", "dense") and d.events("anomaly", "pca")
    assert not d.events("anomaly", "calm") and d.events("normal", "calm")
    dense = [r["score"] for r in d.events("score", "dense")]
    pca = [r["score"] for r in d.events("score", "pca")]
    assert dense != pca  # two models, two score series
    # each stream's scores equal a replay of its file alone through its model
    replay = subprocess.run(
        [BIN, "replay", audio["faulty"], "--model", pca_model, "--scores"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    alone = [json.loads(x) for x in replay.stdout.splitlines()]
    assert pca == [r["score"] for r in alone if r["event"] == "score"]


def test_a_four_channel_source_feeds_four_streams_and_input_problems_are_not_anomalies(
    audio: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tmp_path / "quad.toml"
    names = ("healthy", "faulty", "dead", "clipping")
    cfg.write_text(
        "".join(stream(n, audio["quad"], channel=i, realtime=False) for i, n in enumerate(names))
    )
    d = Daemon(cfg)
    assert d.proc.wait(60) == 0, d.stderr.decode()
    d.stop()
    assert b"feeds healthy, faulty, dead, clipping" in d.stderr  # one source, four streams
    states = {
        n: [r["event"] for r in d.records if r["stream"] == n and r["event"] != "score"]
        for n in names
    }
    assert states["healthy"] == ["normal"]
    assert states["faulty"][:2] == ["normal", "anomaly"]
    for n, reason in (("dead", "silence"), ("clipping", "clipping")):
        assert states[n] == ["input_problem"], (n, states[n])
        (problem,) = d.events("input_problem", n)
        assert problem["reason"] == reason and problem["detail"] and problem["event_id"]
    assert all(len(d.events("score", n)) == 44 for n in names)


def test_streams_sharing_a_model_are_scored_as_if_alone() -> None:
    # the daemon scores several streams in one onnxruntime call (unpadded where the model
    # found rows independent at load, else BATCH-aligned rows per stream); a row's score must
    # not depend on the rows beside it, and both ways give the same bits
    model = Model(default_model_path())
    rng = np.random.default_rng(3)
    parts = [
        (rng.normal(size=(n, model.profile.dim)).astype(np.float32) * 5, first)
        for n, first in ((3, 0), (40, 7), (1, 31), (BATCH, 64), *[(500, 5)] * 3, (1500, 2))
    ]  # the last ones go beyond MAX_ROWS: several onnxruntime calls
    modes = [True] if model.padded else [False, True]
    results = []
    for padded in modes:
        model.padded = padded
        together = model.score_many(parts)
        for (vectors, first), scores in zip(parts, together, strict=True):
            assert np.array_equal(scores, model.score_vectors(vectors, first))
            last = len(vectors) - 1
            alone = [model.score_vectors(vectors[k : k + 1], first + k) for k in (0, last)]
            assert np.array_equal(np.concatenate(alone), scores[[0, last]])
        results.append(together)
    for a, b in zip(results[0], results[-1], strict=True):
        assert np.array_equal(a, b)


def test_sighup_with_a_broken_model_keeps_the_old_one_scoring(
    audio: dict[str, Path], pca_model: Path, tmp_path: Path
) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(default_model_path(), model)
    cfg = tmp_path / "hup.toml"
    cfg.write_text(stream("m1", audio["healthy"], loop=True, model=str(model)))
    d = Daemon(cfg)
    try:
        d.wait_for("score", "m1", n=3)
        model.write_bytes(b"not an onnx model at all")
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: b"model refused" in d.stderr, 15, "the refusal in the log")
        n = len(d.events("score", "m1"))
        d.wait_for("score", "m1", n=n + 8)  # the old model goes on scoring
        assert d.proc.poll() is None
        # a good new model is taken
        shutil.copy(pca_model, model)
        d.proc.send_signal(signal.SIGHUP)
        sha = Model(pca_model).sha256[:12].encode()
        wait_until(lambda: sha in d.stderr, 15, "the new model in the log")
        n = len(d.events("score", "m1"))
        d.wait_for("score", "m1", n=n + 8)
    finally:
        assert d.stop() == 0


@pytest.fixture
def broker(tmp_path: Path):
    reason = have("mosquitto")
    if reason:
        pytest.skip(reason)
    b = Mosquitto(tmp_path)
    b.start()
    yield b
    b.stop()


def test_sigterm_exits_0_within_5_s_with_the_alert_delivered(
    audio: dict[str, Path], tmp_path: Path, broker: Mosquitto
) -> None:
    sub = Subscriber(broker.port)
    cfg = tmp_path / "term.toml"
    cfg.write_text(
        stream("m1", audio["faulty"], loop=True)
        + f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
    )
    d = Daemon(cfg)
    try:
        (alert,) = d.wait_for("anomaly", "m1", timeout=30)
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)  # at once: the alert may still be in the outbox
        assert d.proc.wait(10) == 0
        assert time.monotonic() - t0 < 5.0
        sent = [json.loads(m.payload) for m in sub.on("amulet/m1/alert")]
        assert alert["event_id"] in [m["event_id"] for m in sent]
        state = json.loads(sub.on("amulet/m1/state")[-1].payload)
        assert state["state"] == "anomaly" and state["event_id"] == alert["event_id"]
    finally:
        d.stop()
        sub.close()


def test_two_processes_on_one_broker_keep_their_own_availability(
    audio: dict[str, Path], tmp_path: Path, broker: Mosquitto
) -> None:
    sub = Subscriber(broker.port)
    mqtt = f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
    daemons = {}
    for sid in ("left", "right"):
        cfg = tmp_path / f"{sid}.toml"
        cfg.write_text(stream(sid, audio["healthy"], loop=True) + mqtt)
        daemons[sid] = Daemon(cfg)
    try:
        for d in daemons.values():
            d.wait_for("score", n=2)

        def status() -> dict[str, str]:
            return {
                m.topic: m.payload
                for m in sub.messages
                if m.topic.startswith("amulet/amulet-") and m.topic.endswith("/status")
            }

        wait_until(lambda: len(status()) == 2, 10, "two availability topics")
        assert set(status().values()) == {"online"}
        assert daemons["left"].stop() == 0
        wait_until(lambda: "offline" in status().values(), 10, "left goes offline")
        (left,) = [t for t, v in status().items() if v == "offline"]
        (right,) = [t for t, v in status().items() if v == "online"]
        assert "left" in left and "right" in right
    finally:
        for d in daemons.values():
            d.stop()
        sub.close()


def test_a_source_that_fails_is_reopened_and_scoring_resumes(
    audio: dict[str, Path], tmp_path: Path
) -> None:
    wav = tmp_path / "flaky.wav"
    shutil.copy(audio["healthy"], wav)
    full = wav.read_bytes()
    cfg = tmp_path / "flaky.toml"
    cfg.write_text(stream("m1", wav) + stream("other", audio["healthy"], loop=True))
    d = Daemon(cfg)
    try:
        d.wait_for("score", "m1", n=4)
        os.truncate(wav, read_info(wav).data_offset + 4 * RATE * 2)  # cut at 4 s: reading fails
        (down,) = d.wait_for("down", "m1", timeout=20)
        assert down["reason"] and down["event_id"]
        others = len(d.events("score", "other"))
        wav.write_bytes(full)  # the file is back: the reopen finds it
        n = len(d.events("score", "m1"))
        d.wait_for("score", "m1", n=n + 4, timeout=30)
        assert len(d.events("score", "other")) > others  # the other stream never stopped
        assert b"reopening in" in d.stderr
    finally:
        assert d.stop() == 0


def test_sources_that_keep_failing_end_the_process_for_systemd(
    audio: dict[str, Path], tmp_path: Path
) -> None:
    wav = tmp_path / "gone.wav"
    shutil.copy(audio["healthy"], wav)
    cfg = tmp_path / "gone.toml"
    cfg.write_text(stream("m1", wav) + "[daemon]\nreopen_attempts = 2\nreopen_max_seconds = 1\n")
    d = Daemon(cfg)
    d.wait_for("score", "m1", n=2)
    os.truncate(wav, read_info(wav).data_offset + 3 * RATE * 2)  # reading fails at 3 s ...
    wav.unlink()  # ... and every reopen fails
    code = d.proc.wait(30)
    d.stop()
    assert code == 3, d.stderr.decode()
    assert b"every source failed 2 times in a row" in d.stderr
    assert d.events("down", "m1")


def test_a_stalled_source_is_marked_down_and_comes_back(tmp_path: Path) -> None:
    cfg = tmp_path / "stdin.toml"
    cfg.write_text(
        '[[stream]]\nid = "pipe"\nkind = "stdin"\nrate = 16000\n\n[daemon]\nstall_seconds = 1.5\n'
    )
    pcm = (np.round(generate(8.0, RATE, seed=9) * 32767)).astype("<i2").tobytes()
    d = Daemon(cfg)
    assert d.proc.stdin is not None
    try:
        d.proc.stdin.write(pcm[: 4 * RATE * 2])
        d.proc.stdin.flush()
        d.wait_for("score", "pipe", n=3)
        (down,) = d.wait_for("down", "pipe", timeout=10)  # nothing more arrives
        assert "no audio" in down["reason"]
        n = len(d.events("score", "pipe"))
        d.proc.stdin.write(pcm[4 * RATE * 2 :])
        d.proc.stdin.flush()
        d.wait_for("score", "pipe", n=n + 3, timeout=10)
        assert b"audio flows again" in d.stderr
        d.proc.stdin.close()  # the writer goes away: `run` exits 3 so systemd restarts it
        assert d.proc.wait(20) == 3
        assert d.events("down", "pipe")[-1]["reason"] == "end of stdin (its writer closed it)"
        assert b"exiting (status 3)" in d.stderr
    finally:
        d.stop()


def test_clips_are_written_bounded_and_replay_to_the_same_alert(
    audio: dict[str, Path], tmp_path: Path
) -> None:
    clips = tmp_path / "clips"
    cfg = tmp_path / "clips.toml"
    cfg.write_text(
        stream("m1", audio["faulty"], realtime=False, loop=True)
        + f'[clips]\nfolder = "{clips}"\nbefore_seconds = 6\nafter_seconds = 2\nmax_count = 2\n'
    )
    d = Daemon(cfg, "--duration", "60")  # the faulty file five times: five alerts
    assert d.proc.wait(60) == 0, d.stderr.decode()
    d.stop()
    alerts = d.events("anomaly", "m1")
    assert len(alerts) >= 3
    wavs = sorted(clips.glob("*.wav"))
    assert len(wavs) == 2 and len(list(clips.glob("*.json"))) == 2  # bounded to the newest 2
    assert {Path(a["clip"]).name for a in alerts[-2:]} == {w.name for w in wavs}
    side = json.loads(wavs[-1].with_suffix(".json").read_text())
    assert side["stream"] == "m1" and side["model_sha256"] == Model(default_model_path()).sha256
    replay = subprocess.run(
        [BIN, "replay", wavs[-1]], capture_output=True, text=True, timeout=120, check=False
    )
    events = [json.loads(x)["event"] for x in replay.stdout.splitlines()]
    assert "anomaly" in events and events[-1] == "summary", replay.stderr


def test_stream_ids_and_sources_are_checked_at_start(audio: dict[str, Path], tmp_path: Path):
    for body, words in (
        (stream("a+b", audio["healthy"]), "stream id 'a+b': use 1 to 64 letters"),
        (stream("m1", audio["healthy"]) + stream("m1", audio["faulty"]), "used twice"),
        (stream("m1", tmp_path / "none.wav"), "no such file"),
        ('[[stream]]\nid = "s"\nkind = "stdin"\n', "needs a rate"),
        ('[[stream]]\nid = "s"\nkind = "tape"\n', "kind must be one of device, stdin, file"),
        (stream("m1", audio["healthy"], channel=-1), "channel is 0-based"),
        (stream("m1", audio["healthy"]) + "detector = { k = 3 }\n", "counted windows and is gone"),
    ):
        cfg = tmp_path / "bad.toml"
        cfg.write_text(body)
        proc = subprocess.run(
            [BIN, "run", "--config", cfg], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 2 and words in proc.stderr, (body, proc.stderr)
        assert "Traceback" not in proc.stderr
    cfg = tmp_path / "two.toml"
    cfg.write_text(stream("m1", audio["healthy"]) + stream("m2", audio["healthy"]))
    proc = subprocess.run(
        [BIN, "run", "--config", cfg, "--device", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "set the source of each stream there" in proc.stderr


def test_sigterm_while_stdin_waits_for_audio_exits_0(tmp_path: Path) -> None:
    # `arecord | amulet-stream run --source stdin`: the feed thread blocks in a read
    proc = subprocess.Popen(
        [BIN, "run", "--source", "stdin", "--rate", "16000", "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"\0\1" * 8000)  # half a second, then nothing
    proc.stdin.flush()
    time.sleep(2)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(10)
    proc.stdin.close()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0 and time.monotonic() - t0 < 5.0, err
    assert "Fatal Python error" not in err


def test_a_reload_with_a_broken_source_is_refused(audio: dict[str, Path], tmp_path: Path):
    cfg = tmp_path / "src.toml"
    cfg.write_text(stream("m1", audio["healthy"], loop=True))
    d = Daemon(cfg)
    try:
        d.wait_for("score", "m1", n=2)
        text = tmp_path / "text.wav"
        text.write_text("not audio")
        cfg.write_text(stream("m1", text, loop=True))
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: b"reload refused" in d.stderr, 15, "the refusal")
        n = len(d.events("score", "m1"))
        d.wait_for("score", "m1", n=n + 4)  # the running source goes on
        assert not d.events("down", "m1")
    finally:
        assert d.stop() == 0
