"""Import an AMULET model (Keras 2.3 .h5 + joblib scaler + threshold) as one amulet-v1 .onnx.

The scaler and threshold are joblib pickles. They are read by a restricted unpickler that
knows only the few classes a MinMaxScaler's numeric state needs and builds inert stand-ins
for them: no code from the file is ever run, and scikit-learn is not needed.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import numpy.typing as npt

from amulet_stream.scoring.features import AMULET_V1

from . import nets, onnx_io, outdir
from .errors import InputError

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
_DTYPES = {"f4", "f8", "i4", "i8"}


class _Stub:
    """Inert stand-in for an allowed class: keeps constructor args and state, runs nothing."""

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Scaler(_Stub):
    """sklearn.preprocessing MinMaxScaler."""


class _ArrayWrapper(_Stub):
    """joblib.numpy_pickle.NumpyArrayWrapper: array bytes follow it in the stream."""


class _NDArray(_Stub):
    """numpy.ndarray, only as the wrapper's 'subclass' marker."""


class _DType(_Stub):
    """numpy.dtype('f8', ...) of a plain numeric type."""

    def to_numpy(self) -> np.dtype[Any]:
        code = self.args[0] if self.args else None
        if code not in _DTYPES:
            raise pickle.UnpicklingError(f"array dtype {code!r} is not a plain number type")
        order = self.state[1] if isinstance(self.state, tuple) and len(self.state) > 1 else "<"
        dtype: np.dtype[Any] = np.dtype(code).newbyteorder("<" if order in ("<", "|", "=") else ">")
        return dtype


_ALLOWED: dict[tuple[str, str], type[_Stub]] = {
    ("sklearn.preprocessing._data", "MinMaxScaler"): _Scaler,
    ("sklearn.preprocessing.data", "MinMaxScaler"): _Scaler,
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): _ArrayWrapper,
    ("numpy", "ndarray"): _NDArray,
    ("numpy", "dtype"): _DType,
}


class _Restricted(pickle._Unpickler):
    """Pure-Python unpickler limited to _ALLOWED; reads joblib's inline array bytes."""

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)
    read: Any
    stack: list[Any]

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refuses to load {module}.{name}") from None

    def _read_array(self, wrapper: _ArrayWrapper) -> npt.NDArray[Any]:
        state = wrapper.state if isinstance(wrapper.state, dict) else {}
        dtype = state.get("dtype")
        shape = state.get("shape")
        if not isinstance(dtype, _DType) or not isinstance(shape, tuple):
            raise pickle.UnpicklingError("array wrapper without dtype/shape")
        np_dtype = dtype.to_numpy()
        if "numpy_array_alignment_bytes" in state:
            pad = self.read(1)[0]
            self.read(pad)
        count = int(np.prod(shape))
        raw = self.read(count * np_dtype.itemsize)
        if len(raw) != count * np_dtype.itemsize:
            raise pickle.UnpicklingError("array data truncated")
        order = "F" if state.get("order") == "F" else "C"
        flat = np.frombuffer(raw, dtype=np_dtype).astype(np.float64)
        return flat.reshape(tuple(int(s) for s in shape), order="F" if order == "F" else "C")

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _Stub):
            raise pickle.UnpicklingError("state for an object that is not allowed")
        inst.__setstate__(state)
        if isinstance(inst, _ArrayWrapper):
            self.stack[-1] = self._read_array(inst)

    dispatch[pickle.BUILD[0]] = load_build


def _unpickle(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from err
    if not data:
        raise InputError(f"{path}: empty file")
    try:
        return _Restricted(io.BytesIO(data)).load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        AttributeError,
        KeyError,
    ) as err:
        raise InputError(f"{path}: not an AMULET joblib file: {err}") from err


def read_threshold(path: Path) -> float:
    """AMULET's anomaly_threshold: a pickled float."""
    value = _unpickle(path)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InputError(f"{path}: expected a positive number, found {type(value).__name__}")
    return float(value)


@dataclass(frozen=True)
class MinMax:
    """A fitted MinMaxScaler's state: scaled = x * scale + min."""

    scale: F32
    min: F32
    data_min: F32
    data_max: F32


def read_scaler(path: Path) -> MinMax:
    """AMULET's scaler: a joblib pickle of a MinMaxScaler over the 3 features."""
    obj = _unpickle(path)
    if not isinstance(obj, _Scaler) or not isinstance(obj.state, dict):
        raise InputError(f"{path}: not a MinMaxScaler pickle")
    st = obj.state
    arrays = {}
    for key in ("scale_", "min_", "data_min_", "data_max_"):
        arr = st.get(key)
        if not isinstance(arr, np.ndarray) or arr.shape != (3,) or not np.isfinite(arr).all():
            raise InputError(f"{path}: scaler field {key} is not 3 finite numbers")
        arrays[key] = arr.astype(np.float32)
    return MinMax(arrays["scale_"], arrays["min_"], arrays["data_min_"], arrays["data_max_"])


_EXPECTED = [
    ("LSTM", 16, True),
    ("LSTM", 4, False),
    ("RepeatVector", 1, None),
    ("LSTM", 4, True),
    ("LSTM", 16, True),
    ("TimeDistributed", 3, None),
]


def read_h5(path: Path) -> tuple[list[list[F32]], dict[str, str]]:
    """Weights of AMULET's LSTM autoencoder from a Keras 2 .h5, per layer, and its activations."""
    try:
        with h5py.File(path, "r") as fh:
            config = json.loads(fh.attrs["model_config"])
            layers = [ly for ly in config["config"]["layers"] if ly["class_name"] != "InputLayer"]
            shape = [
                (
                    ly["class_name"],
                    ly["config"].get("units", ly["config"].get("n")),
                    ly["config"].get("return_sequences"),
                )
                for ly in layers
            ]
            if shape[:5] != _EXPECTED[:5] or shape[5][0] != "TimeDistributed":
                raise InputError(
                    f"{path}: not AMULET's LSTM autoencoder 16-4-4-16 "
                    f"(layers: {[s[0] + str(s[1]) for s in shape]})"
                )
            lstm = layers[0]["config"]
            acts = {
                "activation": lstm["activation"],
                "recurrent": lstm.get("recurrent_activation", "sigmoid"),
            }
            weights: list[list[F32]] = []
            group = fh["model_weights"]
            for ly in layers:
                g = group[ly["name"]]
                names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
                weights.append([np.asarray(g[n], dtype=np.float32) for n in names])
    except InputError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError) as err:
        raise InputError(f"{path}: not a readable Keras .h5 model: {err}") from err
    return weights, acts


def import_seed(h5: Path, scaler_path: Path, threshold_path: Path, out: Path) -> float:
    """Build the amulet-v1 ONNX model; return the parity difference found."""
    thr = read_threshold(threshold_path)
    scaler = read_scaler(scaler_path)
    weights, acts = read_h5(h5)
    if weights[-1][0].shape != (16, 3):
        raise InputError(f"{h5}: output layer has shape {weights[-1][0].shape}, expected (16, 3)")
    core = nets.amulet_lstm(3, acts["activation"], acts["recurrent"])
    with_weights = [ly for ly in core.layers if ly.weights]
    try:
        for layer, w in zip(with_weights, [w for w in weights if w], strict=True):
            layer.set_weights(w)
    except ValueError as err:
        raise InputError(f"{h5}: weights do not fit AMULET's architecture: {err}") from err
    model = nets.scorer(core, scaler.scale, scaler.min)
    rng = np.random.default_rng(0)
    span = scaler.data_max - scaler.data_min
    probe = (scaler.data_min + rng.uniform(-0.1, 1.1, (64, 3)) * span).astype(np.float32)
    keras_scores = np.asarray(model.predict(probe, verbose=0), np.float32)
    proto = onnx_io.convert(model, 3)
    diff = onnx_io.check_parity(proto, keras_scores, probe)
    doc = {
        "profile": AMULET_V1.to_dict(),
        "architecture": "amulet_lstm",
        "scaler": {
            "kind": "minmax",
            "scale": scaler.scale.tolist(),
            "bias": scaler.min.tolist(),
            "data_min": scaler.data_min.tolist(),
            "data_max": scaler.data_max.tolist(),
        },
        "threshold": thr,
        "threshold_method": "max",
        "threshold_details": {"method": "max", "over": "AMULET training rows (imported)"},
        "score": "mean absolute error of scaled features (AMULET's Loss_mae)",
        "train_scores": {},
        "fingerprint": "unknown (imported from AMULET)",
        "imported_from": {
            "h5": h5.name,
            "scaler": scaler_path.name,
            "threshold": threshold_path.name,
        },
        "versions": onnx_io.versions(),
        "parity": onnx_io.parity_doc(probe, keras_scores, diff),
    }
    onnx_io.attach(proto, doc)
    outdir.save_atomic(proto, out)
    return diff
