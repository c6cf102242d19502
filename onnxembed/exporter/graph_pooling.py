"""Pooling, Dense layers and Normalize appended to an exported graph, so that only (batch, dim) leaves the device.

In scope: rewriting a graph whose output is (batch, seq, hidden) token embeddings into one whose output is
the sentence embedding, with the same math as sentence-transformers' Pooling and Normalize (and
onnxembed.kernels.pooling): cls (first real token), max, mean, mean_sqrt_len_tokens, concatenated in the
order given. Not in scope: weightedmean, lasttoken and include_prompt=False (their masks depend on padding
side or prompt length; such models keep pooling in numpy), choosing when to use a pooled graph
(runtime/variants.py).

The pooling runs in float32 on the graph's float32 output, also for fp16 graphs (whose outputs are cast
back to float32): summing hundreds of fp16 token vectors in fp16 loses digits for nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxembed.errors import InvalidArgumentError
from onnxembed.exporter.onnx_io import save
from onnxembed.manifest import POOLED_OUTPUT

GRAPH_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
_PREFIX = "onnxembed_pool/"


def can_pool_in_graph(pooling_modes: Sequence[str], include_prompt: bool) -> str | None:
    """None when the graph can pool these modes; else why not (for a log line or an error)."""
    unsupported = [mode for mode in pooling_modes if mode not in GRAPH_POOLING_MODES]
    if unsupported:
        return f"pooling mode(s) {unsupported} are pooled in numpy only (graph pooling: {GRAPH_POOLING_MODES})"
    if not include_prompt:
        return "include_prompt=False needs the prompt length at run time; pooling stays in numpy"
    return None


def add_pooling(
    src: Path,
    dst: Path,
    token_output: str,
    pooling_modes: Sequence[str],
    normalize: bool,
    dim: int,
    external_data: bool,
    dense: Sequence[tuple[np.ndarray, np.ndarray | None, str]] = (),
) -> None:
    """Write ``dst``: ``src`` with ``token_output`` (batch, seq, hidden) pooled into POOLED_OUTPUT (batch, dim),
    through the ``dense`` layers ((out, in) weight, bias or None, activation) before Normalize."""
    reason = can_pool_in_graph(pooling_modes, include_prompt=True)
    if reason:
        raise InvalidArgumentError(reason)
    model = onnx.load(str(src), load_external_data=True)
    graph = model.graph
    names = [output.name for output in graph.output]
    if token_output not in names:
        raise InvalidArgumentError(f"{src} has no output {token_output!r} (outputs: {names})")
    nodes: list[onnx.NodeProto] = []

    def node(op: str, inputs: list[str], name: str, **attributes: Any) -> str:
        output = _PREFIX + name
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    axis1 = _constant(nodes, "axis1", helper.make_tensor("axis1", TensorProto.INT64, [1], [1]))
    axis2 = _constant(nodes, "axis2", helper.make_tensor("axis2", TensorProto.INT64, [1], [2]))
    hidden = token_output
    mask = node("Cast", ["attention_mask"], "mask", to=TensorProto.FLOAT)  # (batch, seq)
    mask3 = node("Unsqueeze", [mask, axis2], "mask3")  # (batch, seq, 1)
    pooled: list[str] = []
    for mode in pooling_modes:
        if mode == "cls":
            # The first real token (position 0 with right padding, after the padding with left), as numpy does:
            # the one position where the running count of real tokens is 1 and the token is real.
            running = node("CumSum", [mask, _scalar_int(nodes, "axis1_scalar", 1)], "cls_running")
            first = node(
                "Cast",
                [node("Equal", [running, _scalar_float(nodes, "one_f", 1.0)], "cls_is_one")],
                "cls_is_one_f",
                to=TensorProto.FLOAT,
            )
            weights = node("Unsqueeze", [node("Mul", [first, mask], "cls_weights"), axis2], "cls_weights3")
            pooled.append(node("ReduceSum", [node("Mul", [hidden, weights], "cls_weighted"), axis1], "cls", keepdims=0))
        elif mode == "max":
            real = node("Greater", [mask3, _scalar_float(nodes, "zero_f", 0.0)], "max_real")
            masked = node("Where", [real, hidden, _scalar_float(nodes, "neg_inf", float("-inf"))], "max_masked")
            pooled.append(node("ReduceMax", [masked, axis1], "max", keepdims=0))
        else:  # mean, mean_sqrt_len_tokens; counts clamped at 1e-9 as sentence-transformers does
            weighted = node("Mul", [hidden, mask3], f"{mode}_weighted")
            summed = node("ReduceSum", [weighted, axis1], f"{mode}_sum", keepdims=0)
            count = node("ReduceSum", [mask, axis1], f"{mode}_count", keepdims=1)  # (batch, 1)
            count = node("Max", [count, _scalar_float(nodes, f"{mode}_eps", 1e-9)], f"{mode}_clamped")
            if mode == "mean_sqrt_len_tokens":
                count = node("Sqrt", [count], f"{mode}_sqrt")
            pooled.append(node("Div", [summed, count], mode))
    embedding = pooled[0] if len(pooled) == 1 else node("Concat", pooled, "concat", axis=1)
    for index, (weight, bias, activation) in enumerate(dense):
        embedding = _dense_nodes(graph, node, embedding, f"dense{index}", weight, bias, activation)
    if normalize:
        # F.normalize(p=2, eps=1e-12), as sentence-transformers' Normalize.
        norm = node("ReduceL2", [embedding, axis1], "norm", keepdims=1)
        clamped = node("Max", [norm, _scalar_float(nodes, "norm_eps", 1e-12)], "norm_clamped")
        embedding = node("Div", [embedding, clamped], "normalized")
    nodes.append(helper.make_node("Identity", [embedding], [POOLED_OUTPUT], name=_PREFIX + "output"))
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(POOLED_OUTPUT, TensorProto.FLOAT, ["batch", dim]))
    save(model, dst, external_data)


def _dense_nodes(
    graph: onnx.GraphProto,
    node: Any,
    embedding: str,
    name: str,
    weight: np.ndarray,
    bias: np.ndarray | None,
    activation: str,
) -> str:
    """activation(embedding @ weight.T + bias) as graph nodes, the weights as initializers."""
    transposed = _PREFIX + f"{name}_weight"
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T, dtype=np.float32), transposed))
    out = node("MatMul", [embedding, transposed], f"{name}_matmul")
    if bias is not None:
        graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), _PREFIX + f"{name}_bias"))
        out = node("Add", [out, _PREFIX + f"{name}_bias"], f"{name}_add")
    if activation == "identity":
        return out
    if activation in ("tanh", "relu", "sigmoid"):
        return node({"tanh": "Tanh", "relu": "Relu", "sigmoid": "Sigmoid"}[activation], [out], f"{name}_{activation}")
    if activation == "silu":
        return node("Mul", [out, node("Sigmoid", [out], f"{name}_sigmoid")], f"{name}_silu")
    if activation == "gelu":  # the exact form torch.nn.GELU() computes: 0.5 x (1 + erf(x / sqrt 2))
        const = graph.initializer
        for constant, value in (("half", 0.5), ("one", 1.0), ("sqrt2", float(np.sqrt(2.0)))):
            const.append(numpy_helper.from_array(np.array(value, dtype=np.float32), _PREFIX + f"{name}_{constant}"))
        erf = node("Erf", [node("Div", [out, _PREFIX + f"{name}_sqrt2"], f"{name}_scaled")], f"{name}_erf")
        gate = node("Add", [erf, _PREFIX + f"{name}_one"], f"{name}_gate")
        return node("Mul", [node("Mul", [out, gate], f"{name}_gated"), _PREFIX + f"{name}_half"], f"{name}_gelu")
    raise InvalidArgumentError(f"Dense activation {activation!r} cannot be written into a graph")


def _constant(nodes: list[onnx.NodeProto], name: str, value: onnx.TensorProto) -> str:
    output = _PREFIX + name
    nodes.append(helper.make_node("Constant", [], [output], name=output, value=value))
    return output


def _scalar_float(nodes: list[onnx.NodeProto], name: str, value: float) -> str:
    return _constant(nodes, name, helper.make_tensor(name, TensorProto.FLOAT, [], [value]))


def _scalar_int(nodes: list[onnx.NodeProto], name: str, value: int) -> str:
    return _constant(nodes, name, helper.make_tensor(name, TensorProto.INT64, [], [value]))
