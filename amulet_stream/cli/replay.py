"""replay: wav files as a fake stream, through the pipeline into the sinks (as fast as they
read, or paced with --realtime/--speed); --demo generates a motor with a bearing fault."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Generator
from pathlib import Path
from types import FrameType

from amulet_stream.audio.readahead import read_ahead
from amulet_stream.audio.sources import Block, FileSource
from amulet_stream.audio.wav import WavError, read_info
from amulet_stream.cli.options import (
    EXIT_ANOMALY,
    EXIT_INPUT,
    EXIT_OK,
    UsageError,
    config_from_args,
    load_model,
)
from amulet_stream.outputs.jsonl import JsonLines, Progress, amulet_json
from amulet_stream.scoring.detector import effective_threshold
from amulet_stream.scoring.integrity import IntegrityCheck
from amulet_stream.scoring.levels import level_range
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.pipeline import StreamPipeline
from amulet_stream.scoring.records import Record, verdict
from amulet_stream.service.config import Config
from amulet_stream.service.sinks import Sinks
from amulet_stream.service.startup import state_dir

_LOGGER = logging.getLogger("amulet_stream")
DEMO_SECONDS, DEMO_FAULT = 30.0, (10.0, 20.0)
SPEEDS = (0.01, 10000.0)
"""--speed range, times real time (1e-300 overflowed the pacing clock)."""


def _check_plot(path: Path) -> None:
    """Refuse a --plot target that cannot be written, or missing matplotlib, before the
    replay runs."""
    from amulet_stream.outputs.plot import PlotError, check_available, check_target

    try:
        check_target(path)
        check_available()
    except PlotError as err:
        raise UsageError(str(err)) from err


def _demo_file(folder: Path) -> Path:
    from amulet_stream.audio.wav_write import write_wav
    from amulet_stream.synth.motor import generate
    from amulet_stream.synth.spec import Fault

    path = folder / "demo-bearing-fault.wav"
    fault = Fault("bearing", *DEMO_FAULT, severity=0.6)
    write_wav(path, generate(DEMO_SECONDS, 48000, seed=2024, fault=fault), 48000)
    _LOGGER.info(
        "demo: %s, 30 s of a motor at 48 kHz with a bearing fault from %g s to %g s",
        path,
        *DEMO_FAULT,
    )
    return path


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM in replay: stop like Ctrl-C, so the finally blocks flush MQTT and close."""
    raise KeyboardInterrupt


def replay(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    if args.speed is not None and not SPEEDS[0] <= args.speed <= SPEEDS[1]:
        raise UsageError(
            f"--speed must be a positive number from {SPEEDS[0]:g} to {SPEEDS[1]:g} "
            f"(times real time), not {args.speed:g}"
        )
    if args.plot is not None:
        _check_plot(args.plot)
    if not args.files and not args.demo:
        raise UsageError("replay needs at least one wav file (or --demo)")
    cfg = config_from_args(args)
    if not args.demo:
        return _replay_files(args, cfg, list(args.files))
    import tempfile  # here: it loads shutil, which a replay of files never needs

    with tempfile.TemporaryDirectory(prefix="amulet-demo-") as tmp:
        return _replay_files(args, cfg, [*args.files, _demo_file(Path(tmp))])


def _replay_files(args: argparse.Namespace, cfg: Config, files: list[Path]) -> int:
    model = load_model(cfg.model)
    speed = 1.0 if args.realtime else args.speed
    out = JsonLines(args.scores) if args.format == "jsonl" else None
    keep = args.format == "amulet-json" or args.plot is not None
    sinks = Sinks(cfg, model, out, live=False, state_dir=state_dir(cfg))
    threshold = effective_threshold(model.threshold, cfg.detector.sensitivity)
    failed = defect = False
    plotted: dict[str, list[Record]] = {}
    try:
        for path in files:
            try:
                info = read_info(path)
                source = FileSource(info, cfg.source.channel, speed)
            except (WavError, ValueError) as err:
                print(f"amulet-stream: error: {err}", file=sys.stderr)
                failed = True
                continue
            rows: list[Record] | None = [] if keep else None
            try:
                summary = _replay_one(cfg, model, path, source, sinks, rows)
            except WavError as err:
                print(f"amulet-stream: error: {err}", file=sys.stderr)
                failed = True
                continue
            defect |= summary["verdict"] in ("defect", "input_problem")
            failed |= summary["verdict"] in ("too_short", "unscorable")
            if out is not None:
                out.emit(summary)
            else:
                print(
                    json.dumps(amulet_json(rows or [], summary.get("problem"), summary["verdict"])),
                    flush=True,
                )
            if rows is not None:
                plotted[str(path)] = rows
    finally:
        sinks.close()
    if args.plot and plotted:
        from amulet_stream.outputs.plot import PlotError, plot_scores

        try:
            plot_scores(plotted, threshold, args.plot)
        except PlotError as err:
            raise UsageError(str(err)) from err
    if failed:
        return EXIT_INPUT
    return EXIT_ANOMALY if defect and args.fail_on_anomaly else EXIT_OK


def _replay_one(
    cfg: Config,
    model: Model,
    path: Path,
    source: FileSource,
    sinks: Sinks,
    rows: list[Record] | None,
) -> Record:
    """Replay one file through the pipeline into the sinks; return its summary."""
    stream = cfg.source.stream
    integrity = IntegrityCheck(source.rate, level_range(model.meta.raw), cfg.integrity)
    hop = model.profile.vectors_for_hop(cfg.model.hop)
    pipe = StreamPipeline(model, source.rate, stream, str(path), cfg.detector, hop, integrity)
    sinks.stream_started(stream, model, pipe.detector.threshold)
    progress = Progress(source.info.duration, path.name)
    t0 = time.monotonic()
    # as fast as it goes: blocks read and resampled a thread ahead; paced: read when due
    blocks = read_ahead(source, pipe.resampler) if source.speed is None else _own(source)
    try:
        for block, resampled in blocks:
            _deliver(pipe.feed(block, resampled), sinks, rows)
            sinks.after_block(stream, pipe.stats)
            progress.update(pipe.stats.audio_seconds)
        _deliver(pipe.finish(), sinks, rows)
    finally:
        blocks.close()  # the read-ahead thread stops (an interrupt, a sink's error)
        progress.close()
        sinks.stream_stopped(stream)
    return _summary(pipe, time.monotonic() - t0)


def _own(source: FileSource) -> Generator[tuple[Block, None], None, None]:
    """The source's blocks, each left to the pipeline to resample."""
    return ((block, None) for block in source.blocks())


def _deliver(records: list[Record], sinks: Sinks, rows: list[Record] | None) -> None:
    """Every record to the sinks; score records also to `rows` when kept."""
    for rec in records:
        if rows is not None and rec["event"] == "score":
            rows.append(rec)
        sinks.record(rec)


def _summary(pipe: StreamPipeline, processing_seconds: float) -> Record:
    """The end-of-replay line for a file (with 'problem' when it was too short)."""
    s = pipe.stats
    problem = pipe.problem()
    extra = {"problem": problem} if problem is not None else {}
    return {
        "event": "summary",
        "stream": pipe.stream,
        "file": pipe.file,
        "windows": s.windows,
        "anomalies": s.anomalous_windows,
        "anomaly_events": s.anomaly_events,
        "skipped_windows": s.skipped_windows,
        "verdict": verdict(s),
        "max_score": s.max_score,
        "threshold": pipe.detector.threshold,
        "audio_seconds": round(s.audio_seconds, 3),
        "processing_seconds": round(processing_seconds, 3),
        **extra,
    }
