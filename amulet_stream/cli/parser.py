"""The amulet-stream command line: its parser, with argparse's mistakes in one line (exit 2)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from amulet_stream import __version__
from amulet_stream.cli.options import EXIT_INPUT
from amulet_stream.scoring.detector import RENAMED
from amulet_stream.service.listen_settings import DEFAULT_PORT

DESCRIPTION = """\
amulet-stream: run (live), replay (wav as a fake stream), record (training audio through
the live path), learn (a running daemon learns a stream's site again), events (the alert and
state history a daemon keeps), devices, info.

Standard output: one JSON object per line; logs on standard error.
Exit codes: 0 ok (also when the reader of standard output went away, e.g. `| head`); 1 replay
found anomalies (or input problems) and --fail-on-anomaly was given; 2 bad usage or input
(unknown device, unusable model or config, a wav that could not be read); 3 run: every source
failed again and again (for systemd to start afresh); 130 interrupted (Ctrl-C)."""


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
    g.add_argument(
        "--level-floor-db",
        type=float,
        help="alert when the level is this many dB outside the model's trained range (1.5)",
    )
    g.add_argument(
        "--learn",
        dest="learn_seconds",
        type=float,
        metavar="SECONDS",
        help="commissioning: learn the site from the first SECONDS of audio (no alerts), then "
        "set the stream's threshold and level range from them",
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
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep state between starts here (MQTT outbox); default: [daemon] state_dir, "
        "else $STATE_DIRECTORY",
    )
    _detector_args(p)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="amulet-stream",
        description=DESCRIPTION,
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

    learn = sub.add_parser(
        "learn", help="ask a running daemon to learn a stream's site again (commissioning)"
    )
    learn.add_argument("--state-dir", metavar="DIR", help="the daemon's state directory")
    learn.add_argument("--config", type=Path, help="the daemon's config (its state_dir)")
    learn.add_argument("--stream", metavar="ID", help="the stream to learn again (required)")
    learn.add_argument(
        "--seconds", type=float, help="seconds of audio to learn from (the stream's own)"
    )
    learn.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")

    ev = sub.add_parser("events", help="print the event history a daemon keeps (alerts, states)")
    ev.add_argument("--state-dir", metavar="DIR", help="the daemon's state directory")
    ev.add_argument("--config", type=Path, help="the daemon's config (its state_dir)")
    ev.add_argument("--stream", metavar="ID", help="only this stream's events")
    ev.add_argument(
        "--since",
        metavar="T",
        help="only events from T on: an ISO 8601 time (UTC if no zone) or an age such as 30m, "
        "12h, 7d",
    )
    ev.add_argument("--label", choices=["normal", "fault", "none"], help="by feedback label")
    ev.add_argument("--limit", type=int, help="at most this many, newest first")
    ev.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="(jsonl)")

    sub.add_parser("devices", help="list input devices")
    i = sub.add_parser("info", help="print a model's metadata as JSON")
    i.add_argument("model", type=Path)
    return p
