"""Closed-form candidates: PCA reconstruction error and Mahalanobis distance, built as ONNX from
sufficient statistics of the scaled training vectors, which the model file keeps, so that
`adapt` can fold new normal vectors in exactly (Stats.add, then build)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from amulet_stream.scoring.model import INPUT_NAME, OUTPUT_NAME, RESIDUAL_NAME

from .train_config import CLOSED_FORM

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
KINDS = CLOSED_FORM
OPSET = 17
COMPONENTS = 16
STATS = ("stats_count", "stats_sum", "stats_outer", "stats_cube", "stats_quad")
"""Initializers (float64, used by no node) holding Stats in the model file."""
Fitted = tuple[onnx.ModelProto, dict[str, object], Callable[[F32], F32]]


@dataclass(frozen=True)
class Stats:
    """Sums over scaled vectors x (N, D), float64: N, sum x (D,), sum x x^T (D, D), sum |x|^2 x
    (D,), sum |x|^4; enough for the mean, the covariance and its Ledoit-Wolf shrinkage."""

    count: float
    total: F64
    outer: F64
    cube: F64
    quad: float

    @staticmethod
    def of(xs: F64) -> Stats:
        """The sums over rows xs (N, D)."""
        sq = (xs**2).sum(axis=1)
        return Stats(float(xs.shape[0]), xs.sum(axis=0), xs.T @ xs, sq @ xs, float(sq @ sq))

    def add(self, other: Stats) -> Stats:
        """The sums over both sets of vectors."""
        return Stats(
            self.count + other.count,
            self.total + other.total,
            self.outer + other.outer,
            self.cube + other.cube,
            self.quad + other.quad,
        )

    def moments(self) -> tuple[F64, F64]:
        """(mean (D,), biased covariance (D, D))."""
        mu = self.total / self.count
        cov: F64 = self.outer / self.count - np.outer(mu, mu)
        return mu, (cov + cov.T) / 2

    def shrinkage(self) -> float:
        """Ledoit-Wolf shrinkage 0..1 of the covariance toward a scaled identity."""
        n, mu = self.count, self.total / self.count
        s = self.moments()[1]
        d = s.shape[0]
        m = float(np.trace(s)) / d
        delta = float(((s - m * np.eye(d)) ** 2).sum()) / d
        mm = float(mu @ mu)
        # sum_i |x_i - mu|^4, expanded in the sums
        fourth = (
            self.quad
            + 4 * float(mu @ self.outer @ mu)
            + n * mm * mm
            - 4 * float(self.cube @ mu)
            + 2 * mm * float(np.trace(self.outer))
            - 4 * mm * float(self.total @ mu)
        )
        beta = (fourth - n * float((s**2).sum())) / (n * n * d)
        return min(1.0, max(0.0, beta / delta)) if delta > 0 else 1.0

    def tensors(self) -> list[onnx.TensorProto]:
        """The sums as float64 initializers named STATS."""
        values = (np.array(self.count), self.total, self.outer, self.cube, np.array(self.quad))
        pairs = zip(STATS, values, strict=True)
        return [numpy_helper.from_array(np.asarray(v, np.float64), k) for k, v in pairs]

    @staticmethod
    def from_model(proto: onnx.ModelProto) -> Stats | None:
        """The sums a closed-form model file keeps; None in a file without them."""
        tensors = proto.graph.initializer
        found = {t.name: numpy_helper.to_array(t) for t in tensors if t.name in STATS}
        if len(found) != len(STATS):
            return None
        count, total, outer, cube, quad = (np.asarray(found[k], np.float64) for k in STATS)
        return Stats(float(count), total, outer, cube, float(quad))


def scaled(x: F32, scale: F32, bias: F32) -> F64:
    """Raw vectors (N, D) as the graph scales them, in float64."""
    out: F64 = x.astype(np.float64) * scale + bias
    return out


def fit(kind: str, x: F32, scale: F32, bias: F32) -> Fitted:
    """Fit on raw training vectors x (N, D): build(kind, Stats.of(scaled x), ...)."""
    return build(kind, Stats.of(scaled(x, scale, bias)), scale, bias)


def build(kind: str, stats: Stats, scale: F32, bias: F32) -> Fitted:
    """The graph features (M, D) -> score (M,) (with each feature's deviation, residual (M, D),
    in its own units), a description, and the same scores in float64 numpy (for the parity
    check). pca: mean |error| of the scaled vector's reconstruction from the top COMPONENTS
    principal axes. mahalanobis: mean squared whitened distance from the training mean
    (Ledoit-Wolf shrunk covariance), about 1 for normal vectors."""
    mu, cov = stats.moments()
    nodes = [
        helper.make_node("Mul", [INPUT_NAME, "scale"], ["s1"]),
        helper.make_node("Add", ["s1", "bias"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "mean"], ["centred"]),
    ]
    inits = [_init("scale", scale), _init("bias", bias), _init("mean", mu)]
    if kind == "pca":
        k = max(1, min(COMPONENTS, int(stats.count) - 1, cov.shape[0]))
        values, vectors = np.linalg.eigh(cov)  # ascending
        w = vectors[:, ::-1][:, :k]  # (D, k)
        explained = float(values[::-1][:k].sum() / max(values.clip(0).sum(), 1e-30))
        inits += [_init("w", w), _init("wt", w.T)]
        nodes += [
            helper.make_node("MatMul", ["centred", "w"], ["z"]),
            helper.make_node("MatMul", ["z", "wt"], ["recon"]),
            helper.make_node("Sub", ["centred", "recon"], ["err"]),
            helper.make_node("Abs", ["err"], ["abs_err"]),
            helper.make_node("ReduceMean", ["abs_err"], [OUTPUT_NAME], axes=[1], keepdims=0),
            helper.make_node("Div", ["err", "scale"], [RESIDUAL_NAME]),
        ]

        def reference(v: F32) -> F32:
            cv = scaled(v, scale, bias) - mu
            out: F32 = np.abs(cv - cv @ w @ w.T).mean(axis=1).astype(np.float32)
            return out

        desc: dict[str, object] = {
            "kind": "pca",
            "components": k,
            "explained_variance": round(explained, 4),
        }
    elif kind == "mahalanobis":
        d, shrink = cov.shape[0], stats.shrinkage()
        shrunk = (1.0 - shrink) * cov + shrink * float(np.trace(cov)) / d * np.eye(d)
        whiten = np.linalg.cholesky(np.linalg.inv(shrunk))  # inv(cov) = L L^T
        inits.append(_init("whiten", whiten))
        nodes += [
            helper.make_node("MatMul", ["centred", "whiten"], ["y"]),
            helper.make_node("Mul", ["y", "y"], ["y2"]),
            helper.make_node("ReduceMean", ["y2"], [OUTPUT_NAME], axes=[1], keepdims=0),
            helper.make_node("Div", ["centred", "scale"], [RESIDUAL_NAME]),
        ]

        def reference(v: F32) -> F32:
            y = (scaled(v, scale, bias) - mu) @ whiten
            out: F32 = (y**2).mean(axis=1).astype(np.float32)
            return out

        desc = {"kind": "mahalanobis", "shrinkage": round(shrink, 4)}
    else:
        raise ValueError(f"unknown closed-form model {kind!r} (known: {', '.join(KINDS)})")
    desc["vectors"] = int(stats.count)
    dim = scale.shape[0]
    graph = helper.make_graph(
        nodes,
        f"amulet_{kind}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, dim])],
        [
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None]),
            helper.make_tensor_value_info(RESIDUAL_NAME, TensorProto.FLOAT, [None, dim]),
        ],
        [*inits, *stats.tensors()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto, desc, reference


def _init(name: str, value: npt.NDArray[np.floating]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)
