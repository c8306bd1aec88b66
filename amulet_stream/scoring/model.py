"""Self-describing ONNX anomaly model: loading, validation and scoring with onnxruntime."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from amulet_stream.audio.wav import RATES
from amulet_stream.scoring.features import MFCC_IMAGE, Profile, ProfileError, profile_from_dict
from amulet_stream.scoring.integrity import level_range

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
MAX_MODEL_BYTES = 256 << 20
"""Largest model file read, bytes (the shipped models are a few hundred KB)."""
MAX_DIM = 8192
"""Most features per vector a profile may give (the shipped profiles: 3 to 880)."""
_INT_PARAMS = ("rate", "window", "hop", "offset", "n_fft", "frame_hop", "n_mels", "n_mfcc",
               "stack", "stft_size")  # fmt: skip


def default_model_path() -> Path:
    """The shipped default model: models/default.onnx of the source tree or the install."""
    tree = Path(__file__).resolve().parents[2]  # amulet_stream/scoring/model.py -> the tree
    for candidate in (
        tree / "models" / "default.onnx",
        Path(sys.prefix) / "share" / "amulet-stream" / "models" / "default.onnx",
    ):
        if candidate.is_file():
            return candidate
    return tree / "models" / "default.onnx"


class ModelError(ValueError):
    """A file that is not a usable amulet model; the message says why."""


def _ort_message(err: Exception) -> str:
    """onnxruntime's error text on one line, without its status prefix and C++ source location."""
    text = " ".join(str(err).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return re.sub(r"/onnxruntime_src/\S+:\d+ [^(]*\((?:[^()]|\([^()]*\))*\) ", "", text)


def _read(path: Path) -> bytes:
    """The bytes of a model file: a regular file of at most MAX_MODEL_BYTES, else ModelError."""
    try:
        with path.open("rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ModelError(f"{path}: not a regular file")
            data = fh.read(MAX_MODEL_BYTES + 1)
    except OSError as err:
        raise ModelError(f"{path}: cannot read model: {err.strerror or err}") from err
    if len(data) > MAX_MODEL_BYTES:
        raise ModelError(f"{path}: larger than {MAX_MODEL_BYTES >> 20} MiB: not a model")
    if not data:
        raise ModelError(f"{path}: empty file")
    return data


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
    except (json.JSONDecodeError, RecursionError) as err:  # RecursionError: nested too deep
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
    profile = _profile(doc["profile"], name)
    threshold = _number(doc["threshold"])
    if threshold is None or not threshold > 0:
        raise ModelError(f"{name}: threshold {_short(doc['threshold'])} is not a positive number")
    try:
        level_range(doc)
    except ValueError as err:
        raise ModelError(f"{name}: {_short(err, 200)}") from err
    except OverflowError as err:
        raise ModelError(f"{name}: input_level_dbfs holds a number too large") from err
    return ModelMeta(profile, threshold, str(doc["threshold_method"]), doc)


def _number(value: object) -> float | None:
    """A JSON number as a finite float, else None (bools, huge integers, NaN, strings...)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _short(value: object, limit: int = 60) -> str:
    """repr of a metadata value (str of an exception) cut to `limit` characters for a message."""
    text = str(value) if isinstance(value, Exception) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _profile(data: object, name: str) -> Profile:
    """The feature profile of the metadata, its parameters typed and within sane bounds (a
    corrupt one must not make the feature code allocate without bound); else ModelError."""
    if not isinstance(data, dict):
        raise ModelError(f"{name}: feature profile is not a JSON object: {_short(data)}")
    for key in _INT_PARAMS:
        value = data.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or abs(value) >= 1 << 31:
            raise ModelError(
                f"{name}: feature profile parameter {key} {_short(value)} is not an integer "
                "(within +-2^31)"
            )
    if not isinstance(data.get("name"), str):
        raise ModelError(f"{name}: feature profile name {_short(data.get('name'))} is not a string")
    if not isinstance(data.get("pad_tail", False), bool):
        raise ModelError(f"{name}: feature profile parameter pad_tail is not true or false")
    try:
        p = profile_from_dict(data)
    except ProfileError as err:
        raise ModelError(f"{name}: {err}") from err
    image = p.name == MFCC_IMAGE
    min_mfcc = 0 if p.name == "logmel-v1" else 1
    checks = [
        (RATES[0] <= p.rate <= RATES[1], f"rate {p.rate} Hz is outside {RATES[0]}..{RATES[1]} Hz"),
        (1 <= p.n_fft <= min(p.window, 1 << 17), f"n_fft {p.n_fft} is not within 1 to window"),
        (p.window <= 60 * p.rate, f"window {p.window} is longer than 60 s"),
        (1 <= p.frame_hop <= p.n_fft, f"frame_hop {p.frame_hop} is not within 1 to n_fft"),
        (p.rate <= 1000 * p.step, f"{p.rate / p.step:.0f} frames per second is more than 1000"),
        (0 <= p.offset <= p.window, f"offset {p.offset} is not within 0 to window"),
        (p.hop <= 3600 * p.rate, f"hop {p.hop} is longer than an hour"),
        (1 <= p.n_mels <= 512, f"n_mels {p.n_mels} is not within 1 to 512"),
        (min_mfcc <= p.n_mfcc <= p.n_mels, f"n_mfcc {p.n_mfcc} is not within {min_mfcc} to n_mels"),
        (1 <= p.stack <= 64, f"stack {p.stack} is not within 1 to 64"),
        (2 <= p.stft_size <= p.n_fft if image else p.stft_size == 0, f"stft_size {p.stft_size}"),
        (p.dim <= MAX_DIM, f"{p.dim} features per vector is more than {MAX_DIM}"),
    ]
    problems = [text for ok, text in checks if not ok]
    if problems:
        raise ModelError(f"{name}: feature profile {p.name!r}: {'; '.join(problems)}")
    return p


class Model:
    """An amulet model ready to score: vectors (M, D) float32 -> scores (M,) float32.

    One InferenceSession; onnxruntime sessions may be shared between threads."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        self.path = path
        data = _read(path)
        self.sha256 = hashlib.sha256(data).hexdigest()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{path}: not a valid ONNX model: {_ort_message(err)}") from err
        try:  # onnxruntime does not check that the file's strings are UTF-8
            props = dict(self._session.get_modelmeta().custom_metadata_map)
            inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        except UnicodeDecodeError as err:
            raise ModelError(f"{path}: not a valid ONNX model: {err}") from err
        self.meta = parse_meta(props, str(path))
        if [i.name for i in inputs] != [INPUT_NAME] or OUTPUT_NAME not in [o.name for o in outputs]:
            raise ModelError(
                f"{path}: graph must take '{INPUT_NAME}' and give '{OUTPUT_NAME}' "
                f"(has inputs {[i.name for i in inputs]}, outputs {[o.name for o in outputs]})"
            )
        shape, kind = inputs[0].shape, inputs[0].type
        if kind != "tensor(float)" or len(shape) != 2 or isinstance(shape[0], int):
            raise ModelError(
                f"{path}: graph input '{INPUT_NAME}' must be float (N, D) with N free, "
                f"has {kind} {shape}"
            )
        if shape[-1] != self.meta.profile.dim:
            raise ModelError(
                f"{path}: graph input has {shape[-1]} features, profile "
                f"{self.meta.profile.name} gives {self.meta.profile.dim}"
            )
        self._probe()

    def _probe(self) -> None:
        """Score zero batches of BATCH and 2 x BATCH rows: one finite score per row, or
        ModelError (a graph that loads but cannot score fails here, not in the first window)."""
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the error comes as ModelError, not also on stderr
        for rows in (BATCH, 2 * BATCH):
            zeros = np.zeros((rows, self.profile.dim), np.float32)
            try:
                res = np.asarray(
                    self._session.run([OUTPUT_NAME], {INPUT_NAME: zeros}, quiet)[0],
                    dtype=np.float32,
                )
            except Exception as err:  # onnxruntime raises its own untyped errors
                raise ModelError(
                    f"{self.path}: the graph fails on a test batch: {_ort_message(err)}"
                ) from err
            if res.size != rows or not np.isfinite(res).all():
                raise ModelError(
                    f"{self.path}: the graph gives scores of shape {res.shape} for {rows} zero "
                    f"vectors, not {rows} finite scores"
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
