"""Dense modules (LaBSE, distiluse, sentence-t5 and EmbeddingGemma heads) and StaticEmbedding models, against
sentence-transformers' own encode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxembed import Encoder, UnsupportedModelError, export
from onnxembed.exporter.verify import compare_embeddings
from tests.replicas import (
    BERT_SPECIALS,
    CORPUS,
    MIXED_TEXTS,
    bert_fast,
    tiny_bert_config,
    wordpiece,
)

PROMPTS = {"query": "query: ", "document": "passage: "}
# Text no export here calibrates or verifies on (the int8 accuracy is re-measured on it).
UNSEEN = [f"{a} {b}" for a, b in zip(CORPUS[12:], CORPUS[13:], strict=False)] + [t[::-1] for t in CORPUS]


def _save(out: Path, modules: list[Any], **kwargs: Any) -> Path:
    from sentence_transformers import SentenceTransformer

    SentenceTransformer(modules=modules, device="cpu", **kwargs).save(str(out))
    return out


def _transformer(tmp: Path, model: Any, tokenizer: Any, max_seq_length: int) -> Any:
    from sentence_transformers import models

    hf_dir = tmp / "hf"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    return models.Transformer(str(hf_dir), max_seq_length=max_seq_length)


def _dense(in_features: int, out_features: int, activation: Any, bias: bool = True) -> Any:
    from sentence_transformers import models

    layer = models.Dense(in_features, out_features, bias=bias, activation_function=activation)
    import torch

    with torch.no_grad():  # larger than the default init, so the activation's shape matters
        layer.linear.weight.normal_(0.0, 0.5)
    return layer


@pytest.fixture(scope="module")
def labse_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BERT + CLS pooling + Dense(tanh, bias) + Normalize, as LaBSE."""
    import torch
    from sentence_transformers import models
    from transformers import BertModel

    torch.manual_seed(11)
    tmp = tmp_path_factory.mktemp("labse")
    tokenizer = bert_fast(wordpiece(CORPUS, lowercase=False, specials=BERT_SPECIALS))
    transformer = _transformer(
        tmp, BertModel(tiny_bert_config(tokenizer.vocab_size), add_pooling_layer=False), tokenizer, 64
    )
    modules = [transformer, models.Pooling(32, pooling_mode="cls"), _dense(32, 24, torch.nn.Tanh()), models.Normalize()]
    return _save(tmp / "st", modules, prompts=PROMPTS)


@pytest.fixture(scope="module")
def distiluse_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DistilBERT + mean pooling + Dense(tanh) to a wider dim, no Normalize, as distiluse-base-multilingual."""
    import torch
    from sentence_transformers import models
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(12)
    tmp = tmp_path_factory.mktemp("distiluse")
    tokenizer = bert_fast(wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS), token_type_ids=False)
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64, pad_token_id=1
    )
    transformer = _transformer(tmp, DistilBertModel(config), tokenizer, 64)
    return _save(tmp / "st", [transformer, models.Pooling(32), _dense(32, 48, torch.nn.Tanh())])


@pytest.fixture(scope="module")
def two_dense_gelu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mean pooling, Dense(GELU, no bias) widening 4x, Dense(identity) back, Normalize: EmbeddingGemma's head
    shape, with a non-trivial activation in the middle; truncate_dim set, as Matryoshka models do."""
    import torch
    from sentence_transformers import models
    from transformers import BertModel

    torch.manual_seed(13)
    tmp = tmp_path_factory.mktemp("two-dense")
    tokenizer = bert_fast(wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS))
    transformer = _transformer(
        tmp, BertModel(tiny_bert_config(tokenizer.vocab_size), add_pooling_layer=False), tokenizer, 64
    )
    modules = [
        transformer,
        models.Pooling(32),
        _dense(32, 128, torch.nn.GELU(), bias=False),
        _dense(128, 32, torch.nn.Identity(), bias=False),
        models.Normalize(),
    ]
    return _save(tmp / "st", modules, prompts=PROMPTS, truncate_dim=16)


@pytest.fixture(scope="module")
def static_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model2vec-style StaticEmbedding (WordPiece vocabulary, one table) + Normalize."""
    import torch
    from sentence_transformers import models

    torch.manual_seed(14)
    tokenizer = wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS)  # with a [CLS] ... [SEP] template
    static = models.StaticEmbedding(tokenizer, embedding_dim=24)
    return _save(tmp_path_factory.mktemp("static") / "st", [static, models.Normalize()], prompts=PROMPTS)


@pytest.fixture(scope="module")
def static_alone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A StaticEmbedding with no module after it (modules.json lists one module)."""
    from sentence_transformers import models

    tokenizer = wordpiece(CORPUS, lowercase=True, specials=BERT_SPECIALS)
    return _save(tmp_path_factory.mktemp("static-alone") / "st", [models.StaticEmbedding(tokenizer, embedding_dim=16)])


def _reference(path: Path, **kwargs: Any) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu", **kwargs)


def _assert_matches(expected: np.ndarray, actual: np.ndarray) -> None:
    scores = compare_embeddings(expected, actual)
    assert scores["min_cosine"] >= 0.99999 and scores["max_abs_diff"] <= 1e-4, scores


@pytest.mark.parametrize("fixture", ["labse_like", "distiluse_like", "two_dense_gelu", "static_model", "static_alone"])
def test_matches_sentence_transformers(request, fixture: str, tmp_path: Path) -> None:
    source: Path = request.getfixturevalue(fixture)
    reference = _reference(source)
    manifest = export(source, tmp_path / "out")
    encoder = Encoder(tmp_path / "out", provider="cpu")
    assert encoder.dim == reference.get_sentence_embedding_dimension()
    saved, reference.truncate_dim = reference.truncate_dim, None
    assert manifest.dim == reference.get_sentence_embedding_dimension()  # the last Dense layer's width
    reference.truncate_dim = saved
    for prompt_name in (None, *encoder.prompts):
        _assert_matches(
            reference.encode(MIXED_TEXTS, prompt_name=prompt_name), encoder.encode(MIXED_TEXTS, prompt_name=prompt_name)
        )
    _assert_matches(reference.encode_query(MIXED_TEXTS), encoder.encode_query(MIXED_TEXTS))
    _assert_matches(reference.encode_document(MIXED_TEXTS), encoder.encode_document(MIXED_TEXTS))
    _assert_matches(reference.encode(MIXED_TEXTS, truncate_dim=8), encoder.encode(MIXED_TEXTS, truncate_dim=8))


@pytest.mark.parametrize("fixture", ["labse_like", "distiluse_like", "static_model"])
def test_export_loads_in_sentence_transformers_onnx_backend(request, fixture: str, tmp_path: Path) -> None:
    pytest.importorskip("optimum", reason="sentence-transformers' ONNX backend needs optimum")
    source: Path = request.getfixturevalue(fixture)
    export(source, tmp_path / "out")
    reloaded = _reference(tmp_path / "out", backend="onnx")
    _assert_matches(_reference(source).encode(MIXED_TEXTS), reloaded.encode(MIXED_TEXTS))


@pytest.mark.parametrize("fixture", ["labse_like", "two_dense_gelu"])
def test_variants_carry_the_dense_layers(request, fixture: str, tmp_path: Path) -> None:
    source: Path = request.getfixturevalue(fixture)
    reference = _reference(source).encode(UNSEEN)
    manifest = export(source, tmp_path / "out", optimize=True, quantize="int8", int8_min_cosine=0.5, pool_in_graph=True)
    for name in ("optimized", "fp32-pooled"):
        _assert_matches(reference, Encoder(tmp_path / "out", provider="cpu", variant=name).encode(UNSEEN))
    # int8: re-measured on text the export never saw, within 0.005 of the mean cosine it recorded
    # (random weights say nothing about a real model's int8 accuracy).
    int8 = Encoder(tmp_path / "out", provider="cpu", variant="int8").encode(UNSEEN, batch_size=1)
    cosine = np.sum(reference * int8, axis=1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(int8, axis=1))
    assert abs(float(cosine.mean()) - manifest.variants["int8"].accuracy["mean_cosine"]) <= 0.005


def _edit_dense_config(source: Path, tmp_path: Path, **changes: Any) -> Path:
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(source, copy)
    config_file = copy / "2_Dense" / "config.json"
    config = json.loads(config_file.read_text())
    config.update(changes)
    config_file.write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"activation_function": "torch.nn.modules.activation.Softplus"}, "Softplus"),
        ({"activation_function": "my_package.CustomActivation"}, "my_package.CustomActivation"),
        ({"module_input_name": "token_embeddings"}, "token_embeddings"),
    ],
)
def test_dense_it_cannot_carry_is_refused_by_name(labse_like: Path, tmp_path: Path, changes, named: str) -> None:
    with pytest.raises(UnsupportedModelError, match=named):
        export(_edit_dense_config(labse_like, tmp_path, **changes), tmp_path / "out")


def test_static_refuses_graph_options(static_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="quantize"):
        export(static_model, tmp_path / "out", quantize="int8")


def test_static_long_text_is_not_truncated(static_model: Path, tmp_path: Path) -> None:
    export(static_model, tmp_path / "out")
    encoder = Encoder(tmp_path / "out", provider="cpu")
    long_text = " ".join(CORPUS) * 20  # thousands of tokens
    _assert_matches(_reference(static_model).encode([long_text, "a"]), encoder.encode([long_text, "a"]))


def test_info_lists_the_modules(labse_like: Path, static_model: Path, tmp_path: Path, capsys) -> None:
    from onnxembed.cli import main

    export(labse_like, tmp_path / "labse")
    export(static_model, tmp_path / "static")
    assert main(["info", str(tmp_path / "labse")]) == 0
    assert "Transformer (BertModel) -> Pooling (cls) -> Dense (32 -> 24, tanh) -> Normalize" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "static")]) == 0
    assert "StaticEmbedding (mean of token vectors) -> Normalize" in capsys.readouterr().out


def test_info_without_a_model_lists_what_export_carries(capsys) -> None:
    from onnxembed.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("ModernBertModel", "T5EncoderModel", "Gemma3TextModel", "StaticEmbedding", "Dense", "GELU"):
        assert name in out
