"""`amulet-export synth` streams: peak memory does not grow with the length, and the file is the
same, byte for byte, as the whole-signal write_wav(generate(...)) it replaced (issue 9: 7200 s
took 3.6 GB of memory that way; `/usr/bin/time -v amulet-export synth -o x.wav --seconds 7200`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

PEAK = r"""
import resource, sys
from amulet_export.cli import main
rc = main(sys.argv[1:])
print(rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _synth(*args: str) -> tuple[int, int]:
    """amulet-export synth in a fresh process: exit code and peak RSS in KiB."""
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, "synth", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    rc, peak = proc.stdout.split()[-2:]
    return int(rc), int(peak)


def test_synth_memory_is_flat_in_the_length(tmp_path: Path) -> None:
    short = _synth("-o", str(tmp_path / "short.wav"), "--seconds", "5")
    long = _synth("-o", str(tmp_path / "long.wav"), "--seconds", "100", "--fault", "whine")
    # whole-signal generation grew by about 0.45 MB per second of audio (45 MB here)
    assert short[0] == long[0] == 0
    assert long[1] - short[1] < 10 * 1024, f"peak RSS {short[1]} KiB for 5 s, {long[1]} for 100 s"
    assert (tmp_path / "long.wav").stat().st_size == 44 + 2 * 100 * 16000


def test_synth_file_is_bit_identical_to_the_whole_signal(tmp_path: Path) -> None:
    args = ("--seconds", "6.5", "--rate", "22050", "--seed", "7", "--fault", "bearing")
    assert _synth("-o", str(tmp_path / "cli.wav"), *args, "--fault-start", "2")[0] == 0
    fault = Fault("bearing", 2.0, 6.5, 0.5)
    write_wav(tmp_path / "whole.wav", generate(6.5, 22050, 7, fault=fault), 22050)
    assert (tmp_path / "cli.wav").read_bytes() == (tmp_path / "whole.wav").read_bytes()


def test_synth_refuses_what_no_wav_can_hold(tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    proc = subprocess.run(
        [Path(sys.executable).parent / "amulet-export", "synth", "-o", out, "--seconds", "1e9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "at most 134217 at 16000 Hz" in proc.stderr, proc.stderr
    assert not out.exists()
