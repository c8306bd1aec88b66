"""The floor of a whole-process replay, measured piece by piece (issue 17): what the least a
replay must do costs on this machine, to set `amulet-stream replay` against.

    python bench/replay_floor.py WAV [--repeat 3]   # -> bench/results/replay_floor.json

Pieces, each its own fresh process or timed in process (medians of --repeat):
1. interpreter start and `import numpy, onnxruntime, soxr` (a fresh process, wall time);
2. reading the 16-bit wav and down-mixing it to mono float32 in one pass (np.memmap);
3. soxr HQ from the file's rate to 16 kHz in one call;
4. log-mel frames of the whole signal in one batch (64 mels, n_fft 1024, hop 512, float32
   FFT) and the default model on every vector at a hop of 8 frames, one onnxruntime call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import onnxruntime as ort
import soxr

from amulet_stream.audio.wav import read_info
from amulet_stream.scoring.features import LOGMEL_V1
from amulet_stream.scoring.model import INPUT_NAME, OUTPUT_NAME, default_model_path

RESULTS = Path(__file__).parent / "results"


def imports() -> float:
    """Seconds for a fresh interpreter to import numpy, onnxruntime and soxr and exit."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import numpy, onnxruntime, soxr"], check=True)
    return time.perf_counter() - t0


def read_mix(path: Path) -> tuple[np.ndarray, int, float]:
    """Mono float32 of a 16-bit PCM wav, and the seconds it took."""
    info = read_info(path)
    t0 = time.perf_counter()
    raw = np.memmap(path, np.int16, "r", info.data_offset, (info.frames, info.channels))
    mono = raw[:, 0].astype(np.float32)
    for c in range(1, info.channels):
        mono += raw[:, c]
    mono *= np.float32(1 / (32768 * info.channels))
    return mono, info.rate, time.perf_counter() - t0


def features_and_model(x: np.ndarray) -> float:
    """Seconds for log-mel vectors of the whole 16 kHz signal and one onnxruntime call."""
    p = LOGMEL_V1
    sess = ort.InferenceSession(str(default_model_path()), providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    frames = np.lib.stride_tricks.sliding_window_view(x, p.n_fft)[:: p.frame_hop]
    spec = np.fft.rfft(frames * np.hanning(p.n_fft).astype(np.float32), axis=1)
    mel = (spec.real**2 + spec.imag**2) @ p._mel_t
    db = (10 * np.log10(np.maximum(mel, 1e-10))).astype(np.float32)
    hop = p.hop // p.frame_hop
    starts = np.arange(0, db.shape[0] - p.stack + 1, hop)
    vectors = np.stack([db[starts + k] for k in range(p.stack)], axis=1).reshape(len(starts), -1)
    sess.run([OUTPUT_NAME], {INPUT_NAME: vectors})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wav", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "replay_floor.json")
    args = ap.parse_args()
    runs: dict[str, list[float]] = {"imports": [], "read_mix": [], "soxr": [], "features_model": []}
    for _ in range(args.repeat):
        runs["imports"].append(imports())
        mono, rate, took = read_mix(args.wav)
        runs["read_mix"].append(took)
        t0 = time.perf_counter()
        x = soxr.resample(mono, rate, 16000, quality="HQ")
        runs["soxr"].append(time.perf_counter() - t0)
        runs["features_model"].append(features_and_model(x))
    med = {k: round(statistics.median(v), 3) for k, v in runs.items()}
    info = read_info(args.wav)
    result = {
        "file": str(args.wav),
        "audio_seconds": round(info.duration, 1),
        "rate": info.rate,
        "channels": info.channels,
        "load_average": os.getloadavg(),
        "median_seconds": med,
        "floor_seconds": round(sum(med.values()), 3),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
