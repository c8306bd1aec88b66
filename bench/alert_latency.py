"""Alert latency: from the end of a window's audio to the alert's arrival at an MQTT
subscriber, all on 127.0.0.1 (real Mosquitto, `amulet-stream run --source stdin`).

A writer feeds 16 kHz PCM at real-time pace in 50 ms pieces: healthy and faulty seconds
alternate, and with --k 1 --n 1 --clear 1 every window boundary produces an alert. The
end of a window is the moment the writer handed over its last sample.

    python bench/alert_latency.py [--seconds 120]      # goal: p99 under 20 ms
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault
from tests.servers import Mosquitto, Subscriber, wait_until

RATE = 16000
PIECE = RATE // 20  # 50 ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    healthy = generate(args.seconds, RATE, seed=51)
    faulty = generate(args.seconds, RATE, seed=52, fault=Fault("imbalance", 0, args.seconds, 1.0))
    second = np.arange(healthy.size) // RATE
    audio = np.where(second % 2 == 1, faulty, healthy)
    pcm = np.round(audio.astype(np.float64) * 32767).astype("<i2").tobytes()
    broker = Mosquitto(Path(tempfile.mkdtemp(prefix="amulet-latency-")))
    broker.start()
    sub = Subscriber(broker.port, "amulet/+/alert")
    exe = Path(sys.executable).parent / "amulet-stream"
    proc = subprocess.Popen(
        [
            exe,
            "run",
            "--source",
            "stdin",
            "--rate",
            str(RATE),
            "--mqtt",
            f"127.0.0.1:{broker.port}",
            "--k",
            "1",
            "--n",
            "1",
            "--clear",
            "1",
            "-q",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    time.sleep(2.0)
    written: list[float] = []  # time each 50 ms piece was handed over
    t0 = time.monotonic()
    for k, i in enumerate(range(0, len(pcm), PIECE * 2)):
        delay = t0 + (k + 1) * PIECE / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        proc.stdin.write(pcm[i : i + PIECE * 2])
        proc.stdin.flush()
        written.append(time.time())
    time.sleep(1.0)
    proc.stdin.close()
    proc.wait(30)
    wait_until(lambda: len(sub.on("amulet/default/alert")) > 0, 5, "alerts")
    lat = []
    for m in sub.on("amulet/default/alert"):
        end_sample = round(json.loads(m.payload)["end"] * RATE)
        lat.append((m.at - written[end_sample // PIECE - 1]) * 1000.0)
    sub.close()
    broker.stop()
    q = np.percentile(lat, [50, 99])
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "alerts": len(lat),
        "p50_ms": round(float(q[0]), 2),
        "p99_ms": round(float(q[1]), 2),
        "max_ms": round(max(lat), 2),
        "median_ms": round(statistics.median(lat), 2),
    }
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "alert_latency.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
