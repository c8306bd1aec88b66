"""`amulet-export synth`: generated motor sound written as a wav in one-second blocks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from .errors import EXIT_OK


def synth_command(args: argparse.Namespace) -> int:
    """Generate and write in one-second blocks: memory stays flat however long the audio."""
    from amulet_stream.audio.wav import RATES
    from amulet_stream.audio.wav_write import write_wav_blocks
    from amulet_stream.synth.motor import generate_blocks
    from amulet_stream.synth.spec import F32, Fault, Motor

    from .errors import InputError

    if not 8000 <= args.rate <= RATES[1]:
        raise InputError(f"--rate must be between 8000 and {RATES[1]} Hz, not {args.rate}")
    longest = (0xFFFFFFFF - 36) // 2 // args.rate  # a wav's data chunk holds at most 4 GiB
    if not 0 < args.seconds <= longest:
        raise InputError(
            f"--seconds must be more than 0 and at most {longest} at {args.rate} Hz (a wav file "
            f"holds at most 4 GiB), not {args.seconds:g}"
        )
    if not 300 <= args.rpm <= 6000 or not 0 <= args.load <= 1:
        raise InputError("--rpm must be between 300 and 6000 and --load between 0 and 1")
    fault = None
    try:
        motor = Motor(rpm=args.rpm, load=args.load)
        if args.fault:
            end = args.fault_end or args.seconds
            fault = Fault(args.fault, args.fault_start, end, args.severity)
    except ValueError as err:
        raise InputError(str(err)) from err
    opened = False

    def blocks() -> Iterator[F32]:
        nonlocal opened
        opened = True  # the first block is asked for once the file is open (and truncated)
        yield from generate_blocks(args.seconds, args.rate, args.seed, motor, fault)

    try:
        write_wav_blocks(args.output, blocks(), args.rate)
    except BaseException as err:  # also Ctrl-C: no half-written wav (its header comes last)
        if opened and args.output.is_file():
            args.output.unlink()
        if isinstance(err, OSError):
            raise InputError(f"{args.output}: cannot write: {err.strerror or err}") from err
        if isinstance(err, KeyboardInterrupt):
            print(f"amulet-export: interrupted, {args.output} not written", file=sys.stderr)
            return 130
        raise
    print(args.output)
    return EXIT_OK
