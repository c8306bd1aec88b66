"""Evaluation figures: per fault type hits, delay, AUC and pAUC; false alarms per 24 h; plots."""

from __future__ import annotations

import itertools
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from amulet_stream.scoring.detector import DetectorSettings, effective_threshold

from .corpus import Corpus, Recording, label_windows
from .evaluate import Result, auc, detect, roc

F64 = npt.NDArray[np.float64]
MIN_OVERLAP = 0.25
"""A window counts as faulty when at least this share of it lies inside the fault."""
LATE = 2.0
"""An alert up to this many seconds after a fault ends still counts as its hit."""
HOPS = (1, 4, 8, 16)
ALERT = (0.25, 0.5, 0.75, 1.0, 1.5)
WITHIN = (1.0, 2.0, 3.0, 5.0)
BURSTS = ((float("inf"), 0.5), (1.2, 0.25), (1.2, 0.5), (1.3, 0.25), (1.3, 0.5), (1.5, 0.5))
"""(burst_ratio, burst_seconds); an infinite ratio: no burst rule."""
CLEAR = 3.0
FA_GOAL = 1.0
"""False alarms per 24 h of normal audio allowed when choosing detector settings."""


@dataclass(frozen=True)
class Setting:
    """A detector setting with the serving hop in vectors."""

    hop: int
    alert_seconds: float
    within_seconds: float
    burst_ratio: float
    burst_seconds: float

    def detector(self) -> DetectorSettings:
        """The runtime's settings for this point."""
        return DetectorSettings(
            alert_seconds=self.alert_seconds,
            within_seconds=self.within_seconds,
            burst_ratio=self.burst_ratio,
            burst_seconds=self.burst_seconds,
            clear_seconds=CLEAR,
        )


@dataclass
class Outcome:
    """Hits, delays and false alarms of one candidate under one setting."""

    hits: int
    faults: int
    delays: list[float]
    missed: list[str]
    false_alarms_24h: float
    benign_alarms: int
    early_alarms: int
    """Alerts in fault recordings before the fault started."""

    @property
    def median_delay(self) -> float:
        """Median seconds from fault onset to the alert, over the hits."""
        return float(np.median(self.delays)) if self.delays else float("nan")


def _hop_ok(res: Result, hop: int) -> bool:
    """amulet-v1 windows are AMULET's rows: only a hop of one row keeps them."""
    any_scored = next(iter(res.scored.values()), None)
    return hop == 1 or any_scored is None or any_scored.hop_seconds < 0.05


def outcome(res: Result, corp: Corpus, st: Setting, hours: float) -> Outcome:
    """Detector results of one candidate on the whole corpus under one setting."""
    det = st.detector()
    hits, delays, missed, benign, early = 0, [], [], 0, 0
    faults = [r for r in corp.test if r.is_fault]
    for rec in corp.test:
        s = res.scored[rec.name].at_hop(st.hop)
        alerts = detect(s, res.threshold, det)
        if not rec.is_fault or rec.fault is None:
            benign += alerts.size
            continue
        on, off = rec.fault
        times = s.ends[alerts]
        inside = alerts[(times >= on) & (s.starts[alerts] <= off + LATE)]
        early += int((times < on).sum())
        if inside.size:
            hits += 1
            delays.append(float(s.ends[inside[0]] - on))
        else:
            missed.append(rec.name)
    fa = float("nan")
    if res.normal is not None and hours > 0:
        fa = detect(res.normal.at_hop(st.hop), res.threshold, det).size * 24.0 / hours
    return Outcome(hits, len(faults), delays, missed, fa, benign, early)


def choose(res: Result, corp: Corpus, hours: float) -> tuple[Setting, Outcome]:
    """The setting with at most FA_GOAL false alarms per 24 h, then the fewest alarms on the
    non-fault recordings, then the most hits; ties: shorter median delay, then fewer early
    alarms, then a larger hop (cheaper output)."""
    best: tuple[tuple[float, ...], Setting, Outcome] | None = None
    for st, o in sweep(res, corp, hours):
        fa = float(np.nan_to_num(o.false_alarms_24h))
        key = (
            float(fa <= FA_GOAL),
            -o.benign_alarms,
            o.hits,
            -np.nan_to_num(o.median_delay, nan=1e9),
            -o.early_alarms,
            st.hop,
        )
        if best is None or key > best[0]:
            best = (key, st, o)
    assert best is not None
    return best[1], best[2]


def sweep(res: Result, corp: Corpus, hours: float) -> list[tuple[Setting, Outcome]]:
    """Outcomes of every setting of the grid that the candidate's windows allow."""
    grid = [
        Setting(hop, alert, within, ratio, burst)
        for hop, alert, within, (ratio, burst) in itertools.product(HOPS, ALERT, WITHIN, BURSTS)
        if alert <= within and _hop_ok(res, hop)
    ]
    return [(st, outcome(res, corp, st, hours)) for st in grid]


def groups(corp: Corpus) -> dict[str, list[Recording]]:
    """Fault recordings by 'kind severity'."""
    out: dict[str, list[Recording]] = {}
    for rec in corp.test:
        if rec.is_fault:
            out.setdefault(f"{rec.kind} {rec.severity:g}", []).append(rec)
    return dict(sorted(out.items()))


def window_sets(res: Result, corp: Corpus, hop: int) -> tuple[F64, dict[str, F64]]:
    """Normal window scores / threshold (healthy and benign test windows, windows before a
    fault, normal audio) and faulty window scores / threshold per group."""
    neg = []
    pos: dict[str, list[F64]] = {}
    for rec in corp.test:
        s = res.scored[rec.name].at_hop(hop)
        lab = np.asarray(label_windows(rec, s.starts, s.ends, MIN_OVERLAP), bool)
        if rec.is_fault:
            pos.setdefault(f"{rec.kind} {rec.severity:g}", []).append(s.scores[lab])
            if rec.fault is not None:
                neg.append(s.scores[s.ends <= rec.fault[0]])
        else:
            neg.append(s.scores)
    if res.normal is not None:
        neg.append(res.normal.at_hop(max(hop, 8)).scores)
    return np.concatenate(neg) / res.threshold, {
        k: np.concatenate(v) / res.threshold for k, v in pos.items()
    }


def write(
    results: list[Result], corp: Corpus, out: Path, hours: float, command: str
) -> dict[str, Any]:
    """Write results.json, evaluation.md and the plots into `out`; return the results."""
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "command": command,
        "machine": _machine(),
        "normal_hours": hours,
        "corpus": {
            "train": [p.name for p in corp.train],
            "test": [
                {k: str(v) if isinstance(v, Path) else v for k, v in asdict(r).items()}
                for r in corp.test
            ],
        },
        "candidates": {},
    }
    chosen: dict[str, Setting] = {}
    for res in results:
        st, o = choose(res, corp, hours)
        chosen[res.name] = st
        neg, pos = window_sets(res, corp, st.hop)
        hop_s = res.scored[corp.test[0].name].hop_seconds * st.hop
        doc["candidates"][res.name] = {
            "note": res.note,
            "threshold": res.threshold,
            "train_seconds": round(res.train_seconds, 1),
            "model_kib": round(res.model_bytes / 1024, 1),
            "cpu_percent_of_core": round(100 * res.cpu_per_audio_second, 3),
            "setting": {**asdict(st), "hop_seconds": round(hop_s, 4), "clear_seconds": CLEAR},
            "meets_goal": bool(
                not o.benign_alarms and float(np.nan_to_num(o.false_alarms_24h)) <= FA_GOAL
            ),
            "hits": o.hits,
            "faults": o.faults,
            "missed": o.missed,
            "median_delay_s": round(o.median_delay, 2),
            "false_alarms_per_24h": round(o.false_alarms_24h, 2),
            "benign_alarms": o.benign_alarms,
            "early_alarms": o.early_alarms,
            "groups": {
                g: {
                    "auc": round(auc(neg, pos.get(g, np.zeros(0))), 4),
                    "pauc": round(auc(neg, pos.get(g, np.zeros(0)), 0.1), 4),
                    "hits": sum(1 for r in recs if r.name not in o.missed),
                    "recordings": len(recs),
                }
                for g, recs in groups(corp).items()
            },
        }
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    with (out / "settings.csv").open("w") as fh:
        fh.write(
            "candidate,hop_s,alert_s,within_s,burst_ratio,burst_s,hits,faults,median_delay_s,"
            "false_alarms_per_24h,non_fault_alarms,early_alarms\n"
        )
        for res in results:
            hop_s = res.scored[corp.test[0].name].hop_seconds
            for st, o in sweep(res, corp, hours):
                fh.write(
                    f"{res.name},{hop_s * st.hop:.4f},{st.alert_seconds:g},"
                    f"{st.within_seconds:g},{st.burst_ratio:g},{st.burst_seconds:g},"
                    f"{o.hits},{o.faults},{o.median_delay:.2f},"
                    f"{o.false_alarms_24h:.2f},{o.benign_alarms},{o.early_alarms}\n"
                )
    (out / "evaluation.md").write_text(_markdown(doc, corp))
    _plots(results, corp, chosen, out)
    return doc


def _machine() -> dict[str, str]:
    import onnxruntime

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cores": str(len(os.sched_getaffinity(0))),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _markdown(doc: dict[str, Any], corp: Corpus) -> str:
    cands = doc["candidates"]
    gnames = list(groups(corp))
    lines = [
        "# Detection quality: `amulet-export evaluate`",
        "",
        f"Command: `{doc['command']}`  ",
        f"Machine: {doc['machine']['platform']}, {doc['machine']['cores']} cores, Python "
        f"{doc['machine']['python']}, numpy {doc['machine']['numpy']}, onnxruntime "
        f"{doc['machine']['onnxruntime']}.  ",
        f"Corpus: {len(corp.train)} healthy training recordings; {len(corp.test)} test "
        f"recordings; {doc['normal_hours']:g} h of generated normal audio for false alarms.",
        "",
        "Each candidate at its best detector setting: the one with the most faults alerted "
        f"among those with at most {FA_GOAL:g} false alarm per 24 h of normal audio and no "
        'alarm on the non-fault recordings ("meets goal": yes); where no setting meets '
        'that, the one with the fewest false alarms ("meets goal": no). Hits: fault '
        "recordings alerted between onset and 2 s after the fault ended. Delay: from fault "
        "onset to the end of the alerting window. Non-fault alarms: alerts on the healthy, "
        "speed-change, level-change and background recordings. Early alarms: alerts in fault "
        "recordings before the fault began (false alarms too).",
        "",
        "| candidate | meets goal | hits | median delay s | false alarms / 24 h | non-fault "
        "alarms | early alarms | hop s | alert / within s | burst x threshold / s | train s | "
        "model KiB | CPU % of a core |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cands.items():
        st = c["setting"]
        fa = c["false_alarms_per_24h"]
        lines.append(
            f"| {name} | {'yes' if c['meets_goal'] else 'no'} | {c['hits']}/{c['faults']} | "
            f"{_num(c['median_delay_s'])} | {'not measured' if np.isnan(fa) else fa} | "
            f"{c['benign_alarms']} | {c['early_alarms']} | "
            f"{st['hop_seconds']} | {st['alert_seconds']:g} / {st['within_seconds']:g} | "
            f"{st['burst_ratio']:g} / {st['burst_seconds']:g} | "
            f"{c['train_seconds']} | {c['model_kib']} | "
            f"{c['cpu_percent_of_core'] if not np.isnan(fa) else '-'} |"
        )
    lines += [
        "",
        "ROC-AUC / pAUC (FPR <= 0.1) of window scores, faulty windows against every normal window:",
        "",
        "| fault severity | " + " | ".join(cands) + " |",
        "|---|" + "---|" * len(cands),
    ]
    for g in gnames:
        cells = [
            f"{c['groups'][g]['auc']:.3f} / {c['groups'][g]['pauc']:.3f} "
            f"({c['groups'][g]['hits']}/{c['groups'][g]['recordings']})"
            for c in cands.values()
        ]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "In brackets: recordings of that fault alerted by the detector.",
        "",
        "Missed:",
        "",
    ]
    for name, c in cands.items():
        lines.append(f"- {name}: {', '.join(c['missed']) or 'none'}")
    lines += [
        "",
        "![ROC curves](roc.png)",
        "",
        "![scores](scores.png)",
        "",
        "![timeline](timeline.png)",
        "",
    ]
    return "\n".join(lines)


def _num(x: float) -> str:
    """A number for the table; a dash for NaN (nothing to take the median of)."""
    return "-" if np.isnan(x) else f"{x:g}"


def _plots(results: list[Result], corp: Corpus, chosen: dict[str, Setting], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gnames = list(groups(corp))
    cols = min(4, len(gnames))
    rows = -(-len(gnames) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    sets = {r.name: window_sets(r, corp, chosen[r.name].hop) for r in results}
    for ax, g in zip(axes.flat, gnames, strict=False):
        for r in results:
            neg, pos = sets[r.name]
            if g in pos and pos[g].size:
                fpr, tpr = roc(neg, pos[g])
                ax.plot(fpr, tpr, label=f"{r.name} ({auc(neg, pos[g]):.2f})")
        ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
        ax.set_title(g, fontsize=9)
        ax.set_xlabel("false-positive rate", fontsize=8)
        ax.set_ylabel("true-positive rate", fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
    for ax in axes.flat[len(gnames) :]:
        ax.axis("off")
    fig.suptitle("ROC of window scores per fault (faulty vs every normal window)")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=90)
    plt.close(fig)

    cols = min(4, len(results))
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(results) :]:
        ax.axis("off")
    for ax, r in zip(axes.flat, results, strict=False):
        neg, pos = sets[r.name]
        allpos = np.concatenate(list(pos.values())) if pos else np.zeros(0)
        top = float(np.quantile(np.concatenate([neg, allpos]), 0.99)) * 1.2
        bins = np.linspace(0, max(top, 1.5), 60)
        ax.hist(np.clip(neg, 0, bins[-1]), bins, density=True, alpha=0.6, label="normal")
        ax.hist(np.clip(allpos, 0, bins[-1]), bins, density=True, alpha=0.6, label="faulty")
        ax.axvline(1.0, color="k", lw=1, label="threshold")
        ax.set_title(r.name, fontsize=9)
        ax.set_xlabel("window score / threshold", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=90)
    plt.close(fig)

    _timeline(results, corp, chosen, out / "timeline.png")


def _timeline(results: list[Result], corp: Corpus, chosen: dict[str, Setting], path: Path) -> None:
    """Scores over time of the mildest fault recording with a short fault, with alerts."""
    import matplotlib.pyplot as plt

    faults = [r for r in corp.test if r.is_fault and r.fault is not None]
    rec = min(faults, key=lambda r: (r.fault[1] - r.fault[0] if r.fault else 0.0, r.severity))
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for r in results:
        s = r.scored[rec.name].at_hop(chosen[r.name].hop)
        mid = (s.starts + s.ends) / 2
        (line,) = ax.plot(mid, s.scores / r.threshold, lw=1, label=r.name)
        det = chosen[r.name].detector()
        for a in detect(s, r.threshold, det):
            ax.axvline(s.ends[a], color=line.get_color(), ls="--", lw=1)
    assert rec.fault is not None
    ax.axvspan(*rec.fault, color="red", alpha=0.12, label="fault")
    ax.axhline(effective_threshold(1.0, 8), color="k", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("seconds")
    ax.set_ylabel("score / threshold (log)")
    ax.set_title(f"{rec.name}: window scores; dashed: alerts at each candidate's setting")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
