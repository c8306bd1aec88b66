"""wav reading: encodings, channels, and bad files named with their problem."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from amulet_stream.audio.wav import WavError, iter_blocks, read_info, select_channel
from amulet_stream.audio.wav_write import FloatWavWriter, write_wav


def _wav(path: Path, data: bytes, tag: int, channels: int, rate: int, bits: int) -> Path:
    fmt = struct.pack(
        "<HHIIHH", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits
    )
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def _read(path: Path) -> np.ndarray:
    info = read_info(path)
    return np.concatenate(list(iter_blocks(info, block_frames=7)))


SIGNAL = np.array([0.0, 0.5, -0.5, 0.25, -1.0, 0.999], dtype=np.float64)


@pytest.mark.parametrize(
    ("bits", "tag", "encode", "tol"),
    [
        (8, 1, lambda x: (np.round(x * 127) + 128).astype(np.uint8).tobytes(), 1 / 64),
        (16, 1, lambda x: np.round(x * 32767).astype("<i2").tobytes(), 1e-4),
        (
            24,
            1,
            lambda x: b"".join(
                int(v).to_bytes(3, "little", signed=True) for v in np.round(x * 8388607)
            ),
            1e-6,
        ),
        (32, 1, lambda x: np.round(x * 2147483647).astype("<i4").tobytes(), 1e-6),
        (32, 3, lambda x: x.astype("<f4").tobytes(), 0.0),
        (64, 3, lambda x: x.astype("<f8").tobytes(), 0.0),
    ],
)
def test_encodings_decode_to_float(tmp_path: Path, bits, tag, encode, tol) -> None:
    path = _wav(tmp_path / "x.wav", encode(SIGNAL), tag, 1, 8000, bits)
    out = _read(path)
    assert out.shape == (SIGNAL.size, 1)
    np.testing.assert_allclose(out[:, 0], SIGNAL, atol=tol + 1e-7)


def test_stereo_downmix_and_channel_choice(tmp_path: Path) -> None:
    left = np.linspace(-0.5, 0.5, 100)
    right = -0.25 * np.ones(100)
    path = tmp_path / "st.wav"
    write_wav(path, np.stack([left, right], axis=1), 22050)
    info = read_info(path)
    assert (info.channels, info.rate, info.frames) == (2, 22050, 100)
    block = np.concatenate(list(iter_blocks(info)))
    np.testing.assert_allclose(select_channel(block, 0), left, atol=1e-4)
    np.testing.assert_allclose(select_channel(block, 1), right, atol=1e-4)
    np.testing.assert_allclose(select_channel(block, None), (left + right) / 2, atol=1e-4)
    with pytest.raises(ValueError, match="channel 2 does not exist"):
        select_channel(block, 2)


def test_bad_files_are_named_with_their_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    write_wav(good, np.zeros(1000), 8000)
    raw = good.read_bytes()
    cases = {
        "missing.wav": (None, "no such file"),
        "empty.wav": (b"", "empty file"),
        "text.wav": (b"hello, this is not audio at all", "not a wav file"),
        "hugefmt.wav": (raw[:16] + struct.pack("<I", 0xFFFFFFFE) + raw[20:], "corrupt fmt chunk"),
        "rate5.wav": (raw[:24] + struct.pack("<I", 5) + raw[28:], "sample rate 5 Hz is outside"),
        "rate10M.wav": (raw[:24] + struct.pack("<I", 10**7) + raw[28:], "is outside 1000"),
        "nochannels.wav": (raw[:22] + struct.pack("<H", 0) + raw[24:], "0 channels"),
        "nodata.wav": (raw[:36], "no data chunk"),
    }
    for name, (content, problem) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(WavError) as err:
            read_info(path)
        assert str(path) in str(err.value) and problem in str(err.value)
    adpcm = _wav(tmp_path / "adpcm.wav", b"\0" * 64, 2, 1, 8000, 4)
    with pytest.raises(WavError, match="unsupported encoding"):
        read_info(adpcm)


def test_float_writer_round_trip(tmp_path: Path) -> None:
    from scipy.io import wavfile

    data = np.random.default_rng(3).standard_normal((1000, 2)).astype(np.float32)
    data[0] = [np.float32(1e-40), -0.0]  # subnormal and negative zero survive too
    path = tmp_path / "f.wav"
    with path.open("wb") as fh:
        writer = FloatWavWriter(fh, 44100, channels=2)
        writer.write(data[:300])
        writer.write(data[300:])
        fh.write(b"\x01\x02")  # half a sample, as a write cut short would leave
        assert writer.finish() == 1000
    info = read_info(path)
    assert (info.rate, info.channels, info.frames, info.is_float) == (44100, 2, 1000, True)
    got = np.concatenate(list(iter_blocks(info, 333)))
    assert got.tobytes() == data.tobytes()
    rate, other = wavfile.read(path)  # an independent reader agrees
    assert rate == 44100 and other.tobytes() == data.tobytes()


def test_streamed_and_truncated_wavs_are_read_to_their_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "good.wav"
    samples = np.linspace(-0.5, 0.5, 1000)
    write_wav(good, samples, 8000)
    raw = good.read_bytes()
    assert raw[36:40] == b"data"
    for size in (0, 0xFFFFFFFF):  # `sox ... -t wav -` and arecord to a pipe leave these
        path = tmp_path / f"streamed-{size:x}.wav"
        path.write_bytes(raw[:40] + struct.pack("<I", size) + raw[44:])
        info = read_info(path)
        assert info.frames == 1000
        assert np.array_equal(_read(path), _read(good))
    cut = tmp_path / "truncated.wav"
    cut.write_bytes(raw[:500])  # 456 data bytes of the 2000 announced
    with caplog.at_level("WARNING", logger="amulet_stream.audio.wav"):
        info = read_info(cut)
    assert info.frames == 228 and "truncated" in caplog.text and str(cut) in caplog.text
    assert np.array_equal(_read(cut), _read(good)[:228])


def test_other_audio_formats_renamed_wav_are_named(tmp_path: Path) -> None:
    for magic, name in (
        (b"fLaC\0\0\0\x22", "FLAC"),
        (b"ID3\x04\0\0", "MP3"),
        (b"OggS\0\x02", "Ogg"),
    ):
        path = tmp_path / f"{name}.wav"
        path.write_bytes(magic + bytes(64))
        with pytest.raises(WavError, match=rf"a {name} file, not a wav: convert it first"):
            read_info(path)
