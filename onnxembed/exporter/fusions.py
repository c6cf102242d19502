"""Graph rewrites onnxruntime's own optimizer misses, applied to the fp32 graph before any variant is made.

In scope: RMSNorm as both exporters write it (Pow, ReduceMean, Add, Sqrt, then Reciprocal (dynamo) or Div of 1
(TorchScript), Mul, Mul) as one SimplifiedLayerNormalization, the onnxruntime operator its optimizer emits for the
same norm written x / sqrt(...).
Not in scope: fusions onnxruntime makes itself at load, attention, anything that changes what the graph computes
beyond float rounding (verification runs on the rewritten graph).

Why: torch's rsqrt is exported as Sqrt then Reciprocal (or 1 / Sqrt), and onnxruntime's SimplifiedLayerNormFusion
(1.32) looks for x / Sqrt, so every norm of a decoder, T5 or EmbeddingGemma ran as seven kernels, each a pass over
the hidden states (113 norms in a Qwen3-Embedding-0.6B graph). Measured in docs/performance.md#fused-rmsnorm.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Elements of the largest constant looked at by value (a scalar, a list of axes).
_SMALL = 16


class _Graph:
    """Lookups over one graph's top level: who makes and who reads each value, and its small constant values."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producers: dict[str, onnx.NodeProto] = {}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        for node in graph.node:
            for name in node.output:
                self.producers[name] = node
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
            # a value a subgraph (a Scan's body) reads from outside counts as read: it must survive a rewrite
            for name in _outer_reads(node):
                self.readers.setdefault(name, []).append(node)
            if node.op_type == "Constant":
                value = _small_constant(node)
                if value is not None:
                    self.constants[node.output[0]] = value
        for tensor in graph.initializer:
            # scalars and axes only: converting the weights would copy the whole model once more
            if int(np.prod(tensor.dims)) <= _SMALL and tensor.data_location != onnx.TensorProto.EXTERNAL:
                self.constants[tensor.name] = numpy_helper.to_array(tensor)
        for value in graph.output:  # a graph output is read from outside: no rewrite may drop it
            self.readers.setdefault(value.name, []).append(helper.make_node("Identity", [value.name], [""]))

    def only_reader(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The node that alone reads ``name``, if it is an ``op_type`` of the default domain."""
        readers = self.readers.get(name, [])
        if len(readers) == 1 and readers[0].op_type == op_type and readers[0].domain in ("", "ai.onnx"):
            return readers[0]
        return None

    def scalar(self, name: str) -> float | None:
        value = self.constants.get(name)
        return float(value.reshape(())) if value is not None and value.size == 1 else None

    def is_vector(self, name: str) -> bool:
        """Whether ``name`` is a constant of one axis of more than one element (an initializer, possibly external,
        or a Constant), or an Identity of one (TorchScript writes a weight equal to another's so). One element
        would broadcast in a Mul but not as the operator's scale."""
        while name in self.producers and self.producers[name].op_type == "Identity":
            name = self.producers[name].input[0]
        if name in self.initializers:
            return _one_axis(list(self.initializers[name].dims))
        producer = self.producers.get(name)
        if producer is None or producer.op_type != "Constant":
            return False
        return any(
            (attribute.name == "value" and _one_axis(list(attribute.t.dims)))
            or (attribute.name == "value_floats" and len(attribute.floats) > 1)
            for attribute in producer.attribute
        )


def _one_axis(dims: list[int]) -> bool:
    return len(dims) == 1 and dims[0] > 1


def _small_constant(node: onnx.NodeProto) -> np.ndarray | None:
    """A Constant node's value if it has at most _SMALL elements."""
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t) if int(np.prod(attribute.t.dims)) <= _SMALL else None
        if attribute.name == "value_float":
            return np.asarray(attribute.f, dtype=np.float32)
        if attribute.name == "value_floats":
            return np.asarray(attribute.floats, dtype=np.float32)
        if attribute.name == "value_int":
            return np.asarray(attribute.i, dtype=np.int64)
        if attribute.name == "value_ints":
            return np.asarray(attribute.ints, dtype=np.int64)
    return None


def _outer_reads(node: onnx.NodeProto) -> set[str]:
    """Names the node's subgraphs read (some of them from the enclosing graph)."""
    names: set[str] = set()
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                names.update(inner.input)
                names.update(_outer_reads(inner))
    return names


def _last_axis_only(node: onnx.NodeProto, graph: _Graph) -> bool:
    """Whether a ReduceMean averages over the last axis alone, keeping it (axes as input from opset 18, as an
    attribute before)."""
    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
    if attributes.get("keepdims", 1) != 1:
        return False
    if len(node.input) > 1 and node.input[1]:
        axes = graph.constants.get(node.input[1])
        return axes is not None and axes.reshape(-1).tolist() == [-1]
    return attributes.get("axes") == [-1]


def fuse_rms_norms(model: onnx.ModelProto) -> int:
    """Rewrite each RMSNorm ``w * (x * (1 / sqrt(mean(x^2, -1) + eps)))`` in ``model``'s main graph as
    one SimplifiedLayerNormalization(x, w); returns how many. A norm is left alone unless every intermediate
    value is read by the next step alone and w is a one-axis constant (so the product broadcasts over the last
    axis, as the operator's scale does)."""
    graph = _Graph(model.graph)
    fused: dict[int, onnx.NodeProto] = {}  # id of the node each norm replaces -> the norm
    dropped: set[int] = set()
    for power in model.graph.node:
        if power.op_type != "Pow" or power.domain not in ("", "ai.onnx") or graph.scalar(power.input[1]) != 2.0:
            continue
        x = power.input[0]
        mean = graph.only_reader(power.output[0], "ReduceMean")
        if mean is None or not _last_axis_only(mean, graph):
            continue
        add = graph.only_reader(mean.output[0], "Add")
        if add is None:
            continue
        epsilon = graph.scalar(add.input[1] if add.input[0] == mean.output[0] else add.input[0])
        root = graph.only_reader(add.output[0], "Sqrt")
        if epsilon is None or root is None:
            continue
        inverse = graph.only_reader(root.output[0], "Reciprocal") or graph.only_reader(root.output[0], "Div")
        if inverse is None or (inverse.op_type == "Div" and graph.scalar(inverse.input[0]) != 1.0):
            continue
        normed = graph.only_reader(inverse.output[0], "Mul")
        if normed is None or sorted(normed.input) != sorted([x, inverse.output[0]]):
            continue
        scaled = graph.only_reader(normed.output[0], "Mul")
        if scaled is None:
            continue
        weight = scaled.input[1] if scaled.input[0] == normed.output[0] else scaled.input[0]
        if not graph.is_vector(weight):
            continue
        chain = (power, mean, add, root, inverse, normed)
        dropped.update(id(node) for node in chain)
        fused[id(scaled)] = helper.make_node(
            "SimplifiedLayerNormalization",
            [x, weight],
            [scaled.output[0]],
            name=f"{scaled.name or scaled.output[0]}_rms_norm",
            axis=-1,
            epsilon=epsilon,
            stash_type=1,
        )
    if not fused:
        return 0
    nodes = [fused.get(id(node), node) for node in model.graph.node if id(node) not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(fused)
