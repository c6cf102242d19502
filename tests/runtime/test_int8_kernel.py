"""The int8 kernel check (runtime/int8.py) and what variant "auto" takes from it."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxembed import Encoder
from onnxembed.errors import Int8SaturationWarning
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


@pytest.mark.parametrize("saturates", [True, False])
@pytest.mark.parametrize("graph", [FULL, SEVEN_BIT])
def test_auto_skips_full_range_int8_where_the_kernel_saturates(
    tiny_export: Path, monkeypatch: pytest.MonkeyPatch, saturates: bool, graph: Variant
) -> None:
    monkeypatch.setattr(variants, "u8s8_saturates", lambda: saturates)
    manifest = _manifest(tiny_export, int8=graph)
    skipped = saturates and graph is FULL
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name, file = choose_variant(manifest, tiny_export, "auto", CPU)
        assert (name, file) == (("fp32", "onnx/model.onnx") if skipped else ("int8", graph.file))
        # asked for by name it is loaded, with the same warning; also on CUDA, which has no uint8 x int8
        # MatMulInteger and runs those nodes on the CPU
        assert choose_variant(manifest, tiny_export, "int8", CPU) == ("int8", graph.file)
        assert choose_variant(manifest, tiny_export, "int8", "CUDAExecutionProvider") == ("int8", graph.file)
    notes = [str(warning.message) for warning in caught if warning.category is Int8SaturationWarning]
    assert len(notes) == len(caught) == (3 if skipped else 0), [str(warning.message) for warning in caught]
    assert all("saturates" in note and graph.file in note for note in notes)
    assert not skipped or "Loading fp32 instead." in notes[0]


def test_the_warning_names_the_users_line(tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export whose int8 variant is full-range, on a kernel that saturates: the Encoder loads fp32, and the
    warning points at the line that made the Encoder."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_export, model_dir)
    manifest = json.loads((model_dir / "onnxembed.json").read_text())
    # the fp32 graph stands in for the int8 one: only the manifest's record of its weights is read
    manifest["variants"]["int8"] = {**manifest["variants"]["fp32"], "dtype": "int8", "accuracy": FULL.accuracy}
    (model_dir / "onnxembed.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(variants, "u8s8_saturates", lambda: True)
    with pytest.warns(Int8SaturationWarning, match="Loading fp32 instead") as caught:
        encoder = Encoder(model_dir)
    assert encoder.variant == "fp32"
    assert caught[0].filename == __file__
