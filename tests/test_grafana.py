"""deploy/grafana/amulet-stream.json: every panel query returns series from a real Prometheus that
scraped a real paced replay (with MQTT to a real Mosquitto), the rules load and fire there, and
the JSON matches Grafana's published dashboard types (grafana-foundation-sdk, Grafana 11.6)."""

from __future__ import annotations

import enum
import json
import re
import subprocess
import sys
import time
import types
import typing
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.outputs.metrics import Metrics
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

from .servers import Mosquitto, binary, free_port, have, wait_until

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "amulet-stream.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
BIN = Path(sys.executable).parent / "amulet-stream"
STREAM = "line-7"
RATE = 16000
# what Grafana puts in place of its variables; $stream becomes a multi-value regex, "(a|b)"
GRAFANA_VARS = {"$__rate_interval": "30s", "$__range": "5m", "$stream": f"({STREAM})"}

Json = dict[str, Any]


def _dashboard() -> Json:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels(dash: Json) -> list[Json]:
    """Every panel but rows (also those nested in collapsed rows)."""
    out: list[Json] = []
    for panel in dash["panels"]:
        if panel["type"] == "row":
            out += [p for p in panel.get("panels", []) if p["type"] != "row"]
        else:
            out.append(panel)
    return out


def _queries(dash: Json) -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables filled in) for every target."""
    out = []
    for panel in _panels(dash):
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in GRAFANA_VARS.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            out.append((panel["title"], expr))
    return out


# ---- structure: what the operator imports -------------------------------------------------


def test_dashboard_inputs_variables_and_panels() -> None:
    dash = _dashboard()
    assert dash["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "Prometheus that scrapes amulet-stream",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == "${DS_PROMETHEUS}"
    stream = variables["stream"]
    assert stream["type"] == "query" and stream["multi"] and stream["includeAll"]
    assert stream["query"] == "label_values(amulet_windows_scored_total, stream)"
    assert stream["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    panels = _panels(dash)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
    titles = {p["title"] for p in panels}
    for needed in (
        "State",
        "Score and threshold: $stream",
        "Input level",
        "Input overflows and clipping",
        "Inference time",
        "MQTT connection",
        "MQTT outbox",
        "MQTT dropped messages and connect failures",
        "Anomaly alerts",
        "Source reopens",
        "Process memory",
        "Process CPU",
    ):
        assert needed in titles
    state = next(p for p in panels if p["title"] == "State")
    assert state["type"] == "state-timeline"
    (mapping,) = state["fieldConfig"]["defaults"]["mappings"]
    texts = {k: v["text"] for k, v in mapping["options"].items()}
    assert texts == {
        "0": "normal",
        "1": "anomaly",
        "2": "input problem",
        "3": "down",
        "4": "learning",
    }


def test_dashboard_uses_only_exported_metrics() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.stream_started(STREAM, "0" * 64, "logmel-v1", 0.4)
    metrics.mqtt_started()
    metrics.record({"event": "score", "stream": STREAM, "score": 0.1, "anomaly": False})
    metrics.record({"event": "normal", "stream": STREAM})
    metrics.level.labels(STREAM).set(-30.0)  # set per block by the sinks
    exported = set(re.findall(r"^(\w+)[{ ]", generate_latest(registry).decode(), re.MULTILINE))
    used = {
        m for _, q in _queries(_dashboard()) for m in re.findall(r"\b(?:amulet|process)_\w+", q)
    }
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"


# ---- schema: Grafana's published dashboard types ------------------------------------------


def _check(value: Any, hint: Any, path: str) -> Iterator[str]:
    """Problems of `value` against a grafana-foundation-sdk type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        if hasattr(value, "to_json"):
            yield from _model_errors(value, path)
    elif origin in (typing.Union, types.UnionType):
        tries = [list(_check(value, a, path)) for a in args]
        if all(tries):
            shaped = [t for a, t in zip(args, tries, strict=True) if _shape(value, a)]
            yield from shaped[0] if len(shaped) == 1 else [f"{path}: {value!r} fits no {hint}"]
    elif hint is type(None):
        if value is not None:
            yield f"{path}: {value!r} should be null"
    elif origin is typing.Literal:
        if value not in args:
            yield f"{path}: {value!r} is not one of {args}"
    elif origin is list:
        if not isinstance(value, list):
            yield f"{path}: {value!r} is not a list"
        else:
            for i, item in enumerate(value):
                yield from _check(item, args[0], f"{path}[{i}]")
    elif origin is dict:
        if not isinstance(value, dict):
            yield f"{path}: {value!r} is not an object"
        else:
            for key, item in value.items():
                yield from _check(item, args[1], f"{path}.{key}")
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            hint(value)
        except ValueError:
            yield f"{path}: {value!r} is not one of {[e.value for e in hint]}"
    elif hint is bool:
        if not isinstance(value, bool):
            yield f"{path}: {value!r} is not a boolean"
    elif hint in (int, float):
        ok = isinstance(value, int) or (hint is float and isinstance(value, float))
        if isinstance(value, bool) or not ok:
            yield f"{path}: {value!r} is not {hint.__name__}"
    elif hint is str:
        if not isinstance(value, str):
            yield f"{path}: {value!r} is not a string"
    elif not isinstance(value, hint):
        yield f"{path}: {value!r} is not a {hint.__name__}"
    elif type(value).__name__ == "UnknownDataquery":
        yield f"{path}: a query of no known datasource type"
    else:
        yield from _model_errors(value, path)


def _shape(value: Any, hint: Any) -> bool:
    """Whether `value` is the kind of thing `hint` describes (a list for a list, ...)."""
    origin = typing.get_origin(hint) or hint
    if origin is typing.Literal or (isinstance(origin, type) and issubclass(origin, enum.Enum)):
        return isinstance(value, str | int)
    return isinstance(origin, type) and isinstance(value, origin)


def _model_errors(model: Any, path: str) -> Iterator[str]:
    for name, hint in typing.get_type_hints(type(model)).items():
        yield from _check(getattr(model, name), hint, f"{path}.{name}")


def _attribute(model: Any, key: str) -> str | None:
    """The SDK's attribute for a JSON key (camelCase to snake_case, `_val` for reserved words)."""
    snake = re.sub(r"([A-Z])", r"_\1", key).lower()
    hints = typing.get_type_hints(type(model))
    return next((a for a in (snake, f"{snake}_val") if a in hints), None)


def _diff(ours: Any, model: Any, schema: Any, path: str) -> Iterator[str]:
    """Where our JSON differs from its round trip through the schema's types: keys the schema
    does not know, values it changes, required keys (not Optional) we left out."""
    is_model = hasattr(model, "to_json")
    if isinstance(ours, dict) and isinstance(schema, dict):
        for key in ours.keys() - schema.keys():
            yield f"{path}.{key}: not in the schema"
        for key in schema.keys() - ours.keys():
            attr = _attribute(model, key) if is_model else None
            hint = typing.get_type_hints(type(model))[attr] if attr else None
            if hint is None or type(None) not in typing.get_args(hint):
                yield f"{path}.{key}: required by the schema, missing"
        for key in ours.keys() & schema.keys():
            attr = _attribute(model, key) if is_model else None
            child = (
                getattr(model, attr)
                if attr
                else model.get(key)
                if isinstance(model, dict)
                else None
            )
            yield from _diff(ours[key], child, schema[key], f"{path}.{key}")
    elif isinstance(ours, list) and isinstance(schema, list) and len(ours) == len(schema):
        items = model if isinstance(model, list) and len(model) == len(ours) else [None] * len(ours)
        for i, (a, m, b) in enumerate(zip(ours, items, schema, strict=True)):
            yield from _diff(a, m, b, f"{path}[{i}]")
    elif ours != schema:
        yield f"{path}: {ours!r} became {schema!r}"


def _schema_problems(body: Json) -> list[str]:
    """Problems of a dashboard (without its import-only keys) against grafana-foundation-sdk."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.cog.runtime import panelcfg_config
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    model = Dashboard.from_json(body)
    problems = list(_model_errors(model, "dashboard"))
    problems += [
        f"panel {p['title']!r}: no panel plugin {p['type']!r} in Grafana"
        for p in _panels(body)
        if panelcfg_config(p["type"]) is None
    ]
    back = json.loads(json.dumps(model, cls=JSONEncoder))
    return problems + list(_diff(body, model, back, "dashboard"))


SDK_REASON = "grafana-foundation-sdk is not installed (pip install -e '.[dev]')"


def test_dashboard_matches_grafana_published_schema() -> None:
    pytest.importorskip("grafana_foundation_sdk", reason=SDK_REASON)
    from grafana_foundation_sdk.models.dashboard import Dashboard

    body = {k: v for k, v in _dashboard().items() if not k.startswith("__")}  # import-only
    problems = _schema_problems(body)
    assert not problems, "\n".join(problems)
    assert body["schemaVersion"] <= Dashboard().schema_version  # Grafana 11.6 migrates it


def test_schema_check_catches_mistakes() -> None:
    pytest.importorskip("grafana_foundation_sdk", reason=SDK_REASON)
    body = {k: v for k, v in _dashboard().items() if not k.startswith("__")}
    state = next(p for p in body["panels"] if p.get("title") == "State")
    state["options"]["showValue"] = "sometimes"  # not a VisibilityMode
    state["gridPos"]["w"] = "wide"
    state["targets"][0]["legend"] = state["targets"][0].pop("legendFormat")  # misspelt
    del body["schemaVersion"]
    next(p for p in body["panels"] if p.get("title") == "Input level")["type"] = "timeseriess"
    text = "\n".join(_schema_problems(body))
    assert "options.show_value: 'sometimes' is not one of" in text
    assert "grid_pos.w: 'wide' is not int" in text
    assert "targets[0].legend: not in the schema" in text
    assert "dashboard.schemaVersion: required by the schema, missing" in text
    assert "panel 'Input level': no panel plugin 'timeseriess' in Grafana" in text


# ---- live: a real Prometheus scraping a real replay -----------------------------------------


def _get(port: int, path: str, params: dict[str, str] | None = None) -> Any:
    query = "?" + urllib.parse.urlencode(params) if params else ""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}{query}", timeout=10) as r:
            return json.loads(r.read())["data"]
    except urllib.error.HTTPError as err:
        if err.code != 400:
            raise  # starting (503): an OSError, retried by _has
        raise AssertionError(f"Prometheus refused {params}: {err.read().decode()}") from err


def _query(port: int, expr: str, at: float | None = None) -> list[Json]:
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    return list(_get(port, "/api/v1/query", params)["result"])


def _has(port: int, expr: str) -> bool:
    try:
        return bool(_query(port, expr))
    except OSError:
        return False


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, float]]:
    """(Prometheus port, a time at which it holds the replay's series) after a 30 s faulty wav
    was replayed at 2x real time with --metrics and --mqtt, scraped every second."""
    for program in ("prometheus", "mosquitto"):
        if have(program) is not None:
            pytest.skip(f"{have(program)}: the dashboard queries need it")
    folder = tmp_path_factory.mktemp("grafana")
    wav = folder / "fault.wav"
    write_wav(wav, generate(30.0, RATE, seed=43, fault=Fault("imbalance", 8.0, 16.0, 0.8)), RATE)
    broker = Mosquitto(folder)
    broker.start()
    metrics_port, prom_port = free_port(), free_port()
    (folder / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{RULES}']\n"
        "scrape_configs:\n  - job_name: amulet\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    prom_log, replay_log = (
        (folder / "prometheus.log").open("wb"),
        (folder / "replay.log").open("wb"),
    )
    prom = subprocess.Popen(
        [
            binary("prometheus") or "prometheus",
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=prom_log,
    )
    replay: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: _has(prom_port, "vector(1)"), 30, "Prometheus to answer")
        replay = subprocess.Popen(
            [
                BIN,
                "replay",
                str(wav),
                "--speed",
                "2",
                "--stream",
                STREAM,
                "-q",
                "--metrics",
                f"127.0.0.1:{metrics_port}",
                "--mqtt",
                f"127.0.0.1:{broker.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=replay_log,
        )
        sel = f'stream="{STREAM}"'
        for expr, what in (
            (f"count_over_time(amulet_windows_scored_total{{{sel}}}[1m]) >= 4", "4 scrapes"),
            ("amulet_mqtt_connected == 1", "the MQTT connection"),
            (f'ALERTS{{alertname="AmuletAnomaly", alertstate="firing", {sel}}}', "the alert"),
        ):
            wait_until(lambda e=expr: _has(prom_port, e) or replay.poll() is not None, 30, what)
            assert _has(prom_port, expr), (
                f"no {what} before the replay ended: {(folder / 'replay.log').read_text()}"
            )
        yield prom_port, time.time()
    finally:
        for proc in (replay, prom):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(20)
        broker.stop()
        prom_log.close()
        replay_log.close()


def test_every_panel_query_returns_series(scraped: tuple[int, float]) -> None:
    port, at = scraped
    empty = [
        f"{title}: {expr}" for title, expr in _queries(_dashboard()) if not _query(port, expr, at)
    ]
    assert not empty, "queries without series:\n" + "\n".join(empty)
    values = _get(port, "/api/v1/label/stream/values", {"match[]": "amulet_windows_scored_total"})
    assert STREAM in values  # what the $stream variable offers


def test_prometheus_loads_and_evaluates_the_rules(scraped: tuple[int, float]) -> None:
    port, _ = scraped
    rules = [r for g in _get(port, "/api/v1/rules")["groups"] for r in g["rules"]]
    assert len(rules) == len(re.findall(r"- alert: ", RULES.read_text()))
    assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
