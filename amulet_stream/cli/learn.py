"""learn: ask a running daemon to learn a stream's site again (a microphone moved, a gain knob
turned): a request in the state directory that the daemon takes within a second."""

from __future__ import annotations

import argparse
import math

from amulet_stream.cli.options import EXIT_OK, UsageError, daemon_state_dir
from amulet_stream.outputs.jsonl import JsonLines
from amulet_stream.scoring.commission import MAX_SECONDS
from amulet_stream.service import learned
from amulet_stream.text import STREAM_ID, shown


def learn_command(args: argparse.Namespace) -> int:
    """Write the request; one JSON line says where."""
    if args.stream is None or not STREAM_ID.fullmatch(args.stream):
        raise UsageError(f"learn needs --stream ID of a running stream, not {shown(args.stream)}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UsageError(f"--seconds must be a positive number of seconds, not {args.seconds:g}")
    if args.seconds is not None and args.seconds > MAX_SECONDS:
        raise UsageError(f"--seconds must be at most {MAX_SECONDS:g} (a day)")
    state_dir, cfg = daemon_state_dir(args, "learn")
    if cfg is not None:
        ids = [s.id for s in cfg.all_streams()]
        if args.stream not in ids:
            raise UsageError(f"--stream {args.stream!r}: {args.config} has {', '.join(ids)}")
    try:
        path = learned.request(state_dir, args.stream, args.seconds)
    except OSError as err:
        raise UsageError(f"cannot write the request in {state_dir}: {err.strerror}") from err
    line = {"event": "learn_requested", "stream": args.stream, "seconds": args.seconds}
    JsonLines(scores=False).emit({**line, "request": str(path)})
    return EXIT_OK
