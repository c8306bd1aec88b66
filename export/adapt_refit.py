"""The graph `adapt` writes: refitted exactly (closed-form models that keep their sums),
retrained on the original training audio plus the recordings marked normal (`--input-dir`),
or the model's own when neither applies."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from amulet_stream.scoring.features import PROFILES
from amulet_stream.scoring.model import INPUT_NAME, OUTPUT_NAME
from amulet_stream.scoring.model_meta import META_KEY

from . import dataset, linear
from .errors import InputError
from .train_config import ARCHITECTURES, DEFAULT_ARCHITECTURE
from .train_data import augment

_LOGGER = logging.getLogger(__name__)


def refit(
    proto: onnx.ModelProto, doc: dict[str, Any], files: list[Path]
) -> tuple[onnx.ModelProto, list[str]] | None:
    """A closed-form model fitted again on its training vectors plus every vector of `files`,
    exactly as if they had been in its training audio (the scaler kept); None when the model
    is not closed-form or keeps no sums. doc is updated in place."""
    kind = _kind(doc)
    stats = linear.Stats.from_model(proto) if kind in linear.KINDS else None
    if stats is None or not files:
        return None
    profile = PROFILES[doc["profile"]["name"]]
    scale = np.asarray(doc["scaler"]["scale"], np.float32)
    bias = np.asarray(doc["scaler"]["bias"], np.float32)
    vectors = augment(profile, dataset.load(files, profile).vectors)
    more = linear.Stats.of(linear.scaled(vectors, scale, bias))
    new, desc, reference = linear.build(str(kind), stats.add(more), scale, bias)
    doc["architecture"] = desc
    _parity(new, doc, reference(np.asarray(doc["parity"]["inputs"], np.float32)))
    new.producer_name, new.producer_version = proto.producer_name, proto.producer_version
    new.doc_string = proto.doc_string
    return new, [f"{kind} refitted exactly: {int(stats.count)} + {int(more.count)} vectors"]


def retrain(
    doc: dict[str, Any], input_dir: Path, files: list[Path]
) -> tuple[onnx.ModelProto, dict[str, Any], list[str]]:
    """The model trained again as before (profile, architecture, epochs, seed, threshold
    method) on the wav files of input_dir plus `files` (trained on, not calibrated on):
    (graph, its metadata, changes)."""
    from .tfimport import train_extra

    profile = doc["profile"]["name"]
    if profile not in DEFAULT_ARCHITECTURE:  # not trained by `train` (the DCGAN's)
        raise InputError(
            f"a {profile} model is not retrained by adapt (train it again with its own "
            "command); without --input-dir adapt recalibrates it"
        )
    inputs = dataset.list_inputs(None, input_dir) + files
    training = doc.get("training", {})
    with train_extra("adapt --input-dir"):
        from .train import train
        from .train_config import TrainConfig
    with tempfile.TemporaryDirectory(prefix="amulet-adapt-") as tmp:
        cfg = TrainConfig(
            inputs=inputs,
            output_dir=Path(tmp) / "out",
            profile=profile,
            epochs=int(training.get("epochs", 20)),
            batch_size=int(training.get("batch_size", 32)),
            threshold_method=doc.get("threshold_method"),
            seed=int(training.get("seed", 10)),
            # another name (AMULET's imported LSTM): the profile's default, for amulet-v1 its LSTM
            architecture=kind if (kind := _kind(doc)) in ARCHITECTURES else None,
            extra=len(files),
        )
        _LOGGER.info(
            "adapt: training again on the %d file(s) of %s and %d more",
            len(inputs) - len(files),
            input_dir,
            len(files),
        )
        proto = onnx.load(str(train(cfg)))
    new_doc = metadata(proto)
    seconds = new_doc["training"]["seconds"]
    change = f"retrained on {len(inputs)} file(s), {seconds:.1f} s ({len(files)} marked normal)"
    return proto, new_doc, [change]


def _kind(doc: dict[str, Any]) -> str | None:
    """The model's architecture: {"kind": ...} of `train`, or a name (imported, DCGAN)."""
    arch = doc.get("architecture")
    kind = arch.get("kind") if isinstance(arch, dict) else arch
    return kind if isinstance(kind, str) else None


def metadata(proto: onnx.ModelProto) -> dict[str, Any]:
    """The model's metadata document."""
    for entry in proto.metadata_props:
        if entry.key == META_KEY:
            doc = json.loads(entry.value)
            if isinstance(doc, dict):
                return doc
    raise InputError("the model file has no amulet metadata")


def _parity(proto: onnx.ModelProto, doc: dict[str, Any], expected: npt.NDArray[np.float32]) -> None:
    """The stored parity sample's scores, for the new graph, with onnxruntime's difference."""
    inputs = np.asarray(doc["parity"]["inputs"], np.float32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    cpu = ["CPUExecutionProvider"]
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=cpu)
    got = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]
    diff = float(np.abs(got - expected).max())
    doc["parity"] = {**doc["parity"], "scores": expected.tolist(), "max_abs_diff": diff}
