"""Security of `amulet-stream run`: a marker password (from a 0600 password_file, or from
password_env) appears in none of argv, the debug-level logs, stdout, /metrics, the MQTT
messages, the files written; the metrics listener binds 127.0.0.1 by default; the files and
folders the daemon writes are private whatever the umask; a password file readable by others
and a config writable by others are refused. Real subprocesses and a real Mosquitto."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.http.server import parse_address
from amulet_stream.outputs.clip_store import ClipSettings, ClipStore
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

from .servers import Mosquitto, Received, Subscriber, binary, free_port, have, wait_until
from .test_run_faults import BIN, DaemonRun, scrape

RATE = 16000
DEBUG_MAIN = """
import logging, sys
from amulet_stream.cli import main as cli
_basic = logging.basicConfig
def _debug(**kw):
    _basic(**{**kw, "level": logging.DEBUG})
logging.basicConfig = _debug
sys.exit(cli.main(sys.argv[1:]))
"""
"""`amulet-stream` with its log level at DEBUG: the CLI has no flag for it (only -q)."""
PW_ENV = "AMULET_TEST_MQTT_PASSWORD"


@dataclass
class Secured:
    """What one daemon run exposed, collected while it ran and after it stopped."""

    marker: str
    run: DaemonRun
    code: int
    cmdline: bytes
    metrics: str
    listening: list[tuple[str, str, int]]
    """(file, local address hex, port) of the LISTEN sockets on the metrics port."""
    messages: list[Received]
    folder: Path


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 s at 16 kHz, imbalance from 1 s on."""
    path = tmp_path_factory.mktemp("sec-audio") / "faulty.wav"
    write_wav(path, generate(12.0, RATE, seed=5, fault=Fault("imbalance", 1.0, 12.0, 0.8)), RATE)
    return path


def listening_on(port: int) -> list[tuple[str, str, int]]:
    """Sockets in LISTEN state on `port` from /proc/net/tcp and tcp6: (file, address, port)."""
    found = []
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net", name)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if fields[3] == "0A" and int(hexport, 16) == port:
                found.append((name, addr, port))
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(scope="module", params=["password_file", "password_env"])
def secured(
    request: pytest.FixtureRequest, faulty: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secured]:
    """The daemon at debug level, umask 0, with MQTT (password auth, Home Assistant, scores),
    metrics on ':PORT' (no address), clips and a state directory in folders that do not exist
    yet; it runs until its first clip is written."""
    missing = have("mosquitto") or have("mosquitto_passwd")
    if missing:
        pytest.skip(missing)
    how = request.param
    marker = f"pw-marker-{uuid.uuid4().hex}"
    d = tmp_path_factory.mktemp(f"sec-{how}")
    passwd = d / "passwd"
    tool = binary("mosquitto_passwd") or "mosquitto_passwd"
    for i, (user, pw) in enumerate([("monitor", marker), ("watcher", "watch")]):
        args = ["-b", "-c"] if i == 0 else ["-b"]
        subprocess.run([tool, *args, str(passwd), user, pw], check=True, capture_output=True)
    broker = Mosquitto(d, extra=f"allow_anonymous false\npassword_file {passwd}")
    broker.start()
    port = free_port()
    env = dict(os.environ)
    if how == "password_file":
        pw_file = d / "pw"
        pw_file.write_text(marker + "\n")
        pw_file.chmod(0o600)
        secret = 'password_file = "pw"\n'
    else:
        env[PW_ENV] = marker
        secret = f'password_env = "{PW_ENV}"\n'
    cfg = d / "sec.toml"
    cfg.write_text(
        f'[source]\nkind = "file"\npath = "{faulty}"\nloop = true\nstream = "m1"\n\n'
        f'[metrics]\nlisten = ":{port}"\n\n'
        f'[daemon]\nstate_dir = "{d / "made" / "state"}"\n\n'
        f'[clips]\nfolder = "{d / "made" / "clips"}"\nbefore_seconds = 1\nafter_seconds = 1\n\n'
        f'[mqtt]\nport = {broker.port}\nusername = "monitor"\n{secret}'
        'homeassistant = true\nscores = true\nclient_id = "sec"\n'
    )
    sub = Subscriber(broker.port, pattern="#", auth=("watcher", "watch"))
    run = DaemonRun(cfg, argv=[sys.executable, "-c", DEBUG_MAIN], env=env, umask=0)
    try:
        run.wait_for("anomaly", "m1", timeout=60)
        clips = d / "made" / "clips"
        wait_until(lambda: any(clips.glob("*.json")), 20, f"a clip; {run.stderr[-2000:]}")
        cmdline = Path(f"/proc/{run.proc.pid}/cmdline").read_bytes()
        text = scrape(port)
        listening = listening_on(port)
    finally:
        code = run.stop()
        sub.close()
        broker.stop()
    yield Secured(marker, run, code, cmdline, text, listening, list(sub.messages), d)


def test_the_password_appears_nowhere(secured: Secured) -> None:
    s = secured
    assert s.code == 0, s.run.stderr[-2000:]
    # the password was used: the broker let the monitor in, and the subscriber saw its alert
    alerts = [m for m in s.messages if m.topic == "amulet/m1/alert"]
    assert alerts and "anomaly" in [json.loads(m.payload)["event"] for m in alerts]
    assert "http: " in s.run.stderr  # the access log: the debug level was on
    marker = s.marker.encode()
    assert marker not in s.cmdline
    assert s.marker not in s.run.stderr
    assert s.marker not in "".join(s.run.stdout)
    assert s.marker not in s.metrics
    assert not [m for m in s.messages if s.marker in m.topic or s.marker in m.payload]
    written = [p for p in s.folder.joinpath("made").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wav" for p in written)
    assert not [p for p in written if marker in p.read_bytes()]


def test_the_metrics_listener_binds_loopback_by_default(secured: Secured) -> None:
    """listen = ':PORT' (no address) binds 127.0.0.1 only: one IPv4 socket, nothing on
    0.0.0.0 or IPv6."""
    assert secured.listening, "nothing listens on the metrics port"
    assert [(f, a) for f, a, _ in secured.listening] == [("tcp", "0100007F")]


def test_clip_files_and_the_folders_made_for_them_are_private(secured: Secured) -> None:
    """Under umask 0: clips (wav and sidecar) 0600; the folders created for them 0700."""
    made = secured.folder / "made"
    clips = sorted((made / "clips").iterdir())
    assert {p.suffix for p in clips} == {".wav", ".json"}, clips
    assert {p.name: mode(p) for p in clips} == {p.name: 0o600 for p in clips}
    assert mode(made) == 0o700
    assert mode(made / "clips") == 0o700


def test_state_directory_files_and_folders_are_private(secured: Secured) -> None:
    """Under umask 0: everything the daemon wrote in its state directory (outbox, last
    states, Home Assistant's announced entities) is 0600, every folder it made 0700."""
    made = secured.folder / "made"
    state = made / "state"
    entries = [state, *state.rglob("*")]
    assert any(p.is_file() for p in entries), entries
    wrong = {
        str(p.relative_to(made)): oct(mode(p))
        for p in [made, *entries]
        if mode(p) != (0o700 if p.is_dir() else 0o600)
    }
    assert not wrong


def _refused_at_start(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN, "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("bits", [0o644, 0o640, 0o604], ids=oct)
def test_a_password_file_readable_by_others_is_refused(
    faulty: Path, tmp_path: Path, bits: int
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(bits)
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'[source]\nkind = "file"\npath = "{faulty}"\n\n'
        f'[mqtt]\nport = {free_port()}\nusername = "monitor"\npassword_file = "pw"\n'
    )
    proc = _refused_at_start(cfg)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr
    assert "readable by others" in errors[0] and str(pw) in errors[0], errors[0]
    assert "Traceback" not in proc.stderr and "s3cret" not in proc.stderr
    assert not proc.stdout


@pytest.mark.parametrize("bits", [0o666, 0o620, 0o602], ids=oct)
def test_a_config_writable_by_others_is_refused(faulty: Path, tmp_path: Path, bits: int) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[source]\nkind = "file"\npath = "{faulty}"\n')
    cfg.chmod(bits)
    proc = _refused_at_start(cfg)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "writable by group or others" in line and "run.toml" in line, line


def test_no_flag_takes_a_password() -> None:
    """Passwords come from a file or the environment only: argv cannot carry one."""
    for command in ("run", "replay"):
        proc = subprocess.run(
            [BIN, command, "--help"], capture_output=True, text=True, timeout=30, check=True
        )
        assert "password" not in proc.stdout.lower(), proc.stdout


def test_an_address_left_out_means_loopback() -> None:
    """listen = ':PORT' and --metrics PORT: 127.0.0.1."""
    assert parse_address(":8491") == ("127.0.0.1", 8491)
    assert parse_address("8491") == ("127.0.0.1", 8491)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277], ids=oct)
def test_clip_store_writes_private_files_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """ClipStore itself: 0600 files, 0700 for each folder it makes; a stale temporary file
    left by a crash (0644) is made private; a symlink planted at a temporary name is not
    followed (the clip fails, counted; the link's target is untouched)."""
    folder = tmp_path / "a" / "b"
    old = os.umask(umask)
    try:
        store = ClipStore(ClipSettings(folder))
        stale = folder / ".m1-20260101T000000Z-0000000a.wav.tmp"
        stale.write_bytes(b"old")
        stale.chmod(0o644)
        for stem in ("m1-20260101T000000Z-0000000a", "m1-20260101T000001Z-0000000b"):
            clip = store.begin(stem, RATE)
            assert clip is not None
            clip.writer.write(np.zeros(RATE, np.float32))
            assert store.commit(clip, {"event_id": stem})
        target = tmp_path / "target"
        target.write_bytes(b"keep")
        target.chmod(0o644)
        (folder / ".m1-20260101T000002Z-0000000c.wav.tmp").symlink_to(target)
        assert store.begin("m1-20260101T000002Z-0000000c", RATE) is None
    finally:
        os.umask(old)
    assert (store.written, store.failed) == (2, 1)
    assert target.read_bytes() == b"keep" and mode(target) == 0o644
    files = sorted(p for p in folder.iterdir() if not p.is_symlink())
    assert [p.name for p in files] == [
        "m1-20260101T000000Z-0000000a.json",
        "m1-20260101T000000Z-0000000a.wav",
        "m1-20260101T000001Z-0000000b.json",
        "m1-20260101T000001Z-0000000b.wav",
    ]
    assert {p.name: oct(mode(p)) for p in files} == {p.name: "0o600" for p in files}
    assert (oct(mode(tmp_path / "a")), oct(mode(folder))) == ("0o700", "0o700")
