"""learn: ask a running daemon to learn a stream's site again (a microphone moved, a gain knob
turned): a request in the state directory that the daemon takes within a second."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from amulet_stream.cli.options import EXIT_OK, UsageError
from amulet_stream.outputs.jsonl import JsonLines
from amulet_stream.scoring.commission import MAX_SECONDS
from amulet_stream.service import learned
from amulet_stream.service.config import load
from amulet_stream.text import STREAM_ID, shown


def learn_command(args: argparse.Namespace) -> int:
    """Write the request; one JSON line says where."""
    if (args.state_dir is None) == (args.config is None):
        raise UsageError("learn needs --state-dir DIR or --config FILE (its [daemon] state_dir)")
    if args.stream is None or not STREAM_ID.fullmatch(args.stream):
        raise UsageError(f"learn needs --stream ID of a running stream, not {shown(args.stream)}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UsageError(f"--seconds must be a positive number of seconds, not {args.seconds:g}")
    if args.seconds is not None and args.seconds > MAX_SECONDS:
        raise UsageError(f"--seconds must be at most {MAX_SECONDS:g} (a day)")
    state_dir = Path(args.state_dir) if args.state_dir is not None else None
    if args.config is not None:
        cfg = load(args.config)
        ids = [s.id for s in cfg.all_streams()]
        if args.stream not in ids:
            raise UsageError(f"--stream {args.stream!r}: {args.config} has {', '.join(ids)}")
        state_dir = cfg.daemon.state_dir
        if state_dir is None:
            raise UsageError(f"{args.config} sets no [daemon] state_dir: give --state-dir")
    assert state_dir is not None
    if not state_dir.is_dir():
        raise UsageError(f"--state-dir {state_dir}: no such folder (the daemon's state_dir)")
    try:
        path = learned.request(state_dir, args.stream, args.seconds)
    except OSError as err:
        raise UsageError(f"cannot write the request in {state_dir}: {err.strerror}") from err
    line = {"event": "learn_requested", "stream": args.stream, "seconds": args.seconds}
    JsonLines(scores=False).emit({**line, "request": str(path)})
    return EXIT_OK
