"""Ring buffer: fixed memory, wrap-around, counted overflow, one writer and one reader."""

from __future__ import annotations

import threading

import numpy as np

from amulet_stream.audio.ringbuffer import RingBuffer


def test_wraparound_and_overflow_count() -> None:
    ring = RingBuffer(10)
    assert ring.write(np.arange(7, dtype=np.float32)) == 7
    np.testing.assert_array_equal(ring.read(5), np.arange(5))
    assert ring.write(np.arange(7, 15, dtype=np.float32)) == 8  # 2 + 8 = 10: full
    assert ring.overflowed == 0
    assert ring.write(np.array([99.0], np.float32)) == 0
    assert ring.overflowed == 1
    np.testing.assert_array_equal(ring.read(100), np.arange(5, 15))
    assert ring.read(3, timeout=0.01).size == 0


def test_threaded_writer_and_reader_see_every_sample() -> None:
    ring = RingBuffer(4096)
    data = np.random.default_rng(0).standard_normal(200_000).astype(np.float32)

    def produce() -> None:
        for i in range(0, data.size, 333):
            chunk = data[i : i + 333]
            while chunk.size:  # a writer that retries what did not fit
                chunk = chunk[ring.write(chunk) :]
                if chunk.size:
                    threading.Event().wait(0.0005)

    got: list[np.ndarray] = []
    t = threading.Thread(target=produce)
    t.start()
    total = 0
    while total < data.size:
        block = ring.read(1000, timeout=1.0)
        got.append(block)
        total += block.size
    t.join()
    np.testing.assert_array_equal(np.concatenate(got), data)
