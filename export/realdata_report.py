"""The real-data evaluation's report: results.json, evaluation.md (clip AUC and pAUC, the
operator's numbers with the default detector, the loudness baseline beside), ROC curves and
each recording's score against its threshold."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .evaluate_report import machine
from .realdata import LabelledSet, Outcome, Tested, loudness
from .roc import auc, roc

F64 = npt.NDArray[np.float64]
PAUC_FPR = 0.1


def _mean(t: Tested) -> float:
    """A recording's clip score: the mean of its window scores."""
    return t.score


def _per_fold(tested: list[Tested], score: Callable[[Tested], float] = _mean) -> list[F64]:
    """AUC and pAUC of every fold: [aucs, paucs] over the fold's normal against the anomalies,
    a recording scored by `score` (default: its mean window score)."""
    aucs, paucs = [], []
    for fold in sorted({t.fold for t in tested}):
        mine = [t for t in tested if t.fold == fold]
        neg = np.array([score(t) for t in mine if t.label == "normal"])
        pos = np.array([score(t) for t in mine if t.label == "anomaly"])
        aucs.append(auc(neg, pos))
        paucs.append(auc(neg, pos, PAUC_FPR))
    return [np.array(aucs), np.array(paucs)]


def summarise(out: Outcome, folds: int, anomalies: int) -> dict[str, Any]:
    """One candidate's figures over every fold."""
    aucs, paucs = _per_fold(out.tested)
    spectral = _per_fold(out.tested, lambda t: t.spectral)[0]
    normal = [t for t in out.tested if t.label == "normal"]
    anomalous = [t for t in out.tested if t.label == "anomaly"]
    delays = [t.delay for t in anomalous if t.delay is not None]
    causes = [t.cause for t in anomalous if t.cause]
    return {
        "note": out.note,
        "auc": round(float(aucs.mean()), 3),
        "auc_range": [round(float(aucs.min()), 3), round(float(aucs.max()), 3)],
        "pauc": round(float(paucs.mean()), 3),
        "spectrum_auc": round(float(spectral.mean()), 3),
        "anomalies_alerted": sum(t.alerted for t in anomalous),
        "anomalies_tested": len(anomalous),
        "anomalies_alerted_per_fold": round(sum(t.alerted for t in anomalous) / folds, 1),
        "anomalies": anomalies,
        "normal_alerted": sum(t.alerted for t in normal),
        "normal_tested": len(normal),
        "normal_alerted_names": [t.path.name for t in normal if t.alerted],
        "median_delay_s": round(float(np.median(delays)), 2) if delays else None,
        "causes": {c: causes.count(c) for c in sorted(set(causes))},
        "train_seconds": round(float(np.mean(out.train_seconds)), 1),
        "recordings": [
            {
                "name": t.path.name,
                "label": t.label,
                "fold": t.fold,
                "score": round(t.score, 6),
                "threshold": round(t.threshold, 6),
                "alerted": t.alerted,
                "cause": t.cause,
            }
            for t in out.tested
        ],
    }


def write(
    data: LabelledSet, outcomes: list[Outcome], folds: int, out: Path, command: str
) -> dict[str, Any]:
    """results.json, evaluation.md, roc.png and recordings.png in `out`; returns the results."""
    out.mkdir(parents=True, exist_ok=True)
    level = {p: loudness(p) for p in [*data.normal, *data.anomaly]}
    doc: dict[str, Any] = {
        "command": command,
        "machine": machine(),
        "dataset": str(data.root),
        "normal": len(data.normal),
        "anomaly": len(data.anomaly),
        "folds": folds,
        "candidates": {o.name: summarise(o, folds, len(data.anomaly)) for o in outcomes},
    }
    if outcomes:
        aucs, paucs = _per_fold(outcomes[0].tested, lambda t: level[t.path])
        doc["loudness"] = {"auc": round(float(aucs.mean()), 3)}
        doc["loudness"]["pauc"] = round(float(paucs.mean()), 3)
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "evaluation.md").write_text(markdown(doc))
    _plots(outcomes, level, out)
    return doc


def markdown(doc: dict[str, Any]) -> str:
    """The report's table in Markdown."""
    loud = doc.get("loudness", {})
    lines = [
        f"# Real recordings: `{doc['dataset']}`",
        "",
        f"{doc['normal']} normal and {doc['anomaly']} anomalous recordings, {doc['folds']} folds "
        "over the normal recordings (each tested once, by a model that never heard it); every "
        "anomalous recording is tested in every fold. Command: `" + doc["command"] + "`.",
        "",
        "| candidate | clip AUC (fold range) | pAUC (FPR <= 0.1) | spectrum alone: clip AUC | "
        "anomalous alerted | normal alerted | median delay | causes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in doc["candidates"].items():
        lo, hi = c["auc_range"]
        causes = ", ".join(f"{k} {v}" for k, v in c["causes"].items()) or "-"
        delay = "-" if c["median_delay_s"] is None else f"{c['median_delay_s']} s"
        lines.append(
            f"| {name} | {c['auc']} ({lo}-{hi}) | {c['pauc']} | {c['spectrum_auc']} | "
            f"{c['anomalies_alerted']} / "
            f"{c['anomalies_tested']} | {c['normal_alerted']} / {c['normal_tested']} | {delay} | "
            f"{causes} |"
        )
    if loud:
        lines.append(
            f"| loudness alone (RMS dB, no model) | {loud['auc']} | {loud['pauc']} "
            "| - | - | - | - | - |"
        )
    lines += [
        "",
        "Clip score: the mean of a recording's window scores. AUC and pAUC: per fold, averaged. "
        "Spectrum alone: the same models' clip AUC with the level term switched off (what "
        "they would see on a machine whose faults do not change its loudness). "
        "Alerts: the runtime's default detector on the model's calibrated threshold. Delay: "
        "from the recording's start to the end of the first alerting window.",
        "",
        "![ROC](roc.png)",
        "",
        "![Each recording against its threshold](recordings.png)",
        "",
    ]
    return "\n".join(lines)


def _plots(outcomes: list[Outcome], level: dict[Path, float], out: Path) -> None:
    """roc.png (pooled folds, scores over their thresholds) and recordings.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for o in outcomes:
        neg = np.array([t.score / t.threshold for t in o.tested if t.label == "normal"])
        pos = np.array([t.score / t.threshold for t in o.tested if t.label == "anomaly"])
        fpr, tpr = roc(neg, pos)
        ax.plot(fpr, tpr, label=f"{o.name} (AUC {auc(neg, pos):.2f})")
    if outcomes:
        neg = np.array([level[t.path] for t in outcomes[0].tested if t.label == "normal"])
        pos = np.array([level[t.path] for t in outcomes[0].tested if t.label == "anomaly"])
        fpr, tpr = roc(neg, pos)
        ax.plot(fpr, tpr, "k--", label=f"loudness alone (AUC {auc(neg, pos):.2f})")
    ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
    ax.set(xlabel="false-positive rate (normal recordings)", ylabel="true-positive rate")
    ax.set_title("ROC of recordings, folds pooled (score / threshold)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * max(len(outcomes), 1), 4.5))
    for i, o in enumerate(outcomes):
        for label, colour, dx in (("normal", "tab:blue", -0.15), ("anomaly", "tab:red", 0.15)):
            mine = [t for t in o.tested if t.label == label]
            y = [t.score / t.threshold for t in mine]
            x = i + dx + np.linspace(-0.08, 0.08, len(mine))
            face = [colour if t.alerted else "none" for t in mine]
            ax.scatter(x, y, s=18, edgecolors=colour, facecolors=face, label=None if i else label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(outcomes)), [o.name for o in outcomes], rotation=20, fontsize=8)
    ax.set_ylabel("recording's mean score / its threshold")
    ax.set_title("Each recording (filled: alerted)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "recordings.png", dpi=110)
    plt.close(fig)
