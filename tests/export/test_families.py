"""ModernBERT, T5/mT5 encoders and EmbeddingGemma's Gemma3TextModel: each exports, and its fp32, optimized and
int8 graphs give what SentenceTransformer(src).encode gives (int8: what its manifest recorded) on mixed text,
with and without prompts; the exporter is chosen per family."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from onnxembed import Encoder, export
from onnxembed.cli import main
from onnxembed.exporter import UnsupportedModelError
from onnxembed.exporter.accuracy import compare
from onnxembed.exporter.attention import _modernbert_patchable
from onnxembed.exporter.onnx_export import choose_exporter, fallback_exporter
from onnxembed.manifest import Manifest
from tests import families
from tests.families import FAMILY_FIXTURES
from tests.replicas import DATA, MIXED_TEXTS, Replica

# the replica fixtures, made visible to this module
modernbert, t5_encoder, mt5_encoder = families.modernbert, families.t5_encoder, families.mt5_encoder
embedding_gemma = families.embedding_gemma

ARCHITECTURES = {
    "modernbert": "ModernBertModel",
    "t5_encoder": "T5EncoderModel",
    "mt5_encoder": "MT5EncoderModel",
    "embedding_gemma": "Gemma3TextModel",
}
# what exporter="auto" takes: TorchScript where it traces right (its graphs fuse best), dynamo for Gemma3 and
# for ModernBERT where its attention loops (transformers 4.x)
EXPORTERS = {
    "modernbert": "dynamo" if _modernbert_patchable() else "torchscript",
    "t5_encoder": "torchscript",
    "mt5_encoder": "torchscript",
}


def _unseen_texts() -> list[str]:
    """Text the int8 calibration (tests/data/multilingual.txt) never saw: MIXED_TEXTS without its corpus lines,
    and seeded made-up sentences."""
    words = "model vector search query index token window layer graph cosine batch padding text words".split()
    rng = random.Random(0)
    made_up = [" ".join(rng.choices(words, k=rng.randint(3, 40))).capitalize() + "." for _ in range(120)]
    return [*MIXED_TEXTS[:8], *MIXED_TEXTS[-2:], *made_up]


def _assert_same(expected: np.ndarray, actual: np.ndarray) -> None:
    assert actual.shape == expected.shape
    scores = compare(expected, actual)
    assert scores["min_cosine"] >= 0.99999, scores
    assert np.abs(expected - actual).max() <= 1e-4, np.abs(expected - actual).max()


@pytest.fixture(scope="module", params=FAMILY_FIXTURES)
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Replica, Path]:
    """Each family exported once, with every CPU variant; calibrated on multilingual.txt."""
    replica: Replica = request.getfixturevalue(request.param)
    out = tmp_path_factory.mktemp("families") / replica.name
    export(
        replica.path,
        out,
        optimize=True,
        quantize="int8",
        int8_min_cosine=0.5,  # random weights: the recipe chosen is not the point, its recorded accuracy is
        calibration_file=DATA / "multilingual.txt",
    )
    return request.param, replica, out


@pytest.fixture(scope="module")
def reference(family: tuple[str, Replica, Path]) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(family[1].path), device="cpu")


def test_manifest_names_the_family_and_its_exporter(family: tuple[str, Replica, Path]) -> None:
    name, _, out = family
    manifest = Manifest.read(out)
    assert manifest.architecture == ARCHITECTURES[name]
    assert manifest.source["exporter"] == EXPORTERS.get(name, "dynamo")
    assert manifest.input_names == ("input_ids", "attention_mask")  # none of these families takes token types
    assert manifest.variants["fp32"].accuracy["token_embeddings_max_abs_diff"] <= 1e-4


# RMSNorms per layer as transformers writes each family (T5: before attention and before the FFN; Gemma3: four
# around attention and FFN, plus the q and k norms), and one after the last layer; ModernBERT has LayerNorms
RMS_NORMS_PER_LAYER = {"modernbert": 0, "t5_encoder": 2, "mt5_encoder": 2, "embedding_gemma": 6}


def test_every_rms_norm_runs_as_one_operator(family: tuple[str, Replica, Path]) -> None:
    """The exporter rewrites each RMSNorm (seven kernels as exported) as one SimplifiedLayerNormalization."""
    name, _, out = family
    config = json.loads((out / "config.json").read_text())
    layers = config.get("num_hidden_layers", config.get("num_layers"))
    per_layer = RMS_NORMS_PER_LAYER[name]
    expected = per_layer * layers + 1 if per_layer else 0
    graph = onnx.load(str(out / "onnx" / "model.onnx"), load_external_data=False).graph
    kinds = Counter(node.op_type for node in graph.node)
    assert kinds["SimplifiedLayerNormalization"] == expected
    assert Manifest.read(out).source["fused_rms_norms"] == expected
    if per_layer:
        assert not {"Sqrt", "Reciprocal"} & set(kinds), kinds  # Gemma's tanh GELU keeps a Pow


@pytest.mark.parametrize("variant", ["fp32", "optimized"])
def test_matches_sentence_transformers(family: tuple[str, Replica, Path], reference: Any, variant: str) -> None:
    _, replica, out = family
    encoder = Encoder(out, provider="cpu", variant=variant)
    assert encoder.dim == reference.get_sentence_embedding_dimension()
    assert encoder.max_seq_length == reference.max_seq_length
    for prompt_name in [None, *replica.prompts]:
        expected = reference.encode(MIXED_TEXTS, prompt_name=prompt_name, batch_size=8)
        _assert_same(expected, encoder.encode(MIXED_TEXTS, prompt_name=prompt_name, batch_size=5))
    if replica.prompts:
        _assert_same(reference.encode_query(MIXED_TEXTS), encoder.encode_query(MIXED_TEXTS))
        _assert_same(reference.encode_document(MIXED_TEXTS), encoder.encode_document(MIXED_TEXTS))


def test_int8_keeps_its_recorded_accuracy_on_unseen_text(family: tuple[str, Replica, Path], reference: Any) -> None:
    _, _, out = family
    recorded = Manifest.read(out).variants["int8"].accuracy
    texts = _unseen_texts()
    measured = compare(reference.encode(texts), Encoder(out, provider="cpu", variant="int8").encode(texts))
    # random weights say nothing of a real model's int8 loss; the record must still describe new text
    assert abs(measured["mean_cosine"] - recorded["mean_cosine"]) <= 0.005, (measured, recorded)


def test_info_shows_the_architecture(family: tuple[str, Replica, Path], capsys: pytest.CaptureFixture[str]) -> None:
    name, _, out = family
    assert main(["info", str(out)]) == 0
    assert f"architecture:    {ARCHITECTURES[name]}" in capsys.readouterr().out


def test_auto_takes_dynamo_where_torchscript_cannot_trace() -> None:
    assert choose_exporter("auto", model_type="gemma3_text") == "dynamo"
    assert choose_exporter("auto", verified=False, model_type="gemma3_text") == "dynamo"
    assert choose_exporter("dynamo", model_type="gemma3_text") == "dynamo"
    assert choose_exporter("auto", model_type="modernbert") == "torchscript"
    # ModernBERT's looped attention beat TorchScript's unrolled graph; without the loop TorchScript stays
    assert choose_exporter("auto", model_type="modernbert", loops=True) == "dynamo"
    assert choose_exporter("auto", model_type="bert", loops=True) == "torchscript"
    assert choose_exporter("torchscript", model_type="modernbert", loops=True) == "torchscript"


def test_auto_redoes_a_modernbert_graph_that_fails_verification_with_the_other_exporter(
    modernbert: Replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto's first ModernBERT graph (the looped dynamo one on transformers 4.x, TorchScript on 5.x) is
    redone with the other exporter when it fails verification, and the result is sentence-transformers'."""
    from sentence_transformers import SentenceTransformer

    import onnxembed.exporter.verify as verify

    real = verify.verify_graph
    calls: list[Path] = []

    def first_fails(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1])
        if len(calls) == 1:
            raise verify.ExportVerificationError("stand-in for a graph that failed verification")
        return real(*args, **kwargs)

    monkeypatch.setattr(verify, "verify_graph", first_fails)
    out = tmp_path / "out"
    manifest = export(modernbert.path, out, quantize=None)
    first = "dynamo" if _modernbert_patchable() else "torchscript"
    assert len(calls) == 2
    assert manifest.source["exporter"] == {"dynamo": "torchscript", "torchscript": "dynamo"}[first]
    expected = SentenceTransformer(str(modernbert.path), device="cpu").encode(MIXED_TEXTS)
    np.testing.assert_allclose(Encoder(out).encode(MIXED_TEXTS), expected, atol=1e-5, rtol=0)
    # families TorchScript cannot trace have no second exporter; an explicit choice never falls back
    assert fallback_exporter("auto", "dynamo", "gemma3_text") is None
    assert fallback_exporter("dynamo", "dynamo", "modernbert") is None


def test_torchscript_on_gemma3_is_refused_clearly(embedding_gemma: Replica, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="exporter='torchscript' cannot export model_type 'gemma3_text'"):
        export(embedding_gemma.path, tmp_path / "out", exporter="torchscript")


def test_unsupported_sibling_architecture_is_named(t5_encoder: Replica, tmp_path: Path) -> None:
    """UMT5 loads in sentence-transformers like T5, but onnxembed has not been checked on it: refused by name."""
    src = tmp_path / "umt5"
    shutil.copytree(t5_encoder.path, src)
    config = json.loads((src / "config.json").read_text())
    config.update(model_type="umt5", architectures=["UMT5EncoderModel"])
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="UMT5EncoderModel.*'umt5'.*not supported"):
        export(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("build", ["embedding_gemma", "sentence_t5"])
def test_whole_pipelines_with_dense_heads(build: str, tmp_path: Path) -> None:
    """EmbeddingGemma (mean -> Dense 4x -> Dense back -> Normalize) and sentence-t5 (mean -> Dense ->
    Normalize) as their cards have them, in the plain, fused and pooled-in-graph variants."""
    from sentence_transformers import SentenceTransformer

    if build == "embedding_gemma":
        replica = families.build_embedding_gemma(tmp_path / "src", dense=True)
    else:
        replica = families.build_t5(tmp_path / "src", dense=True)
    reference = SentenceTransformer(str(replica.path), device="cpu")
    export(
        replica.path, tmp_path / "out", optimize=True, pool_in_graph=True, calibration_file=DATA / "multilingual.txt"
    )
    texts = _unseen_texts()
    for variant in ("fp32", "optimized", "fp32-pooled"):
        encoder = Encoder(tmp_path / "out", provider="cpu", variant=variant)
        assert encoder.dim == reference.get_sentence_embedding_dimension()
        for prompt_name in (None, *replica.prompts):
            _assert_same(
                reference.encode(texts, prompt_name=prompt_name), encoder.encode(texts, prompt_name=prompt_name)
            )
