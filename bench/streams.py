"""Streams per core and resident memory of the daemon (issue 8), -> bench/results/streams-*.json.

The real daemon (`amulet-stream run --config`) runs N [[stream]] tables of generated 16 kHz
motor sound played from wav files at real time (`realtime = true`, `loop = true`; or
written to its stdin, layout `stdin`), the default model, the Prometheus listener on
127.0.0.1 and nothing else (no MQTT, no --scores: stdout carries only state changes).

Layouts: `card8` (default) puts 8 streams on the 8 channels of one wav, as one 8-channel
USB interface per 8 motors would (one feed thread per 8 streams, each channel a different
signal; a realtime file delivers 0.25 s blocks, as a sound card); `mono` gives every stream
its own mono wav (one feed thread per stream, the worst case); `stdin` feeds one N-channel
S16_LE stream on stdin, written at real time by the bench (0.25 s blocks, as a sound card
delivers). Streams of the same file and settings share one feed thread in the daemon, so
the same file for every stream would hide the per-source cost: it is never used here.

    python bench/streams.py sweep [--counts 1,128,...] [--layout card8|mono|stdin] [--repeat 3]
    python bench/streams.py memory [--counts 1,10,100] [--repeat 3] [--settle 20]
    python bench/streams.py imports
    python bench/streams.py plot results/streams-sweep*.json   # -> docs/bench-streams-cpu.png

sweep: the daemon pinned to one core (sched_setaffinity), after every stream scored and
--warmup seconds more, measured for --seconds: CPU time of the process / wall time, and
whether it keeps up: windows scored per second (amulet_windows_scored_total, read from
/metrics before and after) at least 98 % of real time (N x 16000/4096 per second), at most
1 % of the windows decided more than 1 s after their audio ended
(amulet_processing_lag_seconds), no stream down. Counting from the metrics costs the daemon
one counter increment and two histogram observations per window, which a monitored plant
pays anyway; counting --scores lines would add a JSON line per window to stdout. The sweep
stops at the first N that falls behind (or --max-cpu of the core is reached).
memory: VmRSS and VmHWM (/proc/PID/status) after --settle seconds, with and without the
metrics listener. imports: RSS after each import step and the daemon's resident pages by
mapping (/proc/PID/smaps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.scoring.model import default_model_path
from amulet_stream.synth.motor import generate

COMMAND = [str(Path(sys.executable).parent / "amulet-stream")]
"""The daemon's command (--bin replaces it, e.g. to measure a changed runtime)."""
RATE = 16000
HOP_SAMPLES = 4096
"""The default model's hop: a window every 0.256 s."""
CARD = 8
"""Channels of one wav in the card8 layout."""
FILE_SECONDS = 10.0
POOL = 16
"""Distinct generated signals; stream k plays signal k % POOL shifted by k // POOL * 0.37 s."""
TICK = os.sysconf("SC_CLK_TCK")
RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """The machine as lscpu and /proc tell it."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    import onnxruntime

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "loadavg_at_start": os.getloadavg(),
        "commit": _commit(),
    }


def _commit() -> str:
    """The tree's commit, with '+changes' when amulet_stream/ differs from it."""
    here = Path(__file__).resolve().parent.parent
    git = ["git", "-C", str(here)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "amulet_stream"], capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


# -- audio and config -----------------------------------------------------------------------


class Audio:
    """Generated wav files in `folder`, made once and reused across runs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._pool: list[np.ndarray[Any, np.dtype[np.float32]]] = []

    def signal(self, k: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Stream k's 10 s of audio (different for every k)."""
        if not self._pool:
            self._pool = [generate(FILE_SECONDS, RATE, seed=100 + s) for s in range(POOL)]
        return np.roll(self._pool[k % POOL], (k // POOL) * 5923)

    def sources(self, n: int, layout: str) -> list[tuple[Path | None, int | None]]:
        """(wav, channel) of each of n streams; wav None: channel of the PCM on stdin."""
        out: list[tuple[Path | None, int | None]] = []
        if layout == "stdin":
            return [(None, k) for k in range(n)]
        if layout == "mono" or n == 1:
            for k in range(n):
                path = self.folder / f"mono-{k}.wav"
                if not path.exists():
                    write_wav(path, self.signal(k), RATE)
                out.append((path, None))
            return out
        for j in range(-(-n // CARD)):
            ch = min(CARD, n - j * CARD)
            path = self.folder / f"card-{j}-{ch}ch.wav"
            if not path.exists():
                data = np.stack([self.signal(j * CARD + c) for c in range(ch)], axis=1)
                write_wav(path, data, RATE)
            out.extend((path, c) for c in range(ch))
        return out

    def pcm(self, n: int) -> bytes:
        """10 s of n-channel interleaved S16_LE PCM, channel k the signal of stream k."""
        data = np.stack([self.signal(k) for k in range(n)], axis=1)
        return bytes(np.round(np.clip(data, -1, 1) * 32767).astype("<i2").tobytes())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(
    path: Path, sources: list[tuple[Path | None, int | None]], port: int | None
) -> None:
    """A config with one [[stream]] per source and, when `port` is given, the metrics listener."""
    lines = []
    if port is not None:
        lines += ["[metrics]", f'listen = "127.0.0.1:{port}"', ""]
    for k, (wav, channel) in enumerate(sources):
        lines += ["[[stream]]", f'id = "m{k}"']
        if wav is None:
            lines += ['kind = "stdin"', f"rate = {RATE}", f"channels = {len(sources)}"]
        else:
            lines += ['kind = "file"', f'path = "{wav}"', "realtime = true", "loop = true"]
        if channel is not None:
            lines.append(f"channel = {channel}")
        lines.append("")
    path.write_text("\n".join(lines))


# -- the daemon process ---------------------------------------------------------------------


@dataclass
class Scrape:
    """What /metrics said at one moment (summed over streams, except `scoring`)."""

    at: float
    """time.monotonic() halfway through the request."""
    scoring: int
    """Streams with at least one window scored."""
    windows: float
    lag_sum: float
    lag_count: float
    lag_over_1s: float
    """Windows decided more than 1 s after the end of their audio."""


_LINE = re.compile(r"^(amulet_[a-z_]+)\{([^}]*)\} (\S+)$", re.M)


def scrape(port: int) -> Scrape:
    """Read and sum the daemon's window and lag metrics."""
    t0 = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    t1 = time.monotonic()
    scoring, windows, lag_sum, lag_count, lag_le1 = 0, 0.0, 0.0, 0.0, 0.0
    for name, labels, value in _LINE.findall(text):
        v = float(value)
        if name == "amulet_windows_scored_total":
            windows += v
            scoring += v > 0
        elif name == "amulet_processing_lag_seconds_sum":
            lag_sum += v
        elif name == "amulet_processing_lag_seconds_count":
            lag_count += v
        elif name == "amulet_processing_lag_seconds_bucket" and 'le="1.0"' in labels:
            lag_le1 += v
    return Scrape((t0 + t1) / 2, scoring, windows, lag_sum, lag_count, lag_count - lag_le1)


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def core_ticks(core: int) -> tuple[float, float]:
    """(busy, steal) seconds of one core since boot, every process included."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            v = [int(x) for x in line.split()[1:]]
            return (v[0] + v[1] + v[2] + v[5] + v[6]) / TICK, v[7] / TICK
    raise ValueError(f"no cpu{core} in /proc/stat")


def status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile (kB) and Threads of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            out[key] = int(value.split()[0])
    return out


@contextmanager
def daemon(
    config: Path, log: Path, core: int | None, pcm: bytes | None = None, channels: int = 1
) -> Iterator[subprocess.Popen[bytes]]:
    """`amulet-stream run --config` (pinned to `core` if given), stopped with SIGTERM at exit;
    `pcm` (`channels` interleaved): written to its stdin at real time, looped, from a thread."""
    pin: Callable[[], None] | None = None
    if core is not None:
        cores = {core}

        def pin() -> None:
            os.sched_setaffinity(0, cores)

    with log.open("wb") as err, (log.with_suffix(".out")).open("wb") as out:
        proc = subprocess.Popen(
            [*COMMAND, "run", "--config", str(config), "-q"],
            stdin=subprocess.PIPE if pcm is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            preexec_fn=pin,
        )
        stop = threading.Event()
        writer = None
        if pcm is not None:
            writer = threading.Thread(target=_write_paced, args=(proc, pcm, channels, stop))
            writer.start()
        try:
            yield proc
        finally:
            stop.set()
            if writer is not None and proc.stdin is not None:
                writer.join()
                proc.stdin.close()  # end of input: the daemon ends its streams and exits 0
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _write_paced(
    proc: subprocess.Popen[bytes], pcm: bytes, channels: int, stop: threading.Event
) -> None:
    """Write `pcm` to the process's stdin at real time in 50 ms pieces, looped, until `stop`.

    Like a sound card with a 0.5 s buffer, it catches up at most 0.5 s: while the reader does
    not keep up the pipe stays full and the input slows down (a card would drop samples),
    which shows as fewer windows."""
    assert proc.stdin is not None
    piece = RATE // 20 * 2 * channels
    due, at = time.monotonic(), 0
    try:
        while not stop.is_set():
            proc.stdin.write(pcm[at : at + piece])
            proc.stdin.flush()
            at = (at + piece) % len(pcm)
            due = max(due + 0.05, time.monotonic() - 0.5)  # a backlog of 0.5 s at most
            stop.wait(due - time.monotonic())
    except (BrokenPipeError, ValueError):
        return


def wait_scoring(proc: subprocess.Popen[bytes], port: int, n: int, limit: float) -> float:
    """Seconds until every one of n streams has scored a window."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode} before scoring")
        try:
            if scrape(port).scoring >= n:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"not every one of {n} streams scored within {limit:.0f} s")


def events(out: Path) -> dict[str, int]:
    """State events on the daemon's stdout, by kind."""
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        kind = json.loads(line).get("event", "?")
        counts[kind] = counts.get(kind, 0) + 1
    return counts


# -- sweep ----------------------------------------------------------------------------------


def one_run(
    audio: Audio, work: Path, n: int, layout: str, core: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """One daemon with n streams on one core: CPU share, windows rate and lag."""
    port = free_port()
    cfg = work / f"sweep-{layout}-{n}.toml"
    sources = audio.sources(n, layout)
    write_config(cfg, sources, port)
    log = work / f"sweep-{layout}-{n}.log"
    pcm = audio.pcm(n) if layout == "stdin" else None
    t_launch = time.monotonic()
    with daemon(cfg, log, core, pcm, n) as proc:
        startup = wait_scoring(proc, port, n, 120 + n * 0.5)
        time.sleep(warmup)
        down_before = events(log.with_suffix(".out")).get("down", 0)
        a = scrape(port)
        c0, (b0, s0), t0 = proc_cpu(proc.pid), core_ticks(core), time.monotonic()
        time.sleep(seconds)
        c1, (b1, s1), t1 = proc_cpu(proc.pid), core_ticks(core), time.monotonic()
        b = scrape(port)
        st = status(proc.pid)
    wall = t1 - t0
    expected = n * RATE / HOP_SAMPLES * (b.at - a.at)
    windows = b.windows - a.windows
    lagged = b.lag_count - a.lag_count
    ev = events(log.with_suffix(".out"))
    cpu = 100.0 * (c1 - c0) / wall
    result: dict[str, Any] = {
        "streams": n,
        "layout": layout,
        "feed_threads": len({p for p, _ in sources}),
        "startup_to_all_scoring_s": round(startup, 1),
        "process_start_to_measure_s": round(t0 - t_launch, 1),
        "seconds": round(wall, 1),
        "cpu_percent_of_core": round(cpu, 1),
        "cpu_percent_per_stream": round(cpu / n, 4),
        "others_on_core_percent": round(100.0 * ((b1 - b0) - (c1 - c0)) / wall, 1),
        "steal_percent": round(100.0 * (s1 - s0) / wall, 1),
        "windows_vs_realtime": round(windows / expected, 4),
        "mean_lag_s": round((b.lag_sum - a.lag_sum) / max(lagged, 1), 3),
        "lag_over_1s_fraction": round((b.lag_over_1s - a.lag_over_1s) / max(lagged, 1), 4),
        "down_events": ev.get("down", 0) - down_before,
        "rss_mb": round(st["VmRSS"] / 1024, 1),
        "hwm_mb": round(st["VmHWM"] / 1024, 1),
        "threads": st["Threads"],
        "exit_code": proc.returncode,
    }
    over = (b.lag_over_1s - a.lag_over_1s) / max(lagged, 1)
    result["keeps_up"] = windows / expected >= 0.98 and over <= 0.01 and not result["down_events"]
    return result


def sweep(args: argparse.Namespace, audio: Audio, work: Path) -> dict[str, Any]:
    """Runs at increasing N until one falls behind; each N --repeat times (median reported)."""
    runs: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    others = set(range(os.cpu_count() or 1)) - {args.core}
    if others:  # the bench (and its PCM writer) off the measured core
        os.sched_setaffinity(0, others)
    t0 = time.monotonic()
    for n in args.counts:
        if time.monotonic() - t0 > args.budget:
            print(f"budget of {args.budget:.0f} s spent: sweep stops before {n}", file=sys.stderr)
            break
        reps = []
        for _ in range(args.repeat):
            for attempt in range(3):  # a run that shared its core with others is done again
                r = one_run(audio, work, n, args.layout, args.core, args.warmup, args.seconds)
                r["noisy"] = r["others_on_core_percent"] > args.max_others
                print(json.dumps(r), flush=True)
                runs.append(r)
                if not r["noisy"]:
                    break
                if attempt < 2:
                    time.sleep(20)
            reps.append(r)
        med = {
            key: statistics.median(r[key] for r in reps)
            for key in (
                "cpu_percent_of_core",
                "cpu_percent_per_stream",
                "windows_vs_realtime",
                "mean_lag_s",
                "others_on_core_percent",
                "rss_mb",
            )
        }
        kept = sum(r["keeps_up"] for r in reps)
        summary.append(
            {
                "streams": n,
                **med,
                "kept_up_runs": f"{kept}/{len(reps)}",
                "kept_up": kept * 2 > len(reps),
            }
        )
        if kept * 2 <= len(reps) or med["cpu_percent_of_core"] >= args.max_cpu:
            break
    ok = [s["streams"] for s in summary if s["kept_up"]]
    one = next((s for s in summary if s["streams"] == 1), None)
    return {
        "largest_streams_that_kept_up": max(ok) if ok else None,
        "projection_from_one_stream": (
            int(100.0 / one["cpu_percent_per_stream"]) if one is not None else None
        ),
        "summary": summary,
        "runs": runs,
    }


# -- memory ---------------------------------------------------------------------------------


def memory(args: argparse.Namespace, audio: Audio, work: Path) -> dict[str, Any]:
    """VmRSS and VmHWM after --settle s with each N, with and without the metrics listener."""
    rows: list[dict[str, Any]] = []
    for metrics in (True, False):
        for n in args.counts:
            reps = []
            for _ in range(args.repeat if metrics else 1):
                port = free_port() if metrics else None
                cfg = work / f"mem-{n}.toml"
                write_config(cfg, audio.sources(n, args.layout), port)
                pcm = audio.pcm(n) if args.layout == "stdin" else None
                with daemon(cfg, work / f"mem-{n}.log", None, pcm, n) as proc:
                    time.sleep(args.settle)
                    if proc.poll() is not None:
                        raise RuntimeError(f"daemon with {n} streams exited {proc.returncode}")
                    reps.append(status(proc.pid))
            row = {
                "streams": n,
                "metrics_listener": metrics,
                "layout": args.layout,
                "runs": len(reps),
                "vmrss_mb": round(statistics.median(r["VmRSS"] for r in reps) / 1024, 1),
                "vmhwm_mb": round(statistics.median(r["VmHWM"] for r in reps) / 1024, 1),
                "vmrss_mb_runs": [round(r["VmRSS"] / 1024, 1) for r in reps],
                "rss_anon_mb": round(statistics.median(r["RssAnon"] for r in reps) / 1024, 1),
                "rss_file_mb": round(statistics.median(r["RssFile"] for r in reps) / 1024, 1),
                "threads": reps[0]["Threads"],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return {"settle_seconds": args.settle, "rows": rows}


# -- where one stream's memory goes ---------------------------------------------------------

IMPORT_STEPS: list[tuple[str, str]] = [
    ("python", "import os, sys"),
    ("numpy", "import numpy"),
    ("onnxruntime", "import onnxruntime"),
    ("prometheus_client", "import prometheus_client"),
    ("paho.mqtt.client", "import paho.mqtt.client"),
    ("amulet_stream.cli.main (all it imports)", "import amulet_stream.cli.main"),
    (
        "default model loaded (InferenceSession)",
        "from amulet_stream.scoring.model import Model, default_model_path; "
        "m = Model(default_model_path()); import numpy as np; "
        "m.score_vectors(np.zeros((32, m.profile.dim), np.float32))",
    ),
]
ALONE: list[tuple[str, str]] = [
    ("numpy", "import numpy"),
    ("onnxruntime", "import onnxruntime"),
    ("prometheus_client", "import prometheus_client"),
    ("paho.mqtt.client", "import paho.mqtt.client"),
    ("sounddevice (device sources only, imported lazily)", "import sounddevice"),
    ("scipy.signal (not imported by the runtime)", "import scipy.signal"),
]


def _rss_after(code: str) -> int:
    """VmRSS (kB) of a fresh interpreter after running `code`."""
    probe = code + "\nprint([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0])"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    return int(out.split()[-2])


def smaps(pid: int) -> dict[str, float]:
    """Resident MB of a process by mapping: each shared object, and anonymous memory."""
    by: dict[str, int] = {}
    name = "?"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
            name = head[5] if len(head) > 5 else "[anonymous]"
            if name.startswith("/"):
                name = name.rsplit("/", 1)[1]
        elif head and head[0] == "Rss:":
            by[name] = by.get(name, 0) + int(head[1])
    top = sorted(by.items(), key=lambda kv: -kv[1])
    return {k: round(v / 1024, 1) for k, v in top if v >= 512}


def imports(args: argparse.Namespace, audio: Audio, work: Path) -> dict[str, Any]:
    """RSS after each cumulative import step, each module alone, and the daemon's mappings."""
    cumulative = []
    code = ""
    base = _rss_after("import os, sys")
    prev = float(base)
    for label, step in IMPORT_STEPS:
        code += step + "\n"
        rss = statistics.median(_rss_after(code) for _ in range(3))
        cumulative.append(
            {
                "step": label,
                "rss_mb": round(rss / 1024, 1),
                "added_mb": round((rss - prev) / 1024, 1),
            }
        )
        prev = rss
    alone = []
    for label, step in ALONE:
        rss = statistics.median(_rss_after(step) for _ in range(3))
        alone.append({"import": label, "added_mb": round((rss - base) / 1024, 1)})
    port = free_port()
    cfg = work / "imports-1.toml"
    write_config(cfg, audio.sources(1, "mono"), port)
    with daemon(cfg, work / "imports-1.log", None) as proc:
        time.sleep(args.settle)
        by_map = smaps(proc.pid)
        st = status(proc.pid)
    out = {
        "cumulative": cumulative,
        "alone_over_bare_python": alone,
        "daemon_1_stream_vmrss_mb": round(st["VmRSS"] / 1024, 1),
        "daemon_1_stream_rss_by_mapping_mb": by_map,
    }
    print(json.dumps(out, indent=1), flush=True)
    return out


def plot(results: list[Path], out: Path) -> None:
    """CPU share of the core against streams, one line per sweep result file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[dict[str, Any]]] = {}
    for path in results:  # files of the same layout and daemon make one line
        doc = json.loads(path.read_text())
        label = f"{doc['runs'][0]['layout']} layout, {Path(doc['daemon_command']).name}"
        lines.setdefault(label, []).extend(doc["summary"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, rows in lines.items():
        rows.sort(key=lambda r: int(r["streams"]))
        ok = [r for r in rows if r["kept_up"]]
        bad = [r for r in rows if not r["kept_up"]]
        (line,) = ax.plot(
            [r["streams"] for r in rows], [r["cpu_percent_of_core"] for r in rows], label=label
        )
        ax.plot(
            [r["streams"] for r in ok],
            [r["cpu_percent_of_core"] for r in ok],
            "o",
            c=line.get_color(),
        )
        ax.plot(
            [r["streams"] for r in bad], [r["cpu_percent_of_core"] for r in bad], "x", c="red", ms=9
        )
    ax.axhline(100, c="grey", lw=0.8)
    ax.axvline(500, c="grey", lw=0.8, ls="--")
    ax.set_xlabel("streams in one process (16 kHz, 1 s windows, hop 0.256 s)")
    ax.set_ylabel("CPU time / wall time, % of one core")
    ax.set_title("amulet-stream run on one core: o kept up, x fell behind; goal 500 dashed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=("sweep", "memory", "imports", "plot"))
    ap.add_argument("results", nargs="*", type=Path, help="plot: sweep result files")
    ap.add_argument("--counts", type=lambda s: [int(x) for x in s.split(",")], default=None)
    ap.add_argument("--layout", choices=("card8", "mono", "stdin"), default="card8")
    ap.add_argument("--core", type=int, default=0, help="sweep: the one core the daemon runs on")
    ap.add_argument("--warmup", type=float, default=10.0, help="sweep: s after all streams score")
    ap.add_argument("--seconds", type=float, default=30.0, help="sweep: measured s per run")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--max-cpu", type=float, default=97.0, help="sweep: stop at this %% of core")
    ap.add_argument(
        "--max-others", type=float, default=10.0, help="sweep: redo a run if others used this %%"
    )
    ap.add_argument("--budget", type=float, default=840.0, help="sweep: no new N after this, s")
    ap.add_argument("--bin", default=None, help="daemon command instead of amulet-stream")
    ap.add_argument("--settle", type=float, default=20.0, help="memory: s before reading RSS")
    ap.add_argument("--work", type=Path, default=None, help="folder for the generated wavs")
    ap.add_argument("--out", type=Path, default=None, help="result file (default: results/)")
    args = ap.parse_args()
    if args.counts is None:
        args.counts = (
            [1, 10, 100] if args.what == "memory" else [1, 64, 128, 192, 256, 320, 384, 512]
        )
    if args.bin:
        COMMAND[:] = args.bin.split()
    if args.what == "plot":
        out = args.out or Path(__file__).parent.parent / "docs" / "bench-streams-cpu.png"
        plot(args.results, out)
        print(f"-> {out}", file=sys.stderr)
        return
    work = args.work or Path(tempfile.gettempdir()) / "amulet-bench-streams"
    work.mkdir(parents=True, exist_ok=True)
    audio = Audio(work)
    t0 = time.monotonic()
    runner = {"sweep": sweep, "memory": memory, "imports": imports}[args.what]
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "model": str(default_model_path().name),
        "daemon_command": " ".join(COMMAND),
        **runner(args, audio, work),
        "bench_wall_seconds": round(time.monotonic() - t0),
    }
    out = args.out or RESULTS / f"streams-{args.what}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
