"""MQTT over TLS against a real Mosquitto TLS listener on 127.0.0.1, with a CA and server
certificates made by `openssl` for the test: the right CA delivers; a CA that did not sign the
broker's certificate, or a certificate for another host name, fails verification with one line
and delivers nothing (verification is on by default and cannot be switched off)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

from .servers import Subscriber, binary, free_port, have, wait_until

BIN = Path(sys.executable).parent / "amulet-stream"
RATE = 16000
VERIFY = "TLS: the broker's certificate failed verification"
"""The start of the line the monitor logs when the broker's certificate is not trusted."""

pytestmark = [
    pytest.mark.skipif(have("mosquitto") is not None, reason=str(have("mosquitto"))),
    pytest.mark.skipif(have("openssl") is not None, reason=str(have("openssl"))),
]


def openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> None:
    """`name`.key and a self-signed CA certificate `name`.crt."""
    openssl(
        folder,
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
        *("-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}"),
    )


def make_server_cert(folder: Path, name: str, ca: str, san: str) -> None:
    """`name`.key and `name`.crt signed by CA `ca`, for the subjectAltName `san`."""
    cn = san.split(":", 1)[1]
    openssl(
        folder,
        *("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key"),
        *("-out", f"{name}.csr", "-subj", f"/CN={cn}"),
    )
    (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl(
        folder,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key"),
        *("-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext"),
    )


@dataclass
class TlsBroker:
    """Mosquitto with two TLS listeners on 127.0.0.1: `good` presents a certificate for
    127.0.0.1, `wrong_name` one for wrong.example; both signed by ca.crt."""

    folder: Path
    good: int
    wrong_name: int
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    d = tmp_path_factory.mktemp("tls")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_server_cert(d, "server", "ca", "IP:127.0.0.1")
    make_server_cert(d, "wrong", "ca", "DNS:wrong.example")
    good, wrong = free_port(), free_port()
    conf = d / "mosquitto.conf"
    conf.write_text(
        "per_listener_settings false\nallow_anonymous true\npersistence false\nuser root\n"
        f"listener {good} 127.0.0.1\ncafile {d / 'ca.crt'}\n"
        f"certfile {d / 'server.crt'}\nkeyfile {d / 'server.key'}\n"
        f"listener {wrong} 127.0.0.1\ncafile {d / 'ca.crt'}\n"
        f"certfile {d / 'wrong.crt'}\nkeyfile {d / 'wrong.key'}\n"
    )
    log = d / "mosquitto.log"
    proc = subprocess.Popen(
        [binary("mosquitto") or "mosquitto", "-c", str(conf)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {log.read_text()}")
        return _connects(good) and _connects(wrong)

    try:
        wait_until(listening, 10, "mosquitto's TLS listeners")
        yield TlsBroker(d, good, wrong, proc)
    finally:
        proc.terminate()
        proc.wait(10)


def _connects(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def fault_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 s at 16 kHz, imbalance from 2 s on: at least one alert."""
    path = tmp_path_factory.mktemp("tls-audio") / "fault.wav"
    write_wav(path, generate(12.0, RATE, seed=41, fault=Fault("imbalance", 2.0, 12.0, 0.8)), RATE)
    return path


def replay(cfg: Path, wav: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN, "replay", str(wav), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def config(folder: Path, name: str, port: int, extra: str = "") -> Path:
    """MQTT over TLS to 127.0.0.1:port, topics under `name`/; a state directory, so that an
    exit with the broker away does not wait for it (undelivered alerts wait on disk)."""
    cfg = folder / f"{name}.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{folder / (name + "-state")}"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\ntls = true\nclient_id = "{name}"\n'
        f'prefix = "{name}"\n{extra}'
    )
    return cfg


def changes(stdout: str) -> list[dict[str, Any]]:
    """The state changes on stdout: each one is an alert message."""
    states = ("normal", "anomaly", "input_problem", "down")
    return [r for r in map(json.loads, stdout.splitlines()) if r["event"] in states]


def test_the_right_ca_delivers_every_alert(tls_broker: TlsBroker, fault_wav: Path) -> None:
    d = tls_broker.folder
    sub = Subscriber(tls_broker.good, pattern="right/#", tls={"ca_certs": str(d / "ca.crt")})
    try:
        cfg = config(d, "right", tls_broker.good, f'ca_file = "{d / "ca.crt"}"\n')
        proc = replay(cfg, fault_wav)
        assert proc.returncode == 0, proc.stderr
        sent = changes(proc.stdout)
        assert "anomaly" in [r["event"] for r in sent]
        wait_until(
            lambda: len(sub.on("right/default/alert")) >= len(sent), 10, "the alerts over TLS"
        )
        got = [json.loads(m.payload)["event_id"] for m in sub.on("right/default/alert")]
        assert sorted(got) == sorted(r["event_id"] for r in sent)
        assert VERIFY not in proc.stderr
        assert "TLS" not in proc.stderr, proc.stderr
    finally:
        sub.close()


@pytest.mark.parametrize(
    ("case", "ca", "listener", "why"),
    [
        ("other-ca", "other-ca.crt", "good", "self-signed certificate in certificate chain"),
        ("wrong-name", "ca.crt", "wrong_name", "mismatch"),
        # no ca_file: the system's CAs do not know the test CA
        ("system-cas", None, "good", "self-signed certificate in certificate chain"),
    ],
)
def test_an_untrusted_certificate_fails_with_one_line_and_delivers_nothing(
    tls_broker: TlsBroker, fault_wav: Path, case: str, ca: str | None, listener: str, why: str
) -> None:
    d = tls_broker.folder
    sub = Subscriber(tls_broker.good, pattern="#", tls={"ca_certs": str(d / "ca.crt")})
    try:
        extra = f'ca_file = "{d / ca}"\n' if ca else ""
        proc = replay(config(d, case, getattr(tls_broker, listener), extra), fault_wav)
        assert proc.returncode == 0, proc.stderr  # monitoring goes on without the broker
        assert "anomaly" in [r["event"] for r in changes(proc.stdout)]
        said = [line for line in proc.stderr.splitlines() if VERIFY in line]
        assert len(said) == 1, proc.stderr
        assert why in said[0], said[0]
        assert "Traceback" not in proc.stderr
        assert "not delivered at exit" in proc.stderr
        # the subscriber, on the same broker, saw nothing from the monitor
        time.sleep(0.5)
        assert not [m for m in sub.messages if m.topic.startswith(f"{case}/")], sub.messages
    finally:
        sub.close()


def test_verification_cannot_be_switched_off(tls_broker: TlsBroker, fault_wav: Path) -> None:
    """There is no setting that skips certificate checks (paho's tls_insecure_set is never
    called): a key for it is refused as unknown, with one line and exit 2."""
    d = tls_broker.folder
    for key in ("tls_insecure", "tls_verify", "insecure"):
        value = "false" if key == "tls_verify" else "true"
        cfg = config(d, "insecure", tls_broker.wrong_name, f"{key} = {value}\n")
        proc = replay(cfg, fault_wav)
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert f"unknown key mqtt.{key}" in line, line
