"""amulet-stream: run (live), replay (wav as a fake stream), record (training audio through
the live path), devices, info.

Standard output: one JSON object per line; logs on standard error.
Exit codes: 0 ok (also when the reader of standard output went away, e.g. `| head`); 1 replay
found anomalies (or input problems) and --fail-on-anomaly was given; 2 bad usage or input
(unknown device, unusable model or config, a wav that could not be read); 3 run: every source
failed again and again (for systemd to start afresh); 130 interrupted (Ctrl-C)."""

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
from typing import Any, NoReturn, TypeVar

from amulet_stream import __version__
from amulet_stream.audio.devices import DeviceError, list_inputs
from amulet_stream.audio.sources import FileSource
from amulet_stream.audio.wav import WavError, read_info
from amulet_stream.http.server import DEFAULT_PORT, ListenError
from amulet_stream.outputs.jsonl import JsonLines, Progress, amulet_json
from amulet_stream.outputs.mqtt.sink import MqttConfigError, MqttSettings
from amulet_stream.scoring.detector import RENAMED, effective_threshold
from amulet_stream.scoring.integrity import IntegrityCheck, level_range
from amulet_stream.scoring.model import Model, ModelError, default_model_path
from amulet_stream.scoring.pipeline import Record, StreamPipeline
from amulet_stream.service.config import (
    Config,
    ConfigError,
    ModelConfig,
    SourceConfig,
    StreamConfig,
    load,
)
from amulet_stream.service.daemon import Daemon, DaemonError, state_dir
from amulet_stream.service.sinks import Sinks

_LOGGER = logging.getLogger("amulet_stream")
EXIT_OK, EXIT_ANOMALY, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
DEMO_SECONDS, DEMO_FAULT = 30.0, (10.0, 20.0)
SPEEDS = (0.01, 10000.0)
"""--speed range, times real time (1e-300 overflowed the pacing clock)."""
BUFFERS = (0.5, 600.0)
"""--buffer range, seconds."""


class UsageError(ValueError):
    """Bad command line or input: exit 2 with the message."""


class _Parser(argparse.ArgumentParser):
    """argparse with its mistakes in one line on stderr (exit 2), like every other mistake."""

    def error(self, message: str) -> NoReturn:
        """Print 'amulet-stream: error: MESSAGE (see PROG --help)' and exit 2."""
        self.exit(EXIT_INPUT, f"amulet-stream: error: {message} (see {self.prog} --help)\n")


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
    g.add_argument("--clear-seconds", type=float, help="calm time in a row to return to normal (3)")
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
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep state between starts here (MQTT outbox); default: [daemon] state_dir, "
        "else $STATE_DIRECTORY",
    )
    _detector_args(p)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
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
    r.add_argument(
        "--fail-on-anomaly",
        action="store_true",
        help="exit 1 if any file is defect or has an input problem",
    )
    _common(r)

    live = sub.add_parser("run", help="monitor a sound card (or raw PCM on stdin)")
    live.add_argument("--source", choices=["device", "stdin"])
    live.add_argument("--device", help="input device name (or part of it) or index")
    live.add_argument("--rate", type=int, help="capture rate, Hz (stdin: required)")
    live.add_argument(
        "--channels", type=int, help="channels to open (default: enough for --channel)"
    )
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
    if args.mqtt is not None:
        host, _, port = args.mqtt.rpartition(":") if ":" in args.mqtt else (args.mqtt, "", "")
        if port and not port.lstrip("-").isdigit():
            raise UsageError(f"--mqtt {args.mqtt!r}: port must be a number")
        if not args.mqtt.strip():
            raise UsageError("--mqtt needs the broker: HOST or HOST:PORT")
        try:
            mqtt = dataclasses.replace(
                mqtt or MqttSettings(),
                host=host.strip("[]") or "127.0.0.1",
                port=int(port) if port else 1883,
            )
        except MqttConfigError as err:
            raise UsageError(f"--mqtt {args.mqtt!r}: {err}") from err
    metrics = cfg.metrics
    if args.metrics is not None or args.http_submit:
        listen = args.metrics
        if listen is None:
            listen = metrics.listen or f"127.0.0.1:{DEFAULT_PORT}"
        listener = {"listen": listen, "submit": metrics.submit or args.http_submit}
        metrics = _flagged(metrics, listener, {"listen": "metrics"})
    daemon = cfg.daemon
    if args.state_dir is not None:
        if not args.state_dir.strip():
            raise UsageError("--state-dir needs a folder name")
        folder = Path(args.state_dir).expanduser().absolute()
        daemon = _flagged(daemon, {"state_dir": folder})
    source = {k: v for k, v in source.items() if v is not None}
    if cfg.streams and args.command == "replay":  # replay as one of the config's streams
        cfg = _replay_as(cfg, source.pop("stream", None))
    if cfg.streams and source:
        flags = ", ".join("--" + ("source" if k == "kind" else k) for k in source)
        raise UsageError(
            f"{flags}: the config has [[stream]] tables; set the source of each stream there"
        )
    src = _flagged(cfg.source, source)
    streams = tuple(
        StreamConfig(s.source, _flagged(s.model, model), _flagged(s.detector, det))
        for s in cfg.streams
    )
    return dataclasses.replace(
        cfg,
        source=src,
        model=_flagged(cfg.model, model),
        detector=_flagged(cfg.detector, det),
        mqtt=mqtt,
        metrics=metrics,
        streams=streams,
        daemon=daemon,
    )


T = TypeVar("T")


def _replay_as(cfg: Config, stream: str | None) -> Config:
    """A config with [[stream]] tables for replay: --stream ID takes that stream's model and
    detector settings (e.g. to replay one of its evidence clips); without it, the defaults."""
    ids = [s.id for s in cfg.streams]
    if stream is None:
        if len(ids) > 1:
            _LOGGER.info("replay: [model] and [detector] defaults; --stream ID takes a stream's")
        return dataclasses.replace(cfg, streams=())
    match = [s for s in cfg.streams if s.id == stream]
    if not match:
        raise UsageError(f"--stream {stream!r}: the config has no such stream ({', '.join(ids)})")
    (s,) = match
    return dataclasses.replace(
        cfg,
        source=dataclasses.replace(cfg.source, stream=s.id),
        model=s.model,
        detector=s.detector,
        streams=(),
    )


def _flagged(obj: T, flags: dict[str, Any], names: dict[str, str] | None = None) -> T:
    """obj with the flags' values, through the same checks as the config keys; a failed check
    names the flag (the checks' messages start with the setting's name; `names` maps a
    setting to its flag where they differ, e.g. listen -> metrics)."""
    if not flags:
        return obj
    try:
        return dataclasses.replace(obj, **flags)  # type: ignore[type-var]
    except ValueError as err:
        first, _, rest = str(err).partition(" ")
        if first in flags:
            flag = (names or {}).get(first, first)
            raise UsageError(f"--{flag.replace('_', '-')} {rest}") from err
        raise UsageError(str(err)) from err


def _load_model(cfg: ModelConfig) -> Model:
    path = cfg.path or default_model_path()
    model = Model(path, threads=cfg.threads)
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
    """Refuse a --plot target that cannot be written, or missing matplotlib, before the
    replay runs."""
    from amulet_stream.outputs.plot import PlotError, check_available, check_target

    try:
        check_target(path)
        check_available()
    except PlotError as err:
        raise UsageError(str(err)) from err


def _demo_file(folder: Path) -> Path:
    from amulet_stream.audio.wav import write_wav
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


def _replay(args: argparse.Namespace) -> int:
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
    cfg = _config(args)
    if not args.demo:
        return _replay_files(args, cfg, list(args.files))
    with tempfile.TemporaryDirectory(prefix="amulet-demo-") as tmp:
        return _replay_files(args, cfg, [*args.files, _demo_file(Path(tmp))])


def _replay_files(args: argparse.Namespace, cfg: Config, files: list[Path]) -> int:
    model = _load_model(cfg.model)
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
    pipe = StreamPipeline(
        model, source.rate, stream, str(path), cfg.detector, _hop(cfg, model), integrity
    )
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


def _check_buffer(seconds: float) -> None:
    """Refuse a --buffer outside 0.5..600 s (its memory is seconds x rate x channels)."""
    if not BUFFERS[0] <= seconds <= BUFFERS[1]:
        raise UsageError(
            f"--buffer must be between {BUFFERS[0]:g} and {BUFFERS[1]:g} seconds, not {seconds:g}"
        )


def _run(args: argparse.Namespace) -> int:
    _check_buffer(args.buffer)
    if args.duration is not None and not 0 < args.duration < float("inf"):
        raise UsageError(f"--duration must be a positive number of seconds, not {args.duration:g}")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the daemon handles it: never fatal
    cfg = _config(args)
    for stream in cfg.all_streams():
        if stream.model.path is None or stream.model.path == default_model_path():
            _load_model(stream.model)  # the demo-model warning
            break
    daemon = Daemon(
        cfg,
        JsonLines(args.scores),
        reload=(lambda: _config(args)) if args.config else None,
        buffer_seconds=args.buffer,
        duration=args.duration,
    )
    return daemon.run()


def _record(args: argparse.Namespace) -> int:
    from amulet_stream.cli.record import RecordError, RecordSettings, check_settings, record

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
        check_settings(settings)
    except RecordError as err:
        raise UsageError(str(err)) from err
    # the bounds of the config keys rate, channels, channel (e.g. no 1 GHz ring buffer)
    flags = {k: getattr(args, k) for k in ("rate", "channels", "channel")}
    _flagged(SourceConfig(), {k: v for k, v in flags.items() if v is not None})
    _check_buffer(args.buffer)
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
            devices = list_inputs()
            for dev in devices:
                print(json.dumps(dev.to_dict()))
            if not devices:
                _LOGGER.warning("no input devices found (is a microphone or sound card attached?)")
            return EXIT_OK
        if args.command == "replay":
            return _replay(args)
        if args.command == "record":
            return _record(args)
        return _run(args)
    except (
        UsageError,
        ModelError,
        ConfigError,
        DeviceError,
        MqttConfigError,
        ListenError,
        DaemonError,
    ) as err:
        print(f"amulet-stream: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:  # e.g. `| head`: the reader has what it wanted
        _quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        print("amulet-stream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _quiet_stdout() -> None:
    """Point stdout's descriptor at /dev/null so the flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
