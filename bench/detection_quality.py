"""Detection quality of each feature profile on generated motor sound.

Trains every profile on the same healthy recording, then scores unseen healthy recordings
(other seeds: other phases and noise) and faulty ones (bearing, imbalance, each at two
severities). Reports ROC AUC per fault and the false-alarm and detection rates at each
model's own threshold. Usage:

    python bench/detection_quality.py [--train-seconds 60] [--epochs 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from amulet_export.dataset import stream_windows
from amulet_export.train import TrainConfig, train
from amulet_stream.features import PROFILES
from amulet_stream.model import Model
from amulet_stream.synth import Fault, generate
from amulet_stream.wav import read_info, write_wav

F32 = npt.NDArray[np.float32]
RATE = 48000


def auc(neg: F32, pos: F32) -> float:
    """Probability that a faulty window scores above a healthy one (ties count half)."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def window_scores(model: Model, path: Path) -> F32:
    """Scores of a file's windows at the model's serving hop."""
    info = read_info(path)
    out = [
        model.score_windows(model.profile.compute(w))
        for w, _ in stream_windows(info, model.profile, model.profile.hop, None)
    ]
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train-seconds", type=float, default=60.0)
    ap.add_argument("--test-seconds", type=float, default=30.0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--model",
        type=Path,
        action="append",
        default=[],
        help="also evaluate this trained model (e.g. models/default.onnx)",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="amulet-quality-"))
    train_wav = work / "train.wav"
    write_wav(train_wav, generate(args.train_seconds, RATE, seed=1), RATE)
    tests: dict[str, Path] = {}
    for seed in (101, 102, 103):
        tests[f"healthy/{seed}"] = work / f"healthy{seed}.wav"
        write_wav(tests[f"healthy/{seed}"], generate(args.test_seconds, RATE, seed=seed), RATE)
    for kind in ("bearing", "imbalance"):
        for sev in (0.2, 0.5):
            name = f"{kind}/{sev}"
            tests[name] = work / f"{kind}{sev}.wav"
            fault = Fault(kind, 0.0, args.test_seconds, sev)
            write_wav(tests[name], generate(args.test_seconds, RATE, seed=200, fault=fault), RATE)
    results: dict[str, dict[str, object]] = {}
    candidates = [(p, None) for p in PROFILES] + [(str(m), m) for m in args.model]
    for label, given in candidates:
        path = given or train(TrainConfig([train_wav], work / label, label, epochs=args.epochs))
        model = Model(path)
        scores = {name: window_scores(model, p) for name, p in tests.items()}
        healthy = np.concatenate([s for n, s in scores.items() if n.startswith("healthy")])
        thr = model.threshold
        row: dict[str, object] = {
            "threshold": thr,
            "false_alarm_rate": float((healthy > thr).mean()),
        }
        for name, s in scores.items():
            if not name.startswith("healthy"):
                row[f"auc {name}"] = round(auc(healthy, s), 4)
                row[f"detected {name}"] = float((s > thr).mean())
        results[label] = row
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "detection_quality.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
