"""Mild faults: would a band-averaged residual separate them where the window MAE does not?

The default score is a window's mean absolute reconstruction error over every feature: a small,
steady change in a few mel bands drowns in the noise of the others. This measures an
alternative on the synthetic corpus: each mel band's signed residual averaged over T seconds,
z-scored by the training recordings' spread, mean of squares ("band chi"). For each T it
prints, per mild fault recording, the share of its fault windows above 1.1 x the largest value
in 2 h of generated normal audio (12 conditions), and each non-fault kind's largest value as a
multiple of that normal maximum (above 1: it would alarm).

    python bench/band_evidence.py --model MODEL.onnx [--work DIR] [--out FILE.json]

MODEL: a logmel-v1 model with the residual output, trained on the full corpus's healthy
recordings (for example `amulet-export evaluate --size full --candidates dense-ae --work DIR`
leaves it in OUT/models/dense-ae/model.onnx). Takes about 3 min here. The check it suggests was
built and evaluated end to end, and rejected: bench/results/drift_trial.md."""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from amulet_export.corpus import normal_audio, synthetic_corpus
from amulet_export.dataset import file_vectors
from amulet_stream.audio.wav import read_info
from amulet_stream.audio.wav_write import write_wav
from amulet_stream.scoring.model import Model

F64 = npt.NDArray[np.float64]
SECONDS = (1.0, 2.0, 4.0)


def residuals(model: Model, path: Path) -> F64:
    """Per-vector residual of each mel band, averaged over the stacked frames: (N, mels) dB."""
    p = model.profile
    v = np.concatenate(list(file_vectors(read_info(path), p, None)))
    r = np.concatenate([model.residuals(v[i : i + 4096]) for i in range(0, len(v), 4096)])
    return r.reshape(len(r), p.stack, p.n_mels).mean(axis=1).astype(np.float64)


def band_means(model: Model, r: F64, seconds: float) -> tuple[F64, F64, F64]:
    """Each band's mean residual over windows of `seconds` at the serving hop: (W, mels),
    with the windows' start and end times in s."""
    p = model.profile
    n = max(1, round(seconds * p.rate / p.step) - p.stack + 1)
    starts = np.arange(0, len(r) - n + 1, p.hop_vectors)
    cs = np.concatenate([np.zeros((1, r.shape[1])), np.cumsum(r, 0)])
    t0 = (starts * p.step + p.offset) / p.rate
    return (cs[starts + n] - cs[starts]) / n, t0, t0 + ((n - 1) * p.step + p.span) / p.rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--work", type=Path, help="corpus folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/band_evidence.json"))
    args = ap.parse_args()
    model = Model(args.model)
    with tempfile.TemporaryDirectory(prefix="amulet-bands-") as tmp:
        corp = synthetic_corpus(args.work or Path(tmp) / "corpus", "full")
        train = [residuals(model, f) for f in corp.train]
        test = {rec.name: residuals(model, rec.path) for rec in corp.test}
        normal = []
        for i in range(12):
            wav = Path(tmp) / f"normal{i}.wav"
            write_wav(wav, normal_audio(600.0, 16000, 9000 + i), 16000)
            normal.append(residuals(model, wav))
    doc: dict[str, object] = {"machine": f"{platform.machine()}, {platform.python_version()}"}
    for secs in SECONDS:
        ref = np.concatenate([band_means(model, r, secs)[0] for r in train])
        mu, sd = ref.mean(0), ref.std(0) + 1e-3

        def chi(r: F64, s: float = secs, m: F64 = mu, d: F64 = sd) -> tuple[F64, F64, F64]:
            w, t0, t1 = band_means(model, r, s)
            return (((w - m) / d) ** 2).mean(1), t0, t1

        top = max(float(chi(r)[0].max()) for r in normal)
        mild: dict[str, float] = {}
        benign: dict[str, float] = {}
        for rec in corp.test:
            c, t0, t1 = chi(test[rec.name])
            if rec.is_fault and rec.severity == 0.2 and rec.fault is not None:
                inside = c[(t0 >= rec.fault[0]) & (t1 <= rec.fault[1])]
                share = float((inside > 1.1 * top).mean()) if inside.size else float("nan")
                mild[rec.name] = round(share, 2)
            elif not rec.is_fault:
                kind = rec.kind
                benign[kind] = max(benign.get(kind, 0.0), round(float(c.max()) / top, 2))
        doc[f"{secs:g} s"] = {"normal_max": round(top, 3), "mild": mild, "non_fault": benign}
        print(f"{secs:g} s: normal max {top:.2f}")
        print("  mild, share of fault windows above 1.1 x that:", mild)
        print("  non-fault kinds, largest / normal max:", benign)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
