"""Faster variants of an exported fp32 graph: fused (optimized), int8-quantized, fp16.

In scope: writing each variant beside onnx/model.onnx under sentence-transformers' file names, and the
int8 recipes tried, most aggressive (fastest) first. Choosing among them by measured accuracy is
accuracy.py's job; exporting the fp32 graph is onnx_export.py's. Imports onnx/onnxruntime, never torch.

What was measured here (all-MiniLM-L6-v2, 2 Zen 4 cores with AVX-512 VNNI; see the issue notes):
quantizing every MatMul with per-channel weights and dynamic activations (sentence-transformers'
avx512_vnni recipe) cost the most accuracy on the FFN output MatMuls, the ones fed by GELU, whose
inputs have long-tailed ranges; keeping those in fp32 recovers most of it. Per-tensor weights were
unusable. Fusing before quantizing made int8 faster; fusing EmbedLayerNormalization broke
onnxruntime's quantizer (shape inference), so that fusion stays off for CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx

logger = logging.getLogger(__name__)

Target = Literal["cpu", "gpu"]
# sentence-transformers' names: model_O2 (extended fusions), model_O4 (fusions + fp16, for GPU).
OPTIMIZED_FILE = {"cpu": "onnx/model_O2.onnx", "gpu": "onnx/model_O4.onnx"}
FP16_FILE = "onnx/model_fp16.onnx"
_GELU_OPS = {"Gelu", "BiasGelu", "FastGelu", "QuickGelu"}


@dataclass(frozen=True)
class Int8Recipe:
    """One way to quantize: which MatMuls stay fp32, whether activations are smoothed first."""

    name: str
    keep_fp32: tuple[str, ...] = ()  # node groups kept in fp32: "ffn_output", "ffn_input", "attention_output"
    smooth_alpha: float | None = None  # SmoothQuant migration strength, on every constant-weight MatMul
    per_channel: bool = True
    extra: dict[str, object] = field(default_factory=dict)


# Fastest first, so the first that meets the accuracy budget is the fastest that does. Measured on
# all-MiniLM-L6-v2 (1,000 held-out stdlib sentences; mean / p1 cosine vs fp32, top-10 overlap, speed):
#   all-matmul         0.9930 / 0.9854 / 0.908, 2.0x     smooth-0.7-all  0.9954 / 0.9903 / 0.924, ~2x
#   keep-ffn-output    0.9962 / 0.9929 / 0.931, 1.5x     keep-ffn        0.9987 / 0.9976 / 0.966, 1.2x
# SmoothQuant at alpha 0.5 or 0.9, or on the FFN output alone, was worse than none; quantizing the
# fused (optimized) graph was slower here (1.65x) than the plain one.
INT8_RECIPES = (
    Int8Recipe("all-matmul"),
    Int8Recipe("smooth-0.7-all-matmul", smooth_alpha=0.7),
    Int8Recipe("keep-ffn-output", keep_fp32=("ffn_output",)),
    Int8Recipe("keep-ffn", keep_fp32=("ffn_output", "ffn_input")),
    Int8Recipe("keep-ffn-and-attention-output", keep_fp32=("ffn_output", "ffn_input", "attention_output")),
)


def int8_file_name() -> str:
    """sentence-transformers names int8 files by the instruction set they were made for."""
    return "onnx/model_qint8_avx512_vnni.onnx" if has_vnni() else "onnx/model_qint8_avx2.onnx"


def has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def optimize(src: Path, dst: Path, target: Target, num_heads: int, hidden_size: int, right_padded: bool) -> None:
    """onnxruntime's transformer optimizer: fuse LayerNorm, GELU and (with right padding) attention."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = False  # breaks onnxruntime's quantizer (shape inference)
    # onnxruntime's attention fusion assumes right padding.
    options.enable_attention = right_padded
    model = optimize_model(
        str(src),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        optimization_options=options,
        opt_level=0,
        use_gpu=target == "gpu",
    )
    logger.info("fused %s: %s", dst.name, model.get_fused_operator_statistics())
    if target == "gpu":
        model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst), use_external_data_format=_needs_external_data(src))


def to_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute, fp32 inputs and outputs (for CUDA)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst), use_external_data_format=_needs_external_data(src))


def _needs_external_data(src: Path) -> bool:
    return src.with_name(src.name + "_data").exists()


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output}


def _is_gelu_output(name: str, producers: dict[str, onnx.NodeProto]) -> bool:
    """True if ``name`` is a GELU's output: a fused Gelu op, or the last Mul of x * 0.5 * (1 + erf(x / sqrt 2))."""
    node = producers.get(name)
    if node is None:
        return False
    if node.op_type in _GELU_OPS:
        return True
    if node.op_type != "Mul":
        return False
    stack, seen = list(node.input), 0
    while stack and seen < 6:  # the erf sits within a few nodes upstream of the final Mul
        upstream = producers.get(stack.pop())
        seen += 1
        if upstream is not None:
            if upstream.op_type == "Erf":
                return True
            stack.extend(upstream.input)
    return False


def matmul_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """MatMul node names by role: ffn_output (fed by GELU), ffn_input (feeding GELU), attention_output
    (the projection after attention, fed by the attention's reshaped context), other."""
    producers = _producers(model.graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    groups: dict[str, list[str]] = {"ffn_output": [], "ffn_input": [], "attention_output": [], "other": []}
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        if _is_gelu_output(node.input[0], producers):
            groups["ffn_output"].append(node.name)
            continue
        downstream = [n for output in node.output for n in consumers.get(output, [])]
        # the FFN input MatMul feeds (through its bias Add) a GELU
        feeds_gelu = any(
            n.op_type in _GELU_OPS or any(_is_gelu_output(o, producers) for o in _gelu_candidates(n, consumers))
            for n in downstream
        )
        source = producers.get(node.input[0])
        if feeds_gelu:
            groups["ffn_input"].append(node.name)
        elif source is not None and source.op_type in ("Reshape", "Attention", "MultiHeadAttention"):
            groups["attention_output"].append(node.name)
        else:
            groups["other"].append(node.name)
    return groups


def _gelu_candidates(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> list[str]:
    """Outputs two steps downstream of ``node`` (bias Add -> Div/Mul -> ...), where a GELU's Mul may sit."""
    outputs: list[str] = []
    frontier = list(node.output)
    for _ in range(4):
        nxt = [n for name in frontier for n in consumers.get(name, [])]
        outputs.extend(o for n in nxt for o in n.output)
        frontier = [o for n in nxt for o in n.output]
    return outputs


def quantize_int8(src: Path, dst: Path, recipe: Int8Recipe, feeds: list[dict[str, object]]) -> dict[str, object]:
    """Dynamic int8 quantization of MatMul weights (activations quantized at run time); returns what was
    done. ``feeds`` (calibration batches) are used only by smoothing recipes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    if recipe.smooth_alpha is not None:
        smoothed = dst.with_name(dst.stem + "_smoothed.onnx")
        smooth(src, smoothed, ("ffn_output", "ffn_input", "attention_output", "other"), feeds, recipe.smooth_alpha)
        try:
            return quantize_int8(smoothed, dst, Int8Recipe(recipe.name, per_channel=recipe.per_channel), feeds)
        finally:
            smoothed.unlink(missing_ok=True)
            smoothed.with_name(smoothed.name + "_data").unlink(missing_ok=True)
    groups = matmul_groups(model)
    excluded = [name for group in recipe.keep_fp32 for name in groups[group]]
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=["MatMul"],
        per_channel=recipe.per_channel,
        reduce_range=not has_vnni(),
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        use_external_data_format=_needs_external_data(src),
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT, **recipe.extra},
    )
    quantized = sum(len(names) for names in groups.values()) - len(excluded)
    return {
        "recipe": recipe.name,
        "quantized_matmuls": quantized,
        "fp32_matmuls": len(excluded),
        "per_channel": recipe.per_channel,
        "reduce_range": not has_vnni(),
    }


def activation_ranges(model_path: Path, tensor_names: list[str], feeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-channel max |x| of the named tensors (last axis) over calibration batches: {name: (channels,)}."""
    import numpy as np
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    existing = {output.name for output in model.graph.output}
    for name in tensor_names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    maxima: dict[str, Any] = {}
    for feed in feeds:
        mask = np.asarray(feed["attention_mask"]).astype(bool)
        for name, value in zip(tensor_names, session.run(tensor_names, feed), strict=True):
            peak = np.abs(value[mask]).max(axis=0)  # padded positions carry no real activations
            maxima[name] = peak if name not in maxima else np.maximum(maxima[name], peak)
    return maxima


def smooth(src: Path, dst: Path, groups: tuple[str, ...], feeds: list[dict[str, object]], alpha: float = 0.5) -> int:
    """SmoothQuant: divide each chosen MatMul's input channels by s and multiply its weight rows by s,
    s = max|x|^alpha / max|w|^(1 - alpha), so activation outliers move into the (per-channel quantized)
    weights and the dynamic per-tensor activation scale resolves the other channels better.
    The product is unchanged in exact arithmetic. Returns the number of MatMuls smoothed."""
    import numpy as np
    from onnx import numpy_helper

    model = onnx.load(str(src))
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    by_group = matmul_groups(model)
    targets = [
        node
        for node in model.graph.node
        if node.op_type == "MatMul"
        and node.input[1] in initializers
        and any(node.name in by_group[group] for group in groups)
    ]
    ranges = activation_ranges(src, [node.input[0] for node in targets], feeds)
    for node in targets:
        weight = numpy_helper.to_array(initializers[node.input[1]])  # (in, out)
        x_max = np.maximum(np.asarray(ranges[node.input[0]], dtype=np.float64), 1e-5)
        w_max = np.maximum(np.abs(weight).max(axis=1).astype(np.float64), 1e-5)
        scale = (x_max**alpha / w_max ** (1 - alpha)).astype(np.float32)
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), node.name + "_smooth_inverse")
        model.graph.initializer.append(inverse)
        smoothed = node.input[0] + "_smoothed_for_" + node.name
        model.graph.node.append(
            onnx.helper.make_node("Mul", [node.input[0], inverse.name], [smoothed], name=node.name + "_smooth")
        )
        node.input[0] = smoothed
    _topological_sort(model.graph)
    onnx.save_model(model, str(dst), save_as_external_data=_needs_external_data(src))
    return len(targets)


def _topological_sort(graph: onnx.GraphProto) -> None:
    available = {tensor.name for tensor in graph.initializer} | {value.name for value in graph.input} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        remaining = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            raise ValueError("graph has a cycle or a missing input")
        pending = remaining
    del graph.node[:]
    graph.node.extend(ordered)
