"""Faster variants of an exported fp32 graph: fused (optimized), int8-quantized, fp16.

In scope: writing each variant beside onnx/model.onnx under sentence-transformers' file names, and the
int8 recipes, fastest first. Measuring them is accuracy.py's job, choosing one variants.py's; exporting
the fp32 graph is onnx_export.py's. Imports onnx/onnxruntime, never torch.

The FFN MatMuls' inputs (LayerNorm and GELU outputs) have a few channels with huge values that cost int8
most of its accuracy, so they can run in fp32 (split_outliers); int8 starts from the plain graph, not the
fused one, and EmbedLayerNormalization stays unfused for CPU (it breaks onnxruntime's quantizer). What was
measured: docs/performance.md#int8-variants.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from onnxembed.errors import InvalidArgumentError
from onnxembed.exporter import onnx_io

logger = logging.getLogger(__name__)

Target = Literal["cpu", "gpu"]
# sentence-transformers' names: model_O2 (extended fusions), model_O4 (fusions + fp16, for GPU).
OPTIMIZED_FILE = {"cpu": "onnx/model_O2.onnx", "gpu": "onnx/model_O4.onnx"}
FP16_FILE = "onnx/model_fp16.onnx"
_GELU_OPS = {"Gelu", "BiasGelu", "FastGelu", "QuickGelu"}
_ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div", "Erf", "Pow", "Tanh", "Sigmoid", "Cast", "Sqrt"}


@dataclass(frozen=True)
class Int8Recipe:
    """One way to quantize: which MatMuls stay fp32, which have their outlier input channels split off, and
    which have their inputs' channels evened out first."""

    name: str
    keep_fp32: tuple[str, ...] = ()  # node groups kept in fp32: "ffn_output", "ffn_input", "attention_output"
    split_outliers: tuple[str, ...] = ()  # node groups whose outlier input channels run in fp32 (see split_outliers)
    outlier_channels: int = 4
    per_channel: bool = True
    smooth: tuple[str, ...] = ()  # node groups whose inputs are smoothed (see smooth_inputs)
    smooth_alpha: float = 0.7


# Fastest first, so the first that meets the accuracy budget is the fastest that does (measured speed and
# accuracy of each, and what was tried and dropped: docs/performance.md#int8-variants).
INT8_RECIPES = (
    Int8Recipe("all-matmul"),
    # the FFN input's outliers smoothed (one Mul on a hidden-wide tensor) rather than split (a Gather, a rank-4
    # MatMul and an Add, the last two FFN-wide)
    Int8Recipe("smooth-ffn-input", smooth=("ffn_input",), split_outliers=("ffn_output",)),
    Int8Recipe("split-ffn-outliers", split_outliers=("ffn_output", "ffn_input")),
    # decoders: outlier channels of the residual stream reach q/k/v through RMSNorm as well
    Int8Recipe("split-outliers", split_outliers=("ffn_output", "ffn_input", "attention_input")),
    Int8Recipe("keep-ffn-output", keep_fp32=("ffn_output",)),
    Int8Recipe("keep-ffn", keep_fp32=("ffn_output", "ffn_input")),
    Int8Recipe("keep-ffn-and-attention-output", keep_fp32=("ffn_output", "ffn_input", "attention_output")),
)


# What an int8 graph is made for, named as sentence-transformers names its int8 files (the quantization_config of
# export_dynamic_quantized_onnx_model; its avx2 weights are full range, ours 7-bit: exact on every x86-64 CPU).
INT8_TARGETS = ("host", "avx2", "avx512_vnni", "arm64")


def int8_target(asked: str, check_cpu: bool = True) -> str:
    """The instruction set to make int8 weights for: ``asked``, or for "host" this CPU's (full-range weights
    where onnxruntime's int8 kernel does not saturate on them, runtime/int8.py; 7 bits elsewhere). Full range
    is refused where the kernel saturates: the recipes' accuracy could not be measured here. Without
    ``check_cpu``, only the name is checked and returned."""
    from onnxembed.runtime.int8 import u8s8_saturates

    if asked not in INT8_TARGETS:
        raise InvalidArgumentError(f"int8_target must be one of {', '.join(map(repr, INT8_TARGETS))}; got {asked!r}")
    if asked == "avx2" or not check_cpu:
        return asked
    if u8s8_saturates():
        if asked == "host":
            return "avx2"
        raise InvalidArgumentError(
            f"int8_target={asked!r} writes full-range int8 weights, and this CPU's int8 kernel (no VNNI) saturates "
            "on them, so their accuracy cannot be measured here: export on a CPU with VNNI (or ARM), or use "
            "int8_target='avx2' (7-bit weights, exact on every x86-64 CPU, VNNI or not)"
        )
    if asked == "host":
        return "arm64" if platform.machine().lower() in ("arm64", "aarch64") else "avx512_vnni"
    return asked


def int8_file_name(target: str) -> str:
    """sentence-transformers' name for an int8 file made for ``target`` (an int8_target() answer)."""
    return f"onnx/model_qint8_{target}.onnx"


def optimize(src: Path, dst: Path, target: Target, num_heads: int, hidden_size: int, right_padded: bool) -> None:
    """onnxruntime's transformer optimizer: fuse LayerNorm, GELU and (with right padding) attention."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = False  # breaks onnxruntime's quantizer (shape inference)
    # onnxruntime's attention fusion assumes right padding.
    options.enable_attention = right_padded
    graph = onnx.load(str(src))
    model = optimize_model(
        graph if with_layer_norm_bias(graph.graph) else str(src),
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
    model.save_model_to_file(str(dst), use_external_data_format=needs_external_data(src))


def with_layer_norm_bias(graph: onnx.GraphProto) -> int:
    """Give each bias-less LayerNormalization (dynamo's, for a norm without bias: ModernBERT) an explicit zero
    bias, as TorchScript writes it; onnxruntime's SkipLayerNormalization fusion indexes a third input and
    fails without one (IndexError, onnxruntime 1.32). Returns how many got one."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    added = 0
    for node in graph.node:
        if node.op_type != "LayerNormalization" or len(node.input) != 2 or node.input[1] not in initializers:
            continue
        scale = numpy_helper.to_array(initializers[node.input[1]])
        bias = numpy_helper.from_array(np.zeros_like(scale), f"{node.name or node.output[0]}_zero_bias")
        graph.initializer.append(bias)
        node.input.append(bias.name)
        added += 1
    return added


def to_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute, fp32 inputs and outputs (for CUDA)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst), use_external_data_format=needs_external_data(src))


def needs_external_data(src: Path) -> bool:
    """Whether the graph at ``src`` keeps its weights outside (so what is made from it must too): a data file
    beside it under onnxembed's name (NAME_data) or onnxruntime's (NAME.data). A file check, not a read of
    the graph, which for graphs with inline weights is the whole model."""
    return any(src.with_name(src.name + suffix).exists() for suffix in ("_data", ".data"))


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


def _is_silu_output(name: str, producers: dict[str, onnx.NodeProto]) -> bool:
    """True if ``name`` is x * Sigmoid(x), the SiLU of a decoder's gated MLP as the dynamo exporter writes it."""
    node = producers.get(name)
    if node is None or node.op_type != "Mul":
        return False
    for index, other in ((0, 1), (1, 0)):
        sigmoid = producers.get(node.input[index])
        if sigmoid is not None and sigmoid.op_type == "Sigmoid" and sigmoid.input[0] == node.input[other]:
            return True
    return False


def _is_gated_product(name: str, producers: dict[str, onnx.NodeProto]) -> bool:
    """True if ``name`` is SiLU(gate) * up, the input of a gated MLP's down projection."""
    node = producers.get(name)
    return node is not None and node.op_type == "Mul" and any(_is_silu_output(i, producers) for i in node.input)


def matmul_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """MatMul node names by role: ffn_output (fed by GELU, or a gated MLP's SiLU(gate) * up), ffn_input (feeding
    GELU, or a gated MLP's gate and up projections), attention_output (the projection after attention, fed by
    the attention's reshaped context), attention_input (q/k/v: weighted MatMuls sharing their input), other."""
    producers = _producers(model.graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {tensor.name for tensor in model.graph.initializer}
    weighted_readers: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in constants:
            weighted_readers[node.input[0]] = weighted_readers.get(node.input[0], 0) + 1
    groups: dict[str, list[str]] = {
        "ffn_output": [],
        "ffn_input": [],
        "attention_output": [],
        "attention_input": [],
        "other": [],
    }
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        if _is_gelu_output(node.input[0], producers) or _is_gated_product(node.input[0], producers):
            groups["ffn_output"].append(node.name)
            continue
        downstream = [n for output in node.output for n in consumers.get(output, [])]
        # the FFN input MatMul feeds (through its bias Add) a GELU; a gated MLP's gate feeds its SiLU's Sigmoid,
        # its up projection the product with that SiLU
        feeds_gelu = any(
            n.op_type in _GELU_OPS
            or n.op_type == "Sigmoid"
            or _is_gated_product(n.output[0], producers)
            or any(_is_gelu_output(o, producers) for o in _gelu_candidates(n, consumers))
            for n in downstream
        )
        source = producers.get(node.input[0])
        if feeds_gelu:
            groups["ffn_input"].append(node.name)
        elif source is not None and source.op_type in ("Reshape", "Attention", "MultiHeadAttention"):
            groups["attention_output"].append(node.name)
        elif node.input[1] in constants and weighted_readers.get(node.input[0], 0) >= 2:
            groups["attention_input"].append(node.name)
        else:
            groups["other"].append(node.name)
    return groups


def _gelu_candidates(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> list[str]:
    """Outputs up to four elementwise steps downstream of ``node`` (bias Add -> Div/Mul -> ...), where a GELU's
    Mul may sit. Only elementwise ops are walked through: in a fused graph four steps from a q/k/v projection
    would otherwise pass attention and the next MatMul to the next layer's BiasGelu."""
    outputs: list[str] = []
    frontier = list(node.output)
    for _ in range(4):
        nxt = [n for name in frontier for n in consumers.get(name, [])]
        outputs.extend(o for n in nxt for o in n.output)
        frontier = [o for n in nxt if n.op_type in _ELEMENTWISE_OPS for o in n.output]
    return outputs


def quantize_int8(
    src: Path,
    dst: Path,
    recipe: Int8Recipe,
    feeds: list[dict[str, Any]],
    also_keep: list[str] | None = None,
    *,
    target: str,
) -> dict[str, object]:
    """Dynamic int8 quantization of MatMul weights (activations quantized at run time) for ``target`` (an
    int8_target() answer: "avx2" means 7-bit weights); returns what was done. ``feeds`` (calibration batches)
    are used only by splitting recipes; ``also_keep`` names more MatMuls to leave in fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if recipe.smooth:
        smoothed = dst.with_name(dst.stem + "_smooth.onnx")
        smooth_inputs(src, smoothed, recipe.smooth, feeds, recipe.smooth_alpha)
        try:
            rest = dataclasses.replace(recipe, smooth=())
            how = quantize_int8(smoothed, dst, rest, feeds, also_keep=also_keep, target=target)
        finally:
            onnx_io.remove(smoothed)
        smoothing = {"smoothed_groups": list(recipe.smooth), "smooth_alpha": recipe.smooth_alpha}
        return {**how, "recipe": recipe.name, **smoothing}
    model = onnx.load(str(src))
    if recipe.split_outliers:
        split = dst.with_name(dst.stem + "_split.onnx")
        kept = split_outliers(src, split, recipe.split_outliers, feeds, recipe.outlier_channels)
        try:
            plain = Int8Recipe(recipe.name, keep_fp32=recipe.keep_fp32, per_channel=recipe.per_channel)
            how = quantize_int8(split, dst, plain, feeds, also_keep=[*kept, *(also_keep or [])], target=target)
        finally:
            onnx_io.remove(split)
        return {**how, "outlier_channels": recipe.outlier_channels, "split_groups": list(recipe.split_outliers)}
    groups = matmul_groups(model)
    excluded = [name for group in recipe.keep_fp32 for name in groups[group]] + list(also_keep or [])
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=["MatMul"],
        per_channel=recipe.per_channel,
        reduce_range=target == "avx2",
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        use_external_data_format=needs_external_data(src),
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    constants = {tensor.name for tensor in model.graph.initializer}
    weighted = [node.name for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in constants]
    quantized = len(set(weighted) - set(excluded))
    return {
        "recipe": recipe.name,
        "quantized_matmuls": quantized,
        "fp32_matmuls": len(excluded),
        "per_channel": recipe.per_channel,
        "reduce_range": target == "avx2",
    }


def activation_ranges(model_path: Path, tensor_names: list[str], feeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-channel max |x| of the named tensors (last axis) over calibration batches: {name: (channels,)}."""
    import numpy as np
    import onnxruntime as ort

    from onnxembed.runtime.session import quiet_options

    model = onnx.load(str(model_path))
    existing = {output.name for output in model.graph.output}
    for name in tensor_names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    graph = model.SerializeToString()
    session = ort.InferenceSession(graph, sess_options=quiet_options(), providers=["CPUExecutionProvider"])
    maxima: dict[str, Any] = {}
    for feed in feeds:
        mask = np.asarray(feed["attention_mask"]).astype(bool)
        for name, value in zip(tensor_names, session.run(tensor_names, feed), strict=True):
            peak = np.abs(value[mask]).max(axis=0)  # padded positions carry no real activations
            maxima[name] = peak if name not in maxima else np.maximum(maxima[name], peak)
    return maxima


def _chosen_inputs(
    src: Path, groups: tuple[str, ...], feeds: list[dict[str, Any]]
) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto], dict[str, list[onnx.NodeProto]], dict[str, Any]]:
    """The graph at ``src``, its initializers, the weighted MatMuls of ``groups`` by the input they read, and
    each such input's per-channel calibration range."""
    model = onnx.load(str(src))
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    by_group = matmul_groups(model)
    chosen = {name for group in groups for name in by_group[group]}
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.name in chosen and node.input[1] in initializers:
            by_input.setdefault(node.input[0], []).append(node)
    return model, initializers, by_input, activation_ranges(src, list(by_input), feeds)


def smooth_inputs(src: Path, dst: Path, groups: tuple[str, ...], feeds: list[dict[str, Any]], alpha: float) -> None:
    """Even out the input channels of each chosen MatMul before int8 (SmoothQuant): X @ W = (X / s) @ (s W).

    Dynamic quantization scales a whole activation tensor at once, so a few channels with huge values leave
    the rest a few int8 steps; dividing channel j by s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (ranges
    from the calibration batches; max|W_j| over every MatMul reading X) moves part of that range into the
    weights, which are quantized per output channel. One Mul per input tensor, shared by its readers; exact
    in fp32 arithmetic up to rounding."""
    from onnx import helper, numpy_helper

    model, initializers, by_input, ranges = _chosen_inputs(src, groups, feeds)
    for index, (x, readers) in enumerate(by_input.items()):
        weights = [numpy_helper.to_array(initializers[node.input[1]]) for node in readers]
        weight_peaks = np.max([np.abs(weight).max(axis=1) for weight in weights], axis=0)
        # a channel that never fired, or whose weights are all zero, keeps its scale (1 at the floor)
        scale = np.maximum(np.asarray(ranges[x]), 1e-5) ** alpha / np.maximum(weight_peaks, 1e-5) ** (1 - alpha)
        scale = scale.astype(np.float32)
        tag = f"onnxembed_smooth_{index}"
        model.graph.initializer.append(numpy_helper.from_array((1 / scale).astype(np.float32), tag + "_inverse"))
        model.graph.node.append(helper.make_node("Mul", [x, tag + "_inverse"], [tag + "_x"], name=tag))
        for node, weight in zip(readers, weights, strict=True):
            scaled = numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), node.name + "_smoothed")
            model.graph.initializer.append(scaled)
            node.input[0], node.input[1] = tag + "_x", scaled.name
    _drop_unread(model.graph, {node.name + "_smoothed" for nodes in by_input.values() for node in nodes})
    _topological_sort(model.graph)
    onnx_io.save(model, dst, needs_external_data(src))


def _drop_unread(graph: onnx.GraphProto, keep: set[str]) -> None:
    """Remove initializers that no node reads, in the graph or its loops' bodies (the weights smoothing
    replaced: a copy of each would double the file)."""
    read: set[str] = set()
    stack = [graph]
    while stack:
        current = stack.pop()
        for node in current.node:
            read.update(node.input)
            stack.extend(attribute.g for attribute in node.attribute if attribute.type == onnx.AttributeProto.GRAPH)
    read |= {output.name for output in graph.output} | keep
    unread = [tensor for tensor in graph.initializer if tensor.name not in read]
    for tensor in unread:
        graph.initializer.remove(tensor)


def split_outliers(
    src: Path, dst: Path, groups: tuple[str, ...], feeds: list[dict[str, Any]], channels: int
) -> list[str]:
    """Run each chosen MatMul's few outlier input channels in fp32 and the rest in int8 (LLM.int8-style).

    Dynamic quantization scales a whole activation tensor at once, so a handful of channels with huge
    values (found here from calibration ranges) leave the others a few int8 steps. For every input tensor
    X of the chosen MatMuls: X_rest = X * mask (outlier channels zeroed, one cheap pass shared by the
    MatMuls reading X) goes through the original, quantizable MatMul, and Gather(X, outliers) @ W[outliers]
    adds the outliers' share in fp32. Exact in fp32 arithmetic. Returns the fp32 MatMuls' names.

    Where X is an elementwise function of MatMuls that nothing else reads, with f(0) = 0 (GELU(x W1 + b1),
    SiLU(x Wg) * x Wu), the outlier channels are zeroed at the source instead: those columns of W1 (and of
    b1) become 0, so X carries 0 there with no mask pass over it, and a copy of the function on just those
    columns gives the outliers."""
    import numpy as np
    from onnx import helper, numpy_helper

    model, initializers, by_input, ranges = _chosen_inputs(src, groups, feeds)
    kept = []
    for index, (x, readers) in enumerate(by_input.items()):
        peaks = np.asarray(ranges[x])
        outliers = np.sort(np.argsort(-peaks)[:channels]).astype(np.int64)
        tag = f"onnxembed_split_{index}"
        chain = _elementwise_source(model.graph, x, readers, len(peaks))
        copied = None if chain is None else _zero_at_source(model, chain, x, outliers, tag)
        if copied is not None:
            rest = x
            kept.extend(copied)
        else:
            rest = tag + "_rest"
            mask = np.ones(len(peaks), dtype=np.float32)
            mask[outliers] = 0.0
            model.graph.initializer.extend(
                [numpy_helper.from_array(outliers, tag + "_channels"), numpy_helper.from_array(mask, tag + "_mask")]
            )
            model.graph.node.extend(
                [
                    helper.make_node(
                        "Gather", [x, tag + "_channels"], [tag + "_outliers"], axis=-1, name=tag + "_gather"
                    ),
                    helper.make_node("Mul", [x, tag + "_mask"], [rest], name=tag + "_mask"),
                ]
            )
        for node in readers:
            weight = numpy_helper.to_array(initializers[node.input[1]])
            outlier_weight = numpy_helper.from_array(weight[outliers], node.name + "_outlier_weight")
            model.graph.initializer.append(outlier_weight)
            output = node.output[0]
            model.graph.node.extend(
                [
                    helper.make_node(
                        "MatMul",
                        [tag + "_outliers", outlier_weight.name],
                        [output + "_outliers"],
                        name=node.name + "_outliers",
                    ),
                    helper.make_node("MatMul", [rest, node.input[1]], [output + "_rest"], name=node.name),
                    helper.make_node(
                        "Add", [output + "_rest", output + "_outliers"], [output], name=node.name + "_sum"
                    ),
                ]
            )
            model.graph.node.remove(node)
            kept.append(node.name + "_outliers")
    _topological_sort(model.graph)
    onnx_io.save(model, dst, needs_external_data(src))
    return kept


# elementwise ops a chain to zero at its source may pass through (a Cast would change what 0 is stored as)
_CHANNELWISE_OPS = (_ELEMENTWISE_OPS - {"Cast"}) | {"Relu", "Neg", "Abs"}


@dataclass
class _Chain:
    """The elementwise nodes between weighted MatMuls and X (inputs first), and those MatMuls."""

    nodes: list[onnx.NodeProto]
    matmuls: list[onnx.NodeProto]
    scalars: list[onnx.NodeProto]  # Constant nodes of one value that the chain reads


def _elementwise_source(graph: onnx.GraphProto, x: str, readers: list[onnx.NodeProto], channels: int) -> _Chain | None:
    """The chain that makes ``x`` from weighted MatMuls through elementwise ops whose constants are scalars or
    per-channel vectors, when nothing outside it (but ``readers``) reads any of its values; else None."""
    producers = _producers(graph)
    constants = {tensor.name: tensor for tensor in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    nodes: list[onnx.NodeProto] = []
    matmuls: list[onnx.NodeProto] = []
    scalars: list[onnx.NodeProto] = []
    pending, seen = [x], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Constant" and _constant_size(node) == 1:
            scalars.append(node)
            continue
        if node.op_type == "MatMul" and node.input[1] in constants:
            if tuple(constants[node.input[1]].dims)[-1:] != (channels,):
                return None
            matmuls.append(node)
            continue
        if node.op_type not in _CHANNELWISE_OPS:
            return None
        nodes.append(node)
        for value in node.input:
            if value in constants:
                if _size(constants[value]) not in (1, channels):
                    return None
            else:
                pending.append(value)
    if not matmuls or not nodes:
        return None
    inside = {id(node) for node in nodes + matmuls} | {id(node) for node in readers}
    for node in nodes + matmuls:
        if any(id(reader) not in inside for out in node.output for reader in consumers.get(out, [])):
            return None
    # the weights and per-channel constants it will zero must be its own
    inside = {id(node) for node in nodes + matmuls}
    owned = [node.input[1] for node in matmuls] + [
        name for node in nodes for name in node.input if name in constants and _size(constants[name]) > 1
    ]
    if any(id(reader) not in inside for name in owned for reader in consumers.get(name, [])):
        return None
    if any(tuple(constants[name].dims)[-1:] != (channels,) for name in owned):
        return None
    nodes.reverse()
    return _Chain(nodes, matmuls, scalars)


def _size(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims)) if tensor.dims else 1


def _constant_size(node: onnx.NodeProto) -> int:
    """Elements of a Constant node's tensor value (0 when it holds something else)."""
    for attribute in node.attribute:
        if attribute.name == "value":
            return _size(attribute.t)
        if attribute.name in ("value_float", "value_int"):
            return 1
    return 0


def _zero_at_source(model: onnx.ModelProto, chain: _Chain, x: str, outliers: Any, tag: str) -> list[str] | None:
    """Copy ``chain`` for the ``outliers`` columns alone (its output tag + "_outliers"), then zero those columns
    of its MatMul weights and per-channel constants; returns the copied MatMuls' names (they stay fp32). Only
    if the chain gives 0 where its MatMuls give 0 (checked by running it on zeros); else the graph is left as
    it was and None returned."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    vectors = {name for node in chain.nodes for name in node.input if name in constants and _size(constants[name]) > 1}
    zeroed = {name: numpy_helper.to_array(constants[name]).copy() for name in vectors}
    for array in zeroed.values():
        array[..., outliers] = 0.0
    # f(0) = 0: the chain on zeros (with its constants zeroed as they will be) must give zeros
    probe = helper.make_graph(
        list(chain.scalars) + list(chain.nodes),
        "probe",
        [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None) for node in chain.matmuls],
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(zeroed.get(name, numpy_helper.to_array(constants[name])), name)
            for name in {n for node in chain.nodes for n in node.input if n in constants}
        ],
    )
    width = int(constants[chain.matmuls[0].input[1]].dims[-1])
    zeros = {node.output[0]: np.zeros((1, width), dtype=np.float32) for node in chain.matmuls}
    opset = [entry for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    evaluator = ReferenceEvaluator(helper.make_model(probe, opset_imports=opset, ir_version=model.ir_version))
    (output,) = evaluator.run(None, zeros)
    result = np.asarray(output)
    if np.any(result[..., outliers] != 0):
        return None
    renamed: dict[str, str] = {}
    copies = []
    for node in chain.matmuls:
        weight = numpy_helper.to_array(constants[node.input[1]])
        small = numpy_helper.from_array(np.ascontiguousarray(weight[..., outliers]), f"{tag}_{node.name}_columns")
        graph.initializer.append(small)
        renamed[node.output[0]] = f"{tag}_{node.output[0]}"
        copies.append(
            helper.make_node(
                "MatMul", [node.input[0], small.name], [renamed[node.output[0]]], name=f"{tag}_{node.name}"
            )
        )
        weight = weight.copy()
        weight[..., outliers] = 0.0
        constants[node.input[1]].CopyFrom(numpy_helper.from_array(weight, node.input[1]))
    for node in chain.nodes:
        inputs = []
        for name in node.input:
            if name in vectors:
                array = numpy_helper.to_array(constants[name])
                small = numpy_helper.from_array(np.ascontiguousarray(array[..., outliers]), f"{tag}_{name}")
                graph.initializer.append(small)
                inputs.append(small.name)
            else:
                inputs.append(renamed.get(name, name))
        renamed[node.output[0]] = tag + "_outliers" if node.output[0] == x else f"{tag}_{node.output[0]}"
        copies.append(
            helper.make_node(
                node.op_type, inputs, [renamed[node.output[0]]], name=f"{tag}_{node.name}", domain=node.domain
            )
        )
        copies[-1].attribute.extend(node.attribute)
    for name in vectors:
        constants[name].CopyFrom(numpy_helper.from_array(zeroed[name], name))
    graph.node.extend(copies)
    return [node.name for node in copies if node.op_type == "MatMul"]


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
            raise InvalidArgumentError("graph has a cycle or a missing input")
        pending = remaining
    del graph.node[:]
    graph.node.extend(ordered)
