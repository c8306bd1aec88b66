"""Source faults in `amulet-stream run --config` with several streams: NaN/inf audio, full-scale
noise, a stdin writer at half or double the configured rate, the metrics port already taken, a
broker that refuses the credentials. Each fault must be reported (log line, /metrics, MQTT or
stdout state) while the other streams go on scoring. Real subprocesses, real Mosquitto, real
onnxruntime on models/default.onnx; each daemon runs about 12 s of real time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from amulet_stream.audio.wav_write import FloatWavWriter, write_wav
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

from .servers import Mosquitto, Subscriber, binary, free_port, have, wait_until

BIN = Path(sys.executable).parent / "amulet-stream"
RATE = 16000
Record = dict[str, Any]
RUN_SECONDS = 10.0
"""Real time each daemon of this module runs after its first scored window."""
RATE_REASON = "rate"
"""The input_problem reason for a stdin writer far off the configured rate."""

needs_broker = pytest.mark.skipif(have("mosquitto") is not None, reason=str(have("mosquitto")))


class DaemonRun:
    """`amulet-stream run --config CFG --scores` (or `argv` in place of the binary) in the
    background: stdout records and stderr lines collected by two reader threads."""

    def __init__(
        self,
        config: Path,
        *extra: str,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        umask: int | None = None,
    ) -> None:
        cmd = [*(argv or [str(BIN)]), "run", "--config", str(config), "--scores", *extra]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=None if umask is None else partial(_set_umask, umask),
        )
        self.records: list[Record] = []
        self.stdout: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._read_out, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode()
            with self._lock:
                self.stdout.append(line)
                self.records.append(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._lock:
                self.errors.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self.errors)

    def events(self, event: str, stream: str | None = None) -> list[Record]:
        with self._lock:
            return [
                r
                for r in self.records
                if r["event"] == event and (stream is None or r["stream"] == stream)
            ]

    def wait_for(
        self, event: str, stream: str | None = None, n: int = 1, timeout: float = 30
    ) -> list[Record]:
        wait_until(
            lambda: len(self.events(event, stream)) >= n or self.proc.poll() is not None,
            timeout,
            f"{n} {event} record(s) of {stream}; stderr: {self.stderr[-2000:]}",
        )
        found = self.events(event, stream)
        assert len(found) >= n, f"exited {self.proc.returncode}: {self.stderr[-3000:]}"
        return found

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        for t in self._threads:
            t.join(5)
        return code


def _set_umask(mask: int) -> None:
    os.umask(mask)


def scrape(port: int) -> str:
    """The text of /metrics on 127.0.0.1:port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0.0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def float_wav(path: Path, samples: npt.NDArray[np.floating]) -> None:
    """Mono float32 wav at RATE (NaN and inf are kept as they are)."""
    with path.open("wb") as fh:
        writer = FloatWavWriter(fh, RATE)
        writer.write(np.asarray(samples, dtype=np.float32))
        writer.finish()


def stream(sid: str, **keys: object) -> str:
    lines = ["[[stream]]", f'id = "{sid}"']
    for key, value in keys.items():
        lines.append(f"{key} = {json.dumps(str(value) if isinstance(value, Path) else value)}")
    return "\n".join(lines) + "\n\n"


def pcm(seconds: float, seed: int) -> bytes:
    """Healthy motor sound as raw S16_LE mono (what `arecord -f S16_LE` writes)."""
    return (np.round(generate(seconds, RATE, seed=seed) * 32767)).astype("<i2").tobytes()


class PacedWriter:
    """Writes raw PCM to the daemon's stdin at `rate` samples per second (wall clock)."""

    def __init__(self, proc: subprocess.Popen[bytes], data: bytes, rate: int) -> None:
        self.proc, self.data, self.rate = proc, data, rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.proc.stdin is not None
        block = self.rate // 10
        t0 = time.monotonic()
        while not self._stop.is_set() and 2 * self.sent < len(self.data):
            try:
                self.proc.stdin.write(self.data[2 * self.sent : 2 * (self.sent + block)])
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                return
            self.sent += block
            self._stop.wait(max(0.0, t0 + self.sent / self.rate - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def lines_about(errors: list[str], *words: str) -> list[str]:
    """stderr lines holding every one of `words` (case-insensitive)."""
    return [line for line in errors if all(w.lower() in line.lower() for w in words)]


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 s at 16 kHz: healthy; NaN from 2 s to 6 s and scattered +inf from 8 s to 9 s (float
    wav); random full-scale +-1 noise (float wav); imbalance from 1 s on."""
    d = tmp_path_factory.mktemp("faults-audio")
    healthy = generate(12.0, RATE, seed=1)
    out = {name: d / f"{name}.wav" for name in ("healthy", "bad", "noise", "faulty")}
    write_wav(out["healthy"], healthy, RATE)
    bad = healthy.astype(np.float32)
    bad[2 * RATE : 6 * RATE] = np.nan
    bad[8 * RATE : 9 * RATE : 997] = np.inf
    float_wav(out["bad"], bad)
    rng = np.random.default_rng(0)
    float_wav(out["noise"], rng.choice([-1.0, 1.0], size=12 * RATE))
    faulty = generate(12.0, RATE, seed=5, fault=Fault("imbalance", 1.0, 12.0, 0.8))
    write_wav(out["faulty"], faulty, RATE)
    return out


@dataclass
class Outcome:
    """What a daemon of this module did: its records, stderr, /metrics and MQTT messages."""

    run: DaemonRun
    code: int
    metrics: list[str] = field(default_factory=list)
    """/metrics texts scraped while it ran, oldest first."""
    sub: Subscriber | None = None
    writer_sent: int = 0
    """Samples the stdin writer sent."""
    seconds: float = 0.0
    """Real time from the first scored window to the stop."""


def _run_for(run: DaemonRun, port: int | None, first: str) -> tuple[list[str], float]:
    """Let `run` go for RUN_SECONDS after `first`'s first score, scraping /metrics every 2 s."""
    run.wait_for("score", first, timeout=60)
    t0 = time.monotonic()
    texts: list[str] = []
    while time.monotonic() - t0 < RUN_SECONDS and run.proc.poll() is None:
        time.sleep(2.0)
        if port is not None:
            texts.append(scrape(port))
    return texts, time.monotonic() - t0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    if have("mosquitto"):
        pytest.skip(str(have("mosquitto")))
    b = Mosquitto(tmp_path_factory.mktemp("faults-broker"))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def faults(
    audio: dict[str, Path], broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcome]:
    """One daemon, four streams: healthy, NaN/inf ('bad'), full-scale noise (looping files at real
    time) and raw stdin configured at 16 kHz that the writer feeds at 8 kHz (half the rate)."""
    d = tmp_path_factory.mktemp("faults")
    port = free_port()
    cfg = d / "faults.toml"
    cfg.write_text(
        stream("good", kind="file", path=audio["healthy"], loop=True)
        + stream("bad", kind="file", path=audio["bad"], loop=True)
        + stream("noise", kind="file", path=audio["noise"], loop=True)
        + stream("slow", kind="stdin", rate=RATE)
        + f'[metrics]\nlisten = "127.0.0.1:{port}"\n\n'
        + f'[mqtt]\nport = {broker.port}\nclient_id = "faults"\n'
    )
    sub = Subscriber(broker.port)
    run = DaemonRun(cfg)
    writer: PacedWriter | None = None
    try:
        run.wait_for("score", "good", timeout=60)
        writer = PacedWriter(run.proc, pcm(RUN_SECONDS + 5, seed=9), RATE // 2)
        texts, seconds = _run_for(run, port, "good")
    finally:
        if writer is not None:
            writer.stop()
        code = run.stop()
        sub.close()
    yield Outcome(run, code, texts, sub, writer.sent if writer else 0, seconds)


def test_other_streams_keep_scoring_through_the_faults(faults: Outcome) -> None:
    good = faults.run.events("score", "good")
    # windows every 0.25 s (the model's hop) of real-time audio, whatever the other streams do
    assert len(good) >= 3.0 * faults.seconds, (len(good), faults.seconds)
    assert not faults.run.events("anomaly", "good")
    states = [r["event"] for r in faults.run.records if r["stream"] == "good"]
    assert [e for e in states if e != "score"] == ["normal"]
    assert metric(faults.metrics[-1], "amulet_state", stream="good") == 0
    assert metric(faults.metrics[-1], "amulet_source_up", stream="good") == 1
    assert faults.code == 0, faults.run.stderr[-2000:]


def test_full_scale_noise_is_an_input_problem_never_an_anomaly(faults: Outcome) -> None:
    (problem,) = faults.run.events("input_problem", "noise")
    assert problem["reason"] == "clipping"
    assert not faults.run.events("anomaly", "noise")
    last = faults.metrics[-1]
    assert metric(last, "amulet_state", stream="noise") == 2
    assert metric(last, "amulet_input_problems_total", stream="noise", reason="clipping") == 1
    assert metric(last, "amulet_clipped_samples_total", stream="noise") > RATE
    assert faults.sub is not None
    states = [json.loads(m.payload) for m in faults.sub.on("amulet/noise/state") if m.payload]
    assert "input_problem" in [s["state"] for s in states]
    assert len(lines_about(faults.run.errors, "noise", "input problem")) == 1


def test_nan_and_inf_audio_is_reported_once_with_a_state_and_a_metric(faults: Outcome) -> None:
    records = faults.run.records
    changes = [r for r in records if r["stream"] == "bad" and r["event"] != "score"]
    problems = [r for r in changes if r["event"] == "input_problem"]
    assert problems, f"no input_problem for NaN audio; state changes: {changes}"
    # the NaN stretch starts at 2 s: the problem is raised while it lasts, not at its end
    assert problems[0]["end"] is not None and problems[0]["end"] < 4.0, problems[0]
    assert max(metric(t, "amulet_state", stream="bad") for t in faults.metrics) == 2
    assert metric(faults.metrics[-1], "amulet_input_problems_total", stream="bad") >= 1
    assert faults.sub is not None
    states = [json.loads(m.payload) for m in faults.sub.on("amulet/bad/state") if m.payload]
    assert "input_problem" in [s["state"] for s in states]
    # a line per stretch of bad audio (NaN 2-6 s, inf 8-9 s), not one per skipped window
    said = [
        line
        for line in lines_about(faults.run.errors, "bad")
        if "NaN" in line or "inf" in line.lower()
    ]
    assert 1 <= len(said) <= 3, "\n".join(said)
    # and the windows over clean audio are still scored
    assert len(faults.run.events("score", "bad")) >= faults.seconds


def test_stdin_at_half_the_configured_rate_is_reported(faults: Outcome) -> None:
    assert faults.writer_sent > 4 * RATE // 2, "the writer did not get going"
    said = lines_about(faults.run.errors, "slow", "rate")
    assert 1 <= len(said) <= 2, faults.run.stderr[-3000:]
    (problem, *_) = faults.run.events("input_problem", "slow")
    assert problem["reason"] == RATE_REASON
    assert metric(faults.metrics[-1], "amulet_input_problems_total", stream="slow") >= 1
    assert not faults.run.events("anomaly", "slow")


def test_stdin_at_half_the_rate_is_scored_as_it_arrives_with_a_growing_lag(
    faults: Outcome,
) -> None:
    """A writer at half the rate: the stream is scored (half as many windows as real time
    would give) and amulet_processing_lag_seconds grows (today the only visible sign)."""
    scored = faults.run.events("score", "slow")
    assert 0 < len(scored) <= 0.6 * 4 * faults.seconds + 4, len(scored)
    first, last = faults.metrics[0], faults.metrics[-1]
    mean_lag = [
        metric(t, "amulet_processing_lag_seconds_sum", stream="slow")
        / max(1.0, metric(t, "amulet_processing_lag_seconds_count", stream="slow"))
        for t in (first, last)
    ]
    assert mean_lag[1] > mean_lag[0] + 1.0, mean_lag


@pytest.fixture(scope="module")
def refused(audio: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """A broker with a password file and no anonymous access; the daemon gives a wrong
    password. Streams: a faulty motor (looping at real time), and stdin configured at 16 kHz
    that the writer feeds at 32 kHz (double the rate)."""
    if have("mosquitto") or have("mosquitto_passwd"):
        pytest.skip(str(have("mosquitto") or have("mosquitto_passwd")))
    d = tmp_path_factory.mktemp("refused")
    passwd = d / "passwd"
    tool = binary("mosquitto_passwd") or "mosquitto_passwd"
    subprocess.run(
        [tool, "-b", "-c", str(passwd), "monitor", "right"],
        check=True,
        capture_output=True,
    )
    broker = Mosquitto(d, extra=f"allow_anonymous false\npassword_file {passwd}")
    broker.start()
    pw = d / "pw"
    pw.write_text("wrong\n")
    pw.chmod(0o600)
    port = free_port()
    cfg = d / "refused.toml"
    cfg.write_text(
        stream("m1", kind="file", path=audio["faulty"], loop=True)
        + stream("fast", kind="stdin", rate=RATE)
        + f'[metrics]\nlisten = "127.0.0.1:{port}"\n\n'
        + f'[mqtt]\nport = {broker.port}\nclient_id = "refused"\nusername = "monitor"\n'
        + 'password_file = "pw"\n'
    )
    sub = Subscriber(broker.port, pattern="#", auth=("monitor", "right"))
    run = DaemonRun(cfg)
    writer: PacedWriter | None = None
    try:
        run.wait_for("score", "m1", timeout=60)
        writer = PacedWriter(run.proc, pcm(2 * RUN_SECONDS + 10, seed=11), 2 * RATE)
        texts, seconds = _run_for(run, port, "m1")
    finally:
        if writer is not None:
            writer.stop()
        code = run.stop()
        sub.close()
        broker.stop()
    yield Outcome(run, code, texts, sub, writer.sent if writer else 0, seconds)


def test_refused_credentials_one_line_a_metric_and_the_undelivered_alerts_counted(
    refused: Outcome,
) -> None:
    run = refused.run
    alerts = run.events("anomaly", "m1")
    assert alerts, run.stderr[-2000:]
    said = lines_about(run.errors, "refused")
    assert len(said) == 1, "\n".join(said)  # one line, not one per retry
    assert "127.0.0.1" in said[0] and "not authorized" in said[0].lower(), said[0]
    last = refused.metrics[-1]
    assert metric(last, "amulet_mqtt_connected") == 0
    # paho retried (backoff 1, 2, 4... s): every attempt counted, none logged again
    assert metric(last, "amulet_mqtt_connect_failures_total") >= 3
    # every alert (and its retained state) waits: counted, not lost without a word
    assert metric(last, "amulet_mqtt_queued_messages") >= 2
    changes = [r for r in run.records if r["event"] != "score"]  # each one an alert message
    exit_lines = lines_about(run.errors, "not delivered")
    assert len(exit_lines) == 1, run.stderr[-2000:]
    assert f"alert {len(changes)}" in exit_lines[0], (exit_lines, changes)
    assert refused.sub is not None
    assert not [m for m in refused.sub.messages if m.topic.startswith("amulet/")]
    # monitoring went on: the faulty stream is scored in real time
    assert len(run.events("score", "m1")) >= 3.0 * refused.seconds
    assert refused.code == 0


def test_stdin_at_double_the_configured_rate_is_reported(refused: Outcome) -> None:
    assert refused.writer_sent > 4 * 2 * RATE, "the writer did not get going"
    said = lines_about(refused.run.errors, "fast", "rate")
    assert 1 <= len(said) <= 2, refused.run.stderr[-3000:]
    (problem, *_) = refused.run.events("input_problem", "fast")
    assert problem["reason"] == RATE_REASON
    assert metric(refused.metrics[-1], "amulet_input_problems_total", stream="fast") >= 1


def test_a_taken_metrics_port_is_reported_once_and_monitoring_goes_on(
    audio: dict[str, Path], tmp_path: Path
) -> None:
    """The port is held by another process at start: one error line, scoring goes on, and the
    listener comes up once the port is free (tried again every 10 s)."""
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    cfg = tmp_path / "taken.toml"
    cfg.write_text(
        stream("m1", kind="file", path=audio["healthy"], loop=True)
        + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    run = DaemonRun(cfg)
    try:
        run.wait_for("score", "m1", n=8, timeout=60)
        assert run.proc.poll() is None
        said = lines_about(run.errors, f"127.0.0.1:{port}")
        assert len(said) == 1 and "in use" in said[0], run.stderr
        assert "monitoring goes on" in said[0]
        with pytest.raises(OSError):  # not ours: the blocker never answers HTTP
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)
        blocker.close()

        def up() -> bool:
            try:
                return "amulet_windows_scored_total" in scrape(port)
            except (OSError, urllib.error.URLError):
                return False

        wait_until(up, 15, "the metrics listener once the port is free")
        assert metric(scrape(port), "amulet_windows_scored_total", stream="m1") > 0
        assert len(lines_about(run.errors, "in use")) == 1  # the retries said nothing more
    finally:
        blocker.close()
        assert run.stop() == 0
