"""TLS and basic auth on the real listener: a self-signed certificate made by openssl, python
ssl/urllib clients; refused credentials get 401 with WWW-Authenticate; the password shows in no
log line, answer or /metrics; settings mistakes are one clear ListenError."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from amulet_stream.http.server import ListenError, ListenerSecurity, parse_address
from amulet_stream.http.submit import SubmitLimits
from amulet_stream.scoring.model import Model

from .test_submit_limits import (
    MODEL,
    Listener,
    exchange,
    head,
    listening,
    multipart,
    post_head,
    wav_file,
)

USER = "prometheus"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost and its key, made by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found, because the certificate is made with it")
    folder = tmp_path_factory.mktemp("pki")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def password(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A marker password in a 0600 file."""
    marker = f"pw-{uuid.uuid4().hex}"
    path = tmp_path_factory.mktemp("secret") / "http.password"
    path.write_text(marker + "\n")
    path.chmod(0o600)
    return marker, path


@pytest.fixture(scope="module")
def secure(pki: tuple[Path, Path], password: tuple[str, Path]) -> Iterator[Listener]:
    """The listener with TLS and basic auth."""
    sec = ListenerSecurity(pki[0], pki[1], USER, password[1])
    with listening(
        Model(MODEL), SubmitLimits(max_bytes=1 << 20), tls=sec.tls_context(), auth=sec.basic_auth()
    ) as lis:
        yield lis


def _client(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def _auth(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def _get(
    port: int,
    path: str,
    ctx: ssl.SSLContext,
    auth: str | None = None,
    data: bytes | None = None,
    ctype: str = "",
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": auth} if auth else {}
    if ctype:
        headers["Content-Type"] = ctype
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_https_with_the_right_credentials(
    secure: Listener, pki: tuple[Path, Path], password: tuple[str, Path], tmp_path: Path
) -> None:
    ctx, auth = _client(pki[0]), _auth(USER, password[0])
    status, _, body = _get(secure.port, "/metrics", ctx, auth)
    assert status == 200 and b"amulet_" in body
    assert _get(secure.port, "/healthz", ctx, auth)[0] == 200
    wav = wav_file(tmp_path / "f.wav", 4.0)
    data = multipart([("data_file", wav)])
    status, _, body = _get(
        secure.port, "/submit", ctx, auth, data, "multipart/form-data; boundary=amulet-b0undary"
    )
    assert status == 200 and json.loads(body)["Analysis"][0]["Anomaly"] is True
    # the certificate is checked: a client that does not trust it cannot talk to the listener
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(secure.port, "/metrics", ssl.create_default_context(), auth)


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "wrong",
        _auth(USER, "guess"),
        _auth("admin", "x"),
        "Basic !!!not-base64",
        "Bearer abc",
        _auth(USER, ""),
    ],
)
def test_refused_credentials_get_401(
    secure: Listener, pki: tuple[Path, Path], password: tuple[str, Path], auth: str | None
) -> None:
    ctx = _client(pki[0])
    for path in ("/metrics", "/healthz", "/submit", "/nothing"):
        status, headers, body = _get(secure.port, path, ctx, auth)
        assert status == 401, path
        assert headers["WWW-Authenticate"] == 'Basic realm="amulet-stream", charset="UTF-8"'
        assert password[0].encode() not in body
    # the right password for another user is refused too
    assert _get(secure.port, "/metrics", ctx, _auth("admin", password[0]))[0] == 401


def test_a_refused_upload_is_not_read(secure: Listener, pki: tuple[Path, Path]) -> None:
    """Without credentials a /submit body is never spooled: 401 at once, even for 10 MB."""
    body = bytes(10 << 20)
    t0 = time.monotonic()
    status, headers, _ = exchange(
        secure.port, post_head(body, "audio/wav") + body, tls=_client(pki[0])
    )
    assert status == 401 and "www-authenticate" in headers and time.monotonic() - t0 < 10


def test_password_never_appears(
    pki: tuple[Path, Path], password: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="amulet_stream")
    ctx, marker = _client(pki[0]), password[0]
    sec = ListenerSecurity(pki[0], pki[1], USER, password[1])
    seen = []
    with listening(Model(MODEL), tls=sec.tls_context(), auth=sec.basic_auth()) as lis:
        for auth in (_auth(USER, marker), _auth("admin", marker), _auth(USER, marker + "x"), None):
            for path in ("/metrics", "/healthz", "/submit"):
                seen.append(_get(lis.port, path, ctx, auth, b"x", "audio/wav")[2])
                seen.append(_get(lis.port, path, ctx, auth)[2])
    assert any(b"amulet_" in body for body in seen)  # /metrics was read
    assert all(marker.encode() not in body for body in seen)
    assert "request(s) refused for credentials" in caplog.text  # refusals are logged ...
    assert marker not in caplog.text  # ... without the password
    assert marker not in repr(sec) and marker not in repr(sec.basic_auth())


def test_tls_only_and_a_silent_client_blocks_nobody(
    secure: Listener, pki: tuple[Path, Path], password: tuple[str, Path]
) -> None:
    # plain HTTP on the TLS port: no HTTP answer
    try:
        status = exchange(secure.port, head({}, "/metrics", "GET"), timeout=10)[0]
    except ConnectionResetError:
        status = 0
    assert status == 0
    # a client that connects and never starts its TLS handshake holds only its own thread
    with socket.create_connection(("127.0.0.1", secure.port), 5):
        t0 = time.monotonic()
        got = _get(secure.port, "/healthz", _client(pki[0]), _auth(USER, password[0]))[0]
        assert got == 200 and time.monotonic() - t0 < 2


def test_security_settings_mistakes_are_one_line(
    pki: tuple[Path, Path], password: tuple[str, Path], tmp_path: Path
) -> None:
    cert, key = pki
    assert ListenerSecurity().tls_context() is None and ListenerSecurity().basic_auth() is None
    loose = tmp_path / "loose"
    loose.write_text("secret\n")
    loose.chmod(0o644)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    cases = [
        (
            ListenerSecurity(basic_auth_user=USER, basic_auth_password_file=loose),
            f"metrics.basic_auth_password_file {loose}: readable by others than its owner "
            "(mode 0644): chmod 600 it",
        ),
        (
            ListenerSecurity(basic_auth_user=USER, basic_auth_password_file=empty),
            f"metrics.basic_auth_password_file {empty}: empty",
        ),
        (
            ListenerSecurity(basic_auth_user=USER, basic_auth_password_file=tmp_path / "none"),
            f"metrics.basic_auth_password_file {tmp_path / 'none'}: no such file",
        ),
        (
            ListenerSecurity(basic_auth_user=USER),
            "metrics.basic_auth_user and metrics.basic_auth_password_file go together",
        ),
        (
            ListenerSecurity(basic_auth_user="a:b", basic_auth_password_file=password[1]),
            "metrics.basic_auth_user 'a:b': must be non-empty, without ':'",
        ),
    ]
    for sec, message in cases:
        with pytest.raises(ListenError) as err:
            sec.basic_auth()
        assert str(err.value) == message
    open_key = tmp_path / "open.key"
    open_key.write_bytes(key.read_bytes())
    open_key.chmod(0o644)
    tls_cases = [
        (ListenerSecurity(tls_key=key), "metrics.tls_key is set without metrics.tls_cert"),
        (
            ListenerSecurity(tls_cert=tmp_path / "no.pem"),
            f"metrics.tls_cert {tmp_path}/no.pem: no such file",
        ),
        (
            ListenerSecurity(tls_cert=cert),
            f"metrics.tls_cert {cert}: no private key in it: set metrics.tls_key",
        ),
        (
            ListenerSecurity(tls_cert=loose, tls_key=key),
            f"metrics.tls_cert {loose}: not a PEM file, not a PEM certificate",
        ),
        (
            ListenerSecurity(tls_cert=key),
            f"metrics.tls_cert {key}: a private key, not a PEM certificate",
        ),
        (
            ListenerSecurity(tls_cert=cert, tls_key=cert),
            f"metrics.tls_key {cert}: not a PEM private key",
        ),
        (
            ListenerSecurity(tls_cert=cert, tls_key=open_key),
            f"metrics.tls_key {open_key}: holds the private key and is readable by others than "
            "its owner (mode 0644): chmod 600 it",
        ),
    ]
    for sec, message in tls_cases:
        with pytest.raises(ListenError) as err:
            sec.tls_context()
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_default_listener_address_is_loopback() -> None:
    assert parse_address("8491") == ("127.0.0.1", 8491)
    assert parse_address(":8491") == ("127.0.0.1", 8491)
    assert parse_address("[::1]:8491") == ("::1", 8491)


def test_the_daemon_serves_https_with_basic_auth_from_its_config(
    pki: tuple[Path, Path], password: tuple[str, Path], tmp_path: Path
) -> None:
    """[metrics] tls_cert, tls_key, basic_auth_user, basic_auth_password_file in a real `run`."""
    import sys

    from .servers import free_port, wait_until

    port = free_port()
    cfg = tmp_path / "https.toml"
    cfg.write_text(
        f'[metrics]\nlisten = "127.0.0.1:{port}"\ntls_cert = "{pki[0]}"\ntls_key = "{pki[1]}"\n'
        f'basic_auth_user = "{USER}"\nbasic_auth_password_file = "{password[1]}"\n'
    )
    cfg.chmod(0o600)
    exe = Path(sys.executable).parent / "amulet-stream"
    proc = subprocess.Popen(
        [exe, "run", "--source", "stdin", "--rate", "16000", "--config", cfg, "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        ctx = _client(pki[0])

        def answers() -> bool:
            try:
                return _get(port, "/metrics", ctx)[0] == 401
            except OSError:
                return False

        wait_until(answers, 20, "the HTTPS listener")
        status, _, body = _get(port, "/metrics", ctx, _auth(USER, password[0]))
        assert status == 200 and b"amulet_build_info" in body
        assert _get(port, "/metrics", ctx, _auth(USER, "wrong"))[0] == 401
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
    # a mistake in these keys stops the start with one line, exit 2
    cfg.write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\ntls_cert = "{tmp_path}/none.pem"\n')
    cfg.chmod(0o600)
    bad = subprocess.run(
        [exe, "run", "--source", "stdin", "--rate", "16000", "--config", cfg, "-q"],
        input=b"",
        capture_output=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.decode().strip().splitlines()[-1].endswith("none.pem: no such file")
