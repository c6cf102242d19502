"""On CUDA: the fp16 graph with pooling inside against sentence-transformers fp32 and the CPU fp32 path,
order restored, the same results whatever the batching. Skipped where onnxruntime has no CUDA provider
(CI never has one); bench/gpu.py measures speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxembed import Encoder, export
from onnxembed.exporter.accuracy import compare
from tests.replicas import CORPUS, LONG_TEXT, MIXED_TEXTS, REPLICA_FIXTURES, Replica

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs CUDA"),
]
# weightedmean, lasttoken and include_prompt=False are pooled in numpy (export/graph_pooling.py)
POOLED_IN_NUMPY_ONLY = {"multi_pooling_bert"}


def _texts() -> list[str]:
    return [*MIXED_TEXTS, *CORPUS, *(f"{i}: {CORPUS[i % len(CORPUS)]}" for i in range(500)), LONG_TEXT]


@pytest.fixture(scope="module")
def minilm_gpu(minilm: Replica, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "minilm"
    export(minilm.path, out, optimize=True, target="gpu", fp16=True, pool_in_graph=True)
    return out


def test_auto_on_cuda_is_fused_fp16_pooled_and_matches_sentence_transformers(minilm, minilm_gpu) -> None:
    from sentence_transformers import SentenceTransformer

    encoder = Encoder(minilm_gpu, provider="auto")
    assert encoder.provider == "CUDAExecutionProvider" and encoder.variant == "optimized-gpu-pooled"
    assert encoder._pooled and "CUDAExecutionProvider" in encoder._session.get_providers()
    texts = _texts()
    expected = SentenceTransformer(str(minilm.path), device="cpu").encode(texts)
    assert compare(expected, encoder.encode(texts))["min_cosine"] >= 0.9999
    cpu = Encoder(minilm_gpu, provider="cpu", variant="fp32").encode(texts)
    assert compare(cpu, encoder.encode(texts))["min_cosine"] >= 0.9999


@pytest.mark.parametrize("variant", ["fp32", "fp32-pooled", "fp16", "fp16-pooled", "optimized-gpu"])
def test_every_gpu_variant_matches_sentence_transformers(minilm, minilm_gpu, variant: str) -> None:
    from sentence_transformers import SentenceTransformer

    texts = _texts()
    expected = SentenceTransformer(str(minilm.path), device="cpu").encode(texts)
    actual = Encoder(minilm_gpu, provider="cuda", variant=variant).encode(texts)
    assert compare(expected, actual)["min_cosine"] >= (0.99999 if variant.startswith("fp32") else 0.9999)


@pytest.mark.parametrize(
    ("options", "call"),
    [
        ({}, {"max_batch_tokens": 512}),
        ({}, {"batch_size": 1}),
        ({"sessions": 2}, {}),
        ({"io_binding": True}, {}),
        ({"overlap": False}, {"max_batch_tokens": 10**6, "batch_size": 4096}),
    ],
)
def test_same_embeddings_in_input_order_whatever_the_batching(minilm_gpu, options: dict, call: dict) -> None:
    texts = _texts()
    baseline = Encoder(minilm_gpu, provider="cuda").encode(texts)
    shuffled = np.random.default_rng(0).permutation(len(texts))
    actual = np.empty_like(baseline)
    actual[shuffled] = Encoder(minilm_gpu, provider="cuda", **options).encode([texts[i] for i in shuffled], **call)
    # fp16 kernels differ a little with the batch shape; each row must still be its own text's embedding
    assert compare(baseline, actual)["min_cosine"] >= 0.9999


@pytest.mark.parametrize("name", REPLICA_FIXTURES)
def test_seed_replicas_on_cuda_match_sentence_transformers(name, request, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    replica: Replica = request.getfixturevalue(name)
    export(replica.path, tmp_path / "out", optimize=True, target="gpu", fp16=True,
           pool_in_graph=name not in POOLED_IN_NUMPY_ONLY)  # fmt: skip
    encoder = Encoder(tmp_path / "out", provider="cuda")
    texts = [*MIXED_TEXTS, *CORPUS[20:]]
    model = SentenceTransformer(str(replica.path), device="cpu")
    for prompt_name in [None, *replica.prompts]:
        expected = model.encode(texts, prompt_name=prompt_name)
        actual = encoder.encode(texts, prompt_name=prompt_name)
        assert compare(expected, actual)["min_cosine"] >= 0.9999, (encoder.variant, prompt_name)
