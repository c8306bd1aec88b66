"""Read-ahead (a replay's blocks read and resampled by a thread) gives what reading in turn
gives, raises a reading error after the blocks before it, and stops its thread when closed."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from amulet_stream.audio.readahead import read_ahead
from amulet_stream.audio.resample import StreamResampler
from amulet_stream.audio.sources import FILE_BLOCK_FRAMES, FileSource
from amulet_stream.audio.wav import WavError, read_info
from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate

RATE = 96000


def stereo(path: Path, seconds: float) -> Path:
    left, right = generate(seconds, RATE, seed=3), generate(seconds, RATE, seed=4)
    write_wav(path, np.stack([left, right], axis=1), RATE)
    return path


def ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("read-ahead")]


def test_the_blocks_and_samples_of_reading_in_turn(tmp_path: Path) -> None:
    info = read_info(stereo(tmp_path / "a.wav", 7.0))
    turn = StreamResampler(RATE, 16000)
    expected = [(b.samples, turn.process(b.samples)) for b in FileSource(info).blocks()]
    ahead = StreamResampler(RATE, 16000)
    got = list(read_ahead(FileSource(info), ahead))
    assert len(got) == len(expected) == -(-7 * RATE // FILE_BLOCK_FRAMES)
    for (block, out), (samples, want) in zip(got, expected, strict=True):
        assert np.array_equal(block.samples, samples) and block.capture_time is None
        assert np.array_equal(out, want)
    assert np.array_equal(ahead.flush(), turn.flush())  # the resampler is the caller's again
    assert not ahead_threads()


def test_a_reading_error_comes_after_the_blocks_before_it(tmp_path: Path) -> None:
    path = stereo(tmp_path / "cut.wav", 7.0)
    info = read_info(path)
    whole = 3 * FILE_BLOCK_FRAMES
    with path.open("r+b") as fh:  # the file shrinks after it was opened: 3 whole blocks left
        fh.truncate(info.data_offset + (whole + 100) * 4)
    got = []
    with pytest.raises(WavError, match="truncated while reading") as err:
        for block, _ in read_ahead(FileSource(info), StreamResampler(RATE, 16000)):
            got.append(block.samples.size)
    assert got == [FILE_BLOCK_FRAMES] * 3 and str(path) in str(err.value)
    assert not ahead_threads()


def test_closing_it_early_stops_the_thread(tmp_path: Path) -> None:
    info = read_info(stereo(tmp_path / "a.wav", 7.0))
    blocks = read_ahead(FileSource(info), StreamResampler(RATE, 16000))
    first, _ = next(blocks)
    assert first.samples.size == FILE_BLOCK_FRAMES and ahead_threads()
    blocks.close()
    assert not ahead_threads()
