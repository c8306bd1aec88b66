"""Prometheus metrics, health endpoints and AMULET's POST /submit, on a real listener; a real
Prometheus server scrapes it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

from .servers import free_port, have, wait_until

BIN = Path(sys.executable).parent / "amulet-stream"
RATE = 16000


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A 30 s wav with a fault from 8 s to 16 s, and the same samples as raw S16_LE PCM."""
    folder = tmp_path_factory.mktemp("metrics")
    mono = generate(30.0, RATE, seed=43, fault=Fault("imbalance", 8.0, 16.0, 0.8))
    pcm = np.clip(np.round(mono.astype(np.float64) * 32767), -32768, 32767).astype("<i2")
    write_wav(folder / "fault.wav", pcm / 32767, RATE)
    return folder / "fault.wav", pcm.tobytes()


@pytest.fixture(scope="module")
def monitor(audio: tuple[Path, bytes]):
    """`run --source stdin` with a metrics listener; all audio written, stdin left open."""
    port = free_port()
    proc = subprocess.Popen(
        [
            BIN,
            "run",
            "--source",
            "stdin",
            "--rate",
            str(RATE),
            "--metrics",
            f"127.0.0.1:{port}",
            "--http-submit",
            "--stream",
            "line-4",
            "-q",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=False,
    )
    assert proc.stdin is not None
    proc.stdin.write(audio[1])
    proc.stdin.flush()
    yield port, proc
    proc.stdin.close()
    proc.wait(30)


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _up(port: int) -> bool:
    try:
        return _get(port, "/readyz")[0] == 200
    except OSError:
        return False


def _listening(port: int) -> bool:
    try:
        return _get(port, "/metrics")[0] == 200
    except OSError:
        return False


def _samples(port: int) -> dict[str, float]:
    text = _get(port, "/metrics")[1].decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("stream") in (None, "line-4"):
                out[s.name] = s.value
    return out


def test_metrics_equal_the_replay_summary(monitor, audio: tuple[Path, bytes]) -> None:
    port, _ = monitor
    replay = subprocess.run(
        [BIN, "replay", audio[0]], capture_output=True, text=True, timeout=120, check=True
    )
    summary = json.loads(replay.stdout.splitlines()[-1])
    wait_until(lambda: _up(port), 15, "the listener")
    wait_until(
        lambda: _samples(port).get("amulet_windows_scored_total") == summary["windows"],
        30,
        "all windows scored",
    )
    m = _samples(port)
    assert m["amulet_anomalous_windows_total"] == summary["anomalies"]
    assert m["amulet_alerts_total"] == summary["anomaly_events"] == 1
    assert m["amulet_window_score_count"] == summary["windows"]
    assert m["amulet_state"] == 0 and m["amulet_source_up"] == 1
    assert m["amulet_threshold"] == pytest.approx(summary["threshold"])
    assert m["amulet_processing_lag_seconds_count"] == summary["windows"]
    assert -60 < m["amulet_input_level_dbfs"] < 0
    assert m["amulet_model_info"] == 1 and m["amulet_build_info"] == 1
    assert _get(port, "/readyz")[0] == 200
    assert _get(port, "/healthz")[0] == 200
    assert _get(port, "/nothing")[0] == 404


def _multipart(field: str, name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: audio/wav\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _post(port: int, body: bytes, ctype: str) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/submit", data=body, headers={"Content-Type": ctype}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_submit_answers_like_replay_amulet_json(monitor, audio: tuple[Path, bytes]) -> None:
    port, _ = monitor
    wav = audio[0]
    replay = subprocess.run(
        [BIN, "replay", wav, "--format", "amulet-json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    status, answer = _post(port, *_multipart("data_file", "fault.wav", wav.read_bytes()))
    assert status == 200
    assert answer == json.loads(replay.stdout)
    assert answer["Analysis"][0]["Anomaly"] is True
    status, err = _post(port, *_multipart("other", "x.wav", wav.read_bytes()))
    assert status == 400 and err["error"] == "missing field data_file"
    status, err = _post(port, *_multipart("data_file", "x.txt", b"hello"))
    assert status == 400 and "not a wav file" in err["error"]
    status, err = _post(port, b"raw", "application/octet-stream")
    assert status == 415
    short = wav.parent / "short.wav"
    write_wav(short, generate(0.5, RATE, seed=1), RATE)
    status, err = _post(port, *_multipart("data_file", "short.wav", short.read_bytes()))
    assert status == 422 and err["verdict"] == "too_short" and err["Analysis"] == []
    assert "too short" in err["error"] and "0.50 s" in err["error"]


def test_submit_size_limit(tmp_path: Path, audio: tuple[Path, bytes]) -> None:
    port = free_port()
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        f'[metrics]\nlisten = "127.0.0.1:{port}"\nsubmit = true\nsubmit_limit_mb = 0.01\n'
    )
    proc = subprocess.Popen(
        [BIN, "run", "--source", "stdin", "--rate", str(RATE), "--config", cfg, "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _listening(port), 15, "the listener")
        assert _get(port, "/readyz")[0] == 503  # no audio has arrived yet
        status, err = _post(port, *_multipart("data_file", "big.wav", audio[0].read_bytes()))
        assert status == 413 and "exceeds" in err["error"]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


@pytest.mark.skipif(have("prometheus") is not None, reason=str(have("prometheus")))
def test_real_prometheus_scrapes_the_counter(monitor, tmp_path: Path) -> None:
    port, _ = monitor
    wait_until(lambda: _samples(port).get("amulet_alerts_total") == 1, 30, "the alert")
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: amulet\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port}']\n"
    )
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    query = urllib.parse.quote('amulet_alerts_total{stream="line-4"}')

    def value() -> float | None:
        try:
            status, body = _get(prom_port, f"/api/v1/query?query={query}")
        except OSError:
            return None
        result = json.loads(body)["data"]["result"] if status == 200 else []
        return float(result[0]["value"][1]) if result else None

    try:
        wait_until(lambda: value() == 1.0, 60, "Prometheus to return the alert counter")
    finally:
        prom.terminate()
        prom.wait(20)


def test_listener_errors_are_clear(audio: tuple[Path, bytes]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [BIN, "replay", audio[0], "--metrics", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 2
    assert f"metrics listener 127.0.0.1:{port}: Address already in use" in proc.stderr
    proc = subprocess.run(
        [BIN, "replay", audio[0], "--metrics", "localhost:http"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "port must be a number" in proc.stderr
