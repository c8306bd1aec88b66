"""amulet-stream's entry point: parse the command line, run the command, turn the errors a
user can cause into one line on stderr and an exit code (cli/parser.py lists them)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from amulet_stream.audio.devices import DeviceError, list_inputs
from amulet_stream.cli.options import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, UsageError
from amulet_stream.cli.parser import build_parser
from amulet_stream.outputs.mqtt.settings import MqttConfigError
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.model_meta import ModelError
from amulet_stream.service.config_keys import ConfigError
from amulet_stream.service.startup import DaemonError

_LOGGER = logging.getLogger("amulet_stream")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the amulet-stream console script."""
    args = build_parser().parse_args(argv)
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
        return _command(args)
    except _user_errors() as err:
        print(f"amulet-stream: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:  # e.g. `| head`: the reader has what it wanted
        _quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        print("amulet-stream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _command(args: argparse.Namespace) -> int:
    """Run replay, learn, events, record or run; each command imports what it uses only."""
    if args.command == "replay":
        from amulet_stream.cli.replay import replay

        return replay(args)
    if args.command == "learn":
        from amulet_stream.cli.learn import learn_command

        return learn_command(args)
    if args.command == "events":
        from amulet_stream.cli.events import events_command

        return events_command(args)
    if args.command == "record":
        from amulet_stream.cli.record import record_command

        return record_command(args)
    from amulet_stream.cli.run import run

    return run(args)


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors a user can cause (evaluated when one propagates: the listener's own is
    imported then, not by every command)."""
    from amulet_stream.http.security import ListenError

    errors = (UsageError, ModelError, ConfigError, DeviceError, MqttConfigError, ListenError)
    return (*errors, DaemonError)


def _quiet_stdout() -> None:
    """Point stdout's descriptor at /dev/null so the flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
