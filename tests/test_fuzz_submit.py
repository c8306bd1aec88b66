"""Fuzzing POST /submit on the real listener (serve() on 127.0.0.1, in-process, the real default
model): random multipart bodies (boundaries, part headers, wavs valid, mutated or random, cut and
spliced), random Content-Type, Content-Length, Transfer-Encoding and other headers. Every answer
is 2xx, 4xx or 503 (501 only for a Transfer-Encoding other than chunked), the listener still
answers /healthz afterwards and no upload file is left. Time budget: AMULET_FUZZ_SECONDS
(default 15 s)."""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import strategies as st

from amulet_stream.http.submit import SubmitLimits
from amulet_stream.scoring.model import Model

from .fuzzing import fuzz_seconds, run_budget
from .test_fuzz_wav import mutated_wav
from .test_submit_limits import MODEL, chunked, exchange, head, listening, wav_file

LIMIT = 96 * 1024
TOKEN = string.ascii_letters + string.digits + "-_.'()+,/:=? "
TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)


@dataclass(frozen=True)
class Request:
    """One fuzzed request: the bytes sent and whether it named an unknown transfer coding."""

    data: bytes
    odd_coding: bool

    def __repr__(self) -> str:
        return f"Request({self.data[:600]!r}... {len(self.data)} bytes)"


def _disposition(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            f'form-data; name="{name}"; filename="x.wav"',
            f"form-data; name={name}",
            f'FORM-DATA; NAME="{name}"',
            f"form-data; name*=utf-8''{name}",
            f'attachment; filename="{name}"',
            'form-data; name="data_file',
            "form-data; name=",
            "",
        ]
    )


@st.composite
def part(draw: st.DrawFn, boundary: str, good_wav: bytes) -> bytes:
    """One multipart part: headers (some malformed) and a body (a wav or not)."""
    name = draw(st.sampled_from(["data_file", "data_file", "other", "DATA_FILE", ""]))
    lines = [f"Content-Disposition: {draw(_disposition(name))}"]
    if draw(st.booleans()):
        lines.append(f"Content-Type: {draw(st.sampled_from(['audio/wav', 'text/plain', '']))}")
    lines += [
        f"{k}: {v}"
        for k, v in draw(
            st.lists(st.tuples(st.text(TOKEN, min_size=1, max_size=12), TEXT), max_size=2)
        )
    ]
    content = draw(
        st.one_of(
            st.just(good_wav),
            mutated_wav(max_frames=4000),
            st.binary(max_size=300),
            st.just(good_wav[: len(good_wav) // 2]),
            st.just(f"\r\n--{boundary}".encode()),
        )
    )
    head_text = "\r\n".join(lines).encode("latin-1")
    sep = draw(st.sampled_from([b"\r\n\r\n", b"\r\n\r\n", b"\n\n", b"\r\n"]))
    return head_text + sep + content


@st.composite
def multipart_body(draw: st.DrawFn, boundary: str, good_wav: bytes) -> bytes:
    """A multipart body, well formed or cut, spliced and padded."""
    parts = draw(st.lists(part(boundary, good_wav), max_size=4))
    delim = f"--{boundary}".encode()
    body = draw(st.sampled_from([b"", b"preamble\r\n", b"\r\n"]))
    for p in parts:
        body += delim + draw(st.sampled_from([b"", b"  \t", b"junk"])) + b"\r\n" + p + b"\r\n"
    body += draw(st.sampled_from([delim + b"--\r\n", delim + b"--", b"", delim + b"--epilogue"]))
    edit = draw(st.sampled_from(["none", "none", "cut", "insert", "repeat"]))
    at = draw(st.integers(0, max(0, len(body))))
    if edit == "cut":
        body = body[:at]
    elif edit == "insert":
        body = body[:at] + draw(st.binary(min_size=1, max_size=64)) + body[at:]
    elif edit == "repeat":
        body = body + body[: 100 * 1024]
    return body


@st.composite
def request(draw: st.DrawFn, good_wav: bytes) -> Request:
    """A whole request: request line, headers and body framed in one of many ways; one in two
    a well-formed upload of a wav that may be mutated (to reach the wav reader and scoring)."""
    if draw(st.booleans()):
        wav = draw(st.one_of(st.just(good_wav), mutated_wav(max_frames=16000)))
        upload = b'--x\r\nContent-Disposition: form-data; name="data_file"\r\n\r\n' + wav
        upload += b"\r\n--x--\r\n"
        media = draw(st.sampled_from(["multipart/form-data", "Multipart/Form-Data"]))
        headers = {"Content-Type": f"{media}; boundary=x"}
        if draw(st.booleans()):
            headers["Transfer-Encoding"] = "chunked"
            upload = chunked(upload, (draw(st.integers(1, 70000)),))
        else:
            headers["Content-Length"] = str(len(upload))
        return Request(head(headers) + upload, False)
    boundary = draw(st.one_of(st.just("amulet-b0undary"), st.text(TOKEN, min_size=0, max_size=75)))
    raw_wav = draw(st.booleans()) and draw(st.booleans())
    body = (
        draw(mutated_wav(max_frames=4000)) if raw_wav else draw(multipart_body(boundary, good_wav))
    )
    media = draw(
        st.sampled_from(
            [
                "multipart/form-data",
                "Multipart/Form-Data",
                "MULTIPART/FORM-DATA",
                "audio/wav",
                "Audio/X-WAV",
                "audio/wave",
                "text/plain",
            ]
        )
    )
    ctype = draw(
        st.one_of(
            st.just(f"{media}; boundary={boundary}"),
            st.just(f'{media}; charset=utf-8; BOUNDARY="{boundary}"'),
            st.just(media),
            TEXT,
        )
    )
    headers: dict[str, str] = {"Content-Type": ctype}
    framing = draw(
        st.sampled_from(
            [
                "length",
                "length",
                "chunked",
                "none",
                "negative",
                "junk",
                "short",
                "long",
                "both",
                "coding",
            ]
        )
    )
    if framing == "chunked":
        headers["Transfer-Encoding"] = draw(st.sampled_from(["chunked", "Chunked", " chunked "]))
        sizes = tuple(draw(st.lists(st.integers(1, 70000), min_size=1, max_size=3)))
        body = chunked(body, sizes)
        if draw(st.booleans()):
            body = body[: draw(st.integers(0, len(body)))]
    elif framing == "coding":
        headers["Transfer-Encoding"] = draw(st.sampled_from(["gzip", "chunked, gzip", "identity"]))
    elif framing == "both":
        headers["Transfer-Encoding"] = "chunked"
        headers["Content-Length"] = str(len(body))
    elif framing != "none":
        headers["Content-Length"] = {
            "length": str(len(body)),
            "negative": "-1",
            "junk": draw(
                st.sampled_from(["abc", "1e3", "0x10", " 12 ", "", "+4", "99999999999999"])
            ),
            "short": str(max(0, len(body) - draw(st.integers(1, 500)))),
            "long": str(len(body) + draw(st.integers(1, 500))),
        }[framing]
    if draw(st.booleans()) and draw(st.booleans()):
        headers["Expect"] = "100-continue"
    for k, v in draw(
        st.lists(
            st.tuples(st.text(TOKEN.replace(" ", ""), min_size=1, max_size=15), TEXT), max_size=3
        )
    ):
        headers.setdefault(k, v)
    method, path = "POST", "/submit"
    if draw(st.integers(0, 9)) == 0:  # now and then another method or path
        method = draw(st.sampled_from(["POST", "GET", "PUT", "HEAD"]))
        path = draw(st.sampled_from(["/submit?x=1", "/metrics", "/x", "/submit/", "//submit"]))
    odd = framing == "coding" and "Transfer-Encoding" in headers
    return Request(head(headers, path, method) + body, odd)


def _allowed(status: int, req: Request) -> bool:
    return (
        200 <= status < 300
        or 400 <= status < 500
        or status == 503
        or (status == 501 and req.odd_coding)
    )


def test_fuzz_submit(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    good_wav = wav_file(tmp_path / "good.wav", 1.5)
    statuses: dict[int, int] = {}
    limits = SubmitLimits(max_bytes=LIMIT, max_seconds=30.0)
    with listening(Model(MODEL), limits, upload_dir=spool, idle_seconds=3.0) as lis:

        def check(req: Request) -> None:
            status = exchange(lis.port, req.data, timeout=30)[0]
            statuses[status] = statuses.get(status, 0) + 1
            assert _allowed(status, req), f"status {status}"

        for req in REGRESSIONS:
            check(req)
        n = run_budget(fuzz_seconds(15.0), 25, request(good_wav), check)
        assert exchange(lis.port, head({}, "/healthz", "GET"), timeout=5)[0] == 200
    assert list(spool.iterdir()) == []
    record_property("fuzz_submit_inputs", n)
    print(f"fuzz POST /submit: {n} inputs, 0 failures; statuses {dict(sorted(statuses.items()))}")
    assert statuses.get(200, 0) > 0 and n > 50


REGRESSIONS: list[Request] = []
"""Inputs that once failed, kept as regression cases."""


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_fuzz_helpers_make_valid_uploads(tmp_path: Path, framing: str) -> None:
    """The strategies' well-formed case is accepted (so the fuzzer explores past the parser)."""
    good_wav = wav_file(tmp_path / "good.wav", 1.5)
    body = (
        b'--b\r\nContent-Disposition: form-data; name="data_file"\r\n\r\n'
        + good_wav
        + b"\r\n--b--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    if framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
        body = chunked(body, (1000,))
    else:
        headers["Content-Length"] = str(len(body))
    with listening(Model(MODEL), SubmitLimits(max_bytes=LIMIT)) as lis:
        assert exchange(lis.port, head(headers) + body)[0] == 200
