"""Read-ahead: a file's blocks read, decoded, down-mixed and resampled by a thread while the
caller scores the ones before, so a replay as fast as it goes uses a second core."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator

import numpy as np
import numpy.typing as npt

from amulet_stream.audio.resample import StreamResampler
from amulet_stream.audio.sources import Block, FileSource

F32 = npt.NDArray[np.float32]
DEPTH = 2
"""Blocks the thread may be ahead (each 128 Ki frames: 1.4 s of 96 kHz audio, 0.5 MB mono)."""

_Item = tuple[Block, F32] | Exception | None


def read_ahead(
    source: FileSource, resampler: StreamResampler
) -> Generator[tuple[Block, F32], None, None]:
    """source.blocks(), each with its samples through `resampler`, from a thread at most DEPTH
    blocks ahead; the same blocks and outputs as reading them here. An error of the reading
    is raised here after the blocks before it. The resampler is the thread's until the
    iterator ends or is closed (then the thread has stopped): flush it after that."""
    items: queue.Queue[_Item] = queue.Queue(DEPTH)
    stop = threading.Event()

    def put(item: _Item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for block in source.blocks():
                if not put((block, resampler.process(block.samples))):
                    return
            put(None)
        except Exception as err:  # raised in the reader's thread, after the blocks before it
            put(err)

    thread = threading.Thread(target=work, name=f"read-ahead {source.name}", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
        source.stop()
        thread.join()
