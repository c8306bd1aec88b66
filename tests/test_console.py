"""The operator's console (issue 16) in a real headless Chromium against a real `amulet-stream
run --config` whose file stream develops a fault: the card turns to anomaly, the alert opens
with a playable clip, a spectrogram and its bands, **normal** stores the label, and the page
logs no JavaScript error. Its API refuses what it must (no token, a foreign Origin, feedback
off) and shows notes as text. AMULET_SCREENSHOTS=DIR keeps the screenshots (docs/console.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate
from amulet_stream.synth.spec import Fault

from .servers import wait_until
from .test_daemon import BIN, Daemon, stream

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
XSS = '<img src=x onerror="window.__xss=1">'


def _browser_missing() -> str | None:
    if not (shutil.which("chromium") and Path(CHROMEDRIVER).is_file()):
        return (
            "Debian's chromium and chromium-driver are not installed (tests/run.sh installs them)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the dev extra has it)"
    return None


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s healthy, then 30 s of strong bearing impacts (looped: alerts keep coming)."""
    audio = np.concatenate(
        [
            generate(6.0, 16000, seed=1),
            generate(30.0, 16000, seed=2, fault=Fault("bearing", 0.0, 30.0, 0.8)),
        ]
    )
    path = tmp_path_factory.mktemp("console") / "faulty.wav"
    write_wav(path, audio, 16000)
    return path


def start(
    tmp_path: Path, audio: Path, ui: str, submit: bool = False, clip: tuple[float, float] = (3, 1)
) -> tuple[Daemon, str]:
    """The daemon with a state directory, clips (seconds before and after the trigger) and the
    console on 127.0.0.1 (a free port)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    state = tmp_path / "state"
    cfg = tmp_path / "console.toml"
    cfg.write_text(
        stream("motor-1", audio, realtime=True, loop=True)
        + f'[daemon]\nstate_dir = "{state}"\n\n'
        + f'[clips]\nfolder = "{state / "clips"}"\n'
        + f"before_seconds = {clip[0]}\nafter_seconds = {clip[1]}\n\n"
        + f'[metrics]\nlisten = "127.0.0.1:0"\nsubmit = {str(submit).lower()}\n\n'
        + ui
    )
    return start_config(cfg)


def start_config(cfg: Path) -> tuple[Daemon, str]:
    """`run --config CFG` and the base URL of its listener (the port it logged)."""
    d = Daemon(cfg)
    found: list[str] = []

    def bound() -> bool:
        found[:] = re.findall(rb"on 127\.0\.0\.1:(\d+)", d.stderr)
        return bool(found) or d.proc.poll() is not None

    wait_until(bound, 30, "the listener's port in the log")
    assert found, d.stderr.decode()
    return d, f"http://127.0.0.1:{int(found[0])}"


def call(url: str, body: dict[str, Any] | None = None, **headers: str) -> tuple[int, Any]:
    """GET, or POST `body` as JSON; (status, parsed JSON answer)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def alert_with_clip(base: str) -> dict[str, Any]:
    """The first anomaly whose clip is written."""
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        events = call(f"{base}/api/events?limit=50")[1]["events"]
        for e in events:
            if e["event"] == "anomaly" and call(f"{base}/api/events/{e['event_id']}")[1]["clip"]:
                found.append(e)
                return True
        return False

    wait_until(ready, 40, "an alert with its clip")
    return found[0]


@pytest.fixture
def browser() -> Iterator[Any]:
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        opts.add_argument(arg)
    opts.add_argument("--autoplay-policy=no-user-gesture-required")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)  # no download
    yield driver
    driver.quit()


def shot(driver: Any, name: str) -> None:
    folder = os.environ.get("AMULET_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def test_the_page_shows_an_alert_plays_its_clip_and_takes_feedback(
    browser: Any, faulty: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d, base = start(tmp_path, faulty, "[ui]\nfeedback = true\n", submit=True)
    wait = WebDriverWait(browser, 40)
    try:
        browser.get(base + "/")
        card = wait.until(
            lambda b: b.find_element(By.CSS_SELECTOR, '.card.state-anomaly[data-stream="motor-1"]')
        )
        assert "ANOMALY" in card.text.upper() and "default.onnx" in card.text
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".card canvas"))  # the uPlot chart
        shot(browser, "console-streams.png")
        alert = alert_with_clip(base)
        status, _ = call(
            f"{base}/api/events/{alert['event_id']}/feedback", {"label": "fault", "note": XSS}
        )
        assert status == 200  # a script: JSON, no Origin
        browser.get(base + "/#events")
        row = wait.until(
            lambda b: b.find_element(By.CSS_SELECTOR, f'tr.event[data-id="{alert["event_id"]}"]')
        )
        row.click()
        wait.until(lambda b: b.find_element(By.ID, "detail").is_displayed())
        wait.until(
            lambda b: b.execute_script("return document.getElementById('clip').readyState") >= 1
        )
        wait.until(
            lambda b: (
                b.execute_script("return document.getElementById('spectrogram').naturalWidth") > 0
            )
        )
        duration = browser.execute_script("return document.getElementById('clip').duration")
        assert 3.5 <= duration <= 4.5, duration  # 3 s before the trigger, 1 s after
        bands = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#bands li")]
        assert bands and all(re.fullmatch(r"\d+-\d+ Hz [+-]\d+\.\d dB", b) for b in bands), bands
        assert XSS in browser.find_element(By.ID, "feedback-note").text  # shown, not run
        assert browser.execute_script("return window.__xss") is None
        shot(browser, "console-alert.png")
        browser.find_element(By.ID, "mark-normal").click()
        wait.until(lambda b: b.find_element(By.ID, "label").text == "marked normal")
        event = call(f"{base}/api/events/{alert['event_id']}")[1]
        assert event["label"] == "normal"
        assert [(x["label"], x["source"]) for x in event["labels"]] == [
            ("fault", "api"),
            ("normal", "page"),
        ]
        upload = tmp_path / "upload"
        upload.mkdir()
        named = upload / f"{XSS}.wav"  # the name is shown on the page: as text
        named.write_bytes(faulty.read_bytes())
        browser.get(base + "/#analyse")
        browser.find_element(By.ID, "analyse-file").send_keys(str(named))
        browser.find_element(By.ID, "analyse-go").click()
        wait.until(lambda b: b.find_element(By.ID, "verdict").text == "defect")
        shaded = browser.find_element(By.ID, "analyse-plot").get_attribute("data-shaded")
        assert int(shaded) > 10  # windows above the threshold, shaded on the plot
        assert XSS in browser.find_element(By.ID, "analyse-summary").text
        assert browser.execute_script("return window.__xss") is None
        assert browser.find_elements(By.CSS_SELECTOR, "#analyse-plot canvas")
        shot(browser, "console-analyse.png")
        browser.get(base + "/#streams")
        card = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, '[data-stream="motor-1"]'))
        wait.until(lambda b: "1 marked normal" in card.text)  # the feedback so far
        assert "trained on 300 s of audio in 1 file(s); threshold 0.3262 (recordings" in card.text
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        d.stop()
    history = subprocess.run(
        [BIN, "events", "--state-dir", str(tmp_path / "state"), "--label", "normal"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert [json.loads(x)["event_id"] for x in history.stdout.splitlines()] == [alert["event_id"]]


def test_the_api_refuses_what_it_must(faulty: Path, tmp_path: Path) -> None:
    d, base = start(tmp_path / "on", faulty, "[ui]\nfeedback = true\n")
    try:
        alert = alert_with_clip(base)
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            exposed = r.read().decode()
        for problem in ("slow", "error"):  # the history's problems, counted from zero
            assert f'amulet_history_problems_total{{problem="{problem}"}} 0.0' in exposed
        url = f"{base}/api/events/{alert['event_id']}/feedback"
        for headers, status, words in (
            ({"Origin": "http://evil.example"}, 403, "cross-site request"),
            ({"Origin": base}, 403, "token is missing"),  # a browser without the page's token
            ({"Origin": base, "X-CSRF-Token": "guess"}, 403, "token is missing"),
            ({"Content-Type": "text/plain"}, 415, "application/json"),
        ):
            got = call(url, {"label": "normal"}, **headers)
            assert got[0] == status and words in got[1]["error"], (headers, got)
        for body in (
            {"label": "maybe"},
            {"label": "normal", "note": "x" * 501},
            {"note": "no label"},
        ):
            assert call(url, body)[0] == 400, body
        assert call(f"{base}/api/events/nosuch/feedback", {"label": "normal"})[0] == 404
        assert call(f"{base}/api/events/{alert['event_id']}")[1]["label"] is None
        codes = [call(url, {"label": "fault"}, Origin="http://evil.example")[0] for _ in range(30)]
        assert codes.count(429) == 8 and set(codes) == {403, 429}  # 30 requests a minute
        with urllib.request.urlopen(base + "/", timeout=10) as r:
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            assert "<script>" not in r.read().decode().replace("<script src=", "")  # no inline
    finally:
        d.stop()
    d, base = start(tmp_path / "off", faulty, "")  # feedback left at its default: off
    try:
        alert = alert_with_clip(base)
        got = call(f"{base}/api/events/{alert['event_id']}/feedback", {"label": "normal"})
        assert got[0] == 403 and "feedback is off" in got[1]["error"]
    finally:
        d.stop()


def test_the_console_stays_off_on_an_open_address_without_auth(tmp_path: Path) -> None:
    from amulet_stream.service.listen_settings import MetricsConfig, UiConfig, console_on

    assert not console_on(UiConfig(), MetricsConfig(listen="0.0.0.0:8491"))
    assert not console_on(UiConfig(), MetricsConfig(listen="[::]:8491"))
    assert console_on(UiConfig(), MetricsConfig(listen="127.0.0.1:8491"))
    assert console_on(UiConfig(), MetricsConfig(listen="[::1]:8491"))
    with_auth = MetricsConfig(listen="0.0.0.0:8491", basic_auth_user="op")
    assert console_on(UiConfig(), with_auth)
    assert console_on(UiConfig(enabled=True), MetricsConfig(listen="0.0.0.0:8491"))
    assert not console_on(UiConfig(enabled=False), MetricsConfig(listen="127.0.0.1:8491"))


def test_without_a_state_directory_the_page_lists_this_run_s_events(
    faulty: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        stream("m1", faulty, realtime=True, loop=True)
        + '[metrics]\nlisten = "127.0.0.1:0"\n\n[ui]\nfeedback = true\n'
    )
    d, base = start_config(cfg)
    try:
        wait_until(lambda: bool(call(f"{base}/api/events")[1]["events"]), 30, "an event")
        doc = call(f"{base}/api/streams")[1]
        assert doc["history"] == "memory" and doc["streams"][0]["id"] == "m1"
        event = call(f"{base}/api/events?stream=m1&limit=1")[1]["events"][0]
        assert call(f"{base}/api/events/{event['event_id']}")[1]["clip"] is False
        got = call(f"{base}/api/events/{event['event_id']}/feedback", {"label": "normal"})
        assert got[0] == 409 and "no event history is kept" in got[1]["error"]
        assert call(f"{base}/api/events?since=yesterday")[0] == 400
        assert call(f"{base}/api/nosuch")[0] == 404
    finally:
        d.stop()


def test_a_stream_id_cannot_carry_html(tmp_path: Path, faulty: Path) -> None:
    """Stream ids reach the page (cards, events, file names of clips): the config refuses any
    id that is not letters, digits, '-' and '_', so none can carry markup."""
    cfg = tmp_path / "x.toml"
    cfg.write_text(stream(XSS, faulty) + '[metrics]\nlisten = "127.0.0.1:0"\n')
    proc = subprocess.run(
        [BIN, "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "stream" in proc.stderr and "id" in proc.stderr, proc.stderr
