"""Each seed architecture: export, then the same embeddings as SentenceTransformer(src).encode,
from onnxembed's Encoder and from sentence-transformers' own ONNX backend on the exported dir."""

from __future__ import annotations

import numpy as np
import pytest

from onnxembed import Encoder
from tests.replicas import MIXED_TEXTS, REPLICA_FIXTURES, Replica, exported

REPLICAS = [*REPLICA_FIXTURES, pytest.param("minilm", marks=pytest.mark.slow)]


def _assert_same(expected: np.ndarray, actual: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == np.float32
    cosine = (expected * actual).sum(1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1))
    assert cosine.min() >= 0.99999, f"min cosine {cosine.min()}"
    assert np.abs(expected - actual).max() <= 1e-4


@pytest.fixture(params=REPLICAS)
def replica(request: pytest.FixtureRequest) -> Replica:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def _prompt_names(replica: Replica) -> list[str | None]:
    return [None, *replica.prompts]


def test_encoder_matches_sentence_transformers(replica: Replica, exports_dir) -> None:
    from sentence_transformers import SentenceTransformer

    out = exported(replica, exports_dir)
    reference = SentenceTransformer(str(replica.path), device="cpu")
    encoder = Encoder(out, provider="cpu")
    assert encoder.dim == reference.get_sentence_embedding_dimension()
    assert encoder.max_seq_length == reference.max_seq_length
    for prompt_name in _prompt_names(replica):
        expected = reference.encode(MIXED_TEXTS, prompt_name=prompt_name, batch_size=8)
        actual = encoder.encode(MIXED_TEXTS, prompt_name=prompt_name, batch_size=5)
        _assert_same(expected, actual)


def test_exported_dir_loads_in_sentence_transformers_onnx_backend(replica: Replica, exports_dir) -> None:
    pytest.importorskip("optimum.onnxruntime", reason="sentence-transformers' ONNX backend needs optimum-onnx")
    from sentence_transformers import SentenceTransformer

    out = exported(replica, exports_dir)
    reference = SentenceTransformer(str(replica.path), device="cpu")
    onnx_model = SentenceTransformer(str(out), backend="onnx", device="cpu")
    for prompt_name in _prompt_names(replica):
        expected = reference.encode(MIXED_TEXTS, prompt_name=prompt_name)
        _assert_same(expected, onnx_model.encode(MIXED_TEXTS, prompt_name=prompt_name))
