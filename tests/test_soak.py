"""The soak's short variant (issue 9): 1.75 simulated hours of two streams through the whole
daemon (MQTT with every score, metrics scraped, clips with retention) by bench/soak.py, as
fast as it goes; memory, descriptors and threads stay flat after the first hour. The 24-hour
run is `python bench/soak.py` (BENCHMARKS.md, "Soak")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from .servers import have

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
HOURS, BASELINE = 1.75, 1.0
"""Simulated hours per stream; growth is measured from BASELINE on. In the first simulated
hour VmRSS rises in a few one-off steps of 0.5-1 MB (at about 0.1, 0.45 and 0.77 h in every
run; tracemalloc sees no Python allocation grow: bench/soak.py --trace), then stays flat."""
RSS_TOLERANCE_MB = 0.5
"""Allowed VmRSS growth over the last 0.75 simulated hours, as the robust trend of its samples
(0.00-0.03 MB in runs here). A table that keeps ~100 bytes
per score message (21 000 of them in that time) grows by 2 MB; the per-window timing lists
without metrics (about 5 MB a day) are too slow for this: the 24-hour soak is what measures
them."""
RSS_PEAK_MB = 2.0
"""Allowed transient rise above the baseline sample. On a loaded CI machine one of the
first hour's one-off steps once came after hour 1: +0.92 MB, back to -0.43 MB at the end.
A one-off rise is the allocator, not a leak; the trend check catches leaks."""


def test_two_streams_with_everything_on_keep_memory_fds_and_threads_flat(
    tmp_path: Path,
) -> None:
    reason = have("mosquitto")
    if reason:
        pytest.skip(reason)
    out = tmp_path / "soak.json"
    core = max(os.sched_getaffinity(0))
    args = ["--hours", str(HOURS), "--baseline", str(BASELINE), "--every", "5"]
    args += ["--streams", "2", "--core", str(core), "--scrape", "0.5"]
    proc = subprocess.run(
        [sys.executable, str(SOAK), *args, "--work", str(tmp_path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    after = [s for s in doc["samples"] if s["hour"] >= doc["baseline_hour"]]
    fds = [s["fds"] for s in after]
    threads = [s["threads"] for s in after]
    print(
        f"soak {doc['simulated_hours']} h x 2 streams in {doc['wall_seconds']} s: VmRSS "
        f"{after[0]['rss_mb']} -> {after[-1]['rss_mb']} MB ({doc['rss_growth_mb']:+} MB), "
        f"fds {sorted(set(fds))}, threads {sorted(set(threads))}, "
        f"{doc['alerts_stdout']} alerts, {doc['scores_mqtt_received']} scores received"
    )
    assert doc["daemon_exit"] == 0
    assert doc["simulated_hours"] >= HOURS and len(after) >= 8
    rss = [s["rss_mb"] for s in after]
    hours = [s["hour"] for s in after]
    # growth as a robust trend (Theil-Sen: the median of the pairwise slopes), so a one-off
    # allocator step just after the baseline (+0.91 MB, then flat, once in CI) is not a leak
    trend = float(stats.theilslopes(rss, hours)[0]) * (hours[-1] - hours[0])
    assert trend <= RSS_TOLERANCE_MB, (trend, rss)
    assert doc["rss_max_after_baseline_mb"] - rss[0] <= RSS_PEAK_MB, rss
    # a sample may catch a scrape's thread and socket, a looping file being reopened or a clip
    # being written: compare the steady counts (the least of three samples) at both ends
    assert min(fds[-3:]) == min(fds[:3]), fds
    assert min(threads[-3:]) == min(threads[:3]), threads
    # everything was on and worked: alerts reached MQTT, clips stayed bounded, scores flowed
    assert doc["alerts_stdout"] > 20 and doc["alerts_missing_on_mqtt"] == 0
    assert doc["clips_on_disk"] == 20  # more alerts than max_count: retention deleted some
    assert doc["scores_mqtt_received"] > 0.9 * after[-1]["windows"]
