"""A /submit request's body read within bounds (Content-Length or chunked) and the wav in it
copied out (multipart/form-data field data_file, or the body itself as audio/wav)."""

from __future__ import annotations

import email.errors
import email.message
import email.parser
import email.policy
import email.utils
import logging
import re
from collections.abc import Callable
from typing import Any, BinaryIO

_LOGGER = logging.getLogger(__name__)

CHUNK = 64 * 1024
"""Bytes read from the socket at a time."""
MAX_PARTS = 64
MAX_PART_HEADER = 16 * 1024
"""Bytes of the headers of one multipart part."""
MAX_LINE = 1024
"""Bytes of a chunk-size line, a trailer line or a boundary line's padding."""
RAW_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"})
"""Content types of a body that is the wav file itself."""
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
"""RFC 2046 boundary: 1 to 70 characters, not ending in a space."""


class SubmitError(ValueError):
    """A /submit request refused: `status` is the HTTP status line, the message says why."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def _bad(message: str) -> SubmitError:
    return SubmitError("400 Bad Request", message)


def body_length(environ: dict[str, Any], limit: int) -> int | None:
    """Bytes the body declares, None for a chunked body; SubmitError (400, 411, 413, 501) for
    framing that is missing, malformed or over `limit`."""
    te = environ.get("HTTP_TRANSFER_ENCODING")
    raw = environ.get("CONTENT_LENGTH")
    if te is not None:
        if te.strip().lower() != "chunked":
            raise SubmitError("501 Not Implemented", f"Transfer-Encoding {te!r} not supported")
        if raw:
            raise _bad("both Content-Length and Transfer-Encoding given")
        return None
    if not raw:
        raise SubmitError("411 Length Required", "send Content-Length (or a chunked body)")
    text = str(raw).strip()
    if not text.isdecimal() or not text.isascii():
        raise _bad(f"Content-Length {raw!r} is not a number of bytes")
    length = int(text)
    if length > limit:
        raise SubmitError("413 Payload Too Large", f"body of {length} bytes exceeds {limit}")
    return length


class Body:
    """A request body as it arrives, Content-Length or chunked, never read beyond `limit` bytes
    (chunk framing counted); SubmitError on bad framing or a body over the limit."""

    def __init__(self, stream: BinaryIO, length: int | None, limit: int) -> None:
        """`length`: declared bytes, or None for a chunked body."""
        self._in = stream
        self._limit = limit
        self._left = length if length is not None else 0
        self._chunked = length is None
        self._started = False
        self._done = False
        self.received = 0
        """Bytes read from the stream so far, framing included."""

    def _count(self, n: int) -> None:
        self.received += n
        if self.received > self._limit:
            raise SubmitError(
                "413 Payload Too Large",
                f"body of more than {self._limit} bytes exceeds {self._limit}",
            )

    def _raw(self, n: int) -> bytes:
        data = self._in.read(min(n, self._limit + 1 - self.received))
        if not data:
            raise _bad(f"body ends after {self.received} bytes, before its declared end")
        self._count(len(data))
        return data

    def _line(self) -> bytes:
        line = self._in.readline(MAX_LINE + 2)
        self._count(len(line))
        if not line.endswith(b"\r\n"):
            raise _bad("malformed chunked body (a line too long or cut short)")
        return line[:-2]

    def read(self, n: int = CHUNK) -> bytes:
        """Up to n bytes of the body; b"" at its end."""
        if self._left == 0 and self._chunked and not self._done:
            self._next_chunk()
        if self._left == 0:
            return b""
        data = self._raw(min(n, self._left))
        self._left -= len(data)
        return data

    def _next_chunk(self) -> None:
        if self._started and self._line() != b"":
            raise _bad("malformed chunked body (no CRLF after a chunk)")
        self._started = True
        size = self._line().split(b";", 1)[0].strip()
        if not 1 <= len(size) <= 15 or not re.fullmatch(rb"[0-9A-Fa-f]+", size):
            raise _bad(f"malformed chunked body (chunk size {size[:20]!r})")
        self._left = int(size, 16)
        if self._left == 0:
            for _ in range(64):  # trailer fields, then the empty line
                if self._line() == b"":
                    self._done = True
                    return
            raise _bad("malformed chunked body (too many trailer lines)")

    def drain(self) -> None:
        """Read (and drop) the rest of the body."""
        while self.read():
            pass


def content_type(value: str) -> tuple[str, str | None]:
    """'Multipart/Form-Data; boundary=x' -> ('multipart/form-data', 'x'): the media type in
    lower case (header names and media types are case-insensitive) and the boundary, as sent."""
    msg = email.message.Message()
    msg["Content-Type"] = value
    boundary = msg.get_param("boundary")
    text = email.utils.collapse_rfc2231_value(boundary) if boundary is not None else None
    return msg.get_content_type(), text if isinstance(text, str) else None


class _Multipart:
    """Streaming multipart/form-data parser: copies the field `data_file` into a file."""

    def __init__(self, body: Body, boundary: str) -> None:
        self.body = body
        self.delim = b"\r\n--" + boundary.encode("ascii")
        self.buf = bytearray(b"\r\n")  # so the first delimiter looks like every other one

    def _fill(self, what: str) -> None:
        chunk = self.body.read()
        if not chunk:
            raise _bad(f"multipart body ends {what}")
        self.buf += chunk

    def _until(self, marker: bytes, limit: int, what: str) -> bytes:
        """Bytes up to `marker` (consumed), at most `limit` of them."""
        while (i := self.buf.find(marker, 0, limit + len(marker))) < 0:
            if len(self.buf) >= limit + len(marker):
                raise _bad(f"multipart {what} longer than {limit} bytes")
            self._fill(f"inside the {what}")
        out = bytes(self.buf[:i])
        del self.buf[: i + len(marker)]
        return out

    def _copy(self, sink: Callable[[bytes], Any]) -> None:
        """Part content up to the next delimiter (consumed) into `sink`."""
        keep = len(self.delim) - 1
        while (i := self.buf.find(self.delim)) < 0:
            if len(self.buf) > keep:
                sink(bytes(self.buf[:-keep]))
                del self.buf[:-keep]
            self._fill("before its closing boundary")
        sink(bytes(self.buf[:i]))
        del self.buf[: i + len(self.delim)]

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            self._fill("before its closing boundary")

    def save(self, out: BinaryIO) -> bool:
        """Copy data_file into `out`; False if the body has no such field."""
        self._copy(lambda _: None)  # the preamble
        found = False
        for _ in range(MAX_PARTS):
            self._need(2)
            if self.buf[:2] == b"--":  # the closing delimiter
                self.body.drain()  # the epilogue
                return found
            self._until(b"\r\n", MAX_LINE, "boundary line")  # transport padding
            self._need(2)
            if self.buf[:2] == b"\r\n":
                del self.buf[:2]
                head = b""
            else:
                head = self._until(b"\r\n\r\n", MAX_PART_HEADER, "part header")
            is_data = _field_name(head) == "data_file"
            if is_data and found:
                raise _bad("field data_file sent more than once")
            found |= is_data
            self._copy(out.write if is_data else lambda _: None)
        raise _bad(f"more than {MAX_PARTS} multipart parts")


def _field_name(head: bytes) -> str | None:
    """The form field name in a part's headers (Content-Disposition name=...), if any."""
    try:
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
            head + b"\r\n\r\n"
        )
        name = msg.get_param("name", header="content-disposition")
    except (email.errors.MessageError, ValueError, IndexError) as err:
        raise _bad(f"malformed part header: {err}") from err
    text = email.utils.collapse_rfc2231_value(name) if name is not None else None
    return text if isinstance(text, str) else None


def save_upload(media: str, boundary: str | None, body: Body, out: BinaryIO) -> None:
    """Copy the wav of a request into `out`: the field data_file of multipart/form-data, or the
    body itself for audio/wav (`media`, `boundary`: see content_type); SubmitError when it
    cannot."""
    if media in RAW_TYPES:
        while chunk := body.read():
            out.write(chunk)
        return
    if media != "multipart/form-data":
        raise SubmitError(
            "415 Unsupported Media Type",
            "send multipart/form-data with a field data_file (or the wav as audio/wav)",
        )
    if boundary is None or not _BOUNDARY.fullmatch(boundary):
        raise _bad("multipart/form-data needs a boundary of 1 to 70 characters")
    if not _Multipart(body, boundary).save(out):
        raise _bad("missing field data_file")
