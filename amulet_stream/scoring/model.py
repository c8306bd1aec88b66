"""Self-describing ONNX anomaly model: loading, validation and scoring with onnxruntime."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from amulet_stream.scoring.features import Profile, noise
from amulet_stream.scoring.model_meta import ModelError, parse_meta

_LOGGER = logging.getLogger(__name__)

MAX_THREADS = 256
"""More onnxruntime threads than this is a mistake (5000 hung the start for minutes)."""

INPUT_NAME = "features"
OUTPUT_NAME = "score"
RESIDUAL_NAME = "residual"
"""Optional second output (M, D): each feature's deviation from what the model expected, in
the feature's units (dB for log-mel): what an alert's bands are read from."""
BATCH = 32
"""Rows of a padded onnxruntime call, where this machine's onnxruntime gives a row a score
that depends on the rows beside it (Model.padded): always exactly this many (zero-padded)."""
MAX_ROWS = 1024
"""Rows of one score_many call at most: onnxruntime's arena grows to its largest call (a call
for 256 streams at once left the process 72 MB larger, in calls of 16 streams 6.7 MB)."""
F32 = npt.NDArray[np.float32]
MAX_MODEL_BYTES = 256 << 20
"""Largest model file read, bytes (the shipped models are a few hundred KB)."""


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
class ModelConfig:
    """Which model and how to run it."""

    path: Path | None = None
    threads: int = 1
    hop: float | None = None
    """Seconds between window starts; None: the model's own hop."""

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads}")
        if self.threads > MAX_THREADS:
            raise ValueError(f"threads must be at most {MAX_THREADS}, not {self.threads}")
        if self.hop is not None and not 0.001 <= self.hop <= 60:
            raise ValueError(f"hop must be between 0.001 and 60 seconds, not {self.hop}")


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

    @cached_property
    def padded(self) -> bool:
        """Score in zero-padded BATCH-row calls (scores must not depend on how vectors
        arrive); False where every row's score was found independent of the rows beside it.
        Tried when first asked (a pipeline asks as it starts): `info` and `verify` do not
        pay for it."""
        return not self._rows_independent()

    def _rows_independent(self) -> bool:
        """Whether onnxruntime scores each row bit-identically whatever the call's size and the
        row's place in it, tried here on this machine: 2 x BATCH + 1 rows (the model's parity
        sample, then noise) at once, each alone, and every prefix up to BATCH + 1 rows."""
        dim = self.profile.dim
        rows = (noise(2 * BATCH + 1, dim) * 3.5).astype(np.float32)  # about unit variance
        parity = self.meta.raw.get("parity")
        try:
            sample = np.asarray(parity.get("inputs", []) if isinstance(parity, dict) else [])
            if sample.ndim == 2 and sample.shape[1] == dim:
                rows[: min(len(sample), len(rows))] = sample[: len(rows)]
        except (TypeError, ValueError):  # a malformed sample: noise only
            pass
        try:
            whole = self._run(rows)
            same = all(
                np.array_equal(self._run(rows[k : k + 1]), whole[k : k + 1])
                for k in range(len(rows))
            ) and all(np.array_equal(self._run(rows[:m]), whole[:m]) for m in range(2, BATCH + 2))
        except Exception:  # onnxruntime's own errors: scoring itself will report them
            same = False
        if not same:
            _LOGGER.info("%s: a row's score depends on its batch here: padded calls", self.path)
        return same

    def _run(self, rows: F32) -> F32:
        """Scores (M,) of rows (M, D) in one onnxruntime call."""
        res = self._session.run([OUTPUT_NAME], {INPUT_NAME: rows})[0]
        return np.asarray(res, dtype=np.float32).reshape(-1)

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

        A vector's score does not depend on which vectors arrived with it (live, replay and
        stdin give bit-identical scores): rows are independent (checked at load), or vector k,
        index first + k in its stream, is scored at row (first + k) % BATCH of a zero-padded
        batch of exactly BATCH rows."""
        if not self.padded:
            return np.concatenate(
                [self._run(vectors[i : i + MAX_ROWS]) for i in range(0, len(vectors), MAX_ROWS)]
                or [np.empty(0, np.float32)]
            )
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

        Padded, each part sits in its own zero-padded BATCH-aligned rows at the same row
        positions as in score_vectors (onnxruntime gives a row the same result in a batch of
        32 x k rows as in one of 32 for our models: checked by tests/test_daemon.py)."""
        if len(parts) == 1:
            return [self.score_vectors(*parts[0])]
        if not self.padded:
            return self._score_stacked([vectors for vectors, _ in parts])
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

    def _score_stacked(self, parts: list[F32]) -> list[F32]:
        """Each part's scores, from calls of at most MAX_ROWS rows (a larger part alone)."""
        out: list[F32] = []
        k = 0
        while k < len(parts):
            j, rows = k + 1, len(parts[k])
            while j < len(parts) and rows + len(parts[j]) <= MAX_ROWS:
                rows += len(parts[j])
                j += 1
            if j == k + 1:
                out.append(self.score_vectors(parts[k]))
            else:
                scores = self._run(np.concatenate(parts[k:j]))
                cuts = np.cumsum([len(p) for p in parts[k : j - 1]])
                out += [s.copy() for s in np.split(scores, cuts)]
            k = j
        return out

    @property
    def explains(self) -> bool:
        """The graph gives per-feature residuals (RESIDUAL_NAME) besides the score."""
        return RESIDUAL_NAME in {o.name for o in self._session.get_outputs()}

    def residuals(self, vectors: F32) -> F32:
        """Per-feature deviations (M, D) of raw vectors (NaN/inf rows zeroed); the model must
        explain (see `explains`). Called when an alert starts, not per window."""
        clean = np.where(np.isfinite(vectors), vectors, np.float32(0.0)).astype(np.float32)
        res = self._session.run([RESIDUAL_NAME], {INPUT_NAME: clean})[0]
        return np.asarray(res, dtype=np.float32).reshape(vectors.shape)

    def info(self) -> dict[str, Any]:
        """Metadata plus file facts, for `amulet-stream info` (parity inputs left out)."""
        doc = dict(self.meta.raw)
        parity = dict(doc.get("parity", {}))
        parity.pop("inputs", None)
        parity.pop("scores", None)
        doc["parity"] = parity
        return {"path": str(self.path), "sha256": self.sha256, **doc}
