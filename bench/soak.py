"""Soak: simulated hours of audio through the whole daemon as fast as it goes, with resident
memory, open file descriptors and threads every simulated hour (issue 9).

    python bench/soak.py [--hours 24] [--streams 4] [--core 1]   # -> bench/results/soak.json, .csv
    python bench/soak.py --hours 4 --trace            # tracemalloc: the allocation sites that grow
    python bench/soak.py plot bench/results/soak.json   # -> docs/bench-soak.png

The real daemon (`amulet-stream run --config`, pinned to --core) plays --streams generated
120 s motor wavs (16 kHz mono, one file per stream so each has its own feed thread) with
`realtime = false` and `loop = true`: every other stream has a fault (imbalance or bearing
damage, 30 s of every loop), so each loop of it raises one alert and writes one evidence clip.
MQTT goes to a real Mosquitto on 127.0.0.1 (persistence off) with `scores = true`, so every
window is also a QoS 0 message; a paho subscriber in this process drains everything and
counts it. The metrics listener is on and scraped every --scrape seconds; clips are on with
max_count --max-clips (20). With --no-metrics the daemon has no listener and the soak follows
the score messages the subscriber counted instead (the variant where nothing drains the
pipeline's timing lists).

Simulated time is the windows scored by the stream furthest behind
(amulet_windows_scored_total, or the score messages received with --no-metrics) x the hop
(0.256 s). When it passes each multiple of --every minutes the daemon's VmRSS, RssAnon,
VmHWM, Threads (/proc/PID/status) and open descriptors (/proc/PID/fd) are recorded.
Growth = VmRSS at the last sample - VmRSS at --baseline hours (the first hour or two hold
one-off growth: onnxruntime's arena, the allocator's pools, the first clips). With --trace
the daemon runs under `python -X tracemalloc=25` and dumps a snapshot at every sample
(SIGUSR1); the largest growths between the baseline and the last snapshot are written to the
result, by allocating traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from streams import free_port, machine, proc_cpu, status

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PLOT = ROOT / "docs" / "bench-soak.png"
BIN = Path(sys.executable).parent / "amulet-stream"
RATE = 16000
HOP_SECONDS = 4096 / 16000
"""The default model's hop: one window, and one score message, every 0.256 s of audio."""
FILE_SECONDS = 120.0
FAULTS = (Fault("imbalance", 40.0, 70.0, 0.8), Fault("bearing", 60.0, 90.0, 0.8))
"""Every other stream's fault, the same 30 s of each 120 s loop."""
MAX_CLIPS = 20
TRACED = """\
import signal, sys, tracemalloc
from amulet_stream.cli.main import main
folder, n = sys.argv[1], [0]
def dump(signum, frame):
    n[0] += 1
    tracemalloc.take_snapshot().dump(f"{folder}/snap-{n[0]:03d}")
signal.signal(signal.SIGUSR1, dump)
sys.exit(main(sys.argv[2:]))
"""
"""The daemon with a snapshot of its traced allocations on every SIGUSR1."""


# -- the pieces: audio, config, broker, subscriber ------------------------------------------


def make_audio(folder: Path, n: int) -> list[Path]:
    """n different 120 s wavs (made once, reused); odd streams carry a fault."""
    paths = []
    for k in range(n):
        fault = FAULTS[(k // 2) % len(FAULTS)] if k % 2 else None
        path = folder / f"soak-{k}-{fault.kind if fault else 'healthy'}.wav"
        if not path.exists():
            write_wav(path, generate(FILE_SECONDS, RATE, seed=300 + k, fault=fault), RATE)
        paths.append(path)
    return paths


def write_config(
    path: Path, wavs: list[Path], broker: int, metrics: int | None, work: Path, clips: int
) -> None:
    """Streams of looping wavs read as fast as possible; MQTT with scores, metrics (unless
    `metrics` is None), clips."""
    lines = [
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {broker}",
        'client_id = "soak"',
        "scores = true",
        "",
        "[clips]",
        f'folder = "{work / "clips"}"',
        "before_seconds = 10",
        "after_seconds = 5",
        f"max_count = {clips}",
        "",
        "[daemon]",
        f'state_dir = "{work / "state"}"',
        "",
    ]
    if metrics is not None:
        lines += ["[metrics]", f'listen = "127.0.0.1:{metrics}"', ""]
    for k, wav in enumerate(wavs):
        lines += ["[[stream]]", f'id = "s{k}"', 'kind = "file"', f'path = "{wav}"']
        lines += ["realtime = false", "loop = true", ""]
    path.write_text("\n".join(lines))


def mosquitto() -> str:
    """The broker's executable (Debian puts it in /usr/sbin)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if found:
        return found
    raise SystemExit("soak: mosquitto not installed (apt-get install mosquitto)")


@contextmanager
def broker(work: Path) -> Iterator[int]:
    """A Mosquitto on 127.0.0.1 without persistence; yields its port."""
    port = free_port()
    conf = work / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{user}")
    with (work / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([mosquitto(), "-c", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"soak: mosquitto did not start (see {work}/mosquitto.log)")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


class Drain:
    """Subscribes to everything under amulet/ and counts it: scores, alerts by event_id."""

    def __init__(self, port: int) -> None:
        self.scores = 0
        self.per_stream: dict[str, int] = {}
        self.states = 0
        self.alerts: set[str] = set()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-drain")
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(
            [("amulet/+/score", 0), ("amulet/+/alert", 1), ("amulet/+/state", 1)]
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/score"):
            self.scores += 1
            stream = msg.topic.split("/")[1]
            self.per_stream[stream] = self.per_stream.get(stream, 0) + 1
        elif msg.topic.endswith("/alert"):
            body = json.loads(msg.payload)
            if body.get("event") == "anomaly":
                self.alerts.add(body["event_id"])
        else:
            self.states += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


_METRIC = re.compile(r"^(amulet_[a-z_]+)(?:\{([^}]*)\})? (\S+)$", re.M)


def scrape(port: int) -> dict[str, float]:
    """The counters the soak follows: windows of the slowest stream, alerts, clips, MQTT."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    windows: list[float] = []
    out = {"alerts": 0.0, "clips": 0.0, "mqtt_queued": 0.0, "mqtt_dropped": 0.0}
    for name, _labels, value in _METRIC.findall(text):
        v = float(value)
        if name == "amulet_windows_scored_total":
            windows.append(v)
        elif name == "amulet_alerts_total":
            out["alerts"] += v
        elif name == "amulet_clips_written_total":
            out["clips"] += v
        elif name == "amulet_mqtt_queued_messages":
            out["mqtt_queued"] = v
        elif name == "amulet_mqtt_dropped_messages_total":
            out["mqtt_dropped"] += v
    out["windows_min"] = min(windows) if windows else 0.0
    out["windows"] = sum(windows)
    return out


def from_scores(drain: Drain, streams: int) -> dict[str, float]:
    """Windows of the slowest stream as the score messages received tell (no metrics)."""
    counts = list(drain.per_stream.values())
    slowest = min(counts) if len(counts) == streams else 0
    return {"windows_min": float(slowest), "windows": float(sum(counts))}


def fds(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the run --------------------------------------------------------------------------------


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run the daemon for args.hours simulated hours; a sample every args.every minutes."""
    wavs = make_audio(work, args.streams)
    snaps = work / "snapshots"
    with broker(work) as port:
        drain = Drain(port)
        metrics = None if args.no_metrics else free_port()
        cfg = work / "soak.toml"
        write_config(cfg, wavs, port, metrics, work, args.max_clips)
        cmd = [str(BIN), "run", "--config", str(cfg), "-q"]
        if args.trace:
            snaps.mkdir(exist_ok=True)
            for old in snaps.glob("snap-*"):
                old.unlink()
            cmd = [sys.executable, "-X", "tracemalloc=25", "-c", TRACED, str(snaps), *cmd[1:]]
        core = {args.core}
        out, err = (work / "daemon.out").open("wb"), (work / "daemon.log").open("wb")
        with out, err:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, preexec_fn=lambda: os.sched_setaffinity(0, core)
            )
        t0 = time.monotonic()
        samples: list[dict[str, Any]] = []
        try:
            samples = follow(proc, metrics, drain, args)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        wall = time.monotonic() - t0
        time.sleep(1.0)  # the last QoS 1 messages
        drain.close()
    lines = [json.loads(x) for x in (work / "daemon.out").read_text().splitlines()]
    stdout_alerts = {r["event_id"] for r in lines if r["event"] == "anomaly"}
    rss = [s["rss_mb"] for s in samples]
    base = next(s for s in samples if s["hour"] >= args.baseline - 1e-9)
    last = samples[-1]
    result: dict[str, Any] = {
        "daemon_exit": code,
        "wall_seconds": round(wall, 1),
        "simulated_hours": last["hour"],
        "realtime_factor": round(last["hour"] * 3600 * args.streams / wall),
        "metrics_listener": not args.no_metrics,
        "streams": args.streams,
        "faulty_streams": args.streams // 2,
        "baseline_hour": base["hour"],
        "rss_growth_mb": round(last["rss_mb"] - base["rss_mb"], 2),
        "rss_anon_growth_mb": round(last["rss_anon_mb"] - base["rss_anon_mb"], 2),
        "rss_max_after_baseline_mb": max(rss[samples.index(base) :]),
        "rss_slope_mb_per_hour": slope(samples[samples.index(base) :]),
        "fds": sorted({s["fds"] for s in samples}),
        "threads": sorted({s["threads"] for s in samples}),
        "alerts_stdout": len(stdout_alerts),
        "alerts_mqtt_received": len(drain.alerts),
        "alerts_missing_on_mqtt": len(stdout_alerts - drain.alerts),
        "scores_mqtt_received": drain.scores,
        "states_mqtt_received": drain.states,
        "max_clips": args.max_clips,
        "clips_on_disk": len(list((work / "clips").glob("*.wav"))),
        "daemon_log_tail": (work / "daemon.log").read_text()[-1500:],
        "samples": samples,
    }
    if args.trace:
        result["tracemalloc_growth"] = grown(snaps, samples.index(base) + 1, len(samples))
    return result


def follow(
    proc: subprocess.Popen[bytes], metrics: int | None, drain: Drain, args: argparse.Namespace
) -> list[Any]:
    """Scrape every args.scrape s (or count the scores received when `metrics` is None); a
    sample at every multiple of args.every simulated minutes."""
    samples: list[dict[str, Any]] = []
    step = args.every * 60
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"soak: the daemon exited with {proc.returncode}")
        try:
            m = scrape(metrics) if metrics is not None else from_scores(drain, args.streams)
        except OSError:
            m = None
        if m is None or m["windows_min"] == 0:
            if time.monotonic() - t0 > 120:
                raise SystemExit("soak: no window scored within 120 s")
            time.sleep(0.2)
            continue
        seconds = m["windows_min"] * HOP_SECONDS
        if not samples or seconds >= len(samples) * step:
            st = status(proc.pid)
            sample = {
                "hour": round(seconds / 3600, 3),
                "wall_s": round(time.monotonic() - t0, 1),
                "rss_mb": round(st["VmRSS"] / 1024, 2),
                "rss_anon_mb": round(st["RssAnon"] / 1024, 2),
                "hwm_mb": round(st["VmHWM"] / 1024, 2),
                "fds": fds(proc.pid),
                "threads": st["Threads"],
                "cpu_s": round(proc_cpu(proc.pid), 1),
                **{k: int(v) for k, v in m.items()},
            }
            if args.trace:
                proc.send_signal(signal.SIGUSR1)
            samples.append(sample)
            print(json.dumps(sample), file=sys.stderr, flush=True)
            if seconds >= args.hours * 3600:
                return samples
        time.sleep(args.scrape)


def slope(samples: list[dict[str, Any]]) -> float:
    """Least-squares growth of VmRSS, MB per simulated hour."""
    n = len(samples)
    if n < 2:
        return 0.0
    xs = [s["hour"] for s in samples]
    ys = [s["rss_mb"] for s in samples]
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return round(float(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den), 3)


def grown(snaps: Path, first: int, last: int, top: int = 15) -> list[dict[str, Any]]:
    """The allocating lines that grew most from snapshot `first` to `last` (1-based)."""
    for _ in range(50):  # the last dump may still be being written
        if (snaps / f"snap-{last:03d}").exists():
            break
        time.sleep(0.2)
    a = tracemalloc.Snapshot.load(str(snaps / f"snap-{first:03d}"))
    b = tracemalloc.Snapshot.load(str(snaps / f"snap-{last:03d}"))
    out = []
    for stat in b.compare_to(a, "traceback")[:top]:
        frames = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stat.traceback]
        out.append(
            {
                "growth_kb": round(stat.size_diff / 1024, 1),
                "blocks_growth": stat.count_diff,
                "size_kb": round(stat.size / 1024, 1),
                "where": frames[-6:],
            }
        )
    return out


# -- output ---------------------------------------------------------------------------------


def write_csv(path: Path, samples: list[dict[str, Any]]) -> None:
    """One row per sample."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(samples[0]))
        w.writeheader()
        w.writerows(samples)


def plot(result: Path, out: Path) -> None:
    """VmRSS, RssAnon, descriptors and threads against simulated hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(result.read_text())
    s = doc["samples"]
    hours = [x["hour"] for x in s]
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 5.2), sharex=True, height_ratios=(2, 1))
    a.plot(hours, [x["rss_mb"] for x in s], "o-", ms=3, label="VmRSS")
    a.plot(hours, [x["rss_anon_mb"] for x in s], "s-", ms=3, label="RssAnon")
    a.set_ylabel("MB")
    a.legend(fontsize=8)
    a.set_title(
        f"amulet-stream run, {doc['streams']} streams, MQTT scores + "
        f"{'metrics + ' if doc.get('metrics_listener', True) else ''}clips: "
        f"{doc['rss_growth_mb']:+.2f} MB VmRSS from hour {doc['baseline_hour']:.0f} "
        f"to {doc['simulated_hours']:.0f}",
        fontsize=9,
    )
    b.plot(hours, [x["fds"] for x in s], "o-", ms=3, label="open fds")
    b.plot(hours, [x["threads"] for x in s], "s-", ms=3, label="threads")
    b.set_xlabel("simulated hours of audio per stream")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", nargs="?", choices=("run", "plot"), default="run")
    ap.add_argument("result", nargs="?", type=Path, help="plot: a soak result file")
    ap.add_argument("--hours", type=float, default=24.0, help="simulated hours per stream")
    ap.add_argument("--every", type=float, default=60.0, help="simulated minutes per sample")
    ap.add_argument("--baseline", type=float, default=2.0, help="growth from this hour on")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--core", type=int, default=1, help="the one core the daemon runs on")
    ap.add_argument("--scrape", type=float, default=1.0, help="seconds between /metrics reads")
    ap.add_argument("--max-clips", type=int, default=MAX_CLIPS, help="[clips] max_count")
    ap.add_argument("--no-metrics", action="store_true", help="no metrics listener")
    ap.add_argument("--trace", action="store_true", help="tracemalloc in the daemon (slow)")
    ap.add_argument("--work", type=Path, default=None, help="folder for wavs, clips, logs")
    ap.add_argument("--out", type=Path, default=None, help="result .json (and .csv beside it)")
    ap.add_argument("--plot", type=Path, default=None, help="also write the plot here")
    args = ap.parse_args()
    if args.what == "plot":
        if args.result is None:
            ap.error("plot needs a result file")
        plot(args.result, args.out or PLOT)
        print(f"-> {args.out or PLOT}", file=sys.stderr)
        return
    if not 0 <= args.baseline < args.hours:
        ap.error(f"--baseline {args.baseline} must be in [0, --hours)")
    work = args.work or Path(tempfile.gettempdir()) / "amulet-bench-soak"
    work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "when": started,
        "machine": machine(),
        "daemon_core": args.core,
        **soak(args, work),
    }
    out = args.out or RESULTS / ("soak-trace.json" if args.trace else "soak.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_csv(out.with_suffix(".csv"), result["samples"])
    if args.plot is not None:
        with suppress(ImportError):
            plot(out, args.plot)
    summary = {k: v for k, v in result.items() if k not in ("samples", "machine")}
    print(json.dumps(summary, indent=1))
    print(f"-> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
