"""Security of the HTTP listener: TLS settings and basic auth credentials."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path


class ListenError(ValueError):
    """The metrics listener cannot be opened (bad address, port in use, TLS or auth settings)."""


@dataclass(frozen=True)
class BasicAuth:
    """HTTP basic auth credentials every request must carry."""

    user: str
    password: str = field(repr=False)

    def check(self, header: str | None) -> bool:
        """True if an Authorization header value carries these credentials (constant time)."""
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        expected = f"{self.user}:{self.password}".encode()
        return hmac.compare_digest(
            hashlib.sha256(given).digest(), hashlib.sha256(expected).digest()
        )


@dataclass(frozen=True)
class ListenerSecurity:
    """TLS and basic auth of the listener ([metrics] keys); all None: plain HTTP, no auth."""

    tls_cert: Path | None = None
    """PEM certificate chain; with it the listener speaks HTTPS only."""
    tls_key: Path | None = None
    """PEM private key; None: the key is in tls_cert's file."""
    basic_auth_user: str | None = None
    basic_auth_password_file: Path | None = None
    """The password: this file's text without surrounding white space; mode 0600 or stricter."""

    def tls_context(self) -> ssl.SSLContext | None:
        """The server TLS context (TLS 1.2 or newer), None without tls_cert; ListenError."""
        if self.tls_cert is None:
            if self.tls_key is not None:
                raise ListenError("metrics.tls_key is set without metrics.tls_cert")
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        for key, path in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
            if path is not None and not path.is_file():
                raise ListenError(f"metrics.{key} {path}: no such file")
        _check_pem(self.tls_cert, self.tls_key)
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except ssl.SSLError as err:
            raise ListenError(
                f"metrics.tls_cert {self.tls_cert}: cannot load the certificate and key "
                f"({err.reason or err}; do they belong together?)"
            ) from err
        except OSError as err:
            raise ListenError(f"metrics.tls_cert {self.tls_cert}: {err.strerror or err}") from err
        return ctx

    def basic_auth(self) -> BasicAuth | None:
        """The credentials, None without basic_auth_user; ListenError for a missing, empty or
        group/world-readable password file."""
        user, path = self.basic_auth_user, self.basic_auth_password_file
        if user is None and path is None:
            return None
        if user is None or path is None:
            raise ListenError(
                "metrics.basic_auth_user and metrics.basic_auth_password_file go together"
            )
        if not user or ":" in user:
            raise ListenError(f"metrics.basic_auth_user {user!r}: must be non-empty, without ':'")
        where = f"metrics.basic_auth_password_file {path}"
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:  # the same rule as mqtt.password_file
                raise ListenError(
                    f"{where}: readable by others than its owner (mode {mode:04o}): chmod 600 it"
                )
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError as err:
            raise ListenError(f"{where}: no such file") from err
        except OSError as err:
            raise ListenError(f"{where}: {err.strerror or err}") from err
        except UnicodeDecodeError as err:
            raise ListenError(f"{where}: not UTF-8 text") from err
        password = text.strip()
        if not password:
            raise ListenError(f"{where}: empty")
        return BasicAuth(user, password)


def _check_pem(cert: Path, key: Path | None) -> None:
    """Name what is wrong with the PEM files before OpenSSL says "PEM lib": a key where the
    certificate should be, no key at all, a key file others can read (ListenError)."""
    try:
        cert_text = cert.read_bytes()[: 1 << 20]
        key_text = key.read_bytes()[: 1 << 20] if key is not None else cert_text
    except OSError as err:
        raise ListenError(f"metrics TLS file: {err.filename}: {err.strerror or err}") from err
    if b"-----BEGIN CERTIFICATE-----" not in cert_text:
        what = "a private key" if b"PRIVATE KEY-----" in cert_text else "not a PEM file"
        raise ListenError(f"metrics.tls_cert {cert}: {what}, not a PEM certificate")
    if b"PRIVATE KEY-----" not in key_text:
        if key is None:
            raise ListenError(f"metrics.tls_cert {cert}: no private key in it: set metrics.tls_key")
        raise ListenError(f"metrics.tls_key {key}: not a PEM private key")
    holder, name = (key, "tls_key") if key is not None else (cert, "tls_cert")
    mode = holder.stat().st_mode & 0o777
    if mode & 0o077:
        raise ListenError(
            f"metrics.{name} {holder}: holds the private key and is readable by others than "
            f"its owner (mode {mode:04o}): chmod 600 it"
        )
