"""DCGAN scorers as ONNX graphs, features (N, 880) -> score (N,), the image built in the graph."""

from __future__ import annotations

import keras
import numpy as np
import numpy.typing as npt
import onnx
import tensorflow as tf
import tf2onnx
from onnx import TensorProto, helper, numpy_helper

from amulet_stream.scoring.model import INPUT_NAME, OUTPUT_NAME

from . import onnx_io
from .dcgan_images import HEIGHT, WIDTH, grey_table, viridis_bytes

F32 = npt.NDArray[np.float32]
OPSET = onnx_io.OPSET


def _colour_nodes(table: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Nodes features (N, 880) -> Gather(table, colour index) as colour_index() computes it."""
    nodes = [
        helper.make_node("ReduceMin", [INPUT_NAME], ["c/lo"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", [INPUT_NAME], ["c/hi"], axes=[1], keepdims=1),
        helper.make_node("Sub", [INPUT_NAME, "c/lo"], ["c/shifted"]),
        helper.make_node("Sub", ["c/hi", "c/lo"], ["c/span"]),
        helper.make_node("Equal", ["c/span", "c/zero"], ["c/flat"]),
        helper.make_node("Where", ["c/flat", "c/one", "c/span"], ["c/span_safe"]),
        helper.make_node("Div", ["c/shifted", "c/span_safe"], ["c/unit"]),
        helper.make_node("Mul", ["c/unit", "c/levels"], ["c/scaled"]),
        helper.make_node("Floor", ["c/scaled"], ["c/floor"]),
        helper.make_node("Min", ["c/floor", "c/top"], ["c/level"]),
        helper.make_node("Cast", ["c/level"], ["c/index"], to=TensorProto.INT64),
        helper.make_node("Gather", [table, "c/index"], ["c/colour"], axis=0),
    ]
    consts = {"c/zero": 0.0, "c/one": 1.0, "c/levels": 256.0, "c/top": 255.0}
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    return nodes, inits, "c/colour"


def _features_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", HEIGHT * WIDTH])


def amulet_graph(grey_sample: F32) -> onnx.ModelProto:
    """features (N, 880) -> score (N,): largest |grey(image) - grey_sample| per image."""
    nodes, inits, colour = _colour_nodes("grey_table")
    nodes += [
        helper.make_node("Sub", [colour, "grey_sample"], ["diff"]),
        helper.make_node("Abs", ["diff"], ["abs_diff"]),
        helper.make_node("ReduceMax", ["abs_diff"], [OUTPUT_NAME], axes=[1], keepdims=0),
    ]
    inits += [
        numpy_helper.from_array(grey_table(), "grey_table"),
        numpy_helper.from_array(grey_sample.astype(np.float32), "grey_sample"),
    ]
    graph = helper.make_graph(
        nodes,
        "dcgan_amulet_rule",
        [_features_input()],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def discriminator_graph(disc: keras.Model) -> onnx.ModelProto:
    """features (N, 880) -> score (N,): 1 - D(image), the image built in the graph."""
    fn = tf.function(
        lambda image: {OUTPUT_NAME: 1.0 - tf.reshape(tf.sigmoid(disc(image, training=False)), [-1])}
    )
    spec = (tf.TensorSpec((None, HEIGHT, WIDTH, 3), tf.float32, name="image"),)
    body, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=OPSET)
    nodes, inits, colour = _colour_nodes("rgb_table")
    nodes.append(helper.make_node("Reshape", [colour, "image_shape"], ["image"]))
    inits += [
        numpy_helper.from_array((viridis_bytes() / 127.5 - 1.0).astype(np.float32), "rgb_table"),
        numpy_helper.from_array(np.array([-1, HEIGHT, WIDTH, 3], np.int64), "image_shape"),
    ]
    graph = helper.make_graph(
        nodes + list(body.graph.node),
        "dcgan_discriminator",
        [_features_input()],
        list(body.graph.output),
        inits + list(body.graph.initializer),
        value_info=list(body.graph.value_info),
    )
    proto = helper.make_model(graph, opset_imports=list(body.opset_import))
    proto.ir_version = body.ir_version
    onnx.checker.check_model(proto)
    return proto
