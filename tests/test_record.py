"""amulet-stream record: real PortAudio (an ALSA file-plugin device) and stdin into float32 wavs
that hold exactly the samples the monitor's pipeline would receive; careless input refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from amulet_stream.audio.wav import iter_blocks, read_info, select_channel
from amulet_stream.synth.motor import generate

BIN = Path(sys.executable).parent / "amulet-stream"
RATE = 16000
SECONDS = 4.0
HEADER = 58  # bytes before the samples of a float32 wav written by record


def _portaudio_reason() -> str | None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sounddevice"], capture_output=True, text=True, check=False
    )
    return None if proc.returncode == 0 else f"PortAudio not loadable: {proc.stderr.strip()}"


def _grid(x: np.ndarray) -> np.ndarray:
    """float32 on the 16-bit grid: sums and halves of two such values are exact in float32."""
    return (np.round(32767 * x) / 32768).astype(np.float32)


@pytest.fixture(scope="module")
def alsa_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME whose .asoundrc defines `amuletrec` (mono.raw) and `amuletrec2` (stereo.raw)."""
    reason = _portaudio_reason()
    if reason:
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("alsa")
    mono = _grid(generate(SECONDS, RATE, seed=41))
    stereo = np.stack([mono, _grid(0.7 * generate(SECONDS, RATE, seed=42))], axis=1)
    (home / "mono.raw").write_bytes(mono.astype("<f4").tobytes())
    (home / "stereo.raw").write_bytes(stereo.astype("<f4").tobytes())
    # PortAudio hides PCMs named file/null/hw..., so the devices have their own names
    (home / ".asoundrc").write_text(
        "".join(
            f'pcm.{name} {{\n  type file\n  slave.pcm "null"\n  file "/dev/null"\n'
            f'  infile "{home / raw}"\n  format "raw"\n}}\n'
            for name, raw in (("amuletrec", "mono.raw"), ("amuletrec2", "stereo.raw"))
        )
    )
    return home


def _raw(home: Path, name: str, channels: int) -> np.ndarray:
    return np.fromfile(home / name, dtype="<f4").reshape(-1, channels)


def _record(
    args: list[str], home: Path | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    """Run `amulet-stream record ARGS` with `stdin` piped in (HOME=home for the devices)."""
    env = {**os.environ, "HOME": str(home)} if home else None
    proc = subprocess.run(
        [str(BIN), "record", *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def _samples(path: Path) -> np.ndarray:
    """The wav's samples as the trainer reads them; must be float32 mono."""
    info = read_info(path)
    assert (info.is_float, info.bits, info.channels) == (True, 32, 1)
    return np.concatenate(list(iter_blocks(info)))[:, 0]


def _summary(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    summary: dict[str, object] = json.loads(lines[0])
    assert summary["event"] == "recorded"
    return summary


@pytest.mark.parametrize(
    ("device", "flags", "want"),
    [
        ("amuletrec", [], lambda m, s: m[:, 0]),
        ("amuletrec2", ["--channel", "1"], lambda m, s: s[:, 1]),
        (
            "amuletrec2",
            ["--channels", "2"],
            lambda m, s: ((s[:, 0].astype(np.float64) + s[:, 1]) / 2).astype(np.float32),
        ),
    ],
    ids=["mono", "stereo-channel-1", "stereo-downmix"],
)
def test_device_recording_holds_the_samples_the_monitor_scores(
    alsa_home: Path, tmp_path: Path, device, flags, want
) -> None:
    out = tmp_path / "healthy.wav"
    args = ["--device", device, "--rate", str(RATE), "--seconds", str(SECONDS), "--buffer", "60"]
    proc = _record([*args, "-o", str(out), *flags], alsa_home)
    summary = _summary(proc)
    mono, stereo = _raw(alsa_home, "mono.raw", 1), _raw(alsa_home, "stereo.raw", 2)
    expected = want(mono, stereo)
    got = _samples(out)
    assert got.dtype == np.float32 and got.size == int(SECONDS * RATE)
    np.testing.assert_array_equal(got, expected)
    if "--channels" in flags:  # the monitor's own down-mix gives the same bits
        np.testing.assert_array_equal(got, select_channel(stereo, None))
    assert summary["seconds"] == SECONDS and summary["complete"] is True
    assert summary["rate"] == RATE and summary["clipped_samples"] == 0
    assert summary["peak_dbfs"] == round(20 * np.log10(np.abs(expected).max()), 2)
    assert summary["path"] == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["healthy.wav"]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_device_recording_stopped_by_a_signal_keeps_what_was_recorded(
    alsa_home: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    # the file plugin has no clock: at 1000 Hz its 64000 samples arrive in a fraction of a
    # second, after which the device keeps delivering (not the file); the prefix must match
    out = tmp_path / "long.wav"
    n = int(SECONDS * RATE)
    args = ["record", "--device", "amuletrec", "--rate", "1000", "--seconds", "100000"]
    proc = subprocess.Popen(
        [str(BIN), *args, "--buffer", "100", "-o", str(out)],
        env={**os.environ, "HOME": str(alsa_home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_part(tmp_path, HEADER + 4 * n, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    summary = _summary(subprocess.CompletedProcess([], proc.returncode, stdout, stderr))
    assert summary["complete"] is False and summary["stopped"] == sig.name
    assert f"stopped by {sig.name}" in stderr and "kept what was recorded" in stderr
    got = _samples(out)
    assert got.size == round(float(summary["seconds"]) * 1000) >= n  # type: ignore[arg-type]
    np.testing.assert_array_equal(got[:n], _raw(alsa_home, "mono.raw", 1)[:, 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.wav"]


def _wait_for_part(folder: Path, size: int, proc: subprocess.Popen) -> None:
    """Wait until the recording's temporary file holds `size` bytes."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = list(folder.glob(".*.part"))
        if parts and parts[0].stat().st_size >= size:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"recording did not reach {size} bytes")


def _pcm(seconds: float, channels: int, seed: int) -> np.ndarray:
    """S16_LE frames (frames, channels) as arecord would deliver them."""
    chans = [generate(seconds, RATE, seed=seed + c) * (1 - 0.3 * c) for c in range(channels)]
    return np.round(32767 * np.stack(chans, axis=1)).astype("<i2")


@pytest.mark.parametrize("channel", [None, 0, 1])
def test_stdin_recording_holds_what_the_stdin_source_delivers(
    tmp_path: Path, channel: int | None
) -> None:
    pcm = _pcm(3.0, 2, seed=7)
    out = tmp_path / "stdin.wav"
    pick = [] if channel is None else ["--channel", str(channel)]
    args = ["--source", "stdin", "--rate", str(RATE), "--channels", "2", "--seconds", "2.5"]
    summary = _summary(_record([*args, "-o", str(out), *pick], stdin=pcm.tobytes()))
    floats = pcm.astype(np.float32) / 32768.0  # what StdinSource makes of S16_LE
    expected = select_channel(floats, channel)[: int(2.5 * RATE)]
    if channel is None:  # the down-mix is exact on the 16-bit grid
        mix = (pcm[:, 0].astype(np.float64) + pcm[:, 1]) / 65536.0
        np.testing.assert_array_equal(expected, mix[: expected.size].astype(np.float32))
    np.testing.assert_array_equal(_samples(out), expected)
    assert summary["seconds"] == 2.5 and summary["complete"] is True
    assert summary["source"] == "stdin" and summary["channel"] == channel


def test_stdin_that_ends_early_keeps_the_audio_and_says_so(tmp_path: Path) -> None:
    pcm = _pcm(1.0, 1, seed=9)
    out = tmp_path / "short.wav"
    args = ["--source", "stdin", "--rate", str(RATE), "--seconds", "5"]
    proc = _record([*args, "-o", str(out)], stdin=pcm.tobytes())
    summary = _summary(proc)
    assert summary["complete"] is False and summary["stopped"] == "end of input"
    assert "stdin ended after 1.00 s of the 5 s asked for" in proc.stderr
    np.testing.assert_array_equal(_samples(out), pcm[:, 0].astype(np.float32) / 32768.0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stdin_recording_stopped_by_a_signal_keeps_what_was_recorded(
    tmp_path: Path, sig: signal.Signals
) -> None:
    pcm = _pcm(1.0, 1, seed=11)
    out = tmp_path / "cut.wav"
    args = ["--source", "stdin", "--rate", str(RATE), "--seconds", "600", "-o", str(out)]
    proc = subprocess.Popen(
        [str(BIN), "record", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(pcm.tobytes())
    proc.stdin.flush()
    _wait_for_part(tmp_path, HEADER + 4 * RATE, proc)
    proc.send_signal(sig)  # the recorder is waiting for more input
    stdout, stderr = proc.communicate(timeout=60)
    result = subprocess.CompletedProcess([], proc.returncode, stdout.decode(), stderr.decode())
    summary = _summary(result)
    assert summary["stopped"] == sig.name and summary["seconds"] == 1.0
    assert f"stopped by {sig.name} after 1.00 s of 600 s" in result.stderr
    np.testing.assert_array_equal(_samples(out), pcm[:, 0].astype(np.float32) / 32768.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.wav"]


def test_silence_and_clipping_are_warned_about(tmp_path: Path) -> None:
    args = ["--source", "stdin", "--rate", str(RATE), "--seconds", "1"]
    proc = _record([*args, "-o", str(tmp_path / "quiet.wav")], stdin=bytes(2 * RATE))
    summary = _summary(proc)
    assert summary["peak_dbfs"] is None and summary["rms_dbfs"] is None
    assert "the recording is silent (digital silence): check that the microphone" in proc.stderr
    pcm = _pcm(1.0, 1, seed=15)
    pcm[100:150] = 32767
    pcm[300:330] = -32768
    proc = _record([*args, "-o", str(tmp_path / "loud.wav")], stdin=pcm.tobytes())
    summary = _summary(proc)
    assert summary["clipped_samples"] == 80 and summary["peak_dbfs"] == 0.0
    assert "80 samples (0.5 %) at full scale: the input clips" in proc.stderr
    assert "lower the capture gain" in proc.stderr and "silent" not in proc.stderr


def test_lost_audio_is_warned_about(alsa_home: Path, tmp_path: Path) -> None:
    # the clockless file-plugin device usually outruns a 0.5 s ring buffer at once; whether
    # it does is a race with the reader, so the scenario is repeated (at most 3 times) until
    # audio was lost, and then the warning must be there
    args = ["--device", "amuletrec", "--rate", str(RATE), "--seconds", str(SECONDS)]
    for attempt in range(3):
        out = tmp_path / f"gaps{attempt}.wav"
        proc = _record([*args, "--buffer", "0.5", "-o", str(out)], alsa_home)
        summary = _summary(proc)
        if summary["dropped_samples"]:
            break
        assert "audio was lost" not in proc.stderr
    else:
        pytest.skip("the reader kept up with the clockless device 3 times: no audio was lost")
    assert summary["dropped_samples"] > 0  # type: ignore[operator]
    assert "audio was lost: " in proc.stderr and "raise --buffer" in proc.stderr


def _refused(proc: subprocess.CompletedProcess[str], problem: str, folder: Path) -> None:
    """Exit 2, one error line naming the problem, no traceback, nothing written."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and problem in errors[0], proc.stderr
    assert proc.stdout == ""
    assert [p.name for p in folder.iterdir() if p.suffix in (".wav", ".part")] == []


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["-o", "{d}/x.wav"], "record needs --seconds"),
        (["--seconds", "5"], "record needs -o"),
        (["--seconds", "0", "-o", "{d}/x.wav"], "--seconds must be a positive number"),
        (["--seconds", "-3", "-o", "{d}/x.wav"], "--seconds must be a positive number"),
        (["--seconds", "nan", "-o", "{d}/x.wav"], "--seconds must be a positive number"),
        (["--seconds", "5", "-o", "{d}/no/such/x.wav"], "folder {d}/no/such does not exist"),
        (["--seconds", "5", "-o", "{d}"], "is a folder: give a file name"),
        (["--seconds", "5", "-o", "{d}/x.wav", "--rate", "0"], "--rate must be a positive"),
        (["--seconds", "5", "-o", "{d}/x.wav", "--rate", "-8000"], "--rate must be a positive"),
        (["--seconds", "5", "-o", "{d}/x.wav", "--channels", "0"], "--channels must be at least"),
        (["--seconds", "5", "-o", "{d}/x.wav", "--channels", "-2"], "--channels must be at least"),
        (["--seconds", "5", "-o", "{d}/x.wav", "--channel", "-1"], "cannot be negative"),
        (["--seconds", "5", "-o", "{d}/x.wav", "--buffer", "0"], "--buffer must be at least"),
        (["--seconds", "5", "-o", "{d}/x.wav", "--device", " "], "--device is empty"),
        (
            ["--seconds", "5", "-o", "{d}/x.wav", "--channels", "1", "--channel", "1"],
            "--channel 1 does not exist: --channels 1 opens channels 0..0",
        ),
        (
            ["--source", "stdin", "--seconds", "5", "-o", "{d}/x.wav"],
            "--source stdin needs --rate",
        ),
        (
            ["--source", "stdin", "--rate", "16000", "--seconds", "5", "-o", "{d}/x.wav"],
            "stdin ended before any audio arrived: nothing written",
        ),
        (
            ["--source", "stdin", "--rate", "8000", "--seconds", "1e9", "-o", "{d}/x.wav"],
            "more than one wav file holds",
        ),
    ],
)
def test_careless_input_is_refused_in_one_line(
    tmp_path: Path, args: list[str], problem: str
) -> None:
    d = str(tmp_path)
    proc = _record([a.format(d=d) for a in args], stdin=b"")
    _refused(proc, problem.format(d=d), tmp_path)


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "healthy.wav"
    out.write_bytes(b"precious")
    pcm = _pcm(1.0, 1, seed=13).tobytes()
    args = ["--source", "stdin", "--rate", str(RATE), "--seconds", "1", "-o", str(out)]
    proc = _record(args, stdin=pcm)
    assert proc.returncode == 2 and "already exists: give --force" in proc.stderr
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["healthy.wav"]
    _summary(_record([*args, "--force"], stdin=pcm))
    assert _samples(out).size == RATE


def test_unwritable_location_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        folder = Path("/sys")  # not writable even for root
    else:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
    args = ["--source", "stdin", "--rate", str(RATE), "--seconds", "1"]
    proc = _record([*args, "-o", str(folder / "x.wav")], stdin=_pcm(1.0, 1, seed=1).tobytes())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"cannot write in {folder}: Permission denied" in proc.stderr
    assert not (folder / "x.wav").exists()


def test_stdin_from_a_terminal_is_refused(tmp_path: Path) -> None:
    leader, follower = os.openpty()
    try:
        args = ["--source", "stdin", "--rate", "16000", "--seconds", "1"]
        proc = subprocess.run(
            [str(BIN), "record", *args, "-o", str(tmp_path / "x.wav")],
            stdin=follower,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(leader)
        os.close(follower)
    _refused(proc, "stdin is a terminal", tmp_path)


def test_unknown_device_and_missing_channel_are_refused(alsa_home: Path, tmp_path: Path) -> None:
    out = ["--seconds", "1", "-o", str(tmp_path / "x.wav")]
    proc = _record(["--device", "no-such-mic", *out], alsa_home)
    _refused(proc, "device 'no-such-mic' is not an input device. Input devices: ", tmp_path)
    assert "amuletrec" in proc.stderr
    proc = _record(["--device", "amuletrec", "--channel", "100000", *out], alsa_home)
    _refused(proc, "--channel must be 0 to 255, not 100000", tmp_path)  # the config key's rule
    proc = _record(["--device", "amuletrec", "--channel", "200", *out], alsa_home)
    _refused(proc, "device 'amuletrec' has ", tmp_path)
    assert "input channel(s) (0.." in proc.stderr and "channel 200 requested" in proc.stderr
    proc = _record(["--device", "amuletrec", "--channels", "201", *out], alsa_home)
    _refused(proc, "201 channels requested", tmp_path)
