"""Runtime benchmarks of the monitor (issue 3 goals), written to bench/results/runtime.json.

1. replay throughput: mono audio already at the model's rate, fed block by block through
   features + inference + detector on one core (startup and file reading excluded);
   goal >= 1000x real time.
2. startup: process start to the first scored window on stdout (`replay --scores`);
   goal < 1.5 s.
3. peak RSS of `replay` of a 10-minute file; goal < 150 MB.
4. live cost: `run --source stdin` fed raw 48 kHz PCM (a sound card's rate, resampled to the
   model's) paced at real time for --live-seconds;
   CPU time of the monitor process / wall time; goal < 1 % of one core.

    python bench/runtime.py [--model M.onnx] [--repeat 5] [--live-seconds 60]
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

# as the runtime itself (amulet_stream/__init__.py): one OpenBLAS thread, set before numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from amulet_stream.audio.sources import Block
from amulet_stream.audio.wav_write import write_wav
from amulet_stream.scoring.model import Model, default_model_path
from amulet_stream.scoring.pipeline import StreamPipeline
from amulet_stream.synth.motor import generate

BIN = Path(sys.executable).parent / "amulet-stream"


def throughput(model_path: Path, seconds: float, repeat: int) -> dict[str, float]:
    """x real time of the pipeline on in-memory audio at the model's rate."""
    model = Model(model_path, threads=1)
    rate = model.profile.rate
    audio = generate(seconds, rate, seed=5)
    blocks = [audio[i : i + 65536] for i in range(0, audio.size, 65536)]
    ratios = []
    for _ in range(repeat):
        pipe = StreamPipeline(model, rate)
        t0 = time.perf_counter()
        for b in blocks:
            pipe.feed(Block(b, None))
        pipe.finish()
        ratios.append(seconds / (time.perf_counter() - t0))
    return {
        "audio_seconds": seconds,
        "median_x_realtime": statistics.median(ratios),
        "runs": [round(r) for r in ratios],
    }


def startup(model_path: Path, wav: Path, repeat: int) -> dict[str, object]:
    """Seconds from process start to the first score line."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [BIN, "replay", wav, "--scores", "--model", model_path, "-q"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"event": "score"' in line:
                times.append(time.perf_counter() - t0)
                break
        proc.stdout.read()
        proc.wait()
    return {"median_seconds": statistics.median(times), "runs": [round(t, 3) for t in times]}


def peak_rss(model_path: Path, wav: Path) -> dict[str, float]:
    """Peak resident memory of a replay process, MB: VmHWM as the process reports it at exit
    (ru_maxrss would include the pages of the bench process it was forked from)."""
    code = (
        "import sys\n"
        "from amulet_stream.cli.main import main\n"
        "rc = main(sys.argv[1:])\n"
        "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]\n"
        "print(hwm.split()[1], file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "replay", str(wav), "--model", str(model_path), "-q"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return {"peak_rss_mb": int(proc.stderr.split()[-1]) / 1024.0}


def live_cost(model_path: Path, seconds: float, rate: int) -> dict[str, float]:
    """CPU share of one core used by `run --source stdin` on paced real-time input at `rate`
    (a sound card's rate: the monitor resamples to the model's)."""
    pcm = np.round(generate(seconds, rate, seed=6) * 32767).astype("<i2").tobytes()
    proc = subprocess.Popen(
        [BIN, "run", "--source", "stdin", "--rate", str(rate), "--model", model_path, "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    time.sleep(2.0)  # let it start: startup is measured separately
    stat = Path(f"/proc/{proc.pid}/stat")

    def cpu() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    c0, t0 = cpu(), time.monotonic()
    step = rate // 10 * 2
    for i in range(0, len(pcm), step):
        due = t0 + (i / 2) / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        proc.stdin.write(pcm[i : i + step])
        proc.stdin.flush()
    c1, t1 = cpu(), time.monotonic()
    proc.stdin.close()
    proc.wait()
    return {
        "input_rate": rate,
        "seconds": round(t1 - t0, 1),
        "cpu_seconds": round(c1 - c0, 3),
        "percent_of_one_core": 100.0 * (c1 - c0) / (t1 - t0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=default_model_path())
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--live-seconds", type=float, default=60.0)
    ap.add_argument("--live-rate", type=int, default=48000, help="input rate of the live test")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="amulet-bench-"))
    short, long = work / "short.wav", work / "long.wav"
    write_wav(short, generate(5.0, 16000, seed=1), 16000)
    write_wav(long, generate(600.0, 16000, seed=1), 16000)
    model = Model(args.model)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "model": f"{args.model.name} ({model.profile.name})",
        "replay_throughput": throughput(args.model, 600.0, args.repeat),
        "startup_to_first_score": startup(args.model, short, args.repeat),
        "peak_rss_replay_10min": peak_rss(args.model, long),
        "live_stdin_cost": live_cost(args.model, args.live_seconds, args.live_rate),
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "runtime" if args.model == default_model_path() else f"runtime-{model.profile.name}"
    (args.out / f"{stem}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
