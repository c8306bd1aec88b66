"""Wall time of `amulet-export train` on 60 s of audio, per profile (the whole command:
process start, TensorFlow import, feature extraction, training, ONNX export and parity).

    python bench/train_time.py [--seconds 60] [--repeat 3] [--epochs 20]

Prints the median of the runs per profile, with the machine it ran on."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="amulet-train-bench-"))
    wav = work / "healthy.wav"
    write_wav(wav, generate(args.seconds, 48000, seed=1), 48000)
    exe = Path(sys.executable).parent / "amulet-export"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"input: {args.seconds:.0f} s generated motor sound, 48 kHz mono; epochs {args.epochs}")
    for profile in ("logmel-v1", "amulet-v1"):
        times = []
        for k in range(args.repeat):
            t0 = time.monotonic()
            subprocess.run(
                [
                    exe,
                    "train",
                    "--input-file",
                    wav,
                    "--output-dir",
                    work / f"{profile}{k}",
                    "--profile",
                    profile,
                    "--epochs",
                    str(args.epochs),
                    "--silent",
                ],
                check=True,
                env=env,
                capture_output=True,
            )
            times.append(time.monotonic() - t0)
        print(
            f"{profile}: median {statistics.median(times):.1f} s "
            f"(runs: {', '.join(f'{t:.1f}' for t in times)})"
        )


if __name__ == "__main__":
    main()
