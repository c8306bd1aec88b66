"""amulet-stream: run (live), replay (wav as a fake stream), record (training audio through
the live path), devices, info.

Standard output: one JSON object per line; logs on standard error.
Exit codes: 0 ok; 1 replay found anomalies and --fail-on-anomaly was given; 2 bad usage or
input (unknown device, unusable model or config, a wav that could not be read)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from . import __version__
from .config import Config, ConfigError, load
from .detector import RENAMED, effective_threshold
from .devices import DeviceError, list_inputs, resolve
from .httpserver import DEFAULT_PORT, ListenError
from .model import Model, ModelError, default_model_path
from .mqtt import MqttConfigError, MqttSettings
from .output import JsonLines, Progress, amulet_json
from .pipeline import Record, StreamPipeline
from .sinks import Sinks
from .sources import DeviceSource, FileSource, StdinSource
from .wav import WavError, read_info

_LOGGER = logging.getLogger("amulet_stream")
EXIT_OK, EXIT_ANOMALY, EXIT_INPUT = 0, 1, 2
DEMO_SECONDS, DEMO_FAULT = 30.0, (10.0, 20.0)


class UsageError(ValueError):
    """Bad command line or input: exit 2 with the message."""


def _detector_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("detector (durations in seconds of audio)")
    g.add_argument(
        "--sensitivity",
        type=float,
        help="1..10, default 8; each step below 8 raises the threshold by 30 %%",
    )
    g.add_argument(
        "--alert-seconds",
        type=float,
        help="alert when windows above threshold cover this much of the last "
        "--within-seconds (1.5)",
    )
    g.add_argument("--within-seconds", type=float, help="look-back of the alert rules (2)")
    g.add_argument(
        "--burst-ratio",
        type=float,
        help="also alert when windows above threshold x this cover --burst-seconds (1.2)",
    )
    g.add_argument("--burst-seconds", type=float, help="seconds of the burst rule (0.25)")
    g.add_argument(
        "--clear-seconds", type=float, help="calm time in a row to return to normal (3)"
    )
    g.add_argument("--hop", type=float, help="seconds between window starts (model's own)")
    for old in RENAMED:
        g.add_argument(f"--{old}", dest=f"old_{old}", help=argparse.SUPPRESS)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="model .onnx (default: models/default.onnx)")
    p.add_argument("--config", type=Path, help="TOML config file; flags override it")
    p.add_argument("--threads", type=int, help="onnxruntime threads (default 1)")
    p.add_argument("--channel", type=int, help="0-based channel to use (default: down-mix)")
    p.add_argument("--stream", help="stream id written in every line")
    p.add_argument("--scores", action="store_true", help="also one line per scored window")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    p.add_argument("--mqtt", metavar="HOST[:PORT]", help="publish alerts to this MQTT broker")
    p.add_argument(
        "--metrics",
        metavar="ADDR:PORT",
        help=f"serve /metrics /healthz /readyz here (e.g. 127.0.0.1:{DEFAULT_PORT})",
    )
    p.add_argument(
        "--http-submit",
        action="store_true",
        help="also serve AMULET's POST /submit on the metrics listener",
    )
    _detector_args(p)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="amulet-stream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"amulet-stream {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("replay", help="feed wav files through the live path (a fake stream)")
    r.add_argument("files", nargs="*", type=Path)
    r.add_argument(
        "--demo",
        action="store_true",
        help="replay a generated 30 s recording of a motor with a bearing fault",
    )
    pace = r.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="pace at real time")
    pace.add_argument("--speed", type=float, help="pace at X times real time")
    r.add_argument("--format", choices=["jsonl", "amulet-json"], default="jsonl")
    r.add_argument("--plot", type=Path, help="write score over time to this PNG")
    r.add_argument("--fail-on-anomaly", action="store_true", help="exit 1 if any file is defect")
    _common(r)

    live = sub.add_parser("run", help="monitor a sound card (or raw PCM on stdin)")
    live.add_argument("--source", choices=["device", "stdin"])
    live.add_argument("--device", help="input device name (or part of it) or index")
    live.add_argument("--rate", type=int, help="capture rate, Hz (stdin: required)")
    live.add_argument("--channels", type=int, help="channels to open (default 1)")
    live.add_argument("--duration", type=float, help="stop after this many seconds of audio")
    live.add_argument(
        "--buffer",
        type=float,
        default=10.0,
        help="ring buffer between sound card and processing, seconds (10)",
    )
    _common(live)

    rec = sub.add_parser(
        "record", help="capture training audio through the live path into a float32 wav"
    )
    rec.add_argument(
        "--source",
        choices=["device", "stdin"],
        default="device",
        help="sound card (default) or raw S16_LE PCM on stdin",
    )
    rec.add_argument("--device", help="input device name (or part of it) or index")
    rec.add_argument("--seconds", type=float, metavar="N", help="how long to record (required)")
    rec.add_argument("-o", "--output", type=Path, metavar="FILE", help="wav to write (required)")
    rec.add_argument("--rate", type=int, help="capture rate, Hz (device default; stdin: required)")
    rec.add_argument("--channels", type=int, help="channels to open (default 1)")
    rec.add_argument("--channel", type=int, help="0-based channel to keep (default: down-mix)")
    rec.add_argument("--buffer", type=float, default=10.0, help="ring buffer, seconds (10)")
    rec.add_argument("--force", action="store_true", help="overwrite an existing output file")
    rec.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")

    sub.add_parser("devices", help="list input devices")
    i = sub.add_parser("info", help="print a model's metadata as JSON")
    i.add_argument("model", type=Path)
    return p


def _config(args: argparse.Namespace) -> Config:
    cfg = load(args.config) if args.config else Config()
    for old, new in RENAMED.items():
        if getattr(args, f"old_{old}") is not None:
            flag = "--" + new.replace("_", "-")
            raise UsageError(
                f"--{old} counted windows and is gone: give durations in seconds with "
                f"{flag} (see --help)"
            )
    det = {
        k: getattr(args, k)
        for k in (
            "sensitivity",
            "alert_seconds",
            "within_seconds",
            "burst_ratio",
            "burst_seconds",
            "clear_seconds",
        )
        if getattr(args, k) is not None
    }
    model = {
        k: v
        for k, v in (("path", args.model), ("threads", args.threads), ("hop", args.hop))
        if v is not None
    }
    source = {
        k: getattr(args, k, None) for k in ("device", "rate", "channels", "channel", "stream")
    }
    if getattr(args, "source", None):
        source["kind"] = args.source
    mqtt = cfg.mqtt
    if args.mqtt:
        host, _, port = args.mqtt.rpartition(":") if ":" in args.mqtt else (args.mqtt, "", "")
        if port and not port.isdigit():
            raise UsageError(f"--mqtt {args.mqtt!r}: port must be a number")
        mqtt = dataclasses.replace(
            mqtt or MqttSettings(),
            host=host.strip("[]") or "127.0.0.1",
            port=int(port) if port else 1883,
        )
    metrics = cfg.metrics
    if args.metrics or args.http_submit:
        listen = args.metrics or metrics.listen or f"127.0.0.1:{DEFAULT_PORT}"
        metrics = dataclasses.replace(
            metrics, listen=listen, submit=metrics.submit or args.http_submit
        )
    try:
        src = dataclasses.replace(cfg.source, **{k: v for k, v in source.items() if v is not None})
        mod = dataclasses.replace(cfg.model, **model)
    except ValueError as err:  # the message starts with the setting's name
        raise UsageError(f"--{err}") from err
    try:
        detector = dataclasses.replace(cfg.detector, **det) if det else cfg.detector
    except ValueError as err:
        raise UsageError(str(err)) from err
    return Config(src, mod, detector, mqtt, metrics)


def _load_model(cfg: Config) -> Model:
    path = cfg.model.path or default_model_path()
    model = Model(path, threads=cfg.model.threads)
    _LOGGER.info("model %s: profile %s, threshold %.4g", path, model.profile.name, model.threshold)
    if path.resolve() == default_model_path().resolve():
        _LOGGER.warning(
            "%s is the demo model: it was trained on generated motor sound, and on a real "
            "motor it will report anomalies all the time. Train one on your motor: "
            "amulet-stream record --device DEV --seconds 600 -o healthy.wav && "
            "amulet-export train --input-file healthy.wav --output-dir mymodel, then "
            "--model mymodel/model.onnx",
            path.name,
        )
    return model


def _hop(cfg: Config, model: Model) -> int | None:
    """Vectors between window starts from the configured hop in seconds (None: the model's)."""
    if cfg.model.hop is None:
        return None
    return max(1, round(cfg.model.hop * model.profile.rate / model.profile.step))


def _check_plot(path: Path) -> None:
    """Refuse a --plot target that cannot be written, before the replay runs."""
    import importlib.util

    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"--plot {path}: give a file name ending in .png, .svg or .pdf")
    if not path.parent.is_dir():
        raise UsageError(f"--plot {path}: folder {path.parent} does not exist")
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install 'amulet-stream[plot]'")


def _demo_file(folder: Path) -> Path:
    from .synth import Fault, generate
    from .wav import write_wav

    path = folder / "demo-bearing-fault.wav"
    fault = Fault("bearing", *DEMO_FAULT, severity=0.6)
    write_wav(path, generate(DEMO_SECONDS, 48000, seed=2024, fault=fault), 48000)
    _LOGGER.info(
        "demo: %s, 30 s of a motor at 48 kHz with a bearing fault from %g s to %g s",
        path,
        *DEMO_FAULT,
    )
    return path


def _replay(args: argparse.Namespace) -> int:
    if args.speed is not None and not 0 < args.speed < float("inf"):
        raise UsageError("--speed must be a positive number")
    if args.plot is not None:
        _check_plot(args.plot)
    if not args.demo:
        return _replay_files(args, list(args.files))
    with tempfile.TemporaryDirectory(prefix="amulet-demo-") as tmp:
        return _replay_files(args, [*args.files, _demo_file(Path(tmp))])


def _replay_files(args: argparse.Namespace, files: list[Path]) -> int:
    if not files:
        raise UsageError("replay needs at least one wav file (or --demo)")
    cfg = _config(args)
    model = _load_model(cfg)
    speed = 1.0 if args.realtime else args.speed
    out = JsonLines(args.scores) if args.format == "jsonl" else None
    keep = args.format == "amulet-json" or args.plot is not None
    sinks = Sinks(cfg, model, out, live=False)
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
            defect |= summary["verdict"] == "defect"
            failed |= summary["verdict"] == "too_short"
            if out is not None:
                out.emit(summary)
            else:
                print(json.dumps(amulet_json(rows or [], summary.get("problem"))), flush=True)
            if rows is not None:
                plotted[str(path)] = rows
    finally:
        sinks.close()
    if args.plot and plotted:
        from .plot import PlotUnavailableError, plot_scores

        try:
            plot_scores(plotted, threshold, args.plot)
        except PlotUnavailableError as err:
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
    pipe = StreamPipeline(model, source.rate, stream, str(path), cfg.detector, _hop(cfg, model))
    sinks.stream_started(stream, model, pipe.detector.threshold)
    progress = Progress(source.info.duration, path.name)
    t0 = time.monotonic()
    try:
        for block in source.blocks():
            _deliver(pipe.feed(block), sinks, rows)
            sinks.after_block(stream, pipe.stats)
            progress.update(pipe.stats.audio_seconds)
        _deliver(pipe.finish(), sinks, rows)
    finally:
        progress.close()
        sinks.stream_stopped(stream)
    return pipe.summary(time.monotonic() - t0)


def _deliver(records: list[Record], sinks: Sinks, rows: list[Record] | None) -> None:
    """Every record to the sinks; score records also to `rows` when kept."""
    for rec in records:
        if rows is not None and rec["event"] == "score":
            rows.append(rec)
        sinks.record(rec)


def _run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    src = cfg.source
    model = _load_model(cfg)
    source: DeviceSource | StdinSource
    if src.kind == "stdin":
        if not src.rate:
            raise UsageError("--source stdin needs --rate (raw PCM has no header)")
        source = StdinSource(src.rate, src.channels or 1, src.channel)
    else:
        dev = resolve(src.device)
        channels = src.channels or (src.channel + 1 if src.channel is not None else 1)
        if channels > dev.channels:
            raise UsageError(
                f"device {dev.name!r} has {dev.channels} input channels, {channels} requested"
            )
        source = DeviceSource(
            dev.index,
            src.rate or dev.default_rate,
            channels,
            src.channel,
            buffer_seconds=args.buffer,
            duration=args.duration,
        )
        _LOGGER.info("listening on %d: %s at %d Hz", dev.index, dev.name, source.rate)
    pipe = StreamPipeline(model, source.rate, src.stream, None, cfg.detector, _hop(cfg, model))
    sinks = Sinks(cfg, model, JsonLines(args.scores), live=True)
    sinks.stream_started(src.stream, model, pipe.detector.threshold)

    def stop(signum: int, frame: FrameType | None) -> None:
        if isinstance(source, DeviceSource):
            source.stop()
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        for block in source.blocks():
            _deliver(pipe.feed(block), sinks, None)
            overflows = (
                source.input_overflows + source.ring.overflowed
                if isinstance(source, DeviceSource)
                else 0
            )
            sinks.after_block(src.stream, pipe.stats, overflows)
            if args.duration and pipe.stats.audio_seconds >= args.duration:
                break
    except KeyboardInterrupt:
        _LOGGER.info("stopping")
    finally:
        _deliver(pipe.finish(), sinks, None)
        sinks.stream_stopped(src.stream)
        sinks.close()
    _LOGGER.info(
        "%s: %.1f s of audio, %d windows, %d anomaly events",
        src.stream,
        pipe.stats.audio_seconds,
        pipe.stats.windows,
        pipe.stats.anomaly_events,
    )
    return EXIT_OK


def _record(args: argparse.Namespace) -> int:
    from .record import RecordError, RecordSettings, record

    if args.seconds is None:
        raise UsageError("record needs --seconds N: how many seconds to record")
    if args.output is None:
        raise UsageError("record needs -o FILE.wav: where to write the recording")
    settings = RecordSettings(
        args.output,
        args.seconds,
        args.source,
        args.device,
        args.rate,
        args.channels,
        args.channel,
        args.buffer,
        args.force,
    )
    try:
        summary = record(settings)
    except RecordError as err:
        raise UsageError(str(err)) from err
    JsonLines(scores=False).emit(summary)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the amulet-stream console script."""
    args = _parser().parse_args(argv)
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(
        level=level, format="amulet-stream: %(message)s", stream=sys.stderr, force=True
    )
    try:
        if args.command == "info":
            print(json.dumps(Model(args.model).info(), indent=2))
            return EXIT_OK
        if args.command == "devices":
            for dev in list_inputs():
                print(json.dumps(dev.to_dict()))
            return EXIT_OK
        if args.command == "replay":
            return _replay(args)
        if args.command == "record":
            return _record(args)
        return _run(args)
    except (UsageError, ModelError, ConfigError, DeviceError, MqttConfigError, ListenError) as err:
        print(f"amulet-stream: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:  # e.g. `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
