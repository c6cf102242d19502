"""Exporting SparseEncoders (SPLADE): the manifest says what the runtime needs (the pooling in the graph, the
inference-free query table), the optimized / int8 variants give what SparseEncoder(src) gives within the budget
their manifest records, and what onnxembed cannot carry is refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from onnxembed import SparseEncoder, UnsupportedModelError, export
from onnxembed.exporter.accuracy import spearman
from onnxembed.exporter.sparse import INT8_MIN_MEAN_SPEARMAN, INT8_MIN_TOP10_TERM_OVERLAP
from onnxembed.manifest import SPARSE, SPARSE_FORMAT_VERSION, Manifest
from tests import sparse
from tests.replicas import CORPUS, Replica
from tests.sparse import SPARSE_FIXTURES, exported_sparse

bert_splade, inference_free_splade = sparse.bert_splade, sparse.inference_free_splade

EXPECTED = {
    "bert_splade": ({"pooling_strategy": "max", "activation_function": "relu"}, 48, None),
    "inference_free_splade": ({"pooling_strategy": "sum", "activation_function": "log1p_relu"}, 40, ("query",)),
}


@pytest.mark.parametrize("name", SPARSE_FIXTURES)
def test_manifest(name: str, request: pytest.FixtureRequest, exports_dir: Path) -> None:
    replica: Replica = request.getfixturevalue(name)
    out = exported_sparse(replica, exports_dir)
    manifest = Manifest.read(out)
    splade, max_seq_length, static_tasks = EXPECTED[name]
    assert (manifest.task, manifest.format_version, manifest.output_name) == (
        SPARSE,
        SPARSE_FORMAT_VERSION,
        "sentence_embedding",
    )
    assert (manifest.splade, manifest.max_seq_length, manifest.source["model_type"]) == (
        splade,
        max_seq_length,
        "SparseEncoder",
    )
    assert manifest.architecture == "BertForMaskedLM+SpladePooling"
    assert (
        manifest.dim
        == json.loads((replica.path.parent / f"{replica.path.name}-hf" / "config.json").read_text())["vocab_size"]
    )
    accuracy = manifest.variants["fp32"].accuracy
    assert (
        max(accuracy["query_max_abs_diff"], accuracy["document_max_abs_diff"], accuracy["graph_max_abs_diff"]) <= 1e-4
    )
    if static_tasks is None:
        assert manifest.static_route is None
    else:
        assert manifest.static_route is not None and manifest.static_route.tasks == static_tasks
        assert not manifest.static_route.default  # Router.for_query_document: documents by default
        assert (out / manifest.static_route.path / "model.safetensors").is_file()


def _unseen() -> tuple[list[str], list[str]]:
    """Queries and documents the calibration (standard-library docstrings) never saw."""
    return CORPUS[30:40], CORPUS[:30]


def _heaviest(row: np.ndarray, k: int = 10) -> set[int]:
    active = np.flatnonzero(row)
    return set(active[np.argsort(-row[active], kind="stable")[:k]].tolist())


@pytest.mark.slow
@pytest.mark.parametrize("name", SPARSE_FIXTURES)
def test_int8_and_optimized_within_budget(name: str, request: pytest.FixtureRequest, exports_dir: Path) -> None:
    from sentence_transformers import SparseEncoder as Reference

    replica: Replica = request.getfixturevalue(name)
    out = exported_sparse(replica, exports_dir, optimize=True, quantize="int8")
    manifest = Manifest.read(out)
    int8 = manifest.variants["int8"].accuracy
    assert (int8["budget_mean_spearman"], int8["budget_top10_overlap"]) == (
        INT8_MIN_MEAN_SPEARMAN,
        INT8_MIN_TOP10_TERM_OVERLAP,
    )
    assert int8["accepted"] == (int8["mean_spearman"] >= 0.98 and int8["top10_overlap"] >= 0.9)
    assert manifest.variants["optimized"].accuracy["max_abs_diff"] <= 1e-4
    # measured again here against sentence-transformers itself, on text the export never saw
    reference = Reference(str(replica.path), device="cpu")
    queries, documents = _unseen()
    expected_q = reference.encode_query(queries, convert_to_sparse_tensor=False).numpy()
    expected_d = reference.encode_document(documents, convert_to_sparse_tensor=False).numpy()
    model = SparseEncoder(out, provider="cpu", variant="int8")
    actual_q = model.encode_query(queries, convert_to_sparse_tensor=False)
    actual_d = model.encode_document(documents, convert_to_sparse_tensor=False)
    rho = [spearman(expected_d @ q, actual_d @ a) for q, a in zip(expected_q, actual_q, strict=True)]
    overlaps = [
        len(_heaviest(e) & _heaviest(a)) / max(1, len(_heaviest(e)))
        for expected, actual in ((expected_q, actual_q), (expected_d, actual_d))
        for e, a in zip(expected, actual, strict=True)
    ]
    if int8["accepted"]:
        assert float(np.mean(rho)) >= INT8_MIN_MEAN_SPEARMAN - 0.01, rho
        assert float(np.mean(overlaps)) >= INT8_MIN_TOP10_TERM_OVERLAP - 0.05, overlaps


def _copy(replica: Replica, tmp_path: Path) -> Path:
    copy = tmp_path / replica.path.name
    shutil.copytree(replica.path, copy)
    return copy


def test_sparse_auto_encoder_refused_by_name(bert_splade: Replica, tmp_path: Path) -> None:
    source = _copy(bert_splade, tmp_path)
    modules = json.loads((source / "modules.json").read_text())
    modules.append(
        {
            "idx": 2,
            "name": "2",
            "path": "2_SparseAutoEncoder",
            "type": "sentence_transformers.sparse_encoder.modules.SparseAutoEncoder",
        }
    )
    (source / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedModelError, match=r"SparseAutoEncoder \(CSR\) models are not supported"):
        export(source, tmp_path / "out")


def test_unknown_pooling_refused(bert_splade: Replica, tmp_path: Path) -> None:
    source = _copy(bert_splade, tmp_path)
    (source / "1_SpladePooling" / "config.json").write_text(json.dumps({"pooling_strategy": "mean"}))
    with pytest.raises(UnsupportedModelError, match="pooling_strategy 'mean'; supported: max, sum"):
        export(source, tmp_path / "out")


def test_route_mappings_and_pool_in_graph_refused(
    inference_free_splade: Replica, bert_splade: Replica, tmp_path: Path
) -> None:
    source = _copy(inference_free_splade, tmp_path)
    router = json.loads((source / "router_config.json").read_text())
    router["parameters"]["route_mappings"] = {"query": "document"}
    (source / "router_config.json").write_text(json.dumps(router))
    with pytest.raises(UnsupportedModelError, match="route_mappings are not supported"):
        export(source, tmp_path / "out")
    with pytest.raises(UnsupportedModelError, match="--pool-in-graph: a sparse encoder's graph pools itself"):
        export(bert_splade.path, tmp_path / "out2", pool_in_graph=True)


def test_term_overlap_counts_empty_documents_as_agreeing() -> None:
    """Two documents with no active term agree; one empty and one not share nothing (the overlap of a model whose
    fp32 vectors are all empty was once reported as 0 while every ranking matched)."""
    from onnxembed.exporter.sparse import compare_sparse

    queries = np.ones((1, 3), np.float32)
    reference = np.array([[0, 0, 0], [1, 2, 0], [0, 0, 0]], np.float32)
    candidate = np.array([[0, 0, 0], [0, 2, 1], [0, 0, 5]], np.float32)
    result = compare_sparse((queries, reference), (queries, candidate), [np.arange(3)], k=2)
    assert result["top2_overlap"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_saved_max_active_dims_is_carried(bert_splade: Replica, tmp_path: Path) -> None:
    """sentence-transformers 6 saves max_active_dims in config_sentence_transformers.json and applies it at every
    encode: the export carries it (format 5), the runtime applies it by default, an explicit value still wins."""
    from sentence_transformers import SparseEncoder as Reference

    source = tmp_path / "limited"
    shutil.copytree(bert_splade.path, source)
    config_path = source / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "max_active_dims": 5}))
    out = tmp_path / "limited-onnx"
    export(source, out)
    manifest = Manifest.read(out)
    assert (manifest.max_active_dims, manifest.format_version) == (5, 5)
    reference = Reference(str(source), device="cpu")
    encoder = SparseEncoder(out)
    texts = CORPUS[:6]
    for side in ("query", "document"):
        expected = getattr(reference, f"encode_{side}")(texts, max_active_dims=5, convert_to_sparse_tensor=False)
        actual = getattr(encoder, f"encode_{side}")(texts, convert_to_sparse_tensor=False)
        sparse.assert_same_vectors(expected, actual)
        assert ((actual > 0).sum(axis=1) == 5).all()
    if getattr(reference, "max_active_dims", None) == 5:  # sentence-transformers 6 reads it by itself
        sparse.assert_same_vectors(
            reference.encode(texts, convert_to_sparse_tensor=False),
            encoder.encode(texts, convert_to_sparse_tensor=False),
        )
    from onnxembed.serve.batcher import Batcher

    batcher = Batcher(encoder, max_queue=100, max_run_texts=100)  # what the server's /embed_sparse answers
    try:
        rows = batcher.submit(texts, "").result(timeout=60).rows
    finally:
        batcher.close()
    expected = reference.encode_document(texts, max_active_dims=5, convert_to_sparse_tensor=False)
    sparse.assert_same_vectors(expected, np.stack([row.to_dense() for row in rows]))
    wider = encoder.encode(texts, max_active_dims=9, convert_to_sparse_tensor=False)
    sparse.assert_same_vectors(reference.encode(texts, max_active_dims=9, convert_to_sparse_tensor=False), wider)
    config_path.write_text(json.dumps({**config, "max_active_dims": 0}))
    with pytest.raises(UnsupportedModelError, match="max_active_dims"):
        export(source, tmp_path / "refused")
