"""Command-line mistakes, as a user makes them (issue 9): every flag goes through the checks of
its config key, and every mistake is one line on stderr and exit 2, never a traceback; a
closed stdout ends quietly; --plot is checked before the replay; a config file others may
write is refused. The real `amulet-stream` executable, real wav files, the real model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.synth.motor import generate

BIN = Path(sys.executable).parent / "amulet-stream"
ROOT = Path(__file__).resolve().parents[1]
W = "{wav}"
"""Placeholder for the test wav in the cases below; {tmp} is a fresh folder, {file} a file."""
STDIN = ["run", "--source", "stdin", "--rate", "16000"]
REC = ["record", "--source", "stdin", "--rate", "16000", "--seconds", "1", "-o", "{tmp}/r.wav"]

# (argv, words the one error line must hold)
CASES: list[tuple[list[str], str]] = [
    # replay: the flags of the config keys, with the keys' messages
    (["replay", W, "--hop", "0"], "--hop must be between 0.001 and 60 seconds, not 0.0"),
    (["replay", W, "--hop", "0.0001"], "--hop must be between 0.001 and 60 seconds"),
    (["replay", W, "--hop", "nan"], "--hop must be between 0.001 and 60 seconds"),
    (["replay", W, "--threads", "0"], "--threads must be at least 1, not 0"),
    (["replay", W, "--threads", "5000"], "--threads must be at most 256, not 5000"),
    (["replay", W, "--channel", "-1"], "--channel is 0-based and cannot be negative (-1)"),
    (["replay", W, "--channel", "300"], "--channel must be 0 to 255, not 300"),
    (["replay", W, "--metrics", "127.0.0.1:99999"], "--metrics '127.0.0.1:99999': port must be"),
    (["replay", W, "--metrics", ""], "--metrics '': port must be a number"),
    (["replay", W, "--metrics", "localhost:http"], "port must be a number"),
    (["replay", W, "--sensitivity", "11"], "--sensitivity must be in (0, 10], got 11.0"),
    (["replay", W, "--alert-seconds", "inf"], "--alert-seconds and within_seconds need"),
    (["replay", W, "--stream", "a b"], "--stream 'a b': use 1 to 64 letters"),
    (["replay", W, "--state-dir", W], "is not a folder"),
    (["replay", W, "--state-dir", ""], "--state-dir needs a folder name"),
    (["replay", W, "--mqtt", "host:99999"], "mqtt.port must be 1 to 65535"),
    (["replay", W, "--k", "3"], "--k counted windows and is gone"),
    # replay's own flags
    (["replay", W, "--speed", "0"], "--speed must be a positive number from 0.01 to 10000"),
    (["replay", W, "--speed", "1e-300"], "--speed must be a positive number"),
    (["replay", W, "--speed", "nan"], "--speed must be a positive number"),
    (["replay", W, "--plot", "/nonexistent/x.png"], "--plot /nonexistent/x.png: folder"),
    (["replay", W, "--plot", "{tmp}/x.txt"], "give a file name ending in .png, .svg or .pdf"),
    (["replay", W, "--plot", "{tmp}/dir.png"], "is a folder: give a file name"),
    (["replay", W, "--plot", "/proc/x.png"], "cannot create a file in /proc"),
    (["replay", W, "--config", "{tmp}/missing.toml"], "cannot read: No such file"),
    (["replay", W, "--config", sys.executable], "not a text file (a TOML config is expected)"),
    (["replay", W, "--config", "/dev/zero"], "not a regular file"),
    (["replay", W, "--config", "{tmp}"], "cannot read: Is a directory"),
    (["replay"], "replay needs at least one wav file (or --demo)"),
    # argparse's own mistakes: one line as well
    (["replay", W, "--threads", "abc"], "argument --threads: invalid int value: 'abc'"),
    (["replay", W, "--realtime", "--speed", "2"], "not allowed with argument --realtime"),
    (["replay", W, "--format", "xml"], "argument --format: invalid choice: 'xml'"),
    (["replay", W, "--bogus"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required: command"),
    (["bogus"], "invalid choice: 'bogus'"),
    # run
    ([*STDIN, "--threads", "0"], "--threads must be at least 1"),
    ([*STDIN, "--channels", "0"], "--channels must be a positive number, not 0"),
    ([*STDIN, "--channels", "-1"], "--channels must be a positive number, not -1"),
    ([*STDIN, "--channels", "1000"], "--channels must be 1 to 256, not 1000"),
    ([*STDIN, "--channels", "1", "--channel", "1"], "channel 1 does not exist"),
    (["run", "--source", "stdin", "--rate", "-5"], "--rate must be a positive number, not -5"),
    (["run", "--source", "stdin", "--rate", "1000000000"], "--rate must be 1000 to 768000 Hz"),
    ([*STDIN, "--duration", "-1"], "--duration must be a positive number of seconds, not -1"),
    ([*STDIN, "--duration", "nan"], "--duration must be a positive number"),
    ([*STDIN, "--buffer", "0"], "--buffer must be between 0.5 and 600 seconds, not 0"),
    ([*STDIN, "--buffer", "1e9"], "--buffer must be between 0.5 and 600 seconds"),
    ([*STDIN, "--hop", "0"], "--hop must be between 0.001 and 60 seconds"),
    ([*STDIN, "--device", "USB"], "--device is for kind = 'device'"),
    ([*STDIN, "--metrics", "127.0.0.1:99999"], "--metrics '127.0.0.1:99999': port must be"),
    ([*STDIN, "--state-dir", W], "--state-dir {wav}: exists and is not a folder"),
    (["run", "--source", "tape"], "argument --source: invalid choice: 'tape'"),
    # record: the bounds of the source keys too
    ([*REC, "--rate", "1000000000"], "--rate must be 1000 to 768000 Hz"),
    ([*REC, "--channels", "1000"], "--channels must be 1 to 256"),
    ([*REC, "--buffer", "1e9"], "--buffer must be between 0.5 and 600 seconds"),
    ([*REC, "--channel", "-1"], "cannot be negative"),
    # info
    (["info", "{tmp}/missing.onnx"], "cannot read model"),
]


SUBPROCESS = [
    ["replay", W, "--hop", "0"],
    ["replay", W, "--hop", "0.0001"],
    ["replay", W, "--threads", "0"],
    ["replay", W, "--channel", "-1"],
    ["replay", W, "--metrics", "127.0.0.1:99999"],
    ["replay", W, "--plot", "/nonexistent/x.png"],
    ["replay", W, "--config", sys.executable],
    ["replay", W, "--threads", "abc"],
    [*STDIN, "--channels", "0"],
    [*STDIN, "--channels", "-1"],
    [*STDIN, "--duration", "-1"],
    ["run", "--source", "stdin", "--rate", "-5"],
]
"""The issue's own list, through the real executable; every case of CASES also in-process."""


def _fill(arg: str, wav: Path, tmp: Path) -> str:
    return arg.replace("{wav}", str(wav)).replace("{tmp}", str(tmp))


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN, *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a 2 s wav, a folder holding it and a folder named dir.png)."""
    tmp = tmp_path_factory.mktemp("cli-errors")
    wav = tmp / "motor.wav"
    write_wav(wav, generate(2.0, 16000, seed=1), 16000)
    (tmp / "dir.png").mkdir()
    return wav, tmp


def _words(case: int, wav: Path) -> str:
    return CASES[case][1].replace("{wav}", str(wav))


def _check_one_line(argv: list[str], code: int, out: str, err: str, words: str) -> None:
    """Exit 2, one line on stderr naming the problem, nothing on stdout, no traceback."""
    assert code == 2, (argv, code, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, (argv, err)  # before anything else: no model warning either
    assert lines[0].startswith("amulet-stream: error: ") and words in lines[0], (argv, lines)
    assert out == ""


@pytest.mark.parametrize("case", range(len(CASES)), ids=[" ".join(a[1:] or a) for a, _ in CASES])
def test_a_mistake_is_one_line_and_exit_2(
    case: int, folder: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process through main(): every case of CASES."""
    from amulet_stream.cli.main import main

    wav, tmp = folder
    argv = [_fill(a, wav, tmp) for a in CASES[case][0]]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's mistakes
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    _check_one_line(argv, code, out, err, _words(case, wav))


def test_the_issues_mistakes_through_the_executable(folder: tuple[Path, Path]) -> None:
    """The flags the issue lists, through `amulet-stream` itself, three at a time."""
    wav, tmp = folder
    argvs = [[_fill(a, wav, tmp) for a in argv] for argv in SUBPROCESS]
    with ThreadPoolExecutor(max_workers=3) as pool:
        procs = list(pool.map(_run, argvs))
    for argv, proc in zip(argvs, procs, strict=True):
        (case,) = [i for i, (a, _) in enumerate(CASES) if [_fill(x, wav, tmp) for x in a] == argv]
        _check_one_line(argv, proc.returncode, proc.stdout, proc.stderr, _words(case, wav))


def test_the_same_checks_and_words_as_the_config_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flag and its config key are refused by the same check: the same words follow the
    flag's and the key's name."""
    from amulet_stream.cli.main import main
    from amulet_stream.service.config import load
    from amulet_stream.service.config_keys import ConfigError

    wav = tmp_path / "m.wav"
    write_wav(wav, generate(2.0, 16000, seed=1), 16000)
    cfg = tmp_path / "c.toml"
    for section, key, value, flag in (
        ("model", "hop", "0.0001", "--hop"),
        ("model", "threads", "5000", "--threads"),
        ("source", "channel", "300", "--channel"),
        ("source", "rate", "1000000000", "--rate"),
        ("source", "channels", "0", "--channels"),
        ("metrics", "listen", '"127.0.0.1:99999"', "--metrics"),
        ("detector", "sensitivity", "11.5", "--sensitivity"),
        ("daemon", "state_dir", f'"{wav}"', "--state-dir"),
    ):
        cfg.write_text(f"[{section}]\n{key} = {value}\n")
        with pytest.raises(ConfigError) as by_key:
            load(cfg)
        command = "run" if flag in ("--rate", "--channels") else "replay"
        assert main([command, str(wav), flag, value.strip('"')] if command == "replay" else
                    [command, "--source", "stdin", flag, value]) == 2  # fmt: skip
        flag_line = capsys.readouterr().err.strip()
        # 'FILE: model.hop must be ...' / '--hop must be ...': the same text after the name
        tail = flag_line.split(flag, 1)[1]
        assert str(by_key.value) == f"{cfg}: {section}.{key}{tail}", (by_key.value, flag_line)


def test_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    """`amulet-stream replay X --scores | head -1` and the same for run: exit 0, no traceback.
    120 KB of output (20 s at the finest hop) is more than a pipe holds."""
    wav = tmp_path / "motor.wav"
    mono = generate(20.0, 16000, seed=2)
    write_wav(wav, mono, 16000)
    pcm = tmp_path / "motor.raw"
    pcm.write_bytes(np.round(mono * 32767).astype("<i2").tobytes())
    err = tmp_path / "err.txt"
    for cmd in (
        f"{BIN} replay {wav} --scores --hop 0.032",
        f"{BIN} run --source stdin --rate 16000 --scores --hop 0.032 < {pcm}",
        f"{BIN} replay {wav} {wav} {wav} --format amulet-json",
    ):
        proc = subprocess.run(
            ["bash", "-c", f"{cmd} 2>{err} | head -c 100; echo; echo rc=${{PIPESTATUS[0]}}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        stderr = err.read_text()
        assert proc.stdout.strip().endswith("rc=0"), (cmd, proc.stdout[-200:], stderr)
        assert proc.stdout.startswith("{"), proc.stdout[:200]
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
        assert "BrokenPipe" not in stderr and "error" not in stderr, stderr


def test_plot_is_checked_before_the_replay(tmp_path: Path) -> None:
    """A bad --plot target fails at once, not after the replay (which would have printed the
    events and the summary first): 1 min of audio, refused before the model is loaded."""
    wav = tmp_path / "long.wav"
    write_wav(wav, generate(60.0, 16000, seed=4), 16000)
    for target, words in (
        (tmp_path / "no" / "x.png", "folder"),
        (tmp_path / "x.txt", "ending in .png"),
    ):
        t0 = time.monotonic()
        proc = _run(["replay", str(wav), "--plot", str(target)])
        took = time.monotonic() - t0
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert proc.stdout == "" and proc.stderr.count("\n") == 1, (proc.stdout, proc.stderr)
        assert took < 5.0, took  # an interpreter's start; the replay and plot take longer


def test_plot_without_matplotlib_fails_before_the_replay(tmp_path: Path) -> None:
    """Without the plot extra, --plot is refused before the replay with what to install. The
    missing package is made by a `matplotlib` module on PYTHONPATH that fails to import, as
    an environment without the extra does."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "matplotlib.py").write_text("raise ImportError(\"No module named 'matplotlib'\")\n")
    wav = tmp_path / "m.wav"
    write_wav(wav, generate(2.0, 16000, seed=5), 16000)
    env = {**os.environ, "PYTHONPATH": str(shadow)}
    proc = subprocess.run(
        [BIN, "replay", str(wav), "--plot", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "pip install 'amulet-stream[plot]'" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "x.png").exists()


def test_config_writable_by_others_is_refused(tmp_path: Path) -> None:
    from amulet_stream.service.config import load
    from amulet_stream.service.config_keys import ConfigError

    wav = tmp_path / "m.wav"
    write_wav(wav, generate(2.0, 16000, seed=6), 16000)
    cfg = tmp_path / "monitor.toml"
    cfg.write_text('[source]\nstream = "motor-7"\n')
    for mode in (0o664, 0o646, 0o666, 0o620, 0o602):
        cfg.chmod(mode)
        with pytest.raises(ConfigError, match=f"writable by group or others \\(mode {mode:04o}\\)"):
            load(cfg)
    cfg.chmod(0o664)
    proc = _run(["replay", str(wav), "--config", str(cfg)])
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"{cfg}: writable by group or others (mode 0664)" in proc.stderr
    assert f"chmod go-w {cfg}" in proc.stderr
    for mode in (0o600, 0o400):
        cfg.chmod(mode)
        assert load(cfg).source.stream == "motor-7"
    cfg.chmod(0o644)
    proc = _run(["replay", str(wav), "--config", str(cfg), "-q"])
    assert proc.returncode == 0, proc.stderr
    assert '"stream": "motor-7"' in proc.stdout


def test_state_dir_flag_sets_the_outbox_folder(tmp_path: Path) -> None:
    """--state-dir DIR is where replay's MQTT outbox keeps what the (absent) broker did not
    take; the exit says so."""
    wav = tmp_path / "m.wav"
    write_wav(wav, generate(4.0, 16000, seed=7), 16000)
    state = tmp_path / "state"
    proc = subprocess.run(
        [BIN, "replay", str(wav), "--mqtt", "127.0.0.1:1", "--state-dir", str(state), "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (state / "outbox").is_dir() and str(state / "outbox") in proc.stderr
