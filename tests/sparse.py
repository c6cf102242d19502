"""Tiny random-weight SparseEncoder (SPLADE) replicas, saved by sentence-transformers' own SparseEncoder.save, with
tokenizers trained here; and the texts every sparse encoder is checked on.

- bert_splade: BertForMaskedLM as an MLMTransformer (the 5.x module) -> SpladePooling(max, relu), max_seq_length 48,
  a "query: " prompt.
- inference_free_splade: a Router: queries through a SparseStaticEmbedding (a random table with zeros in it),
  documents through a fill-mask Transformer -> SpladePooling(sum, log1p_relu), max_seq_length 40.

Weights at 1/sqrt(fan_in) and the MLM bias pushed down: the default init gives logits ~0 (every weight ~0.01),
where neither a wrong term nor a wrong pooling would show; these give vectors whose active sets differ by text.
Nothing touches the network or the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.replicas import BERT_SPECIALS, CORPUS, MIXED_TEXTS, Replica, bert_fast, tiny_bert_config, wordpiece
from tests.rerankers import _once, exported_reranker, louder

SPARSE_FIXTURES = ["bert_splade", "inference_free_splade"]
BERT_SPLADE_PROMPTS = {"query": "query: ", "document": ""}
# Empty, scripts, emoji, far too long, and plain sentences the tokenizers were trained on.
SPARSE_TEXTS = [*MIXED_TEXTS, *CORPUS[:12]]


def _masked_lm(seed: int) -> tuple[Any, Any]:
    import torch
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    tokenizer = bert_fast(wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS))
    model = louder(BertForMaskedLM(tiny_bert_config(tokenizer.vocab_size)))
    with torch.no_grad():  # most terms inactive, as in a trained SPLADE model
        model.cls.predictions.bias.fill_(-1.5)
    return model, tokenizer


def build_bert_splade(out: Path) -> Replica:
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    model, tokenizer = _masked_lm(30)
    hf_dir = out.parent / f"{out.name}-hf"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    modules = [MLMTransformer(str(hf_dir), max_seq_length=48), SpladePooling("max", "relu")]
    SparseEncoder(modules=modules, device="cpu", prompts=BERT_SPLADE_PROMPTS).save(str(out))
    return Replica("bert-splade", out, prompts=BERT_SPLADE_PROMPTS)


def build_inference_free_splade(out: Path) -> Replica:
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import (
        Router,
        SparseStaticEmbedding,
        SpladePooling,
        Transformer,
    )

    model, tokenizer = _masked_lm(31)
    hf_dir = out.parent / f"{out.name}-hf"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    document = Transformer(str(hf_dir), max_seq_length=40, transformer_task="fill-mask")
    generator = torch.Generator().manual_seed(32)
    weight = torch.rand(tokenizer.vocab_size, generator=generator) * 3
    weight[torch.rand(tokenizer.vocab_size, generator=generator) < 0.2] = 0.0  # tokens a query never weighs
    query = SparseStaticEmbedding(tokenizer=document.tokenizer, weight=weight, frozen=True)
    router = Router.for_query_document([query], [document, SpladePooling("sum", "log1p_relu")])
    SparseEncoder(modules=[router], device="cpu", similarity_fn_name="dot").save(str(out))
    return Replica("inference-free-splade", out)


@pytest.fixture(scope="session")
def bert_splade(replicas_dir: Path) -> Replica:
    return _once("bert-splade", build_bert_splade, replicas_dir / "bert-splade")


@pytest.fixture(scope="session")
def inference_free_splade(replicas_dir: Path) -> Replica:
    return _once("inference-free-splade", build_inference_free_splade, replicas_dir / "inference-free-splade")


# the rerankers' helpers serve any replica: each export once per run (per options), keyed by the replica's name
exported_sparse = exported_reranker


def assert_same_vectors(expected: Any, actual: Any, atol: float = 1e-4) -> None:
    """sentence-transformers' (n, dim) vectors (a tensor) against onnxembed's dense rows: equal within ``atol``,
    and active sets that differ only where both weights are below ``atol``."""
    import numpy as np

    expected = expected.to_dense().numpy() if expected.is_sparse else expected.numpy()
    assert expected.shape == actual.shape, (expected.shape, actual.shape)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)
    differ = (expected != 0) != (actual != 0)
    assert (np.maximum(np.abs(expected), np.abs(actual))[differ] < atol).all()
    assert (expected != 0).any(), "the replica gives empty vectors: the comparison would prove nothing"
