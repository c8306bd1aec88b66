"""POST /submit: the limits, the unlinked temporary file the upload is streamed into (upload.py
reads it), and the wav in it scored like `replay` (AMULET's answer)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from amulet_stream.audio.sources import FileSource
from amulet_stream.audio.wav import WavError, read_info
from amulet_stream.outputs.jsonl import amulet_json
from amulet_stream.scoring.detector import DetectorSettings
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.pipeline import StreamPipeline
from amulet_stream.scoring.records import Record, verdict

SUBMIT_LIMIT = 50 * 1024 * 1024
"""Bytes a /submit body may have, framing included."""
BLOCK_SAMPLES = 1 << 18
"""Samples decoded per block while scoring, all channels and after resampling: bounds memory
whatever the header says."""


@dataclass(frozen=True)
class SubmitLimits:
    """Bounds on POST /submit: bytes, audio length, concurrency and time."""

    max_bytes: int = SUBMIT_LIMIT
    """Bytes of a request body (multipart framing included)."""
    max_seconds: float = 1800.0
    """Seconds of audio in an upload: bounds the time and memory its scoring takes."""
    concurrent: int = 2
    """Uploads received or scored at once; beyond, 503 with Retry-After."""
    upload_seconds: float = 300.0
    """Seconds the whole body may take to arrive."""

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_seconds <= 0 or self.concurrent < 1:
            raise ValueError(f"submit limits must be positive: {self}")
        if self.upload_seconds <= 0:
            raise ValueError(f"submit upload_seconds must be positive: {self.upload_seconds}")


def upload_file(folder: Path | None) -> BinaryIO:
    """A temporary file unlinked from the start (O_TMPFILE): it leaves nothing behind, even
    when the process is killed; `folder` None is the system's temporary folder."""
    return tempfile.TemporaryFile(dir=folder, prefix="amulet-submit-")


def score_upload(
    model: Model,
    fh: BinaryIO,
    settings: DetectorSettings | None,
    max_seconds: float,
    scores: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Score the wav in the open file `fh` like `replay`: (HTTP status, AMULET's JSON answer
    or an error); audio longer than `max_seconds` is refused before any scoring. With
    `scores` the answer also has "verdict", "threshold" and every window's
    [start s, end s, score, anomalous] in "scores" (the console's Analyse page)."""
    fh.flush()
    path = Path(f"/proc/self/fd/{fh.fileno()}")
    try:
        info = read_info(path)
    except WavError as err:
        return "400 Bad Request", {"error": f"data_file: {str(err).split(': ', 1)[-1]}"}
    if info.duration > max_seconds:
        return "413 Payload Too Large", {
            "error": f"data_file: {info.duration:.0f} s of audio exceeds the {max_seconds:g} s "
            "/submit takes"
        }
    pipe = StreamPipeline(model, info.rate, "submit", "upload", settings)
    # samples per block bounded before (all channels) and after resampling to the model's rate
    frames = min(BLOCK_SAMPLES // info.channels, BLOCK_SAMPLES * info.rate // model.profile.rate)
    block = max(1, frames) / info.rate
    rows: list[Record] = []
    try:
        for blk in FileSource(info, block_seconds=block).blocks():
            rows += (r for r in pipe.feed(blk) if _kept(r, scores))
        rows += (r for r in pipe.finish() if _kept(r, scores))
    except WavError as err:
        return "400 Bad Request", {"error": f"data_file: {str(err).split(': ', 1)[-1]}"}
    pipe.stats.inference.clear()
    problem = pipe.problem()
    anomalous = [r for r in rows if r["anomaly"]]
    status = "200 OK" if problem is None else "422 Unprocessable Entity"
    if problem is None:
        answer = amulet_json(anomalous)
    else:
        answer = amulet_json(anomalous, problem, verdict(pipe.stats))
    if scores:
        answer["verdict"] = verdict(pipe.stats)
        answer["threshold"] = pipe.detector.threshold
        answer["scores"] = [[r["start"], r["end"], r["score"], r["anomaly"]] for r in rows]
    return status, answer


def _kept(record: Record, scores: bool) -> bool:
    """A score row the answer needs: every one with `scores`, else the anomalous ones."""
    return bool(record["event"] == "score" and (scores or record["anomaly"]))
