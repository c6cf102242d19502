"""The RMSNorm rewrite: hand-built graphs in both exporters' spellings give numpy's RMSNorm through one
SimplifiedLayerNormalization, and a chain whose values are read elsewhere, or whose norm is not over the last
axis alone, is left as it was. End to end (each family's graph against sentence-transformers) the decoder, T5
and EmbeddingGemma tests cover it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxembed.exporter.fusions import fuse_rms_norms

HIDDEN = 16
EPSILON = 1e-6


def _rms_norm(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return weight * (x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + EPSILON))


def _graph(
    spelling: str = "reciprocal", axes: list[int] | None = None, extra_reader: str | None = None
) -> onnx.ModelProto:
    """y = weight * (x * rsqrt(mean(x^2, axes) + eps)), as dynamo ("reciprocal") or TorchScript ("div": 1 / sqrt,
    the weight behind an Identity) write it; ``extra_reader`` names an intermediate value also given out."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=HIDDEN).astype(np.float32)
    initializers = [
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(axes or [-1], np.int64), "axes"),
        numpy_helper.from_array(np.array(EPSILON, np.float32), "eps"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["squared"]),
        helper.make_node("ReduceMean", ["squared", "axes"], ["mean"], keepdims=1),
        helper.make_node("Add", ["mean", "eps"], ["shifted"]),
        helper.make_node("Sqrt", ["shifted"], ["root"]),
    ]
    if spelling == "div":
        nodes += [
            helper.make_node("Div", ["one", "root"], ["inverse"]),
            helper.make_node("Identity", ["weight"], ["weight_copy"]),
        ]
        scale = "weight_copy"
    else:
        nodes.append(helper.make_node("Reciprocal", ["root"], ["inverse"]))
        scale = "weight"
    nodes += [
        helper.make_node("Mul", ["x", "inverse"], ["normed"]),
        helper.make_node("Mul", [scale, "normed"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, HIDDEN])]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info(extra_reader, TensorProto.FLOAT, [None, None, HIDDEN]))
    graph = helper.make_graph(
        nodes,
        "rms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, HIDDEN])],
        outputs,
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["y"], {"x": x})[0])


@pytest.mark.parametrize("spelling", ["reciprocal", "div"])
def test_rms_norm_becomes_one_operator_with_the_same_values(spelling: str) -> None:
    model = _graph(spelling)
    weight = numpy_helper.to_array(model.graph.initializer[0])
    assert fuse_rms_norms(model) == 1
    kinds = Counter(node.op_type for node in model.graph.node)
    assert kinds["SimplifiedLayerNormalization"] == 1
    assert not {"Pow", "ReduceMean", "Sqrt", "Reciprocal", "Div", "Mul"} & set(kinds)
    x = np.random.default_rng(1).normal(scale=3.0, size=(3, 5, HIDDEN)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x), _rms_norm(x, weight), rtol=1e-5, atol=1e-6)


def test_a_chain_whose_intermediate_is_read_elsewhere_is_left_alone() -> None:
    model = _graph(extra_reader="inverse")
    before = [node.op_type for node in model.graph.node]
    assert fuse_rms_norms(model) == 0
    assert [node.op_type for node in model.graph.node] == before


def test_a_norm_over_other_axes_is_left_alone() -> None:
    model = _graph(axes=[1])
    assert fuse_rms_norms(model) == 0
    assert "SimplifiedLayerNormalization" not in {node.op_type for node in model.graph.node}


def test_a_chain_whose_intermediate_a_subgraph_reads_is_left_alone() -> None:
    """A loop's body (the attention's Scan) reads values of the enclosing graph by name, not as node inputs."""
    model = _graph()
    branch = helper.make_graph(
        [helper.make_node("Identity", ["inverse"], ["kept"])],
        "branch",
        [],
        [helper.make_tensor_value_info("kept", TensorProto.FLOAT, [None, None, HIDDEN])],
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "always"))
    model.graph.node.append(helper.make_node("If", ["always"], ["seen"], then_branch=branch, else_branch=branch))
    model.graph.output.append(helper.make_tensor_value_info("seen", TensorProto.FLOAT, [None, None, HIDDEN]))
    assert fuse_rms_norms(model) == 0
    x = np.random.default_rng(1).normal(size=(2, 3, HIDDEN)).astype(np.float32)
    weight = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_allclose(_run(model, x), _rms_norm(x, weight), rtol=1e-5, atol=1e-6)


def test_a_one_element_weight_is_left_alone() -> None:
    """Mul broadcasts a (1,) weight over the hidden axis; the operator's scale must have the axis's size."""
    model = _graph()
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array([0.5], np.float32), "weight"))
    assert fuse_rms_norms(model) == 0
    x = np.random.default_rng(1).normal(size=(2, 3, HIDDEN)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x), _rms_norm(x, np.float32(0.5)), rtol=1e-5, atol=1e-6)
