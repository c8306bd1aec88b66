"""Bad training input or no 'train' extra: one line naming the problem, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amulet_export.cli import main
from amulet_stream.audio.wav_write import write_wav

BIN = Path(sys.executable).parent
MODEL = Path(__file__).resolve().parents[1] / "models" / "default.onnx"
BLOCKER = """
import sys

class _NotInstalled:
    \"\"\"Meta-path finder: the 'train' extra's modules import as if not installed.\"\"\"

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in {"tensorflow", "keras", "tf2onnx", "onnx", "h5py", "matplotlib"}:
            raise ModuleNotFoundError(f"No module named {top!r}", name=top)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def _float_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    import struct

    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_bad_inputs(tmp_path: Path, audio_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = audio_dir / "healthy_10s.wav"
    raw = good.read_bytes()
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFX" + bytes(100))
    (tmp_path / "truncated.wav").write_bytes(raw[:2000])  # read to where it ends: 0.06 s
    write_wav(tmp_path / "short.wav", np.random.default_rng(0).uniform(-1, 1, 20000), 16000)
    write_wav(tmp_path / "silent.wav", np.zeros(16000 * 5), 16000)
    nan = np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 5)
    nan[40000] = np.nan
    _float_wav(tmp_path / "nan.wav", nan)
    (tmp_path / "nowav").mkdir()
    (tmp_path / "nowav" / "readme.txt").write_text("x")
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["--input-file", str(tmp_path / "missing.wav")], "missing.wav: no such file"),
        (["--input-file", str(tmp_path / "empty.wav")], "empty.wav: empty file"),
        (["--input-file", str(tmp_path / "corrupt.wav")], "corrupt.wav: not a wav file"),
        (["--input-file", str(tmp_path / "truncated.wav")], "truncated.wav: audio too short"),
        (["--input-dir", str(tmp_path / "nowav")], "nowav: folder holds no .wav file"),
        (["--input-file", str(tmp_path / "short.wav")], "short.wav: audio too short"),
        (["--input-file", str(tmp_path / "silent.wav")], "silent.wav: audio is silent"),
        (["--input-file", str(tmp_path / "nan.wav")], "nan.wav: contains NaN or infinite"),
        (
            ["--input-file", str(good), "--predict-file", str(tmp_path / "corrupt.wav")],
            "corrupt.wav: not a wav file",
        ),
    ]
    for args, expected in cases:
        out = tmp_path / "out"
        code, line = _run(["train", *args, "--output-dir", str(out), "--epochs", "1"], capsys)
        assert code == 2, (args, line)
        assert line.startswith("amulet-export: error: ") and expected in line, line
        assert not out.exists()
    code, line = _run(
        ["train", "--input-file", str(good), "--output-dir", str(tmp_path / "a_file" / "out")],
        capsys,
    )
    assert code == 2 and "a_file/out: cannot write output" in line
    code, line = _run(
        ["train", "--input-file", str(good), "--output-dir", str(tmp_path / "a_file")], capsys
    )
    assert code == 2 and "a_file: exists and is not a folder" in line
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_without_train_extra(tmp_path: Path, audio_dir: Path) -> None:
    """train and import-seed name the missing extra and exit 2; verify and synth still work.

    The extra is hidden by a sitecustomize.py on PYTHONPATH that makes its modules fail to
    import, as if not installed: building a real venv without it would take minutes."""
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCKER)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(tmp_path / "block"), os.environ.get("PYTHONPATH")])
        ),
    )
    seed = tmp_path / "amulet"
    seed.mkdir()
    for name in ("sound_anomaly_detection.h5", "scaler", "anomaly_threshold"):
        (seed / name).write_bytes(b"x")
    out = tmp_path / "out"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "amulet-export"), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )

    for args, purpose in (
        (
            ["train", "--input-file", str(audio_dir / "healthy_10s.wav"), "--output-dir", str(out)],
            "training",
        ),
        (["import-seed", str(seed), "-o", str(out / "seed.onnx")], "import-seed"),
        (["evaluate", "--out", str(out)], "evaluation"),
        (
            ["adapt", str(MODEL), "--normal", str(audio_dir / "healthy_10s.wav"), "-o", str(out)],
            "adapt",
        ),
    ):
        proc = run(*args)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.splitlines()[-1]
        assert last.startswith(
            f"amulet-export: error: {purpose} needs the 'train' extra: "
            "pip install 'amulet-stream[train]' (missing module "
        ), last
        assert all(line.startswith("amulet-export: ") for line in proc.stderr.splitlines())
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["amulet", "block"]

    wav = tmp_path / "synth.wav"
    proc = run("synth", "-o", str(wav), "--seconds", "2")
    assert proc.returncode == 0 and wav.is_file(), proc.stderr
    proc = run("verify", str(MODEL))
    assert proc.returncode in (0, 1) and proc.stdout.startswith(("OK ", "FAIL ")), proc.stderr
