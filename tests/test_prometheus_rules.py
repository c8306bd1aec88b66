"""deploy/prometheus/: the real promtool checks the scrape config and the alerting rules and runs
their unit tests (rules_test.yml); every metric a rule uses is one the monitor exports, and the
series behave as the rules assume."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from amulet_stream.outputs.metrics import MQTT_KINDS, Metrics

from .servers import binary, have

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
RULES = DEPLOY / "rules.yml"

needs_promtool = pytest.mark.skipif(have("promtool") is not None, reason=str(have("promtool")))


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = binary("promtool")
    assert promtool is not None
    return subprocess.run(
        [promtool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60, check=False
    )


def _alert_names(text: str) -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", text, flags=re.MULTILINE)


@needs_promtool
def test_promtool_check_rules() -> None:
    proc = _promtool("check", "rules", "rules.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_alert_names(RULES.read_text()))} rules found" in proc.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    proc = _promtool("test", "rules", "rules_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_promtool_check_config() -> None:
    proc = _promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: prometheus.yml is valid prometheus config file syntax" in proc.stdout
    assert "SUCCESS: 1 rule files found" in proc.stdout


def test_every_rule_is_unit_tested_firing_and_silent() -> None:
    names = _alert_names(RULES.read_text())
    assert len(names) == len(set(names)) >= 5
    tests = (DEPLOY / "rules_test.yml").read_text()
    for name in names:
        blocks = re.findall(
            rf"alertname: {name}\n\s+exp_alerts:(.*?)(?=\n\s+(?:- eval_time|#)|\n\n|\Z)",
            tests,
            re.S,
        )
        assert any(b.strip() == "[]" for b in blocks), f"{name} is never tested silent"
        assert any("exp_labels" in b for b in blocks), f"{name} is never tested firing"


def test_rules_use_only_exported_metrics() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.stream_started("pump-1", "0" * 64, "logmel-v1", 0.4)
    metrics.mqtt_started()
    metrics.record({"event": "score", "stream": "pump-1", "score": 0.1, "anomaly": False})
    metrics.record({"event": "normal", "stream": "pump-1"})
    exported = set(re.findall(r"^(\w+)[{ ]", generate_latest(registry).decode(), re.MULTILINE))
    used = set(re.findall(r"\b(amulet_\w+|process_\w+)", RULES.read_text()))
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"


def _series(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_series_the_rules_rely_on() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.stream_started("pump-1", "0" * 64, "logmel-v1", 0.4)
    s = _series(registry)
    assert not any(k.startswith("amulet_mqtt_") for k in s)  # no MQTT: no disconnected alert
    assert not any(k.startswith(("amulet_state", "amulet_last_window")) for k in s)  # no state yet
    assert s['amulet_input_problems_total{reason="clipping",stream="pump-1"}'] == 0
    assert s['amulet_model_reloads_total{result="refused"}'] == 0
    assert s["process_resident_memory_bytes"] > 0
    before = time.time()
    metrics.record({"event": "score", "stream": "pump-1", "score": 0.5, "anomaly": True})
    metrics.record({"event": "anomaly", "stream": "pump-1", "score": 0.5})
    s = _series(registry)
    assert s['amulet_state{stream="pump-1"}'] == 1
    assert s['amulet_alerts_total{stream="pump-1"}'] == 1
    assert before <= s['amulet_last_window_timestamp_seconds{stream="pump-1"}'] <= time.time()
    metrics.record({"event": "input_problem", "stream": "pump-1", "reason": "clipping"})
    s = _series(registry)
    assert s['amulet_state{stream="pump-1"}'] == 2
    assert s['amulet_input_problems_total{reason="clipping",stream="pump-1"}'] == 1
    metrics.record({"event": "down", "stream": "pump-1", "reason": "device unplugged"})
    s = _series(registry)
    assert s['amulet_state{stream="pump-1"}'] == 3 and s['amulet_source_up{stream="pump-1"}'] == 0
    assert not any(k.startswith("amulet_mqtt") for k in s)  # no MQTT configured yet
    metrics.mqtt_started()  # the sinks call it when MQTT is configured
    s = _series(registry)
    assert s["amulet_mqtt_connected"] == 0 and s["amulet_mqtt_connect_failures_total"] == 0
    kinds = {k for k in s if k.startswith("amulet_mqtt_dropped_messages_total")}
    assert kinds == {f'amulet_mqtt_dropped_messages_total{{kind="{k}"}}' for k in MQTT_KINDS}
    metrics.record({"event": "input_problem", "stream": "pump-1", "reason": "new_reason"})
    metrics.stream_started("pump-2", "0" * 64, "logmel-v1", 0.4)
    metrics.stream_removed("pump-1")  # left the config on reload: nothing left to alert on
    s = _series(registry)
    assert not [k for k in s if 'stream="pump-1"' in k]
    assert s['amulet_threshold{stream="pump-2"}'] == 0.4
