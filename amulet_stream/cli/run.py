"""run: the daemon on a sound card, stdin or the config's streams, until stopped."""

from __future__ import annotations

import argparse
import signal

from amulet_stream.cli.options import UsageError, check_buffer, config_from_args, load_model
from amulet_stream.outputs.jsonl import JsonLines
from amulet_stream.scoring.model import default_model_path
from amulet_stream.service.daemon import Daemon
from amulet_stream.service.startup import with_default_clips


def run(args: argparse.Namespace) -> int:
    check_buffer(args.buffer)
    if args.duration is not None and not 0 < args.duration < float("inf"):
        raise UsageError(f"--duration must be a positive number of seconds, not {args.duration:g}")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the daemon handles it: never fatal
    cfg = with_default_clips(config_from_args(args))
    for stream in cfg.all_streams():
        if stream.model.path is None or stream.model.path == default_model_path():
            load_model(stream.model)  # the demo-model warning
            break
    daemon = Daemon(
        cfg,
        JsonLines(args.scores),
        reload=(lambda: with_default_clips(config_from_args(args))) if args.config else None,
        buffer_seconds=args.buffer,
        duration=args.duration,
    )
    return daemon.run()
