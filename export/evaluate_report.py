"""Evaluation report: results.json, settings.csv and evaluation.md of the candidates, and plots."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import Corpus
from .evaluate import Result
from .evaluate_figures import CLEAR, FA_GOAL, Setting, choose, groups, sweep, window_sets
from .evaluate_plots import plots
from .roc import auc


def write(
    results: list[Result], corp: Corpus, out: Path, hours: float, command: str
) -> dict[str, Any]:
    """Write results.json, evaluation.md and the plots into `out`; return the results."""
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "command": command,
        "machine": machine(),
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
            "level_changes_reported": o.level_reported,
            "background_commissioned_alarms": res.commissioned,
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
    plots(results, corp, chosen, out)
    return doc


def machine() -> dict[str, str]:
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
        "speed-change, level-change and background recordings; a level change whose alerts "
        "were all caused by the level is reported as one (the last column), not counted. "
        "Early alarms: alerts in fault recordings before the fault began (false alarms too).",
        "",
        "| candidate | meets goal | hits | median delay s | false alarms / 24 h | non-fault "
        "alarms | early alarms | hop s | alert / within s | burst x threshold / s | train s | "
        "model KiB | CPU % of a core | level changes reported as level |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
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
            f"{c['cpu_percent_of_core'] if not np.isnan(fa) else '-'} | "
            f"{', '.join(c['level_changes_reported']) or '-'} |"
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
    learned = {n: c["background_commissioned_alarms"] for n, c in cands.items()}
    if any(learned.values()):
        lines += [
            "",
            "Background recordings with commissioning: the stream first learns its site on all "
            "of the other background recording of the same strength (`learn_seconds`, default "
            "detector), then hears this one. Alerts per recording:",
            "",
        ]
        for name, alarms in learned.items():
            each = ", ".join(f"{k} {v}" for k, v in alarms.items())
            lines.append(f"- {name}: {sum(alarms.values())} alarms ({each})")
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
