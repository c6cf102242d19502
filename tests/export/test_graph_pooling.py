"""Pooling and Normalize inside the graph (export --pool-in-graph) give sentence-transformers' embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxembed import Encoder, export
from onnxembed.exporter.accuracy import compare
from onnxembed.exporter.errors import UnsupportedModelError
from onnxembed.exporter.graph_pooling import can_pool_in_graph
from onnxembed.manifest import POOLED_OUTPUT
from tests.replicas import CORPUS, DATA, MIXED_TEXTS, REPLICA_FIXTURES, Replica

# weightedmean, lasttoken and include_prompt=False stay in numpy (see graph_pooling.py).
POOLED_IN_NUMPY_ONLY = {"multi_pooling_bert"}


@pytest.mark.parametrize("name", [*REPLICA_FIXTURES, "minilm"])
def test_pooled_graph_matches_sentence_transformers(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    replica: Replica = request.getfixturevalue(name)
    out = tmp_path / "out"
    if name in POOLED_IN_NUMPY_ONLY:
        with pytest.raises(UnsupportedModelError, match="--pool-in-graph"):
            export(replica.path, out, pool_in_graph=True)
        assert not out.exists()
        return
    manifest = export(replica.path, out, pool_in_graph=True, calibration_file=DATA / "multilingual.txt")
    variant = manifest.variants["fp32-pooled"]
    assert variant.pooled and variant.accuracy["accepted"]
    pooled = Encoder(out, provider="cpu", variant="fp32-pooled")
    assert pooled._pooled and [o.name for o in pooled._session.get_outputs()] == [POOLED_OUTPUT]
    texts = [*MIXED_TEXTS, *CORPUS[20:]]
    model = SentenceTransformer(str(replica.path), device="cpu")
    for prompt_name in [None, *replica.prompts]:
        expected = model.encode(texts, prompt_name=prompt_name)
        actual = pooled.encode(texts, prompt_name=prompt_name)
        assert compare(expected, actual)["min_cosine"] >= 0.99999
        assert abs(actual - expected).max() <= 1e-4
    # the recorded accuracy (vs the fp32 graph pooled in numpy) holds on text the export never saw
    assert compare(Encoder(out, variant="fp32").encode(texts), pooled.encode(texts))["min_cosine"] >= 0.99999


def test_cls_and_max_pooling_in_graph_with_left_padding() -> None:
    """cls is the first real token and max skips padding, whichever side pads: checked against the numpy kernels."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from onnxembed.exporter.graph_pooling import add_pooling
    from onnxembed.kernels import normalize, pool

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((3, 6, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=np.int64)
    # a graph that passes a (batch, seq, hidden) input through, standing in for the encoder
    graph = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["last_hidden_state"])],
        "stand-in",
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["b", "s", 4]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", 4])],
    )  # fmt: skip
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        src, dst = Path(scratch) / "in.onnx", Path(scratch) / "out.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
        for modes in (("cls",), ("max",), ("mean",), ("mean_sqrt_len_tokens",), ("cls", "max", "mean")):
            add_pooling(src, dst, "last_hidden_state", modes, True, 4 * len(modes), external_data=False)
            session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
            (actual,) = session.run(None, {"h": hidden, "attention_mask": mask})
            np.testing.assert_allclose(actual, normalize(pool(hidden, mask, modes)), rtol=0, atol=1e-6)


def test_unsupported_pooling_is_refused_before_exporting(tmp_path: Path) -> None:
    assert "weightedmean" in (can_pool_in_graph(["weightedmean"], True) or "")
    assert "include_prompt" in (can_pool_in_graph(["mean"], False) or "")
    assert can_pool_in_graph(["cls", "max", "mean", "mean_sqrt_len_tokens"], True) is None
