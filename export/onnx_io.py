"""Keras scorer -> ONNX with metadata, parity check and an atomic write."""

from __future__ import annotations

import json
import logging
import platform
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from amulet_stream import __version__
from amulet_stream.scoring.model import INPUT_NAME, OUTPUT_NAME, RESIDUAL_NAME
from amulet_stream.scoring.model_meta import FORMAT_VERSION, META_KEY

from .errors import ParityError

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
PARITY_TOLERANCE = 1e-5
OPSET = 17


def convert(model: keras.Model, dim: int) -> onnx.ModelProto:
    """Convert a scorer (N, D) -> (N,) to an ONNX graph with input 'features', output 'score'
    (and 'residual' (N, D) for an explainer, whose second output it is)."""

    def outputs(x: tf.Tensor) -> dict[str, tf.Tensor]:
        out = model(x, training=False)
        if isinstance(out, (list, tuple)):
            return dict(zip((OUTPUT_NAME, RESIDUAL_NAME), out, strict=True))
        return {OUTPUT_NAME: out}

    fn = tf.function(outputs)
    spec = (tf.TensorSpec((None, dim), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=OPSET)
    assert isinstance(proto, onnx.ModelProto)
    return proto


def ort_scores(proto: onnx.ModelProto, vectors: F32) -> F32:
    """Scores of raw feature vectors by onnxruntime on the CPU."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out = sess.run([OUTPUT_NAME], {INPUT_NAME: vectors.astype(np.float32)})[0]
    return np.asarray(out, dtype=np.float32).reshape(-1)


def check_parity(proto: onnx.ModelProto, keras_scores: F32, vectors: F32) -> float:
    """Max |ONNX - Keras| over the vectors; raise ParityError above the tolerance."""
    diff = float(np.abs(ort_scores(proto, vectors) - keras_scores).max())
    if not diff <= PARITY_TOLERANCE:
        raise ParityError(
            f"ONNX scores differ from Keras scores by {diff:.2e} (> {PARITY_TOLERANCE:.0e}) "
            f"on {vectors.shape[0]} held-out vectors: export refused"
        )
    return diff


def parity_doc(vectors: F32, keras_scores: F32, diff: float, n: int = 8) -> dict[str, Any]:
    """The parity sample kept in the model: a few inputs and their expected scores."""
    pick = np.linspace(0, vectors.shape[0] - 1, min(n, vectors.shape[0])).astype(int)
    return {
        "max_abs_diff": diff,
        "tolerance": PARITY_TOLERANCE,
        "checked_vectors": int(vectors.shape[0]),
        "inputs": [[float(v) for v in row] for row in vectors[pick]],
        "scores": [float(s) for s in keras_scores[pick]],
    }


def versions() -> dict[str, str]:
    """Tool versions recorded in the model."""
    return {
        "amulet_stream": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "opset": str(OPSET),
    }


def attach(proto: onnx.ModelProto, doc: dict[str, Any]) -> None:
    """Store the metadata document under 'amulet' in metadata_props."""
    doc = {"format_version": FORMAT_VERSION, **doc}
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(doc, sort_keys=True)
    proto.producer_name = "amulet-export"
    proto.producer_version = __version__
    proto.doc_string = f"amulet anomaly model, profile {doc['profile']['name']}"
