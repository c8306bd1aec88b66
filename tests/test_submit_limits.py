"""POST /submit within bounds whatever the request says: body framing (Content-Length, chunked),
media types in any case, malformed multipart, audio length, concurrency, slow clients, memory of
the daemon, and no upload file left behind even after SIGKILL. Real listener, real model.

Helpers here (listening, exchange, multipart, wav_file) are shared with test_fuzz_submit.py and
test_http_security.py."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.http.server import App, BasicAuth, serve
from amulet_stream.http.submit import SubmitLimits
from amulet_stream.outputs.metrics import Metrics
from amulet_stream.scoring.model import Model
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

from .servers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "default.onnx"
BIN = Path(sys.executable).parent / "amulet-stream"
RATE = 16000
BOUNDARY = "amulet-b0undary"


@dataclass
class Listener:
    """An in-process listener on 127.0.0.1."""

    port: int
    app: App


@contextmanager
def listening(
    model: Model,
    limits: SubmitLimits | None = None,
    *,
    tls: ssl.SSLContext | None = None,
    auth: BasicAuth | None = None,
    upload_dir: Path | None = None,
    idle_seconds: float = 5.0,
    max_connections: int = 32,
) -> Iterator[Listener]:
    """The real listener (serve) with /submit on, on a free port, shut down afterwards."""
    registry = CollectorRegistry()
    app = App(
        registry,
        Metrics(registry),
        model,
        submit=True,
        live=False,
        limits=limits or SubmitLimits(max_bytes=1 << 20),
        auth=auth,
        upload_dir=upload_dir,
    )
    server, port = serve(
        app, "127.0.0.1", 0, tls=tls, idle_seconds=idle_seconds, max_connections=max_connections
    )
    try:
        yield Listener(port, app)
    finally:
        server.shutdown()
        server.server_close()


def wav_file(path: Path, seconds: float, rate: int = RATE, seed: int = 5) -> bytes:
    """A generated motor recording (with a fault from 1 s to 2 s) as 16-bit wav bytes."""
    fault = Fault("imbalance", 1.0, 2.0, 0.8)
    write_wav(path, generate(seconds, rate, seed=seed, fault=fault), rate)
    return path.read_bytes()


def multipart(
    fields: list[tuple[str, bytes]], boundary: str = BOUNDARY, preamble: bytes = b""
) -> bytes:
    """A multipart/form-data body of (field name, content) parts."""
    out = preamble
    for name, data in fields:
        out += (
            (
                f"--{boundary}\r\nContent-Disposition: form-data; "
                f'name="{name}"; filename="x.wav"\r\nContent-Type: audio/wav\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode()


def head(headers: dict[str, str], path: str = "/submit", method: str = "POST") -> bytes:
    """Request line and headers, as sent."""
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post_head(body: bytes, ctype: str | None = None, **extra: str) -> bytes:
    """Headers of a POST /submit of `body` with its Content-Length (multipart by default)."""
    multi = f"multipart/form-data; boundary={BOUNDARY}"
    headers = {"Content-Type": multi if ctype is None else ctype}
    headers["Content-Length"] = str(len(body))
    return head({**headers, **extra})


def chunked(body: bytes, sizes: tuple[int, ...] = (1, 7, 4096, 65536)) -> bytes:
    """`body` in chunked transfer coding, chunk sizes cycling through `sizes`."""
    out, i, k = b"", 0, 0
    while i < len(body):
        n = min(sizes[k % len(sizes)], len(body) - i)
        out += f"{n:x}\r\n".encode() + body[i : i + n] + b"\r\n"
        i, k = i + n, k + 1
    return out + b"0\r\n\r\n"


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read an HTTP answer to the end of the connection: (status, headers lower-cased, body)."""
    data = b""
    while chunk := sock.recv(1 << 16):
        data += chunk
    while data.startswith(b"HTTP/1.1 100"):  # interim answers
        data = data.split(b"\r\n\r\n", 1)[1]
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return status, headers, body


def exchange(
    port: int,
    request: bytes,
    timeout: float = 60.0,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Send raw request bytes, end the sending side, read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout) as raw:
        sock = tls.wrap_socket(raw, server_hostname="127.0.0.1") if tls else raw
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # refused early: the answer is still there to read
        if tls is None:
            with contextlib.suppress(OSError):  # the server may have closed already
                sock.shutdown(socket.SHUT_WR)
        return read_answer(sock)


def answer(port: int, request: bytes) -> tuple[int, dict[str, object]]:
    """Status and JSON body of a raw request."""
    status, _, body = exchange(port, request)
    return status, json.loads(body)


@pytest.fixture(scope="module")
def model() -> Model:
    return Model(MODEL)


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return wav_file(tmp_path_factory.mktemp("submit") / "fault.wav", 4.0)


@pytest.fixture(scope="module")
def listener(model: Model) -> Iterator[Listener]:
    with listening(model, SubmitLimits(max_bytes=256 * 1024)) as lis:
        yield lis


@pytest.fixture(scope="module")
def expected(listener: Listener, wav: bytes) -> dict[str, object]:
    """The answer to a plain multipart upload of `wav`: an anomaly found."""
    body = multipart([("data_file", wav)])
    status, ans = answer(listener.port, post_head(body) + body)
    assert status == 200 and ans["Analysis"][0]["Anomaly"] is True  # type: ignore[index]
    return ans


def test_same_answer_whatever_the_framing_and_case(
    listener: Listener, wav: bytes, expected: dict[str, object]
) -> None:
    body = multipart([("data_file", wav)])
    te = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Transfer-Encoding": "chunked",
    }
    framed = multipart([("note", b"hi"), ("data_file", wav)], preamble=b"ignore\r\n") + b"end"
    requests = {
        "chunked": head(te) + chunked(body),
        "case": post_head(body, f"MULTIPART/Form-Data; BOUNDARY={BOUNDARY}") + body,
        "quoted": post_head(body, f'multipart/form-data; charset=utf-8; boundary="{BOUNDARY}"')
        + body,
        "raw audio/wav": post_head(wav, "Audio/WAV") + wav,
        "raw audio/x-wav": post_head(wav, "audio/x-wav") + wav,
        "raw audio/wave": post_head(wav, "AUDIO/WAVE; codecs=1") + wav,
        "preamble, epilogue": post_head(framed) + framed,
    }
    for name, request in requests.items():
        status, ans = answer(listener.port, request)
        assert (status, ans) == (200, expected), name


def test_expect_100_continue(listener: Listener, wav: bytes, expected: dict[str, object]) -> None:
    body = multipart([("data_file", wav)])
    with socket.create_connection(("127.0.0.1", listener.port), 30) as sock:
        sock.sendall(post_head(body, Expect="100-continue"))
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, data = read_answer(sock)
    assert status == 200 and json.loads(data) == expected
    # refused at once, no 100 Continue, when the declared size is over the limit
    with socket.create_connection(("127.0.0.1", listener.port), 30) as sock:
        sock.sendall(
            head(
                {
                    "Content-Type": "audio/wav",
                    "Content-Length": str(10**9),
                    "Expect": "100-continue",
                }
            )
        )
        status, _, data = read_answer(sock)
    assert status == 413 and "exceeds 262144" in json.loads(data)["error"]


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        ({"Content-Length": "-1"}, b"x" * 1000, 400, "Content-Length '-1' is not a number"),
        ({"Content-Length": "abc"}, b"x", 400, "not a number of bytes"),
        ({"Content-Length": "1e3"}, b"x", 400, "not a number of bytes"),
        ({"Content-Length": "+5"}, b"x" * 5, 400, "not a number of bytes"),
        ({}, b"x" * 1000, 411, "send Content-Length"),
        ({"Content-Length": str(256 * 1024 + 1)}, b"x" * 1000, 413, "exceeds 262144"),
        ({"Transfer-Encoding": "gzip"}, b"x", 501, "not supported"),
        ({"Transfer-Encoding": "chunked", "Content-Length": "5"}, b"0\r\n\r\n", 400, "both"),
        ({"Transfer-Encoding": "chunked"}, chunked(b"x" * 300_000), 413, "exceeds 262144"),
        ({"Transfer-Encoding": "chunked"}, b"zz\r\nxx\r\n0\r\n\r\n", 400, "chunk size"),
        ({"Transfer-Encoding": "chunked"}, b"2\r\nxxx\r\n0\r\n\r\n", 400, "no CRLF after a chunk"),
        ({"Transfer-Encoding": "chunked"}, b"5\r\nxx", 400, "body ends after"),
        ({"Transfer-Encoding": "chunked"}, b"1" * 2000, 400, "line too long"),
        ({"Content-Length": "100"}, b"x" * 10, 400, "body ends after 10 bytes"),
    ],
)
def test_framing_is_checked(
    listener: Listener, headers: dict[str, str], body: bytes, status: int, message: str
) -> None:
    ctype = {"Content-Type": "audio/wav"}
    got, ans = answer(listener.port, head({**ctype, **headers}) + body)
    assert got == status and message in str(ans["error"])


def test_content_length_cuts_the_body(listener: Listener, wav: bytes) -> None:
    body = multipart([("data_file", wav)])
    request = (
        head(
            {
                "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                "Content-Length": str(len(body) - 100),
            }
        )
        + body
    )
    status, ans = answer(listener.port, request)
    assert status == 400 and "ends before its closing boundary" in str(ans["error"])


@pytest.mark.parametrize(
    ("ctype", "body", "status", "message"),
    [
        ("application/octet-stream", b"RIFF", 415, "multipart/form-data"),
        ("text/plain", b"RIFF", 415, "multipart/form-data"),
        ("", b"RIFF", 415, "multipart/form-data"),
        ("multipart/form-data", b"--x--\r\n", 400, "needs a boundary"),
        (f"multipart/form-data; boundary={'b' * 71}", b"--x--\r\n", 400, "needs a boundary"),
        (None, multipart([("other", b"RIFF")]), 400, "missing field data_file"),
        (None, multipart([("data_file", b"a"), ("data_file", b"b")]), 400, "more than once"),
        (None, multipart([("data_file", b"hello")]), 400, "data_file: not a wav file"),
        (None, multipart([("data_file", b"")]), 400, "data_file: empty file"),
        (None, multipart([("data_file", b"RIFF")])[:-8], 400, "before its closing boundary"),
        (None, b"no boundary at all", 400, "before its closing boundary"),
        (None, multipart([("x", b"")] * 65), 400, "more than 64 multipart parts"),
        (None, f"--{BOUNDARY}\r\nX: {'y' * 20000}\r\n\r\n".encode(), 400, "part header longer"),
        (None, f"--{BOUNDARY}{' ' * 2000}\r\n".encode(), 400, "boundary line longer"),
    ],
)
def test_malformed_uploads_are_refused(
    listener: Listener, ctype: str | None, body: bytes, status: int, message: str
) -> None:
    got, ans = answer(listener.port, post_head(body, ctype) + body)
    assert got == status and message in str(ans["error"])


def _wav_header(rate: int, frames: int) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + 2 * frames)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", 2 * frames)
    )


def test_audio_length_is_bounded(model: Model, tmp_path: Path) -> None:
    """The resampler's cost grows with the audio's length: /submit refuses audio longer than
    max_seconds (default 1800 s) before scoring; a hostile rate is refused by the wav reader."""
    assert SubmitLimits().max_seconds == 1800.0
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(1801 * 1000) * 2000).astype("<i2").tobytes()
    long_1k = _wav_header(1000, 1801 * 1000) + samples  # 3.6 MB, 1801 s at 1 kHz
    with listening(model, SubmitLimits(max_bytes=8 << 20)) as lis:
        status, ans = answer(lis.port, post_head(long_1k, "audio/wav") + long_1k)
        assert status == 413 and ans["error"] == (
            "data_file: 1801 s of audio exceeds the 1800 s /submit takes"
        )
        for rate, what in ((100_000_007, "sample rate 100000007 Hz"), (1, "sample rate 1 Hz")):
            bomb = _wav_header(rate, 32000) + samples[:64000]
            status, ans = answer(lis.port, post_head(bomb, "audio/wav") + bomb)
            assert status == 400 and what in str(ans["error"])
    with listening(model, SubmitLimits(max_bytes=1 << 20, max_seconds=60)) as lis:
        for seconds, want in ((61, 413), (59, 200)):
            data = wav_file(tmp_path / "1k.wav", seconds, rate=1000)
            status, ans = answer(lis.port, post_head(data, "audio/wav") + data)
            assert status == want, ans


def _slow_upload(port: int, body: bytes, sent: int, admitted: bool = False) -> socket.socket:
    """A /submit whose headers and first `sent` body bytes are sent, the rest held back; with
    `admitted`, the body only once the server answered `Expect: 100-continue` (it then holds an
    upload slot)."""
    sock = socket.create_connection(("127.0.0.1", port), 30)
    if admitted:
        sock.sendall(post_head(body, Expect="100-continue"))
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body[:sent])
    else:
        sock.sendall(post_head(body) + body[:sent])
    return sock


def test_concurrent_uploads_are_limited_and_health_keeps_answering(
    model: Model, wav: bytes, expected: dict[str, object]
) -> None:
    body = multipart([("data_file", wav)])
    with listening(model, SubmitLimits(max_bytes=1 << 20, concurrent=2)) as lis:
        slow = [_slow_upload(lis.port, body, 1000, admitted=True) for _ in range(2)]
        status, headers, _ = exchange(lis.port, post_head(body) + body)
        assert status == 503 and headers["retry-after"] == "5"
        for path in ("/metrics", "/healthz", "/readyz"):
            t0 = time.monotonic()
            status, _, _ = exchange(lis.port, head({}, path, "GET"), timeout=5)
            assert status in (200, 503) and time.monotonic() - t0 < 2, path
        assert exchange(lis.port, head({}, "/healthz", "GET"))[0] == 200
        for sock in slow:
            with sock:
                sock.sendall(body[1000:])
                status, _, data = read_answer(sock)
                assert status == 200 and json.loads(data) == expected
        assert answer(lis.port, post_head(body) + body) == (200, expected)


def test_slow_clients_time_out_and_connections_are_bounded(model: Model, wav: bytes) -> None:
    body = multipart([("data_file", wav)])
    limits = SubmitLimits(max_bytes=1 << 20, upload_seconds=1.5)
    with listening(model, limits, idle_seconds=1.0, max_connections=3) as lis:
        t0 = time.monotonic()
        with _slow_upload(lis.port, body, 1000) as sock:  # stalls
            status, _, data = read_answer(sock)
        assert status == 408 and 0.9 < time.monotonic() - t0 < 4
        assert "did not arrive in time" in json.loads(data)["error"]
        t0 = time.monotonic()
        with _slow_upload(lis.port, body, 1000) as sock:  # trickles a byte every 0.3 s
            for i in range(1000, 1100):
                if select.select([sock], [], [], 0.3)[0]:
                    break  # the answer is there
                sock.sendall(body[i : i + 1])
            status, _, _ = read_answer(sock)
        assert status == 408 and 1.4 < time.monotonic() - t0 < 5
        wait_until(lambda: exchange(lis.port, head({}, "/healthz", "GET"))[0] == 200, 5, "health")
        time.sleep(0.2)  # the connections above are released
        silent = [socket.create_connection(("127.0.0.1", lis.port), 5) for _ in range(3)]
        time.sleep(0.2)
        status, headers, _ = exchange(lis.port, head({}, "/healthz", "GET"), timeout=5)
        assert status == 503 and headers["retry-after"] == "5"  # all 3 connections taken
        for sock in silent:  # closed by the server after 1 s of silence
            with sock:
                assert sock.recv(100) == b""
        wait_until(lambda: exchange(lis.port, head({}, "/healthz", "GET"))[0] == 200, 5, "health")


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _noise_wav(path: Path, rate: int, frames: int) -> None:
    with path.open("wb") as fh:
        fh.write(_wav_header(rate, frames))
        rng = np.random.default_rng(1)
        for i in range(0, frames, 1 << 20):
            n = min(1 << 20, frames - i)
            fh.write((rng.standard_normal(n) * 1600).astype("<i2").tobytes())


@contextmanager
def daemon(env: dict[str, str] | None = None) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`amulet-stream run --source stdin --http-submit` (default limits), stdin left open."""
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
            "-q",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )

    def up() -> bool:
        try:
            return exchange(port, head({}, "/metrics", "GET"), timeout=2)[0] == 200
        except OSError:
            return False

    try:
        wait_until(up, 20, "the listener")
        yield port, proc
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)


def _send_stream(port: int, request_head: bytes, total: int) -> tuple[int, dict[str, object]]:
    """Send headers and `total` bytes of zeros in 1 MiB pieces, then read the answer."""
    with socket.create_connection(("127.0.0.1", port), 60) as sock:
        sock.sendall(request_head)
        piece = bytes(1 << 20)
        try:
            for _ in range(total >> 20):
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.shutdown(socket.SHUT_WR)
        status, _, body = read_answer(sock)
    return status, json.loads(body)


def test_daemon_memory_stays_flat_whatever_the_upload(tmp_path: Path) -> None:
    """Before issue 9: a 50 MB upload cost the daemon ~660 MB at its peak and a 300 MB body with
    Content-Length -1 was read whole; now the upload is streamed to an unlinked file."""
    big = tmp_path / "50mb.wav"
    _noise_wav(big, RATE, (50 * 1024 * 1024 - 1024) // 2)  # 1638 s at 16 kHz
    at_bound = tmp_path / "1k.wav"
    _noise_wav(at_bound, 1000, 1799 * 1000)  # just under the 1800 s bound, at 1 kHz
    with daemon() as (port, proc):
        base = _hwm_kib(proc.pid)
        for wav in (big, at_bound):
            data = wav.read_bytes()
            status, ans = answer(port, post_head(data, "audio/wav") + data)
            assert status == 200 and "Analysis" in ans
        huge = head({"Content-Type": "audio/wav", "Content-Length": "-1"})
        assert _send_stream(port, huge, 120 << 20)[0] == 400
        chunk = head({"Content-Type": "audio/wav", "Transfer-Encoding": "chunked"})
        chunk += f"{120 << 20:x}\r\n".encode()
        status, ans = _send_stream(port, chunk, 120 << 20)
        assert status == 413 and f"exceeds {50 << 20}" in str(ans["error"])
        grown = (_hwm_kib(proc.pid) - base) / 1024
    print(f"daemon peak RSS grew {grown:.1f} MB over uploads of 50 MB, 1799 s at 1 kHz, 2x120 MB")
    assert grown < 64


def _fds_into(pid: int, folder: Path) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    return out


def test_upload_files_vanish_even_after_sigkill(tmp_path: Path, wav: bytes) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    body = multipart([("data_file", wav)])
    with daemon({"TMPDIR": str(spool)}) as (port, proc):
        before = set(spool.iterdir())  # onnxruntime 1.32 leaves a 51-byte .ses file there
        assert answer(port, post_head(body) + body)[0] == 200
        assert set(spool.iterdir()) == before and _fds_into(proc.pid, spool) == []
        with _slow_upload(port, body, len(body) // 2):
            wait_until(lambda: _fds_into(proc.pid, spool) != [], 10, "the upload file")
            (target,) = _fds_into(proc.pid, spool)
            assert target.endswith("(deleted)")  # written inside the spool, unlinked from birth
            assert set(spool.iterdir()) == before
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    assert set(spool.iterdir()) == before


def test_concurrent_slow_uploads_use_no_thread_beyond_the_bound(model: Model, wav: bytes) -> None:
    """60 slow uploads held 64 threads before; now at most max_connections threads serve."""
    body = multipart([("data_file", wav)])
    before = threading.active_count()
    with listening(model, SubmitLimits(max_bytes=1 << 20), max_connections=8) as lis:
        socks = []
        for _ in range(60):
            with contextlib.suppress(OSError):
                socks.append(_slow_upload(lis.port, body, 100))
        time.sleep(0.3)
        threads = threading.active_count() - before
        for sock in socks:
            sock.close()
    assert threads <= 8 + 1  # the connection threads and the accept loop
