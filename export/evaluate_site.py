"""The evaluation's site learning: background recordings heard after the stream learned its
site on another one (the runtime's commissioning path, as `--learn` runs it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from amulet_stream.audio.sources import FileSource
from amulet_stream.audio.wav import read_info
from amulet_stream.scoring.detector import DetectorSettings
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.pipeline import StreamPipeline, replay

if TYPE_CHECKING:
    from .corpus import Corpus, Recording


def commissioned_alerts(model: Model, learn: Path, test: Path) -> int:
    """Alerts on `test` by a stream that first learned its site on all of `learn` (the
    runtime's commissioning, default detector otherwise); both files at one rate."""
    first, second = FileSource(read_info(learn)), FileSource(read_info(test))
    settings = DetectorSettings(learn_seconds=first.info.duration)
    pipe = StreamPipeline(model, first.rate, settings=settings)
    records = [r for block in first.blocks() for r in pipe.feed(block)]
    records += replay(pipe, second)
    return sum(r["event"] == "anomaly" for r in records)


def background_pairs(corp: Corpus) -> list[tuple[Recording, Recording]]:
    """Each background recording with another of the same strength: the site it learns on."""
    rumble = [r for r in corp.test if r.kind == "background"]
    pairs = []
    for rec in rumble:
        same = [o for o in rumble if o is not rec and o.severity == rec.severity]
        if same:
            pairs.append((rec, same[0]))
    return pairs
