"""The int8 kernel check (runtime/int8.py) and what variant "auto" takes from it."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxembed.manifest import Manifest, Variant
from onnxembed.runtime import int8, variants
from onnxembed.runtime.variants import choose_variant

CPU = "CPUExecutionProvider"


def test_probe_is_valid_onnx() -> None:
    model = onnx.load_from_string(int8.probe_model())
    onnx.checker.check_model(model, full_check=True)
    (node,) = model.graph.node
    assert (node.op_type, list(node.input), list(node.output)) == ("MatMulInteger", ["A", "B"], ["Y"])
    weights = numpy_helper.to_array(model.graph.initializer[0])
    assert weights.dtype == np.int8 and weights.shape == (int8.DEPTH, int8.COLUMNS) and np.all(weights == 127)


def test_probe_agrees_with_a_product_checked_in_numpy() -> None:
    """Random full-range weights, a graph built by onnx's own helper, the exact product from numpy: the kernel
    misses it exactly when the probe says it saturates."""
    rng = np.random.default_rng(0)
    weights = rng.integers(-128, 128, (384, 64)).astype(np.int8)
    activations = rng.integers(128, 256, (8, 384)).astype(np.uint8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "g",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [8, 384])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [8, 64])],
        initializer=[numpy_helper.from_array(weights, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    (product,) = session.run(None, {"A": activations})
    exact = activations.astype(np.int64) @ weights.astype(np.int64)
    assert int8.u8s8_saturates() == bool(np.any(product != exact))


def _manifest(tiny_export: Path, **int8_variants: Variant) -> Manifest:
    manifest = Manifest.read(tiny_export)
    return dataclasses.replace(manifest, variants={**manifest.variants, **int8_variants})


FULL = Variant("onnx/model_qint8_avx512_vnni.onnx", "int8", {"accepted": True, "reduce_range": False})
SEVEN_BIT = Variant("onnx/model_qint8_avx2.onnx", "int8", {"accepted": True, "reduce_range": True})
OLD_VNNI = Variant("onnx/model_qint8_avx512_vnni.onnx", "int8", {"accepted": True})  # before reduce_range was kept


@pytest.mark.parametrize("saturates", [True, False])
@pytest.mark.parametrize("graph", [FULL, SEVEN_BIT, OLD_VNNI])
def test_auto_skips_full_range_int8_where_the_kernel_saturates(
    tiny_export: Path, monkeypatch: pytest.MonkeyPatch, saturates: bool, graph: Variant
) -> None:
    monkeypatch.setattr(variants, "u8s8_saturates", lambda: saturates)
    manifest = _manifest(tiny_export, int8=graph)
    skipped = saturates and graph is not SEVEN_BIT
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name, file = choose_variant(manifest, tiny_export, "auto", CPU)
        assert (name, file) == (("fp32", "onnx/model.onnx") if skipped else ("int8", graph.file))
        # asked for by name, it is loaded, with the same warning
        assert choose_variant(manifest, tiny_export, "int8", CPU) == ("int8", graph.file)
    notes = [str(warning.message) for warning in caught]
    assert len(notes) == (2 if skipped else 0), notes
    assert all("saturates" in note and graph.file in note for note in notes)
    # CUDA runs no int8 kernel of the CPU's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choose_variant(manifest, tiny_export, "int8", "CUDAExecutionProvider")
