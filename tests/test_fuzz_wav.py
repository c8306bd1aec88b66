"""Fuzzing the wav reader in-process: mutated headers and bodies of 8/16/24/32-bit PCM and 32/64-bit
float wavs (extra and odd-sized chunks, extensible fmt, truncation, inserted and deleted bytes).

Every input either reads completely or raises WavError; nothing else escapes (no warning either),
the header never claims more samples than the file holds, and the reader's peak allocation
(tracemalloc, which sees numpy's buffers) stays within alloc_bound: 1 MiB + 16 bytes per byte of
the file. Time budget: AMULET_FUZZ_SECONDS (default 10 s).
"""

from __future__ import annotations

import struct
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import strategies as st

from amulet_stream.audio.wav import MAX_CHANNELS, RATES, WavError, iter_blocks, read_info

from .fuzzing import fuzz_seconds, run_budget

ENCODINGS = [(1, 8), (1, 16), (1, 24), (1, 32), (3, 32), (3, 64)]
"""(format tag, bits per sample) the reader supports."""
INTERESTING_U32 = [0, 1, 2, 15, 16, 17, 18, 40, 999, 1000, 1024, 768000, 768001, 0x7FFFFFFF,
                   0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]  # fmt: skip
INTERESTING_U16 = [0, 1, 2, 3, 4, 7, 8, 16, 24, 32, 64, 255, 256, 257, 0x7FFF, 0xFFFE, 0xFFFF]


GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")
"""The sub-format GUID of WAVE_FORMAT_EXTENSIBLE after its first two bytes (the format tag)."""


def alloc_bound(file_size: int) -> int:
    """Bytes the reader may allocate at its peak for a file of `file_size` bytes: 1 MiB plus
    16 per byte of the file (a decoded block is float32 and its temporaries)."""
    return (1 << 20) + 16 * file_size


def _chunk(cid: bytes, body: bytes, size: int | None = None) -> bytes:
    """A RIFF chunk: id, size (default: the body's length), body and a pad byte if odd."""
    n = len(body) if size is None else size
    return cid + struct.pack("<I", n) + body + (b"\0" if len(body) % 2 else b"")


def encode(x: npt.NDArray[np.float64], tag: int, bits: int) -> bytes:
    """Samples in [-1, 1] (any shape, interleaved in C order) as wav data bytes."""
    flat = np.clip(x.reshape(-1), -1.0, 1.0)
    if tag == 3:
        return flat.astype("<f4" if bits == 32 else "<f8").tobytes()
    if bits == 8:
        return (np.round(flat * 127) + 128).astype(np.uint8).tobytes()
    ints = np.round(flat * (2 ** (bits - 1) - 1)).astype("<i4")
    if bits == 24:
        return ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    return ints.astype("<i2" if bits == 16 else "<i4").tobytes()


@st.composite
def wav_bytes(
    draw: st.DrawFn, max_frames: int = 3000, signal: npt.NDArray[np.float64] | None = None
) -> bytes:
    """A well-formed wav of a random encoding, rate, channel count and length, with extra
    chunks; its samples random bytes or, when given, (a part of) `signal` (mono, [-1, 1])."""
    tag, bits = draw(st.sampled_from(ENCODINGS))
    channels = draw(st.sampled_from([1, 1, 1, 2, 2, 3, 4, 6, 8]))
    rate = draw(st.sampled_from([8000, 16000, 22050, 44100, 48000, 96000, 1000, 768000, 11025]))
    frames = draw(st.one_of(st.integers(0, 3000), st.integers(max_frames // 2, max_frames)))
    block = channels * bits // 8
    if signal is not None and draw(st.integers(0, 3)) > 0:
        mono = signal[:frames]
        data = encode(np.repeat(mono[:, None], channels, axis=1), tag, bits)
    else:
        seed = draw(st.integers(0, 2**32 - 1))
        data = np.random.default_rng(seed).integers(0, 256, frames * block, np.uint8).tobytes()
    extensible = draw(st.booleans()) and draw(st.booleans())
    if extensible:
        sub = struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + GUID_TAIL
        fmt = struct.pack("<HHIIHH", 0xFFFE, channels, rate, rate * block, block, bits) + sub
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
        fmt += draw(st.sampled_from([b"", b"\0\0"]))  # 16- or 18-byte fmt
    odd = st.binary(min_size=0, max_size=9)
    extra = st.tuples(st.sampled_from([b"LIST", b"fact", b"JUNK", b"bext", b"\0\0\0\0"]), odd)
    before = [_chunk(c, b) for c, b in draw(st.lists(extra, max_size=2))]
    between = [_chunk(c, b) for c, b in draw(st.lists(extra, max_size=2))]
    after = [_chunk(c, b) for c, b in draw(st.lists(extra, max_size=1))]
    body = b"WAVE" + b"".join(before) + _chunk(b"fmt ", fmt) + b"".join(between)
    body += _chunk(b"data", data) + b"".join(after)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _mutate(raw: bytes, op: tuple[Any, ...]) -> bytes:
    """Apply one mutation: ('u32'|'u16', offset, value), ('flip', offset, byte),
    ('cut', length), ('insert', offset, bytes), ('delete', offset, n)."""
    kind = op[0]
    if kind in ("u32", "u16"):
        fmt, width = ("<I", 4) if kind == "u32" else ("<H", 2)
        at = op[1] % max(1, len(raw))
        return raw[:at] + struct.pack(fmt, op[2])[: max(0, len(raw) - at)] + raw[at + width :]
    if kind == "flip" and raw:
        at = op[1] % len(raw)
        return raw[:at] + bytes([raw[at] ^ op[2]]) + raw[at + 1 :]
    if kind == "cut":
        return raw[: op[1]]
    if kind == "insert":
        at = op[1] % (len(raw) + 1)
        return raw[:at] + op[2] + raw[at:]
    if kind == "delete":
        at = op[1] % (len(raw) + 1)
        return raw[:at] + raw[at + op[2] :]
    return raw


HEADER = st.one_of(st.integers(0, 80), st.integers(0, 1 << 16))
"""Offsets of mutations: mostly in the first 80 bytes, where the header lives."""
MUTATION = st.one_of(
    st.tuples(st.just("u32"), HEADER, st.one_of(st.sampled_from(INTERESTING_U32),
                                                st.integers(0, 2**32 - 1))),
    st.tuples(st.just("u16"), HEADER, st.one_of(st.sampled_from(INTERESTING_U16),
                                                st.integers(0, 2**16 - 1))),
    st.tuples(st.just("flip"), HEADER, st.integers(1, 255)),
    st.tuples(st.just("cut"), st.one_of(st.integers(0, 64), st.integers(0, 1 << 16))),
    st.tuples(st.just("insert"), HEADER, st.binary(min_size=1, max_size=12)),
    st.tuples(st.just("delete"), HEADER, st.integers(1, 12)),
)  # fmt: skip


@st.composite
def mutated_wav(
    draw: st.DrawFn, max_frames: int = 3000, signal: npt.NDArray[np.float64] | None = None
) -> bytes:
    """A well-formed wav (wav_bytes) with 0..4 mutations applied."""
    raw = draw(wav_bytes(max_frames, signal))
    for op in draw(st.one_of(st.just([]), st.lists(MUTATION, max_size=4))):
        raw = _mutate(raw, op)
    return raw


def check_reader(path: Path) -> str:
    """Read `path` completely; return 'ok' or 'refused' (WavError). Assert the reader's
    guarantees: consistent sizes, float32 blocks of the announced shape, no warning (it would
    reach the user's terminal), bounded allocation."""
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            outcome = _read_all(path, size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= alloc_bound(size), f"peak allocation {peak} B for a {size} B file"
    return outcome


def _read_all(path: Path, size: int) -> str:
    """read_info and every block of `path` (`size` bytes), checked."""
    try:
        info = read_info(path)
    except WavError as err:
        assert str(path) in str(err), err  # the message names the file
        return "refused"
    frame_bytes = info.channels * info.bits // 8
    assert RATES[0] <= info.rate <= RATES[1] and 1 <= info.channels <= MAX_CHANNELS
    assert info.frames >= 1 and info.data_offset + info.frames * frame_bytes <= size
    total = 0
    for block in iter_blocks(info, block_frames=4096):
        assert block.dtype == np.float32 and block.ndim == 2
        assert block.shape[1] == info.channels
        if not info.is_float:
            assert float(np.abs(block).max()) <= 1.0
        total += block.shape[0]
    assert total == info.frames
    return "ok"


# Found by this fuzzer or by the issue's own fuzzing (issue 9), kept as regression cases.
def _good() -> bytes:
    data = np.arange(-50, 50, dtype="<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    body = b"WAVE" + _chunk(b"fmt ", fmt) + _chunk(b"data", data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


GOOD = _good()
REGRESSIONS = {
    "fmt size 0xFFFFFFFE": GOOD[:16] + struct.pack("<I", 0xFFFFFFFE) + GOOD[20:],
    "fmt size 0x7FFFFFFF": GOOD[:16] + struct.pack("<I", 0x7FFFFFFF) + GOOD[20:],
    "fmt size 15": GOOD[:16] + struct.pack("<I", 15) + GOOD[20:],
    "fmt size past the end": GOOD[:16] + struct.pack("<I", 1000) + GOOD[20:],
    "rate 100 000 007 Hz": GOOD[:24] + struct.pack("<I", 100_000_007) + GOOD[28:],
    "rate 1 Hz": GOOD[:24] + struct.pack("<I", 1) + GOOD[28:],
    "rate 0 Hz": GOOD[:24] + struct.pack("<I", 0) + GOOD[28:],
    "65535 channels": GOOD[:22] + struct.pack("<H", 0xFFFF) + GOOD[24:],
    "0 bits": GOOD[:34] + struct.pack("<H", 0) + GOOD[36:],
    "data size 0xFFFFFFFE": GOOD[:40] + struct.pack("<I", 0xFFFFFFFE) + GOOD[44:],
    "data size 0xFFFFFFFF (streamed)": GOOD[:40] + struct.pack("<I", 0xFFFFFFFF) + GOOD[44:],
    "data size 0 (streamed)": GOOD[:40] + struct.pack("<I", 0) + GOOD[44:],
    "data size 1": GOOD[:40] + struct.pack("<I", 1) + GOOD[44:],
    "junk chunk claiming 4 GiB": GOOD[:12] + _chunk(b"JUNK", b"", 0xFFFFFFFF) + GOOD[12:],
    "data before fmt": b"RIFF\0\0\0\0WAVE" + _chunk(b"data", b"\0" * 8) + GOOD[12:36],
    "header only": GOOD[:44],
    # 64-bit float samples beyond float32's range: a RuntimeWarning on stderr (fuzzer, fixed)
    "float64 beyond float32": b"RIFF4\0\0\0WAVE"
    + _chunk(b"fmt ", struct.pack("<HHIIHH", 3, 1, 8000, 64000, 8, 64))
    + _chunk(b"data", np.array([1e300, -1e300], "<f8").tobytes()),
    "RF64 without ds64": b"RF64" + GOOD[4:],
    "extensible fmt cut at 18 bytes": GOOD[:16]
    + struct.pack("<I", 18)
    + struct.pack("<HHIIHH", 0xFFFE, 1, 8000, 16000, 2, 16)
    + b"\0\0"
    + GOOD[36:],
}


@pytest.mark.parametrize("name", REGRESSIONS)
def test_wav_reader_regressions(name: str, tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(REGRESSIONS[name])
    assert check_reader(path) in ("ok", "refused")


def test_wav_reader_regression_outcomes(tmp_path: Path) -> None:
    """What some of the cases above must give: refused with the reason, or read to the end."""
    expect = {
        "fmt size 0xFFFFFFFE": "corrupt fmt chunk",
        "rate 100 000 007 Hz": "outside 1000 to 768000 Hz",
        "rate 1 Hz": "outside 1000 to 768000 Hz",
        "65535 channels": "65535 channels",
        "junk chunk claiming 4 GiB": "no data chunk",
        "data before fmt": "data chunk before fmt chunk",
    }
    for name, problem in expect.items():
        path = tmp_path / "x.wav"
        path.write_bytes(REGRESSIONS[name])
        with pytest.raises(WavError, match=problem):
            read_info(path)
    for name in (
        "data size 0xFFFFFFFE",
        "data size 0xFFFFFFFF (streamed)",
        "data size 0 (streamed)",
    ):
        path = tmp_path / "x.wav"
        path.write_bytes(REGRESSIONS[name])
        assert read_info(path).frames == 100


def test_fuzz_wav_reader(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    path = tmp_path / "fuzz.wav"
    outcomes = {"ok": 0, "refused": 0}

    def check(raw: bytes) -> None:
        path.write_bytes(raw)
        outcomes[check_reader(path)] += 1

    n = run_budget(fuzz_seconds(10.0), 200, mutated_wav(), check)
    record_property("fuzz_wav_inputs", n)
    print(
        f"fuzz wav reader: {n} inputs ({outcomes['ok']} read, {outcomes['refused']} refused "
        "with WavError), 0 failures"
    )
    assert n >= 100 and outcomes["ok"] > 0 and outcomes["refused"] > 0
