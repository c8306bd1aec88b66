"""The runtime never imports TensorFlow and never unpickles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "amulet_stream"


def test_runtime_loads_and_scores_without_tensorflow_or_pickle() -> None:
    modules = sorted(p.stem for p in RUNTIME.glob("*.py") if p.stem != "__main__")
    code = (
        "import sys, importlib, pickle\n"
        "def refuse(*a, **k): raise AssertionError('pickle used at run time')\n"
        "pickle.load = pickle.loads = refuse\n"
        "pickle.Unpickler = refuse\n"
        f"for m in {modules!r}: importlib.import_module('amulet_stream.' + m)\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from amulet_stream.scoring.model import Model\n"
        f"m = Model(Path({str(ROOT / 'models' / 'default.onnx')!r}))\n"
        "from amulet_stream.scoring.frames import VectorStream\n"
        "x = np.random.default_rng(0).standard_normal(32000).astype('float32')\n"
        "print(m.score_vectors(VectorStream(m.profile).push(x)).shape)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf2onnx', 'joblib', 'h5py', 'onnx')]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "(57,)"  # 61 frames of 1024 every 512 samples, 5 per vector
