"""Closed-form candidates: PCA reconstruction error and Mahalanobis distance, built as ONNX."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from amulet_stream.scoring.model import INPUT_NAME, OUTPUT_NAME, RESIDUAL_NAME

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
KINDS = ("pca", "mahalanobis")
OPSET = 17


def _init(name: str, value: npt.NDArray[np.floating]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def fit(
    kind: str, x: F32, scale: F32, bias: F32, components: int = 16
) -> tuple[onnx.ModelProto, dict[str, object], Callable[[F32], F32]]:
    """Fit on raw training vectors x (N, D); return the graph features (M, D) -> score (M,)
    (with each feature's deviation, residual (M, D), in its own units) and a description.
    pca: mean |error| of the scaled vector's reconstruction from the top
    `components` principal axes. mahalanobis: mean squared whitened distance from the
    training mean (Ledoit-Wolf shrunk covariance), about 1 for normal vectors. The callable
    computes the same scores in float64 numpy, for the parity check."""
    xs = x.astype(np.float64) * scale + bias
    mu = xs.mean(axis=0)
    c = xs - mu
    nodes = [
        helper.make_node("Mul", [INPUT_NAME, "scale"], ["s1"]),
        helper.make_node("Add", ["s1", "bias"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "mean"], ["centred"]),
    ]
    inits = [_init("scale", scale), _init("bias", bias), _init("mean", mu)]
    if kind == "pca":
        k = max(1, min(components, c.shape[0] - 1, c.shape[1]))
        _, sv, vt = np.linalg.svd(c, full_matrices=False)
        w = vt[:k].T  # (D, k)
        explained = float((sv[:k] ** 2).sum() / max((sv**2).sum(), 1e-30))
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
            cv = v.astype(np.float64) * scale + bias - mu
            out: F32 = np.abs(cv - cv @ w @ w.T).mean(axis=1).astype(np.float32)
            return out

        desc: dict[str, object] = {
            "kind": "pca",
            "components": k,
            "explained_variance": round(explained, 4),
        }
    elif kind == "mahalanobis":
        cov, shrink = _ledoit_wolf(c)
        whiten = np.linalg.cholesky(np.linalg.inv(cov))  # inv(cov) = L L^T
        inits.append(_init("whiten", whiten))
        nodes += [
            helper.make_node("MatMul", ["centred", "whiten"], ["y"]),
            helper.make_node("Mul", ["y", "y"], ["y2"]),
            helper.make_node("ReduceMean", ["y2"], [OUTPUT_NAME], axes=[1], keepdims=0),
            helper.make_node("Div", ["centred", "scale"], [RESIDUAL_NAME]),
        ]

        def reference(v: F32) -> F32:
            y = (v.astype(np.float64) * scale + bias - mu) @ whiten
            out: F32 = (y**2).mean(axis=1).astype(np.float32)
            return out

        desc = {"kind": "mahalanobis", "shrinkage": round(shrink, 4)}
    else:
        raise ValueError(f"unknown closed-form model {kind!r} (known: {', '.join(KINDS)})")
    dim = x.shape[1]
    graph = helper.make_graph(
        nodes,
        f"amulet_{kind}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, dim])],
        [
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None]),
            helper.make_tensor_value_info(RESIDUAL_NAME, TensorProto.FLOAT, [None, dim]),
        ],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto, desc, reference


def _ledoit_wolf(c: F64) -> tuple[F64, float]:
    """Ledoit-Wolf shrinkage of the covariance of centred rows c (N, D) toward a scaled
    identity: (covariance (D, D), shrinkage 0..1)."""
    n, d = c.shape
    s = c.T @ c / n
    mu = float(np.trace(s)) / d
    delta = float(((s - mu * np.eye(d)) ** 2).sum()) / d
    # sum_i |r_i r_i^T - s|^2 = sum_i |r_i|^4 - n |s|^2
    beta = float(((c**2).sum(axis=1) ** 2).sum() - n * (s**2).sum()) / (n * n * d)
    shrink = min(1.0, beta / delta) if delta > 0 else 1.0
    return (1.0 - shrink) * s + shrink * mu * np.eye(d), shrink
