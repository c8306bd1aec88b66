"""AMULET's detection pipeline (`detect_anomalies` + `read_wav(file, 0.1)`), librosa + Keras.

Runs in the bench's own environment (bench/.amulet-venv, made by amulet_side_by_side.py),
never in the project's:

    bench/.amulet-venv/bin/python bench/amulet_reference.py FILE --model-dir AMULET_OUTPUT_DIR

Like AMULET it loads the model, threshold and scaler first, then reads the file: librosa.load
mono at 22050 Hz (soxr_hq), |STFT| (n_fft 2048, hop 512), |mel power| (128 mels) and |MFCC|
(20, DCT-III) of the whole file; rows from AMULET's loop (column (k+1)*step, mean of each
column); MinMaxScaler; Keras predict on (N, 1, 3); MAE per row; anomaly if MAE > threshold.
Keras 3 cannot load AMULET's Keras 2.3 .h5, so the 16-4-4-16 LSTM is rebuilt and its weights
read with h5py; the joblib pickles are read by a restricted unpickler (numbers only, nothing
executed). AMULET's per-row pandas DataFrame.append (gone in pandas 2) is replaced by numpy,
which only makes this side faster than AMULET was.

Standard output, one JSON object per line: {"event": "model_loaded"} as soon as the model,
threshold and scaler are in memory; one {"event": "row", "name", "start", "end", "mae",
"anomaly"} per row (start/end in s); a final {"event": "summary", ...} with phase times (s).
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import sys
import time
from math import floor
from pathlib import Path
from typing import Any, ClassVar

import h5py
import keras
import librosa
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
SECONDS = 0.1  # AMULET's read_wav(file, 0.1)
N_FFT = 2048
HOP = 512


class _Stub:
    """Inert stand-in for an allowed pickled class: keeps its args and state, runs nothing."""

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None


class _Wrapper(_Stub):
    """joblib's NumpyArrayWrapper: the array's raw bytes follow it in the stream."""


_ALLOWED = {
    ("sklearn.preprocessing._data", "MinMaxScaler"): _Stub,
    ("sklearn.preprocessing.data", "MinMaxScaler"): _Stub,
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): _Wrapper,
    ("numpy", "ndarray"): _Stub,
    ("numpy", "dtype"): _Stub,
}


class _Restricted(pickle._Unpickler):
    """Unpickler limited to a MinMaxScaler's numeric state and joblib's inline arrays."""

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)
    read: Any
    stack: list[Any]

    def find_class(self, module: str, name: str) -> Any:
        """The stand-in class for an allowed (module, name); anything else is refused."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refuses {module}.{name}") from None

    def load_build(self) -> None:
        """BUILD: store the state; a joblib array wrapper is replaced by its float64 array."""
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _Stub):
            raise pickle.UnpicklingError("state for an object that is not allowed")
        inst.state = state
        if isinstance(inst, _Wrapper):
            dtype = np.dtype(state["dtype"].args[0]).newbyteorder(state["dtype"].state[1])
            count = int(np.prod(state["shape"]))
            raw = self.read(count * dtype.itemsize)
            arr = np.frombuffer(raw, dtype=dtype).astype(np.float64)
            self.stack[-1] = arr.reshape(state["shape"], order=state.get("order", "C"))

    dispatch[pickle.BUILD[0]] = load_build


def read_pickle(path: Path) -> Any:
    """One joblib/pickle file through the restricted unpickler."""
    return _Restricted(io.BytesIO(path.read_bytes())).load()


def build_model(h5: Path) -> keras.Model:
    """AMULET's LSTM autoencoder 16-4-4-16 on (N, 1, 3), weights read from its Keras 2 .h5."""
    with h5py.File(h5, "r") as fh:
        config = json.loads(fh.attrs["model_config"])
        layers = [ly for ly in config["config"]["layers"] if ly["class_name"] != "InputLayer"]
        acts = layers[0]["config"]
        weights = []
        for ly in layers:
            group = fh["model_weights"][ly["name"]]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            weights.append([np.asarray(group[n], np.float32) for n in names])
    kw = {"activation": acts["activation"], "recurrent_activation": acts["recurrent_activation"]}
    inp = keras.Input((1, 3))
    x = keras.layers.LSTM(16, return_sequences=True, **kw)(inp)
    x = keras.layers.LSTM(4, return_sequences=False, **kw)(x)
    x = keras.layers.RepeatVector(1)(x)
    x = keras.layers.LSTM(4, return_sequences=True, **kw)(x)
    x = keras.layers.LSTM(16, return_sequences=True, **kw)(x)
    x = keras.layers.TimeDistributed(keras.layers.Dense(3))(x)
    model = keras.Model(inp, x)
    with_weights = [ly for ly in model.layers if ly.weights]
    for layer, w in zip(with_weights, [w for w in weights if w], strict=True):
        layer.set_weights(w)
    return model


def read_wav(wav: F32, sr: int) -> tuple[list[tuple[str, float, float]], F32]:
    """AMULET's read_wav(file, 0.1) after librosa.load: rows (name, start s, end s), (N, 3)."""
    s = np.abs(librosa.stft(wav, n_fft=N_FFT, hop_length=HOP))
    mel_s = np.abs(librosa.feature.melspectrogram(y=wav, sr=sr))
    mfcc = np.abs(librosa.feature.mfcc(y=wav, sr=sr, dct_type=3))
    n_frames = s.shape[1]
    rows = floor(len(wav) / (sr * SECONDS))
    step = floor(n_frames / rows)
    hop_s = HOP / sr
    names: list[tuple[str, float, float]] = []
    feats: list[list[float]] = []
    i = 0
    while i <= n_frames - step - 1:
        col = i + step
        feats.append([np.mean(s[:, col]), np.mean(mel_s[:, col]), np.mean(mfcc[:, col])])
        name = f"{round(i * hop_s, 1)}-{round(col * hop_s, 1)}"
        names.append((name, i * hop_s, col * hop_s))
        i += step
    return names, np.asarray(feats, np.float64)


def emit(doc: dict[str, Any]) -> None:
    """One JSON line on standard output, flushed."""
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def main() -> None:
    """Load like AMULET, score one file, print rows and phase times (s)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--model-dir", type=Path, required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = build_model(args.model_dir / "sound_anomaly_detection.h5")
    limit = float(read_pickle(args.model_dir / "anomaly_threshold"))
    scaler = read_pickle(args.model_dir / "scaler").state
    emit({"event": "model_loaded"})
    t1 = time.perf_counter()
    wav, sr = librosa.load(args.file)  # mono, 22050 Hz, soxr_hq
    t_load = time.perf_counter()
    names, feats = read_wav(wav, sr)
    t2 = time.perf_counter()
    x = (feats * scaler["scale_"] + scaler["min_"]).reshape(-1, 1, 3)
    preds = np.asarray(model.predict(x, verbose=0))
    mae = np.mean(np.abs(x.reshape(-1, 3) - preds.reshape(-1, 3)), axis=1)
    t3 = time.perf_counter()
    for (name, start, end), m in zip(names, mae, strict=True):
        emit(
            {
                "event": "row",
                "name": name,
                "start": start,
                "end": end,
                "mae": float(m),
                "anomaly": bool(m > limit),
            }
        )
    emit(
        {
            "event": "summary",
            "rows": len(names),
            "threshold": limit,
            "load_model_s": t1 - t0,
            "load_audio_s": t_load - t1,
            "features_s": t2 - t_load,
            "predict_s": t3 - t2,
        }
    )


if __name__ == "__main__":
    main()
