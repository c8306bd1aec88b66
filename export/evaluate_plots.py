"""Evaluation plots: ROC curves per fault group, score histograms, a fault's timeline (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amulet_stream.scoring.detector import effective_threshold

from .corpus import Corpus
from .evaluate import Result, detect
from .evaluate_figures import Setting, groups, window_sets
from .roc import auc, roc


def plots(results: list[Result], corp: Corpus, chosen: dict[str, Setting], out: Path) -> None:
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
