"""sd_notify: exact datagrams on a real socket the test owns (path and abstract), and the daemon.

The daemon test runs `amulet-stream run --config CFG` with a `[[stream]] kind = "file"` source
under a fake NOTIFY_SOCKET, as systemd would with Type=notify and WatchdogSec=2.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.service.notify import Notifier
from amulet_stream.synth.motor import generate


class Receiver:
    """A datagram socket like systemd's notify socket; collects (monotonic time, text)."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.got: list[tuple[float, str]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.got.append((time.monotonic(), data.decode()))

    def wait_for(
        self,
        pattern: str,
        timeout: float,
        after: float = 0.0,
        proc: subprocess.Popen[bytes] | None = None,
    ) -> float | None:
        """Monotonic time of the first datagram after `after` matching `pattern`, or None.

        Gives up early when `proc` has exited (after one last look at what arrived).
        """
        deadline = time.monotonic() + timeout
        while True:
            exited = proc is not None and proc.poll() is not None
            if exited:
                time.sleep(0.2)  # datagrams sent just before the exit
            for t, text in list(self.got):
                if t >= after and re.search(pattern, text, re.MULTILINE):
                    return t
            if exited or time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def messages(self) -> list[str]:
        """Every datagram received so far, oldest first."""
        return [text for _, text in self.got]

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory: AF_UNIX paths hold 107 bytes, pytest's tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        yield Path(d)


@pytest.fixture
def path_socket(short_dir: Path) -> Iterator[tuple[str, Receiver]]:
    path = str(short_dir / "notify")
    rx = Receiver(path)
    yield path, rx
    rx.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, Receiver]]:
    name = f"amulet-test-{uuid.uuid4().hex}"
    rx = Receiver(b"\0" + name.encode())
    yield "@" + name, rx
    rx.close()


def _all_messages(n: Notifier) -> None:
    n.ready("2 streams, models loaded")
    n.watchdog()
    n.status("scoring\nline two\r\nthree")
    n.reloading()
    n.stopping()


def _check_all(rx: Receiver, before_usec: int, after_usec: int) -> None:
    assert rx.wait_for("STOPPING", 2.0) is not None, rx.messages()
    got = rx.messages()
    assert got[:3] == [
        "READY=1\nSTATUS=2 streams, models loaded",
        "WATCHDOG=1",
        "STATUS=scoring line two three",
    ]
    m = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", got[3])
    assert m, got[3]
    assert before_usec <= int(m.group(1)) <= after_usec
    assert got[4:] == ["STOPPING=1"]


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_exact_datagrams_on_a_path_socket(path_socket: tuple[str, Receiver]) -> None:
    path, rx = path_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.watchdog_seconds is None
    before = _monotonic_usec()
    _all_messages(n)
    _check_all(rx, before, _monotonic_usec())


def test_exact_datagrams_on_an_abstract_socket(abstract_socket: tuple[str, Receiver]) -> None:
    name, rx = abstract_socket
    n = Notifier({"NOTIFY_SOCKET": name})
    assert n.enabled
    before = _monotonic_usec()
    _all_messages(n)
    _check_all(rx, before, _monotonic_usec())


def test_default_env_is_os_environ(
    path_socket: tuple[str, Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, rx = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier()
    assert n.enabled
    assert n.watchdog_seconds == 4.0
    n.watchdog()
    assert rx.wait_for("^WATCHDOG=1$", 2.0) is not None


def test_unset_socket_is_a_no_op(
    path_socket: tuple[str, Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, rx = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)  # must not be used: env={} is what counts
    n = Notifier({"WATCHDOG_USEC": "30000000"})
    assert not n.enabled
    assert n.watchdog_seconds is None
    _all_messages(n)
    assert not Notifier({"NOTIFY_SOCKET": ""}).enabled
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier().enabled
    time.sleep(0.2)
    assert rx.messages() == []


@pytest.mark.parametrize(
    ("usec", "pid", "seconds"),
    [
        ("30000000", None, 30.0),
        ("2000000", "self", 2.0),
        ("1500", None, 0.0015),
        ("30000000", "other", None),
        ("30000000", "notapid", None),
        ("0", None, None),
        ("-5", None, None),
        ("30s", None, None),
        ("", None, None),
    ],
)
def test_watchdog_usec_and_pid(usec: str, pid: str | None, seconds: float | None) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": usec}
    if pid == "self":
        env["WATCHDOG_PID"] = str(os.getpid())
    elif pid == "other":
        env["WATCHDOG_PID"] = str(os.getpid() + 1)
    elif pid is not None:
        env["WATCHDOG_PID"] = pid
    assert Notifier(env).watchdog_seconds == seconds


def test_vanished_socket_does_not_raise_and_warns_once(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_dir / "gone"
    rx = Receiver(str(path))
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    rx.close()
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="amulet_stream.service.notify"):
        _all_messages(n)
        n.watchdog()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()


def test_socket_without_reader_does_not_raise(short_dir: Path) -> None:
    """A bound socket whose owner closed it (ECONNREFUSED) is also survived."""
    path = short_dir / "closed"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    _all_messages(n)


# --- the daemon under a fake NOTIFY_SOCKET ---------------------------------------------------

READY_SECONDS, STOP_SECONDS, WATCHDOG_USEC = 15.0, 5.0, 2_000_000


def test_daemon_ready_watchdog_stopping(path_socket: tuple[str, Receiver], tmp_path: Path) -> None:
    path, rx = path_socket
    wav = tmp_path / "m1.wav"
    write_wav(wav, generate(20.0, 16000, seed=1), 16000)
    cfg = tmp_path / "amulet-stream.toml"
    cfg.write_text(f'[[stream]]\nid = "m1"\nkind = "file"\npath = "{wav}"\nrealtime = true\n')
    timeout = WATCHDOG_USEC / 1e6
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    env.pop("WATCHDOG_PID", None)
    script = Path(sys.prefix) / "bin" / "amulet-stream"
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [str(script), "run", "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            start = time.monotonic()
            ready = rx.wait_for("^READY=1$", READY_SECONDS, proc=proc)
            assert ready is not None, (
                f"no READY=1 within {READY_SECONDS} s (exit code {proc.poll()}); "
                f"datagrams {rx.messages()}; stderr: {log.read_text()[-2000:]}"
            )
            assert ready - start <= READY_SECONDS
            # the daemon pings every half of WATCHDOG_USEC (1 s) while windows are scored;
            # systemd kills it when one whole WATCHDOG_USEC passes without a ping
            pings = [ready]
            for _ in range(3):
                ping = rx.wait_for("^WATCHDOG=1$", timeout, after=pings[-1] + 1e-6, proc=proc)
                assert ping is not None, (
                    f"no WATCHDOG=1 within WATCHDOG_USEC ({timeout} s) of the previous "
                    f"READY=1/WATCHDOG=1: systemd would kill the daemon; {rx.messages()}"
                )
                pings.append(ping)
            gaps = [b - a for a, b in itertools.pairwise(pings[1:])]
            assert max(gaps) <= 0.75 * timeout, f"WATCHDOG=1 gaps {gaps} s, timeout {timeout} s"
            assert proc.poll() is None, log.read_text()[-2000:]
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=STOP_SECONDS + 5)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rx.wait_for("^STOPPING=1$", 1.0, after=pings[-1]) is not None, rx.messages()
    assert code == 0, log.read_text()[-2000:]
    assert took < STOP_SECONDS
