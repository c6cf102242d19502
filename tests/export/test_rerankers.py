"""Exporting CrossEncoders: each format sentence-transformers writes is recognised and its activation read, the
manifest says what the runtime needs, the optimized / int8 / fp16 variants rank as CrossEncoder(src) does (int8
within the budget its manifest records), and what onnxembed cannot carry is refused by name."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxembed import ArgumentTypeError, InvalidArgumentError, Reranker, UnsupportedModelError, export
from onnxembed.exporter.cross_encoder import TORCH_PATHS
from onnxembed.exporter.rerank import INT8_MIN_MEAN_SPEARMAN, INT8_MIN_TOP10_OVERLAP, compare_rankings
from onnxembed.manifest import RERANKER, Manifest
from tests import rerankers
from tests.replicas import CORPUS, Replica
from tests.rerankers import PAIRS, RERANKER_FIXTURES, exported_reranker

bert_reranker, xlmr_reranker = rerankers.bert_reranker, rerankers.xlmr_reranker
modernbert_reranker, nli_bert = rerankers.modernbert_reranker, rerankers.nli_bert
distilbert_reranker, mpnet_reranker = rerankers.distilbert_reranker, rerankers.mpnet_reranker

EXPECTED = {
    "bert_reranker": ("BertForSequenceClassification", 1, "sigmoid", ("input_ids", "attention_mask", "token_type_ids")),
    "xlmr_reranker": ("XLMRobertaForSequenceClassification", 1, "sigmoid", ("input_ids", "attention_mask")),
    "modernbert_reranker": ("ModernBertForSequenceClassification", 1, "sigmoid", ("input_ids", "attention_mask")),
    "distilbert_reranker": ("DistilBertForSequenceClassification", 1, "sigmoid", ("input_ids", "attention_mask")),
    "mpnet_reranker": ("MPNetForSequenceClassification", 1, "sigmoid", ("input_ids", "attention_mask")),
    "nli_bert": ("BertForSequenceClassification", 3, "identity", ("input_ids", "attention_mask", "token_type_ids")),
}


@pytest.mark.parametrize("name", RERANKER_FIXTURES)
def test_manifest_of_each_format(name: str, request: pytest.FixtureRequest, exports_dir: Path) -> None:
    replica: Replica = request.getfixturevalue(name)
    out = exported_reranker(replica, exports_dir)
    manifest = Manifest.read(out)
    architecture, labels, activation, inputs = EXPECTED[name]
    assert (manifest.task, manifest.architecture, manifest.num_labels) == (RERANKER, architecture, labels)
    assert (manifest.activation_fn, manifest.input_names, manifest.output_name) == (activation, inputs, "logits")
    accuracy = manifest.variants["fp32"].accuracy
    assert accuracy["max_abs_diff"] <= 1e-4 and accuracy["logits_max_abs_diff"] <= 1e-4, accuracy
    # the export is a CrossEncoder directory as sentence-transformers 5.x writes one
    pipeline = json.loads((out / "config_sentence_transformers.json").read_text())
    assert (pipeline["model_type"], pipeline["activation_fn"]) == ("CrossEncoder", TORCH_PATHS[activation])
    assert json.loads((out / "modules.json").read_text())[0]["path"] == ""


def _unseen_sets() -> list[tuple[str, list[str]]]:
    """Queries and documents the calibration (docstrings) never saw: the test corpus and made-up sentences."""
    words = "model vector search query index token window layer graph cosine batch padding text words".split()
    rng = random.Random(0)
    made_up = [" ".join(rng.choices(words, k=rng.randint(3, 30))).capitalize() + "." for _ in range(60)]
    documents = CORPUS[:30] + made_up[:30]
    return [(query, documents) for query in CORPUS[30:40] + made_up[30:40]]


def _scores(model: Any, sets: list[tuple[str, list[str]]], **options: Any) -> list[np.ndarray]:
    return [np.asarray(model.predict([(q, d) for d in docs], **options)).reshape(len(docs), -1) for q, docs in sets]


@pytest.fixture(scope="module")
def variants(bert_reranker: Replica, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reranker-variants") / "bert"
    export(bert_reranker.path, out, optimize=True, quantize="int8", fp16=True)
    return out


def test_variants_rank_as_cross_encoder(variants: Path, bert_reranker: Replica) -> None:
    from sentence_transformers import CrossEncoder

    manifest = Manifest.read(variants)
    assert set(manifest.variants) == {"fp32", "optimized", "int8", "fp16"}
    int8 = manifest.variants["int8"].accuracy
    # the budget is recorded beside what was measured, as for embeddings
    assert (
        int8["budget_mean_spearman"] == INT8_MIN_MEAN_SPEARMAN
        and int8["budget_top10_overlap"] == INT8_MIN_TOP10_OVERLAP
    )
    assert {"mean_spearman", "min_spearman", "top10_overlap", "speedup_vs_fp32", "recipe", "tried"} <= set(int8)
    assert int8["accepted"] == (int8["mean_spearman"] >= 0.98 and int8["top10_overlap"] >= 0.9)
    sets = _unseen_sets()
    reference = CrossEncoder(str(bert_reranker.path), device="cpu")
    expected = _scores(reference, sets)
    optimized = _scores(Reranker(variants, "cpu", variant="optimized"), sets)
    assert max(float(np.abs(e - o).max()) for e, o in zip(expected, optimized, strict=True)) <= 1e-4
    measured = compare_rankings(expected, _scores(Reranker(variants, "cpu", variant="int8"), sets))
    # the default budget holds on this replica, and on text it never saw int8 ranks within it (with a margin for
    # new text)
    assert int8["accepted"], int8
    assert measured["mean_spearman"] >= INT8_MIN_MEAN_SPEARMAN - 0.01, measured
    assert measured["top10_overlap"] >= INT8_MIN_TOP10_OVERLAP - 0.05, measured
    assert Reranker(variants, "cpu").variant == "int8"  # auto takes it on CPU
    fp16 = manifest.variants["fp16"].accuracy
    if "mean_spearman" in fp16:  # measured where onnxruntime's CPU provider has every fp16 kernel
        assert fp16["mean_spearman"] >= 0.99, fp16


def _cross_encoder_dir(tmp_path: Path, source: Path, **pipeline: Any) -> Path:
    out = tmp_path / "ce"
    shutil.copytree(source, out)
    path = out / "config_sentence_transformers.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **pipeline}))
    return out


def test_refusals_name_what_is_wrong(bert_reranker: Replica, tmp_path: Path) -> None:
    bad = _cross_encoder_dir(tmp_path, bert_reranker.path, activation_fn="torch.nn.modules.activation.Softmax")
    with pytest.raises(
        UnsupportedModelError,
        match="activation_fn 'torch.nn.modules.activation.Softmax' is not supported; supported: torch.nn Identity",
    ):
        export(bad, tmp_path / "out")
    with pytest.raises(UnsupportedModelError, match="--pool-in-graph: a reranker's graph has no pooling"):
        export(bert_reranker.path, tmp_path / "out2", pool_in_graph=True)
    # an LLM reranker: a causal LM scored by LogitScore
    llm = tmp_path / "llm"
    llm.mkdir()
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_LogitScore",
            "type": "sentence_transformers.cross_encoder.modules.LogitScore",
        },
    ]
    (llm / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedModelError, match="LogitScore module: LLM rerankers .* are not supported"):
        export(llm, tmp_path / "out3")
    (llm / "modules.json").unlink()
    (llm / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}))
    with pytest.raises(UnsupportedModelError, match="Qwen3ForCausalLM.*LLM rerankers"):
        export(llm, tmp_path / "out4")
    # a classifier of a family onnxembed does not export
    electra = _cross_encoder_dir(tmp_path / "e", bert_reranker.path)
    config = json.loads((electra / "config.json").read_text())
    config.update(model_type="electra", architectures=["ElectraForSequenceClassification"], embedding_size=32)
    (electra / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        UnsupportedModelError, match="ElectraForSequenceClassification.*supported: BertForSequenceClassification"
    ):
        export(electra, tmp_path / "out5")


def test_custom_activation_falls_back_as_sentence_transformers(bert_reranker: Replica, tmp_path: Path) -> None:
    """A non-torch activation_fn is ignored without trust_remote_code (sentence-transformers' rule): Sigmoid."""
    from sentence_transformers import CrossEncoder

    custom = _cross_encoder_dir(tmp_path, bert_reranker.path, activation_fn="my_package.Scale")
    manifest = export(custom, tmp_path / "out")
    assert manifest.activation_fn == "sigmoid"
    expected = CrossEncoder(str(custom), device="cpu").predict(PAIRS[:10])
    assert np.abs(Reranker(tmp_path / "out", "cpu").predict(PAIRS[:10]) - expected).max() <= 1e-4


def test_int8_budget_gates_auto(bert_reranker: Replica, tmp_path: Path) -> None:
    """A budget no recipe meets (identical rankings) leaves int8 written but not accepted: every recipe was tried,
    the budget asked for is recorded, and auto falls back to fp32."""
    from onnxembed.exporter.quantize import INT8_RECIPES

    with pytest.warns(UserWarning, match="no int8 recipe met mean Spearman >= 1.0 and top-10 overlap >= 1.0"):
        manifest = export(
            bert_reranker.path, tmp_path / "out", quantize="int8", int8_min_spearman=1.0, int8_min_top10_overlap=1.0
        )
    int8 = manifest.variants["int8"].accuracy
    assert (int8["budget_mean_spearman"], int8["budget_top10_overlap"], int8["accepted"]) == (1.0, 1.0, False)
    assert [tried["recipe"] for tried in int8["tried"]] == [recipe.name for recipe in INT8_RECIPES]
    assert Reranker(tmp_path / "out", "cpu").variant == "fp32"
    assert Reranker(tmp_path / "out", "cpu", variant="int8").variant == "int8"  # still there when asked for


def test_budgets_belong_to_their_kind_of_model(bert_reranker: Replica, chinese_bert: Replica, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="int8_min_cosine .* is the budget of embedding vectors"):
        export(bert_reranker.path, tmp_path / "a", quantize="int8", int8_min_cosine=0.99)
    with pytest.raises(InvalidArgumentError, match="int8_min_spearman: a ranking budget, for rerankers"):
        export(chinese_bert.path, tmp_path / "b", quantize="int8", int8_min_spearman=0.9)
    with pytest.raises(InvalidArgumentError, match="int8_min_spearman must be in \\(0, 1\\]; got 0"):
        export(bert_reranker.path, tmp_path / "c", int8_min_spearman=0)
    # a budget or a target without the option it belongs to would be ignored: refused
    with pytest.raises(InvalidArgumentError, match="int8_min_spearman is the budget of quantize='int8'"):
        export(bert_reranker.path, tmp_path / "d", int8_min_spearman=0.9)
    with pytest.raises(InvalidArgumentError, match="target='gpu' chooses what optimize fuses for"):
        export(chinese_bert.path, tmp_path / "e", target="gpu")
    with pytest.raises(ArgumentTypeError, match="int8_min_cosine must be a number in \\(0, 1\\]; got str '0.99'"):
        export(chinese_bert.path, tmp_path / "f", quantize="int8", int8_min_cosine="0.99")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="model_name_or_path must be a path .*got NoneType"):
        export(None, tmp_path / "g")  # type: ignore[arg-type]
    # the weights of a model that is not a PEFT adapter are its own: a base model given for it would be ignored
    with pytest.raises(InvalidArgumentError, match="base_model .*names the base of a PEFT adapter"):
        export(chinese_bert.path, tmp_path / "h", base_model=chinese_bert.path)
    assert not any((tmp_path / name).exists() for name in "defgh")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_matmul_roles_in_a_fused_graph(bert_reranker: Replica, exports_dir: Path, tmp_path: Path) -> None:
    """The int8 recipes find each MatMul's role in a fused graph too (MultiHeadAttention, SkipLayerNorm, BiasGelu):
    per layer three q/k/v projections, one attention output, one FFN input and one FFN output (BERT's layout)."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from onnxembed.exporter.quantize import matmul_groups

    out = exported_reranker(bert_reranker, exports_dir)
    config = json.loads((out / "config.json").read_text())
    options = FusionOptions("bert")
    options.enable_embed_layer_norm = False
    options.use_multi_head_attention = True
    fused = optimize_model(
        str(out / "onnx" / "model.onnx"),
        model_type="bert",
        num_heads=config["num_attention_heads"],
        hidden_size=config["hidden_size"],
        optimization_options=options,
        opt_level=0,
    )
    assert fused.get_fused_operator_statistics()["MultiHeadAttention"] == config["num_hidden_layers"]
    fused.save_model_to_file(str(tmp_path / "fused.onnx"))
    groups = matmul_groups(onnx.load(str(tmp_path / "fused.onnx")))
    layers = config["num_hidden_layers"]
    sizes = {name: len(groups[name]) for name in ("attention_input", "attention_output", "ffn_input", "ffn_output")}
    assert sizes == {
        "attention_input": 3 * layers,
        "attention_output": layers,
        "ffn_input": layers,
        "ffn_output": layers,
    }
