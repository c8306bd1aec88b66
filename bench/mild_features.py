"""Mild faults: do closed-form feature families separate them and hold on a real fan?

Each family gives a score per 1 s window (hop 0.256 s) from a normal model fitted on healthy
training audio only, no TensorFlow: envelope spectrum (band-pass, Hilbert envelope, its
spectrum over 2-200 Hz), kurtosis of band-passed samples, spectral kurtosis of a short STFT,
spectral flatness and flux per mel group, a loudness baseline (z-scored, mean of squares; also
rises only), k-NN distance on window-mean log-mel (with and without the level), and an
IDNN-like ridge model predicting the middle log-mel frame from 2 + 2 neighbours. Synthetic
metrics as bench/band_evidence.py (full corpus, 2 h of generated normal audio, 12 seeds):
mild window AUC per fault kind, share of each mild fault's windows above 1.1 x the normal
maximum, each non-fault kind's maximum / normal maximum. Real fan (MIMII fan id00 in
../shared): fit on normal clips 0-9, clip score = mean window score, clip AUC on clips 10-19
vs 20 anomalous, held-out normal maximum / training maximum (training clips scored
leave-one-clip-out).

    python bench/mild_features.py [--work DIR] [--real DIR] [--out FILE.json] [--extra-hours H ...]

DIR keeps the corpus and normal audio between runs (default: a temporary folder). About
7 min on 2 cores (3 min when DIR already holds the audio). --extra-hours H: k-NN k=5 only, fit
on the training recordings plus H h of normal audio (600 s per seed from 9100; the test normal
is 9000-9011), into FILE.json's "extra_normal". Results: bench/results/mild_features.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from scipy.io import wavfile
from scipy.signal import butter, hilbert, resample_poly, sosfilt
from scipy.stats import rankdata

from amulet_export.corpus import Corpus, Recording, label_windows, normal_audio, synthetic_corpus
from amulet_stream.scoring.features import LOGMEL_V1

F64 = npt.NDArray[np.float64]
Feats = dict[str, F64]
Scorer = Callable[[Feats], F64]
Fitter = Callable[[list[Feats]], Scorer]
Tests = list[tuple[Recording, Feats]]
Res = dict[str, dict[str, object]]
RATE, NFFT, HOP, WIN, STEP = 16000, 1024, 512, 30, 8  # 30 frames = 0.992 s, hop 0.256 s
SPAN = (WIN - 1) * HOP + NFFT
BANDS = ((500.0, 1000.0), (1000.0, 2000.0), (2000.0, 4000.0), (4000.0, 7500.0))
EDGES = (2, 5, 10, 20, 40, 80, 140, 200)  # envelope spectrum bins, Hz (1 Hz resolution)


def win_sum(a: F64, starts: npt.NDArray[np.int64], n: int) -> F64:
    """Sum of rows starts..starts+n-1 of `a` (rows x ...), for each start."""
    cs = np.concatenate([np.zeros((1, *a.shape[1:])), np.cumsum(a, axis=0)])
    return np.asarray(cs[starts + n] - cs[starts], dtype=np.float64)


def features(x: npt.NDArray[np.float32], only_logmel: bool = False) -> Feats:
    """Frames and per-window features of mono audio at 16 kHz (or only the log-mel ones)."""
    x64 = x.astype(np.float64)
    n_frames = 1 + (x.size - NFFT) // HOP
    frames = sliding_window_view(x, NFFT)[::HOP][:n_frames]
    lm = LOGMEL_V1.frame_features(np.ascontiguousarray(frames))
    st = np.arange(0, n_frames - WIN + 1, STEP, dtype=np.int64)
    f: Feats = {"frames": lm, "t0": st * HOP / RATE}
    mean = win_sum(lm, st, WIN) / WIN
    f["logmel"] = mean
    f["level"] = mean.mean(1, keepdims=True)
    if only_logmel:
        return f
    p = 10.0 ** (lm / 10.0)  # flatness (log geometric / arithmetic mean) and flux per 8 mels
    g = p.reshape(len(p), 8, 8)
    flat = np.log(g).mean(2) - np.log(g.mean(2))
    flux = (np.diff(lm, axis=0) ** 2).reshape(len(lm) - 1, 8, 8).mean(2)
    f["flat-flux"] = np.hstack(
        [win_sum(flat, st, WIN) / WIN, win_sum(flux, st, WIN - 1) / (WIN - 1)]
    )
    s0 = st * HOP
    kurt, env = [], []
    for lo, hi in BANDS:
        b = sosfilt(butter(4, [lo, hi], btype="band", fs=RATE, output="sos"), x64)
        m2 = win_sum(b**2, s0, SPAN)
        m4 = win_sum(b**4, s0, SPAN)
        kurt.append(np.log(m4 * SPAN / np.maximum(m2**2, 1e-30)))
        e = resample_poly(np.abs(hilbert(b)), 1, 16)  # envelope at 1 kHz
        seg = sliding_window_view(e, SPAN // 16)[st * HOP // 16]
        em = seg.mean(1, keepdims=True)
        spec = np.abs(np.fft.rfft((seg - em) * np.hanning(seg.shape[1]), n=1000)) ** 2
        spec /= np.maximum(em, 1e-12) ** 2
        band = spec[:, 2:201]
        cols = [np.log10(band.max(1) / np.median(band, 1))]
        cols += [np.log10(spec[:, a:c].mean(1) + 1e-12) for a, c in itertools.pairwise(EDGES)]
        env.append(np.stack(cols, 1))
    f["kurtosis"] = np.stack(kurt, 1)
    f["envelope"] = np.hstack(env)
    fr = sliding_window_view(x64, 256)[::128] * np.hanning(256)  # spectral kurtosis, 8 ms frames
    pw = np.abs(np.fft.rfft(fr, axis=1)[:, 1:129]) ** 2
    n2 = (SPAN - 256) // 128 + 1
    s1, s2 = win_sum(pw, st * 4, n2) / n2, win_sum(pw**2, st * 4, n2) / n2
    sk = s2 / np.maximum(s1**2, 1e-30) - 2.0
    f["sk-stft"] = sk.reshape(len(st), 16, 8).mean(2)
    return f


def zchi(key: str, rises: bool) -> Fitter:
    """Per-feature z against the training windows, mean of squares (rises only: z > 0)."""

    def fit(train: list[Feats]) -> Scorer:
        ref = np.concatenate([t[key] for t in train])
        mu, sd = ref.mean(0), ref.std(0) + 1e-6

        def score(f: Feats) -> F64:
            z = (f[key] - mu) / sd
            return np.asarray(((np.maximum(z, 0.0) if rises else z) ** 2).mean(1))

        return score

    return fit


def knn(k: int, no_level: bool) -> Fitter:
    """Mean RMS-dB distance of a window's mean log-mel to its k nearest training windows."""

    def prep(a: F64) -> F64:
        return a - np.median(a, 1, keepdims=True) if no_level else a

    def fit(train: list[Feats]) -> Scorer:
        ref = prep(np.concatenate([t["logmel"] for t in train]))
        rr = (ref**2).sum(1)

        def score(f: Feats) -> F64:
            q, out = prep(f["logmel"]), []
            for i in range(0, len(q), 256):
                c = q[i : i + 256]
                d = (c**2).sum(1)[:, None] + rr[None, :] - 2.0 * c @ ref.T
                d = np.partition(d, k - 1, 1)[:, :k]  # the k smallest, in any order
                out.append(np.sqrt(np.maximum(d, 0.0) / 64).mean(1))
            return np.concatenate(out)

        return score

    return fit


def ridge_ctx(lm: F64) -> tuple[F64, F64]:
    """Inputs (frames t-2, t-1, t+1, t+2 and a bias) and targets (frame t)."""
    n = len(lm) - 4
    x = np.hstack([lm[0:n], lm[1 : n + 1], lm[3 : n + 3], lm[4 : n + 4], np.ones((n, 1))])
    return x, lm[2 : n + 2]


def ridge(train: list[Feats]) -> Scorer:
    """IDNN-like: ridge regression of the middle log-mel frame; window mean squared error."""
    xs, ys = zip(*(ridge_ctx(t["frames"]) for t in train), strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    g = x.T @ x
    w = np.linalg.solve(g + 1e-3 * np.trace(g) / len(g) * np.eye(len(g)), x.T @ y)

    def score(f: Feats) -> F64:
        xi, yi = ridge_ctx(f["frames"])
        err = ((xi @ w - yi) ** 2).mean(1)
        st = np.round(f["t0"] * RATE / HOP).astype(np.int64)
        return win_sum(err[:, None], st, WIN - 4)[:, 0] / (WIN - 4)

    return score


FAMILIES: dict[str, Fitter] = {
    "level (baseline)": zchi("level", False),
    "envelope spectrum": zchi("envelope", False),
    "envelope spectrum, rises": zchi("envelope", True),
    "band kurtosis": zchi("kurtosis", False),
    "band kurtosis, rises": zchi("kurtosis", True),
    "spectral kurtosis (STFT)": zchi("sk-stft", False),
    "spectral kurtosis (STFT), rises": zchi("sk-stft", True),
    "flatness + flux": zchi("flat-flux", False),
    "k-NN k=1": knn(1, False),
    "k-NN k=5": knn(5, False),
    "k-NN k=1, level removed": knn(1, True),
    "k-NN k=5, level removed": knn(5, True),
    "ridge interpolation (IDNN-like)": ridge,
}


def auc(pos: F64, neg: F64) -> float:
    """ROC-AUC by ranks (ties counted half)."""
    r = rankdata(np.concatenate([pos, neg]))
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def read(path: Path) -> npt.NDArray[np.float32]:
    """Mono float32 at 16 kHz from a wav file."""
    rate, a = wavfile.read(path)
    x = a.astype(np.float64) / (32768.0 if a.dtype == np.int16 else 1.0)
    x = x.mean(1) if x.ndim == 2 else x
    return np.asarray(x if rate == RATE else resample_poly(x, RATE, rate), dtype=np.float32)


def healthy(work: Path, seed: int, light: bool) -> Feats:
    """Features of 600 s of generated normal audio of `seed` (the audio cached in `work`)."""
    cache = work / (f"normal{seed - 9000}.npy" if seed < 9100 else f"normal_seed{seed}.npy")
    if not cache.exists():
        np.save(cache, normal_audio(600.0, RATE, seed))
    return features(np.load(cache), light)


def synthetic(work: Path, extra_hours: list[float] | None) -> dict[str, object]:
    """Every family's synthetic metrics; with `extra_hours`, k-NN k=5 per H (module docstring)."""
    man = work / "corpus" / "corpus.json"
    if man.exists():  # written by an earlier run: the same arguments give the same files
        d = json.loads(man.read_text())
        fields = ("name", "kind", "severity", "path", "seconds", "fault", "is_fault")
        recs = [Recording(**{k: r[k] for k in fields}) for r in d["test"]]
        recs = [replace(r, path=Path(r.path), fault=r.fault and tuple(r.fault)) for r in recs]
        corp = Corpus([Path(p) for p in d["train"]], recs)
    else:
        corp = synthetic_corpus(work / "corpus", "full")
    light = extra_hours is not None
    train = [features(read(p), light) for p in corp.train]
    test = [(rec, features(read(rec.path), light)) for rec in corp.test]
    normal = [healthy(work, 9000 + i, light) for i in range(12)]
    if extra_hours is None:
        return {**evaluate(FAMILIES, train, test, normal)}
    extra = [healthy(work, 9100 + i, light) for i in range(round(max(extra_hours) * 6))]
    fams = {k: FAMILIES[k] for k in ("k-NN k=5", "k-NN k=5, level removed")}
    out: dict[str, object] = {}
    for h in extra_hours:  # seeds 9100 .. 9100 + 6 h - 1
        fit = train + extra[: round(h * 6)]
        n = sum(len(f["logmel"]) for f in fit)
        out[f"{h:g} h"] = {"training_windows": n, **evaluate(fams, fit, test, normal)}
    return out


def evaluate(fams: dict[str, Fitter], train: list[Feats], test: Tests, normal: list[Feats]) -> Res:
    """Synthetic metrics of `fams` fitted on `train` (module docstring)."""
    out: Res = {}
    for name, fit in fams.items():
        t = time.perf_counter()
        score = fit(train)
        norm = np.concatenate([score(f) for f in normal])
        top = float(norm.max())
        mild: dict[str, float] = {}
        moderate: dict[str, float] = {}
        kinds: dict[str, list[F64]] = {}
        benign: dict[str, float] = {}
        for rec, f in test:
            s = score(f)
            inside = fault_windows(rec, f, s)
            if rec.is_fault and inside.size:
                share = round(float((inside > 1.1 * top).mean()), 2)
                if rec.severity == 0.2:
                    mild[rec.name] = share
                    kinds.setdefault(rec.kind, []).append(inside)
                elif rec.severity == 0.5:
                    moderate[rec.name] = share
            elif not rec.is_fault:
                benign[rec.kind] = max(benign.get(rec.kind, 0.0), round(float(s.max()) / top, 2))
        aucs = {k: round(auc(np.concatenate(v), norm), 3) for k, v in kinds.items()}
        n_pass = sum(v >= 0.5 for v in mild.values())
        q50, q999 = np.quantile(norm, [0.5, 0.999])
        med = {k: round(float(np.median(np.hstack(v))) / top, 3) for k, v in kinds.items()}
        out[name] = {
            "mild_pass": n_pass,
            "seconds": round(time.perf_counter() - t, 1),
            "normal_max": round(top, 4),
            "normal_q50_q999_over_max": [round(q50 / top, 3), round(q999 / top, 3)],
            "mild_median_over_max": med,
            "mild_share": mild,
            "mild_auc": aucs,
            "moderate_share": moderate,
            "non_fault_max_over_normal_max": benign,
        }
        print(name, "mild >=50%:", n_pass, aucs, benign, flush=True)
    return out


def fault_windows(rec: Recording, f: Feats, s: F64) -> F64:
    """Scores of the windows with at least half their length inside the fault."""
    t0 = f["t0"]
    return np.asarray(s[label_windows(rec, t0, t0 + SPAN / RATE, 0.5)], dtype=np.float64)


def real(folder: Path) -> dict[str, dict[str, object]]:
    """Every family's real-fan metrics (module docstring)."""
    normal = [features(read(p)) for p in sorted((folder / "normal").glob("*.wav"))]
    anomaly = [features(read(p)) for p in sorted((folder / "anomaly").glob("*.wav"))]
    train, held = normal[:10], normal[10:]
    out: dict[str, dict[str, object]] = {}
    for name, fit in FAMILIES.items():
        score = fit(train)
        loo = [float(fit(train[:i] + train[i + 1 :])(t).mean()) for i, t in enumerate(train)]
        h = np.array([score(f).mean() for f in held])
        a = np.array([score(f).mean() for f in anomaly])
        out[name] = {
            "clip_auc": round(auc(a, h), 3),
            "train_max_loo": round(max(loo), 4),
            "held_max_over_train_max": round(float(h.max()) / max(loo), 2),
            "held_above_train_max": int((h > max(loo)).sum()),
            "train_clip_scores_loo": [round(v, 3) for v in loo],
            "held_clip_scores": [round(float(v), 3) for v in h],
        }
        print(name, out[name], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--work", type=Path, help="corpus and normal audio cache (default: temporary)")
    ap.add_argument("--real", type=Path, default=Path("../shared/data/real/mimii-fan-id00"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/mild_features.json"))
    ap.add_argument("--extra-hours", type=float, nargs="+", help="hours of extra normal audio")
    args = ap.parse_args()
    machine = f"{platform.machine()}, Python {platform.python_version()}"
    hours, t = args.extra_hours, time.perf_counter()
    doc: dict[str, object] = {"machine": machine}
    if hours and args.out.exists():  # keep the full run's results
        doc = json.loads(args.out.read_text())
    elif not hours:
        doc["real"] = real(args.real) if args.real.is_dir() else f"skipped: no {args.real}"
    with tempfile.TemporaryDirectory(prefix="amulet-mild-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        res = synthetic(work, hours)
    wall, date = round(time.perf_counter() - t), time.strftime("%Y-%m-%d")
    extra = {"machine": machine, "date": date, "wall_seconds": wall, **res}
    doc["extra_normal" if hours else "synthetic"] = extra if hours else res
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
