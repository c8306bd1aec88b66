"""Self-describing ONNX anomaly model: loading, validation and scoring with onnxruntime."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from .features import Profile, ProfileError, profile_from_dict

_LOGGER = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_KEY = "amulet"
INPUT_NAME = "features"
OUTPUT_NAME = "score"
BATCH = 32
"""Vectors per onnxruntime call: always exactly this many rows (zero-padded)."""
MAX_ROWS = 1024
"""Rows of one score_many call at most: onnxruntime's arena grows to its largest call (a call
for 256 streams at once left the process 72 MB larger, in calls of 16 streams 6.7 MB)."""
REQUIRED = (
    "format_version",
    "profile",
    "threshold",
    "threshold_method",
    "train_scores",
    "fingerprint",
    "versions",
    "parity",
)

F32 = npt.NDArray[np.float32]


def default_model_path() -> Path:
    """The shipped default model: models/default.onnx of the source tree or the install."""
    here = Path(__file__).resolve().parent
    for candidate in (
        here.parent / "models" / "default.onnx",
        Path(sys.prefix) / "share" / "amulet-stream" / "models" / "default.onnx",
    ):
        if candidate.is_file():
            return candidate
    return here.parent / "models" / "default.onnx"


class ModelError(ValueError):
    """A file that is not a usable amulet model; the message says why."""


@dataclass(frozen=True)
class ModelMeta:
    """The amulet metadata stored in the model's metadata_props."""

    profile: Profile
    threshold: float
    """Score above which a window is anomalous (before sensitivity)."""
    threshold_method: str
    raw: dict[str, Any]
    """The whole metadata document as stored."""


def parse_meta(props: dict[str, str], name: str) -> ModelMeta:
    """Validate the metadata map of an ONNX model; raise ModelError naming the problem."""
    if META_KEY not in props:
        raise ModelError(f"{name}: not an amulet model (no '{META_KEY}' metadata)")
    try:
        doc = json.loads(props[META_KEY])
    except json.JSONDecodeError as err:
        raise ModelError(f"{name}: amulet metadata is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise ModelError(f"{name}: amulet metadata is not a JSON object")
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ModelError(f"{name}: amulet metadata lacks {', '.join(missing)}")
    if doc["format_version"] != FORMAT_VERSION:
        raise ModelError(
            f"{name}: model format version {doc['format_version']!r}, this version reads "
            f"{FORMAT_VERSION}"
        )
    try:
        profile = profile_from_dict(doc["profile"])
    except ProfileError as err:
        raise ModelError(f"{name}: {err}") from err
    threshold = doc["threshold"]
    if not isinstance(threshold, (int, float)) or not np.isfinite(threshold) or threshold <= 0:
        raise ModelError(f"{name}: threshold {threshold!r} is not a positive number")
    return ModelMeta(profile, float(threshold), str(doc["threshold_method"]), doc)


class Model:
    """An amulet model ready to score: vectors (M, D) float32 -> scores (M,) float32.

    One InferenceSession; onnxruntime sessions may be shared between threads."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        self.path = path
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ModelError(f"{path}: cannot read model: {err.strerror or err}") from err
        self.sha256 = hashlib.sha256(data).hexdigest()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{path}: not a valid ONNX model: {err}") from err
        props = dict(self._session.get_modelmeta().custom_metadata_map)
        self.meta = parse_meta(props, str(path))
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or OUTPUT_NAME not in [o.name for o in outputs]:
            raise ModelError(
                f"{path}: graph must take '{INPUT_NAME}' and give '{OUTPUT_NAME}' "
                f"(has inputs {[i.name for i in inputs]}, outputs {[o.name for o in outputs]})"
            )
        dim = inputs[0].shape[-1]
        if dim != self.meta.profile.dim:
            raise ModelError(
                f"{path}: graph input has {dim} features, profile "
                f"{self.meta.profile.name} gives {self.meta.profile.dim}"
            )

    @property
    def profile(self) -> Profile:
        """The feature profile the model was trained on."""
        return self.meta.profile

    @property
    def threshold(self) -> float:
        """The model's stored threshold."""
        return self.meta.threshold

    def score_vectors(self, vectors: F32, first: int = 0) -> F32:
        """Mean absolute reconstruction error of each raw feature vector, (M, D) -> (M,).

        Vector k has index first + k in its stream and is scored at row (first + k) % BATCH of
        a zero-padded batch of exactly BATCH rows, so its score does not depend on which
        vectors arrived with it (live, replay and stdin give bit-identical scores)."""
        m, b = vectors.shape[0], BATCH
        pos = first % b
        padded = np.zeros((-(-(pos + m) // b) * b, vectors.shape[1]), dtype=np.float32)
        padded[pos : pos + m] = vectors
        out = np.empty(padded.shape[0], dtype=np.float32)
        for i in range(0, padded.shape[0], b):
            res = self._session.run([OUTPUT_NAME], {INPUT_NAME: padded[i : i + b]})[0]
            out[i : i + b] = np.asarray(res, dtype=np.float32).reshape(-1)
        return out[pos : pos + m]

    def score_many(self, parts: list[tuple[F32, int]]) -> list[F32]:
        """Several streams' vectors in one onnxruntime call: part k is (vectors (m_k, D), index
        of its first vector in its stream); returns each part's scores (m_k,).

        Each part sits in its own zero-padded BATCH-aligned rows at the same row positions as
        in score_vectors (onnxruntime gives a row the same result in a batch of 32 x k rows as
        in one of 32 for our models: checked by tests/test_daemon.py)."""
        if len(parts) == 1:
            return [self.score_vectors(*parts[0])]
        total = 0
        for k, (vectors, first) in enumerate(parts):
            total += -(-(first % BATCH + vectors.shape[0]) // BATCH) * BATCH
            if total > MAX_ROWS and k > 0:  # onnxruntime keeps memory for its largest call
                return self.score_many(parts[:k]) + self.score_many(parts[k:])
        b = BATCH
        spans = [(first % b, vectors.shape[0]) for vectors, first in parts]
        rows = [-(-(pos + m) // b) * b for pos, m in spans]
        padded = np.zeros((sum(rows), self.profile.dim), dtype=np.float32)
        at = 0
        for (vectors, _), (pos, m), n in zip(parts, spans, rows, strict=True):
            padded[at + pos : at + pos + m] = vectors
            at += n
        res = self._session.run([OUTPUT_NAME], {INPUT_NAME: padded})[0]
        out = np.asarray(res, dtype=np.float32).reshape(-1)
        scores, at = [], 0
        for (pos, m), n in zip(spans, rows, strict=True):
            scores.append(out[at + pos : at + pos + m].copy())
            at += n
        return scores

    def info(self) -> dict[str, Any]:
        """Metadata plus file facts, for `amulet-stream info` (parity inputs left out)."""
        doc = dict(self.meta.raw)
        parity = dict(doc.get("parity", {}))
        parity.pop("inputs", None)
        parity.pop("scores", None)
        doc["parity"] = parity
        return {"path": str(self.path), "sha256": self.sha256, **doc}
