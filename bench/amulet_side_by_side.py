"""AMULET's own pipeline (librosa + Keras) against `amulet-stream replay`, same files, same model.

    .venv/bin/python bench/amulet_side_by_side.py [--repeat 5] [--quick] [--profile] \
        [--stream-env OPENBLAS_NUM_THREADS=1]

Creates bench/.amulet-venv (git-ignored) with AMULET's dependencies on first use; the
project's package never depends on them. At bench time, in a temporary folder: AMULET's
example model imported with `amulet-export import-seed`, good.wav looped to --seconds (96 kHz
stereo, as AMULET recorded it) and a generated mono file at the model's 22050 Hz. Each file is
run once per pipeline untimed (warm caches, the agreement check), then --repeat times per
pipeline, alternating AMULET / amulet-stream with AMULET's model / amulet-stream with its
default model (`amulet_stream_default_model`) run by run, each run a fresh process under
/usr/bin/time. Medians: whole-process wall time (spawn to exit), CPU time (user + system,
all threads), time from spawn to the first output row (AMULET prints its rows only after
predict) and, for AMULET, to its "model_loaded" line (imports + model, threshold and scaler
loaded: AMULET loads them before reading audio), peak RSS (ru_maxrss of the process, GNU
time's %M). The load average before and after is recorded: the machine may be shared.
--quick: 60 s files, 2 repeats (overrides --seconds and --repeat).
Results: bench/results/amulet_side_by_side.json and a markdown table on standard output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SEED = REPO.parent / "shared" / "data" / "amulet-seed"
PROJECT_BIN = REPO / ".venv" / "bin"
AMULET_VENV = BENCH / ".amulet-venv"
AMULET_REQUIREMENTS = ["librosa==0.11.0", "tensorflow-cpu==2.21.0", "h5py==3.14.0", "soundfile"]
TIME = Path("/usr/bin/time")
GOAL_RATIO = 25.0
TIME_TOLERANCE = 1e-3  # s: amulet-stream writes start/end rounded to 0.1 ms
THREAD_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
)


@dataclass(frozen=True)
class Setup:
    """What every run needs: AMULET's python, the imported model, scratch dir, stream env."""

    python: Path
    model: Path
    work: Path
    stream_env: dict[str, str]


@dataclass
class Run:
    """One process: wall and CPU time (s), first-line times (s) from spawn, peak RSS (MiB)."""

    wall_s: float
    cpu_s: float
    marks: dict[str, float]
    peak_rss_mib: float
    lines: list[dict[str, Any]] = field(repr=False)


def wait_for(path: Path, timeout_s: float) -> None:
    """Wait up to timeout_s seconds for a file another process is creating."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} does not exist: run tests/run.sh first")
        time.sleep(5.0)


def amulet_python() -> Path:
    """The bench venv's python, with AMULET's dependencies installed once (stamped)."""
    python = AMULET_VENV / "bin" / "python"
    stamp = AMULET_VENV / "bench-requirements.txt"
    wanted = "\n".join(AMULET_REQUIREMENTS) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"creating {AMULET_VENV} ({' '.join(AMULET_REQUIREMENTS)})", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", AMULET_VENV], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *AMULET_REQUIREMENTS], check=True)
    stamp.write_text(wanted)
    return python


def versions(python: Path, packages: list[str]) -> dict[str, str]:
    """Python and package versions as one interpreter sees them."""
    code = (
        "import json, platform, importlib.metadata as m, sys\n"
        "print(json.dumps({'python': platform.python_version(),"
        " **{p: m.version(p) for p in sys.argv[1:]}}))\n"
    )
    out = subprocess.run([python, "-c", code, *packages], check=True, capture_output=True)
    result: dict[str, str] = json.loads(out.stdout)
    return result


def loop_wav(src: Path, dst: Path, seconds: float) -> None:
    """Write src repeated end to end until it lasts `seconds` s, same format."""
    with wave.open(str(src), "rb") as r:
        params = r.getparams()
        data = r.readframes(params.nframes)
    want = round(seconds * params.framerate) * params.nchannels * params.sampwidth
    reps = -(-want // len(data))
    with wave.open(str(dst), "wb") as w:
        w.setparams(params)
        w.writeframes((data * reps)[:want])


def run_quiet(cmd: list[str | Path]) -> None:
    """Run a setup command; on failure stop with the end of its standard error."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(map(str, cmd))}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
        )


def prepare(work: Path, seconds: float) -> tuple[Path, dict[str, Path]]:
    """Imported seed model and the two test files in `work`."""
    model = work / "seed.onnx"
    export = PROJECT_BIN / "amulet-export"
    run_quiet([export, "import-seed", SEED / "example_model", "-o", model])
    looped = work / "good-looped-96k-stereo.wav"
    loop_wav(SEED / "good.wav", looped, seconds)
    synth = work / "synth-22k-mono.wav"
    run_quiet([export, "synth", "-o", synth, "--seconds", str(seconds), "--rate", "22050"])
    return model, {"good.wav looped, 96 kHz stereo": looped, "generated, 22050 Hz mono": synth}


def measure(
    cmd: list[str | Path], marks: dict[str, str], work: Path, env: dict[str, str] | None = None
) -> Run:
    """Run cmd under GNU time (extra env vars); seconds from spawn to each mark's first line."""
    usage_file, err_file = work / "usage.txt", work / "stderr.txt"
    lines: list[dict[str, Any]] = []
    seen: dict[str, float] = {}
    with err_file.open("w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [TIME, "-f", "%M %U %S", "-o", usage_file, *cmd],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, **env} if env else None,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - t0
            for key, needle in marks.items():
                if key not in seen and needle in line:
                    seen[key] = now
            lines.append(json.loads(line))
        rc = proc.wait()
        wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{cmd[0]} exited {rc}: {err_file.read_text()[-2000:]}")
    rss_kib, user, system = usage_file.read_text().split()[-3:]
    return Run(wall, float(user) + float(system), seen, int(rss_kib) / 1024.0, lines)


def amulet_cmd(python: Path, wav: Path) -> list[str | Path]:
    """AMULET's pipeline on one file, in the bench venv."""
    return [python, BENCH / "amulet_reference.py", wav, "--model-dir", SEED / "example_model"]


def stream_cmd(model: Path | None, wav: Path) -> list[str | Path]:
    """`amulet-stream replay --scores` on one file, in the project venv (None: the default
    model)."""
    chosen: list[str | Path] = [] if model is None else ["--model", model]
    return [PROJECT_BIN / "amulet-stream", "replay", wav, *chosen, "--scores", "-q"]


AMULET_MARKS = {"model_loaded": '"model_loaded"', "first_row": '"event": "row"'}
STREAM_MARKS = {"first_row": '"event": "score"'}


def agreement(amulet: Run, stream: Run) -> dict[str, Any]:
    """Rows (count, start/end s), verdicts (any row above threshold) and MAE difference."""
    a = [d for d in amulet.lines if d["event"] == "row"]
    s = [d for d in stream.lines if d["event"] == "score"]
    out: dict[str, Any] = {"rows_amulet": len(a), "rows_stream": len(s)}
    out["same_row_count"] = len(a) == len(s)
    pairs = list(zip(a, s, strict=False))
    out["max_time_diff_s"] = max(
        (max(abs(x["start"] - y["start"]), abs(x["end"] - y["end"])) for x, y in pairs),
        default=0.0,
    )
    out["same_row_times"] = out["same_row_count"] and out["max_time_diff_s"] <= TIME_TOLERANCE
    out["max_mae_diff"] = max((abs(x["mae"] - y["score"]) for x, y in pairs), default=0.0)
    out["rows_above_amulet"] = sum(x["anomaly"] for x in a)
    out["rows_above_stream"] = sum(y["anomaly"] for y in s)
    out["verdict_amulet"] = "defect" if out["rows_above_amulet"] else "good"
    out["verdict_stream"] = "defect" if out["rows_above_stream"] else "good"
    out["same_verdict"] = out["verdict_amulet"] == out["verdict_stream"]
    out["row_verdicts_differ"] = sum(x["anomaly"] != y["anomaly"] for x, y in pairs)
    summary = next(d for d in stream.lines if d["event"] == "summary")
    out["stream_detector_verdict"] = summary["verdict"]
    return out


def med(runs: list[Run], key: str) -> float | None:
    """Median over runs of one figure: 'wall_s', 'cpu_s', 'peak_rss_mib' or a mark name (s)."""
    fixed = key in ("wall_s", "cpu_s", "peak_rss_mib")
    vals = [getattr(r, key) if fixed else r.marks.get(key) for r in runs]
    kept = [v for v in vals if v is not None]
    return statistics.median(kept) if kept else None


def describe(runs: list[Run], marks: dict[str, str]) -> dict[str, Any]:
    """Medians and raw runs of one pipeline on one file (s, MiB)."""
    doc: dict[str, Any] = {"median_wall_s": med(runs, "wall_s"), "median_cpu_s": med(runs, "cpu_s")}
    for key in marks:
        doc[f"median_{key}_s"] = med(runs, key)
    doc["median_peak_rss_mib"] = med(runs, "peak_rss_mib")
    doc["runs_wall_s"] = [round(r.wall_s, 3) for r in runs]
    doc["runs_cpu_s"] = [round(r.cpu_s, 2) for r in runs]
    doc["runs_peak_rss_mib"] = [round(r.peak_rss_mib, 1) for r in runs]
    return doc


def amulet_phases(runs: list[Run]) -> dict[str, float]:
    """Median of AMULET's phase times (s): model, librosa.load, features, scale + predict."""
    sums = [next(d for d in r.lines if d["event"] == "summary") for r in runs]
    keys = ("load_model_s", "load_audio_s", "features_s", "predict_s")
    return {k: statistics.median(s[k] for s in sums) for k in keys}


def bench_file(setup: Setup, wav: Path, repeat: int) -> dict[str, Any]:
    """Warm-up + agreement, then `repeat` alternating timed runs of both pipelines."""

    def amulet_run() -> Run:
        return measure(amulet_cmd(setup.python, wav), AMULET_MARKS, setup.work)

    def stream_run(model: Path | None) -> Run:
        cmd = stream_cmd(model, wav)
        return measure(cmd, STREAM_MARKS, setup.work, setup.stream_env)

    print(f"{wav.name}: warm-up", file=sys.stderr)
    warm_a, warm_s, _ = amulet_run(), stream_run(setup.model), stream_run(None)
    amulet: list[Run] = []
    stream: list[Run] = []
    default: list[Run] = []
    for i in range(repeat):
        print(f"{wav.name}: run {i + 1}/{repeat}", file=sys.stderr)
        amulet.append(amulet_run())
        stream.append(stream_run(setup.model))
        default.append(stream_run(None))
    a_wall, s_wall = med(amulet, "wall_s"), med(stream, "wall_s")
    a_cpu, s_cpu = med(amulet, "cpu_s"), med(stream, "cpu_s")
    assert a_wall and s_wall and a_cpu and s_cpu
    summary = next(d for d in stream[-1].lines if d["event"] == "summary")
    return {
        "audio_seconds": summary["audio_seconds"],
        "amulet": {**describe(amulet, AMULET_MARKS), "phases_median_s": amulet_phases(amulet)},
        "amulet_stream": {
            **describe(stream, STREAM_MARKS),
            "processing_seconds_median": statistics.median(
                next(d for d in r.lines if d["event"] == "summary")["processing_seconds"]
                for r in stream
            ),
        },
        "ratio_amulet_over_stream": a_wall / s_wall,
        "cpu_ratio_amulet_over_stream": a_cpu / s_cpu,
        "amulet_stream_default_model": describe(default, STREAM_MARKS),
        "ratio_amulet_over_default_model": a_wall / (med(default, "wall_s") or float("nan")),
        "agreement": agreement(warm_a, warm_s),
    }


def profile(setup: Setup, wav: Path, top: int = 15) -> list[dict[str, Any]]:
    """cProfile of the timed `amulet-stream replay` command: top entries by own time (s)."""
    script, out = setup.work / "replay_main.py", setup.work / "replay.prof"
    script.write_text(
        "import sys\nfrom amulet_stream.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    cmd: list[str | Path] = [PROJECT_BIN / "python", "-m", "cProfile", "-o", out, script]
    subprocess.run(
        [*cmd, *stream_cmd(setup.model, wav)[1:]],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, **setup.stream_env},
    )
    stats: Any = getattr(pstats.Stats(str(out)), "stats")  # noqa: B009 (untyped attribute)
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return [
        {
            "function": f"{Path(f).name}:{line}({name})",
            "calls": nc,
            "tottime_s": round(tt, 3),
            "cumtime_s": round(ct, 3),
        }
        for (f, line, name), (_cc, nc, tt, ct, _callers) in rows
    ]


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for the table, '-' when missing."""
    return "-" if value is None else f"{value:.{digits}f}"


def table(files: dict[str, Any]) -> str:
    """Markdown tables: medians per pipeline, ratios, agreement of the rows."""
    out = [
        "| file | pipeline | whole process (s) | CPU user+sys (s) | model loaded (s) "
        "| first output row (s) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in files.items():
        for label, key in (
            ("AMULET (librosa + Keras)", "amulet"),
            ("amulet-stream", "amulet_stream"),
        ):
            d = r[key]
            out.append(
                f"| {name} | {label} | {fmt(d['median_wall_s'], digits=3)} "
                f"| {fmt(d['median_cpu_s'])} | {fmt(d.get('median_model_loaded_s'))} "
                f"| {fmt(d['median_first_row_s'], digits=3)} "
                f"| {fmt(d['median_peak_rss_mib'], digits=1)} |"
            )
    out += [
        "",
        "| file | whole-process ratio (AMULET / stream) | CPU-time ratio |",
        "|---|---|---|",
    ]
    for name, r in files.items():
        out.append(
            f"| {name} | **{r['ratio_amulet_over_stream']:.1f}x** "
            f"| {r['cpu_ratio_amulet_over_stream']:.1f}x |"
        )
    out += [
        "",
        "| file | rows AMULET / stream | max start/end diff (s) | verdict AMULET / stream "
        "(any row above threshold) | rows above | max MAE diff |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in files.items():
        g = r["agreement"]
        out.append(
            f"| {name} | {g['rows_amulet']} / {g['rows_stream']} | {g['max_time_diff_s']:.5f} "
            f"| {g['verdict_amulet']} / {g['verdict_stream']} "
            f"| {g['rows_above_amulet']} / {g['rows_above_stream']} | {g['max_mae_diff']:.4f} |"
        )
    return "\n".join(out)


def repo_state() -> dict[str, Any]:
    """The measured code: HEAD commit and the files changed since (amulet-stream side)."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--", "amulet_stream", "export"],
        capture_output=True,
        text=True,
    )
    return {"commit": head.stdout.strip(), "changed": changed.stdout.split("\n")[:-1]}


def machine(python: Path) -> dict[str, Any]:
    """CPU count, OS and the versions each side runs with."""
    return {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "amulet_stream_env": versions(PROJECT_BIN / "python", ["numpy", "onnxruntime"]),
        "amulet_env": versions(
            python, ["numpy", "librosa", "soxr", "tensorflow-cpu", "keras", "h5py", "numba"]
        ),
    }


def main() -> None:
    """Parse flags, run both pipelines on both files, write JSON, print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per pipeline and file")
    ap.add_argument("--seconds", type=float, default=600.0, help="length of each test file (s)")
    ap.add_argument("--quick", action="store_true", help="60 s files, 2 repeats")
    ap.add_argument("--profile", action="store_true", help="also cProfile one replay (96 kHz)")
    ap.add_argument(
        "--stream-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the amulet-stream runs only, e.g. OPENBLAS_NUM_THREADS=1",
    )
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "amulet_side_by_side.json")
    args = ap.parse_args()
    seconds, repeat = (60.0, 2) if args.quick else (args.seconds, args.repeat)
    if not TIME.exists():
        raise SystemExit(f"{TIME} is missing: apt-get install time")
    wait_for(PROJECT_BIN / "amulet-stream", 3600.0)
    python = amulet_python()
    load_before, started, repo = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M"), repo_state()
    work = Path(tempfile.mkdtemp(prefix="amulet-sbs-"))
    try:
        model, wavs = prepare(work, seconds)
        stream_env = dict(kv.split("=", 1) for kv in args.stream_env)
        setup = Setup(python, model, work, stream_env)
        files = {name: bench_file(setup, wav, repeat) for name, wav in wavs.items()}
        first = next(iter(files.values()))
        result: dict[str, Any] = {
            "started": started,
            "repo": repo,
            "machine": machine(python),
            "seconds": seconds,
            "repeat": repeat,
            "load_average_before_after": [load_before, os.getloadavg()],
            "thread_env": {k: os.environ.get(k) for k in THREAD_VARS},
            "stream_env": stream_env,
            "goal": f"amulet-stream whole replay >= {GOAL_RATIO:.0f}x faster on the 96 kHz file",
            "goal_met": first["ratio_amulet_over_stream"] >= GOAL_RATIO,
            "files": files,
        }
        if args.profile:
            looped = next(iter(wavs.values()))
            result["profile_replay_96k_top_tottime"] = profile(setup, looped)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(files))
    print(f"\ngoal ({result['goal']}): {'met' if result['goal_met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
